"""examples/gitops and examples/cicd: parse, say what GitOps with an HPA needs, and really work."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modelship_operator import schema

ROOT = Path(__file__).resolve().parents[2]
GITOPS = ROOT / "examples" / "gitops"
CICD = ROOT / "examples" / "cicd"
SET_VERSION = CICD / "set_model_version.py"
MD_EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", sorted(GITOPS.glob("*.yaml")) + sorted(CICD.glob("*.yml")), ids=lambda p: p.name)
def test_yaml_parses(path: Path) -> None:
    assert _docs(path)


def test_argocd_application_leaves_hpa_owned_replicas_alone() -> None:
    (app,) = _docs(GITOPS / "argocd-application.yaml")
    assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
    ignored = [d for d in app["spec"]["ignoreDifferences"] if (d["group"], d["kind"]) == ("modelship.dev", "ModelDeployment")]
    assert ignored and "/spec/replicas" in ignored[0]["jsonPointers"]
    options = set(app["spec"]["syncPolicy"]["syncOptions"])
    assert {"RespectIgnoreDifferences=true", "ServerSideApply=true"} <= options


def _phases() -> set[str]:
    crd = yaml.safe_load((ROOT / "crds" / "modeldeployments.modelship.dev.yaml").read_text())
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    phase = status["properties"]["phase"]
    return set(phase.get("enum") or re.findall(r"\b(Pending|Progressing|Paused|Healthy|Degraded|Failed)\b", phase["description"]))


def test_health_checks_know_every_phase() -> None:
    phases = _phases()
    assert {"Healthy", "Degraded"} <= phases
    (cm,) = _docs(GITOPS / "argocd-cm-health.yaml")
    lua = cm["data"]["resource.customizations.health.modelship.dev_ModelDeployment"]
    assert set(re.findall(r'phase == "(\w+)"', lua)) <= phases
    (_, kustomization) = _docs(GITOPS / "flux-kustomization.yaml")
    (check,) = kustomization["spec"]["healthCheckExprs"]
    assert (check["apiVersion"], check["kind"]) == ("modelship.dev/v1alpha1", "ModelDeployment")
    named = set(re.findall(r"'(\w+)'", " ".join(check[k] for k in ("inProgress", "failed", "current"))))
    assert named == phases, "every phase is classified, and only real phases are named"


def _workflow() -> dict:
    return yaml.safe_load((CICD / "model-release.yml").read_text())


def test_workflow_is_test_then_validate_then_promote_by_commit() -> None:
    wf = _workflow()
    assert set(wf[True]) >= {"workflow_dispatch"}  # YAML 1.1 reads the key `on` as true
    jobs = wf["jobs"]
    assert jobs["validate"]["needs"] == "test" and jobs["promote"]["needs"] == "validate"
    validate = " ".join(s.get("run", "") for s in jobs["validate"]["steps"])
    for needed in ("examples/build_model.py", "signature.json", "hack/infer.py", "--min-accuracy", "kubectl-modelship render"):
        assert needed in validate, needed
    promote = " ".join(s.get("run", "") for s in jobs["promote"]["steps"])
    assert "set_model_version.py" in promote and "git commit" in promote and "git push" in promote
    assert "kubectl apply" not in promote, "GitOps: promotion is a commit, never a kubectl apply"
    for script in re.findall(r"(?:examples|hack)/[\w/]+\.py", validate + promote):
        assert (ROOT / script).is_file(), script
    assert (ROOT / wf["env"]["MANIFEST"]).is_file()


def test_workflow_signature_check_runs_against_the_example_model(example_model_dir: Path, tmp_path: Path) -> None:
    (step,) = [s for s in _workflow()["jobs"]["validate"]["steps"] if s.get("name") == "Check the signature"]
    snippet = step["run"].split("<<'PY'\n", 1)[1].rsplit("PY", 1)[0]
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "model").symlink_to(example_model_dir)
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "signature ok" in proc.stdout


@pytest.mark.parametrize("path", MD_EXAMPLES, ids=lambda p: p.name)
def test_promote_step_edits_only_the_model_and_stays_valid(path: Path, tmp_path: Path) -> None:
    target = tmp_path / path.name
    shutil.copy(path, target)
    proc = subprocess.run([sys.executable, str(SET_VERSION), str(target), "--uri", "s3://ml-models/m/9.1.0/model.pt",
                           "--version", "9.1.0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (before,), (after,) = _docs(path), _docs(target)
    assert after["spec"]["model"]["uri"] == "s3://ml-models/m/9.1.0/model.pt"
    assert after["spec"]["model"]["version"] == "9.1.0"
    before["spec"]["model"].update(uri=after["spec"]["model"]["uri"], version="9.1.0")
    assert after == before
    assert schema.validate(after) == []
    changed = [(a, b) for a, b in zip(path.read_text().splitlines(), target.read_text().splitlines()) if a != b]
    assert len(changed) <= 2 and len(path.read_text().splitlines()) == len(target.read_text().splitlines())


def test_promote_step_refuses_a_manifest_without_a_model(tmp_path: Path) -> None:
    target = tmp_path / "md.yaml"
    target.write_text("apiVersion: modelship.dev/v1alpha1\nkind: ModelDeployment\nspec:\n  replicas: 1\n")
    proc = subprocess.run([sys.executable, str(SET_VERSION), str(target), "--uri", "s3://b/k", "--version", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not found" in proc.stderr


@pytest.mark.parametrize("status,generation,verdict", [
    ({"observedGeneration": 2, "phase": "Healthy"}, 2, "current"),
    ({"observedGeneration": 2, "phase": "Progressing"}, 2, "inProgress"),
    ({"observedGeneration": 2, "phase": "Paused"}, 2, "inProgress"),
    ({"observedGeneration": 1, "phase": "Healthy"}, 2, "inProgress"),  # the operator has not seen the new spec
    ({"phase": "Pending"}, 1, "inProgress"),
    ({"observedGeneration": 3, "phase": "Degraded"}, 3, "failed"),
    ({"observedGeneration": 3, "phase": "Failed"}, 3, "failed"),
])
def test_flux_health_expressions_classify_real_statuses(status: dict, generation: int, verdict: str) -> None:
    """Flux evaluates healthCheckExprs as CEL over the object's top-level fields; so do we."""
    celpy = pytest.importorskip("celpy")
    (_, kustomization) = _docs(GITOPS / "flux-kustomization.yaml")
    (check,) = kustomization["spec"]["healthCheckExprs"]
    env = celpy.Environment()
    activation = {"status": celpy.json_to_cel(status), "metadata": celpy.json_to_cel({"generation": generation})}

    def holds(key: str) -> bool:
        return bool(env.program(env.compile(check[key])).evaluate(activation))

    # Flux checks inProgress first, then failed, then current.
    got = next((k for k in ("inProgress", "failed", "current") if holds(k)), "unknown")
    assert got == verdict
