"""The offline checks against a real API server (`pytest --cluster`, KUBECONFIG): the generated
CRD installs, the hand-written CRD of before is rejected where `crd_errors` says, and for every
case of test_cel_rules and every example the real server's verdict and defaulting equal
`api.validate`'s. Skipped without --cluster (CI runs the same checks offline)."""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import test_cel_rules as cases
from modelship_operator.api import crdgen
from modelship_operator.api import validate as V

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.cluster
COLLECTION = "/apis/modelship.dev/v1alpha1/namespaces/default/modeldeployments"
# The e2e tests install the CRD under this field manager (test_e2e.install_crd); applying under the
# same one, forced, never stops at an ownership conflict before the API server validates the CRD.
APPLY = ("apply", "--server-side", "--field-manager=modelship-e2e", "--force-conflicts", "--validate=false")


@pytest.fixture(scope="module")
def kubectl(request: pytest.FixtureRequest) -> Any:
    if not request.config.getoption("--cluster"):
        pytest.skip("needs --cluster (a real API server in KUBECONFIG)")
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not on PATH")

    def run(*args: str, body: Any = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", *args], input=None if body is None else json.dumps(body),
                              capture_output=True, text=True, timeout=60)

    return run


def test_generated_crd_installs_and_the_old_one_is_rejected(kubectl: Any) -> None:
    created = kubectl(*APPLY, "-f", str(ROOT / "crds"))
    assert created.returncode == 0, created.stderr
    assert kubectl("wait", "--for=condition=Established", f"crd/{crdgen.CRD_NAME}", "--timeout=60s").returncode == 0
    old = subprocess.run(["git", "show", "496c2e9:crds/modeldeployments.modelship.dev.yaml"], cwd=ROOT,
                         capture_output=True, text=True)
    if old.returncode != 0:
        pytest.skip("no git history here")
    rejected = kubectl(*APPLY, "--dry-run=server", "-f", "-",
                       body=yaml.safe_load(old.stdout))
    assert rejected.returncode != 0
    offline = {e.split(":", 1)[0] for e in V.crd_errors(yaml.safe_load(old.stdout))}
    assert offline == {"spec.gpu.default", "spec.rollout.default", "spec.server.batching.default"}
    for where in ("properties[gpu].default", "properties[rollout].default", "properties[batching].default"):
        assert where in rejected.stderr, rejected.stderr


def _server_verdict(kubectl: Any, doc: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
    doc = copy.deepcopy(doc)
    doc["metadata"]["namespace"] = "default"
    out = kubectl("create", "--raw", f"{COLLECTION}?dryRun=All&fieldValidation=Strict", "-f", "-", body=doc)
    return out.returncode == 0, (json.loads(out.stdout)["spec"] if out.returncode == 0 else None)


def test_verdicts_and_defaulting_equal_the_api_server(kubectl: Any) -> None:
    assert kubectl(*APPLY, "-f", str(ROOT / "crds")).returncode == 0
    kubectl("wait", "--for=condition=Established", f"crd/{crdgen.CRD_NAME}", "--timeout=60s")
    disagree = []
    for case, mutation, *_ in cases.INVALID:
        accepted, _ = _server_verdict(kubectl, cases.mutated(mutation))
        if accepted:
            disagree.append(f"{case}: the API server accepts it")
    from test_crd import NULLS

    valid = [(case, cases.mutated(m)) for case, m in cases.VALID] + [("nulls", NULLS)]
    valid += [(p.stem, d) for p in sorted((ROOT / "examples").glob("*.yaml"))
              for d in yaml.safe_load_all(p.read_text()) if d and d.get("kind") == "ModelDeployment"]
    for case, doc in valid:
        accepted, stored = _server_verdict(kubectl, doc)
        if not accepted:
            disagree.append(f"{case}: the API server rejects it")
        elif stored != V.defaulted(doc)["spec"]:
            disagree.append(f"{case}: defaulted differently: {stored} != {V.defaulted(doc)['spec']}")
    assert disagree == []
