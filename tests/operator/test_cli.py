"""kubectl-modelship: offline render through the operator's own code, status summaries,
and the operator settings the CLI shares with the operator (MODELSHIP_* environment)."""
from __future__ import annotations

import io
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from modelship_operator.cli import format_status, main
from modelship_operator.planning import Observed, plan
from modelship_operator.render import render
from modelship_operator.schema import load_crd
from modelship_operator.settings import Settings
from modelship_operator.spec import ModelDeployment

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml"))


def run(argv: list[str], env: dict[str, str] | None = None, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, env=env or {}, stdout=out, stderr=err, stdin=io.StringIO(stdin))
    return code, out.getvalue(), err.getvalue()


def expected_manifests(path: Path, settings: Settings = Settings()) -> list[dict]:
    """What the operator applies on a cluster that serves the Gateway API where the spec asks for it."""
    md = ModelDeployment.from_body(yaml.safe_load(path.read_text()))
    gateway = md.spec.rollout.gateway is not None and md.spec.rollout.traffic != "replicas"
    return render(plan(md, Observed(httproute_served=gateway), settings, datetime.now(timezone.utc)))


# --------------------------------------------------------------------------- render


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_render_prints_what_the_operator_would_apply(example: Path) -> None:
    code, out, err = run(["render", "-f", str(example)])
    assert code == 0, err
    printed = [d for d in yaml.safe_load_all(out) if d is not None]
    assert printed == expected_manifests(example)
    kinds = [m["kind"] for m in printed]
    assert kinds[0] == "Deployment" and "Service" in kinds


def test_render_of_a_gateway_spec_prints_its_route_and_role_services() -> None:
    example = str(ROOT / "examples" / "canary-gateway.yaml")
    code, out, err = run(["render", "-f", example])
    assert code == 0 and err == "", err
    printed = {(m["kind"], m["metadata"]["name"]): m for m in yaml.safe_load_all(out) if m is not None}
    assert {("HTTPRoute", "fraud"), ("Service", "fraud-stable"), ("Service", "fraud")} <= set(printed)
    route = printed[("HTTPRoute", "fraud")]["spec"]
    assert [(b["name"], b["weight"]) for b in route["rules"][0]["backendRefs"]] == [("fraud-stable", 100)]
    # <name> selects the stable revision alone: it does not bypass the route's weights
    assert "modelship.dev/revision" in printed[("Service", "fraud")]["spec"]["selector"]

    # without the Gateway API the operator splits replicas: rendered so, and said so
    code, out, err = run(["render", "-f", example, "--no-gateway-api"])
    assert code == 0
    kinds = {(m["kind"], m["metadata"]["name"]) for m in yaml.safe_load_all(out) if m is not None}
    assert ("HTTPRoute", "fraud") not in kinds and ("Service", "fraud-stable") not in kinds
    assert err.startswith("note: document 1 (ModelDeployment fraud): rollout.gateway is set") and "replicas" in err
    # a spec that does not ask for gateway mode renders none, whatever the flag says, and no note
    code, out, err = run(["render", "-f", str(ROOT / "examples" / "quickstart-cpu.yaml"), "--gateway-api"])
    assert code == 0 and err == "" and "HTTPRoute" not in out


def test_examples_exist() -> None:
    assert EXAMPLES, "examples/*.yaml are the CLI's showcase"


def test_render_takes_settings_from_the_environment_and_a_namespace() -> None:
    example = ROOT / "examples" / "quickstart-cpu.yaml"
    env = {"MODELSHIP_SERVER_IMAGE": "registry.example.com/modelship/server:9.9"}
    code, out, err = run(["render", "-f", str(example), "-n", "team-a"], env)
    assert code == 0, err
    deployment = next(yaml.safe_load_all(out))
    assert deployment["metadata"]["namespace"] == "team-a"
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == env["MODELSHIP_SERVER_IMAGE"]


def test_render_reads_stdin_and_can_include_a_servicemonitor() -> None:
    text = (ROOT / "examples" / "quickstart-cpu.yaml").read_text()
    code, out, _ = run(["render", "-f", "-", "--servicemonitor"], stdin=text)
    assert code == 0
    assert [d["kind"] for d in yaml.safe_load_all(out) if d][-1] == "ServiceMonitor"


BAD = """\
apiVersion: modelship.dev/v1alpha1
kind: ModelDeployment
metadata: {name: fraud}
spec:
  model: {uri: pvc://models/fraud/model.pt, version: "1"}
  replicas: -3
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BAD, "spec.replicas"),
        ("a: [unclosed", "not valid YAML"),
        ("", "holds no ModelDeployment"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "expected apiVersion modelship.dev/v1alpha1"),
        (BAD.replace("replicas: -3", "gpu: {type: NVIDIA-L4}"), "gpu"),
    ],
)
def test_render_rejects_bad_input_with_exit_code_2(text: str, message: str) -> None:
    code, out, err = run(["render", "-f", "-"], stdin=text)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err


def test_render_of_a_missing_file_and_of_bad_settings_exit_2(tmp_path: Path) -> None:
    code, _, err = run(["render", "-f", str(tmp_path / "nope.yaml")])
    assert code == 2 and "cannot read" in err
    example = str(ROOT / "examples" / "quickstart-cpu.yaml")
    code, _, err = run(["render", "-f", example], {"MODELSHIP_LOG_FORMAT": "xml"})
    assert code == 2 and "MODELSHIP_LOG_FORMAT" in err


def test_console_script_runs_as_a_process() -> None:
    """The real entry point: a process, its stdout, its exit status."""
    script = Path(sys.executable).with_name("kubectl-modelship")
    example = ROOT / "examples" / "quickstart-cpu.yaml"
    proc = subprocess.run([str(script), "render", "-f", str(example)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [d for d in yaml.safe_load_all(proc.stdout) if d] == expected_manifests(example)
    bad = subprocess.run([str(script), "render", "-f", "-"], input=BAD, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "spec.replicas" in bad.stderr


# --------------------------------------------------------------------------- status


REALISTIC = {
    "apiVersion": "modelship.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "fraud", "namespace": "ml", "generation": 4},
    "spec": {"replicas": 4, "rollout": {"steps": [{"setWeight": 25}, {"pause": {}}, {"setWeight": 50}]}},
    "status": {
        "observedGeneration": 4,
        "phase": "Progressing",
        "trafficMode": "replicas",
        "url": "http://fraud.ml.svc.cluster.local:8080",
        "replicas": 5,
        "readyReplicas": 4,
        "selector": "app.kubernetes.io/name=modelship,app.kubernetes.io/instance=fraud",
        "stable": {"revision": 3, "hash": "3be1c0ffee", "version": "1.4.0",
                   "uri": "pvc://models/fraud/1.4.0/model.pt", "replicas": 3, "readyReplicas": 3},
        "canary": {"revision": 4, "hash": "4dd0beef42", "version": "1.5.0", "weight": 25, "step": 1,
                   "replicas": 1, "readyReplicas": 1,
                   "analysis": {"verdict": "Pass", "requests": 420, "errorRate": 0.0024, "latencyP99Ms": 87.4,
                                "failures": 0, "successes": 3, "lastTime": "2026-03-01T12:05:00Z"}},
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "RolloutInProgress",
             "message": "revision 4 at 25%", "lastTransitionTime": "2026-03-01T12:00:00Z"},
            {"type": "Degraded", "status": "False", "reason": "AsExpected",
             "message": "no problems detected", "lastTransitionTime": "2026-02-27T08:00:00Z"},
        ],
        "history": [
            {"revision": 1, "hash": "1aaaaaaaaa", "version": "1.2.0", "outcome": "Superseded", "time": "2026-01-02T10:00:00Z"},
            {"revision": 2, "hash": "2bbbbbbbbb", "version": "1.3.0", "outcome": "Aborted", "time": "2026-02-01T10:00:00Z"},
        ],
    },
}


def test_format_status_summarises_a_realistic_object() -> None:
    text = format_status(REALISTIC)
    lines = text.splitlines()
    assert lines[0] == "ml/fraud"
    assert "Phase:     Progressing" in text
    assert "URL:       http://fraud.ml.svc.cluster.local:8080" in text
    assert "4 ready / 5 running / 4 wanted" in text
    assert "Stable:    revision 3 (3be1c0ffee)  version 1.4.0  weight 75%  ready 3/3" in text
    assert "Canary:    revision 4 (4dd0beef42)  version 1.5.0  weight 25%  step 2/3  ready 1/1" in text
    assert "verdict Pass, 420 requests, error rate 0.24%, p99 87 ms, failures 0, at 2026-03-01T12:05:00Z" in text
    ready_row = next(line for line in lines if line.strip().startswith("Ready "))
    assert ready_row.split()[:3] == ["Ready", "False", "RolloutInProgress"] and "revision 4 at 25%" in ready_row
    history = lines[lines.index("  History:") + 1:]
    assert history[0].split()[:3] == ["REVISION", "VERSION", "OUTCOME"]
    assert history[1].split()[:3] == ["2", "1.3.0", "Aborted"]  # newest first
    assert "Note:" not in text
    assert "Traffic:   replicas (one Service over every revision" in text
    gateway = {**REALISTIC, "status": {**REALISTIC["status"], "trafficMode": "gateway"}}
    assert "Traffic:   gateway (HTTPRoute fraud splits by weight; the URL's Service serves the stable)" in \
        format_status(gateway)
    conditions = lines[lines.index("  Conditions:") + 1:]
    assert conditions[0].split() == ["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"]
    asked = {**REALISTIC, "status": {**REALISTIC["status"], "canary": {**REALISTIC["status"]["canary"],
                                                                       "requestedWeight": 50}}}
    assert "weight 25% (asked 50%)  step 2/3" in format_status(asked)


def test_format_status_shows_the_windows_of_the_step_and_why_it_holds() -> None:
    canary = REALISTIC["status"]["canary"]
    holding = {**canary, "holdReason": "waiting for 2 passing analysis window(s) at 25% (1 passed, 2 inconclusive, "
                                       "0 failed)", "restarts": 2,
               "analysis": {**canary["analysis"], "stepPassed": 1, "stepInconclusive": 2, "inconclusiveStreak": 2}}
    text = format_status({**REALISTIC, "status": {**REALISTIC["status"], "canary": holding}})
    assert "  Holding:   waiting for 2 passing analysis window(s) at 25% (1 passed, 2 inconclusive, 0 failed)" in text
    assert "  Windows:   this step 1 passed, 2 inconclusive, 0 failed (in a row inconclusive: 2)" in text
    assert "  Restarts:  2 canary container restart(s)" in text
    held = {**holding, "heldReason": "3 inconclusive analysis windows in a row (inconclusiveLimit 3) at step 1 of "
                                     "3 (setWeight 25): only 0 requests in the window, 50 needed"}
    text = format_status({**REALISTIC, "status": {**REALISTIC["status"], "phase": "Paused", "canary": held}})
    assert "  Paused:    3 inconclusive analysis windows in a row" in text and "promote to continue" in text
    assert "Holding:" not in text


def test_format_status_of_a_new_or_stale_object() -> None:
    fresh = format_status({"metadata": {"name": "x", "namespace": "ml", "generation": 1}, "spec": {}})
    assert "Phase:     Unknown" in fresh and "Stable:" not in fresh and "Conditions:" not in fresh
    stale = dict(REALISTIC, metadata={**REALISTIC["metadata"], "generation": 5})
    assert "status is for generation 4; the operator has not processed 5 yet" in format_status(stale)


def test_status_reads_the_object_from_an_api_server(tmp_path: Path) -> None:
    """End to end over HTTP: kubeconfig -> kube.Kube -> the API server double -> summary."""
    from apiserver_double import ApiServerDouble

    server = ApiServerDouble()
    server.start()
    try:
        store = server.store

        def seed() -> None:
            store.create(store.type_for("apiextensions.k8s.io/v1", "CustomResourceDefinition"), None, load_crd())
            store.create(store.type_for("v1", "Namespace"), None, {"metadata": {"name": "ml"}})
            body = {k: v for k, v in REALISTIC.items() if k != "status"}
            body["spec"] = {"model": {"uri": "pvc://models/fraud/1.4.0/model.pt", "version": "1.4.0"}, "replicas": 4}
            rtype = store.type_for("modelship.dev/v1alpha1", "ModelDeployment")
            store.create(rtype, "ml", body)
            store.set_status(rtype, "ml", "fraud", REALISTIC["status"])

        server.call(seed)
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig", namespace="ml")
        code, out, err = run(["status", "fraud", "--kubeconfig", str(kubeconfig)])
        assert code == 0, err
        assert "Stable:    revision 3 (3be1c0ffee)" in out and "Phase:     Progressing" in out
        code, out, err = run(["status", "nope", "-n", "ml", "--kubeconfig", str(kubeconfig)])
        assert code == 1 and "ModelDeployment ml/nope not found" in err
    finally:
        server.stop()


# --------------------------------------------------------------------------- settings


def test_settings_defaults_and_environment() -> None:
    assert Settings.from_env({}) == Settings()
    s = Settings.from_env({
        "MODELSHIP_SERVER_IMAGE": "r.example.com/s:1",
        "MODELSHIP_GPU_LABEL_KEY": "cloud.google.com/gke-accelerator",
        "MODELSHIP_NAMESPACES": " ml, team-a ,ml,",
        "MODELSHIP_LOG_FORMAT": "TEXT",
        "MODELSHIP_RESYNC_SECONDS": "15.5",
        "MODELSHIP_PROMETHEUS_URL": "http://prometheus.monitoring:9090/",
        "MODELSHIP_PROMETHEUS_SCRAPE_INTERVAL": "1m",
        "MODELSHIP_FIELD_MANAGER": "my-manager",
        "MODELSHIP_CLUSTER_DOMAIN": "",
    })
    assert s == Settings(
        server_image="r.example.com/s:1",
        gpu_label_key="cloud.google.com/gke-accelerator",
        namespaces=("ml", "team-a"),
        log_format="text",
        resync_seconds=15.5,
        prometheus_url="http://prometheus.monitoring:9090",
        prometheus_scrape_interval=60.0,
        field_manager="my-manager",
        cluster_domain="",
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("MODELSHIP_LOG_FORMAT", "xml"),
        ("MODELSHIP_RESYNC_SECONDS", "soon"),
        ("MODELSHIP_RESYNC_SECONDS", "-1"),
        ("MODELSHIP_RESYNC_SECONDS", "nan"),
        ("MODELSHIP_NAMESPACES", "ml,Bad_NS"),
        ("MODELSHIP_GPU_LABEL_KEY", "not a key"),
        ("MODELSHIP_PROMETHEUS_URL", "prometheus:9090"),
        ("MODELSHIP_PROMETHEUS_SCRAPE_INTERVAL", "often"),
        ("MODELSHIP_PROMETHEUS_SCRAPE_INTERVAL", "500ms"),
        ("MODELSHIP_PROMETHEUS_SCRAPE_INTERVAL", "1h"),
        ("MODELSHIP_SERVER_IMAGE", "an image"),
        ("MODELSHIP_CLUSTER_DOMAIN", "bad_domain"),
    ],
)
def test_invalid_settings_name_the_variable(key: str, value: str) -> None:
    with pytest.raises(ValueError, match=key):
        Settings.from_env({key: value})


# --------------------------------------------------------------------------- rollout commands


ROLLING = {
    "observedGeneration": 4, "phase": "Paused",
    "stable": {"revision": 3, "hash": "3be1c0ffee", "version": "1.4.0",
               "uri": "pvc://models/fraud/1.4.0/model.pt", "replicas": 3, "readyReplicas": 3},
    "canary": {"revision": 4, "hash": "4dd0beef42", "version": "1.5.0", "weight": 25, "step": 1,
               "uri": "pvc://models/fraud/1.5.0/model.pt", "replicas": 1, "readyReplicas": 1},
    "history": [
        {"revision": 1, "hash": "1aaaaaaaaa", "version": "1.2.0", "uri": "pvc://models/fraud/1.2.0/model.pt",
         "outcome": "Superseded", "time": "2026-01-02T10:00:00Z"},
        {"revision": 2, "hash": "2bbbbbbbbb", "version": "1.3.0", "uri": "pvc://models/fraud/1.3.0/model.pt",
         "outcome": "Superseded", "time": "2026-02-01T10:00:00Z"},
    ],
}


@pytest.fixture
def api(tmp_path: Path):
    """The HTTP API server double with the CRD and a ModelDeployment `fraud` mid-rollout."""
    from apiserver_double import ApiServerDouble

    server = ApiServerDouble()
    server.start()
    store = server.store
    rtype_holder: dict = {}

    def seed() -> None:
        store.create(store.type_for("apiextensions.k8s.io/v1", "CustomResourceDefinition"), None, load_crd())
        store.create(store.type_for("v1", "Namespace"), None, {"metadata": {"name": "ml"}})
        rtype = rtype_holder["md"] = store.type_for("modelship.dev/v1alpha1", "ModelDeployment")
        body = {"apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment",
                "metadata": {"name": "fraud", "namespace": "ml"},
                "spec": {"model": {"uri": "pvc://models/fraud/1.5.0/model.pt", "version": "1.5.0"}, "replicas": 4}}
        store.create(rtype, "ml", body)
        store.set_status(rtype, "ml", "fraud", ROLLING)

    server.call(seed)
    server.kubeconfig = str(server.write_kubeconfig(tmp_path / "kubeconfig", namespace="ml"))
    server.md = lambda: server.call(lambda: store.get(rtype_holder["md"], "ml", "fraud"))
    server.set_status = lambda status: server.call(lambda: store.set_status(rtype_holder["md"], "ml", "fraud", status))
    server.label = lambda labels, annotations=None: server.call(lambda: store.patch(
        rtype_holder["md"], "ml", "fraud", "application/merge-patch+json",
        {"metadata": {"labels": labels, "annotations": annotations or {}}}))
    try:
        yield server
    finally:
        server.stop()


def test_promote_abort_retry_set_the_action_annotations(api) -> None:
    from modelship_operator.planning import ABORT_ANNOTATION, PROMOTE_ANNOTATION, RETRY_ANNOTATION

    kc = ["--kubeconfig", api.kubeconfig]
    code, out, err = run(["promote", "fraud", *kc])
    assert code == 0, err
    assert "promotion of the current step requested" in out
    first = api.md()["metadata"]["annotations"][PROMOTE_ANNOTATION]
    assert re.fullmatch(r"step@\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ-[0-9a-f]{6}", first)  # a request id each time
    code, out, err = run(["promote", "fraud", "--full", "-n", "ml", *kc])
    assert code == 0 and api.md()["metadata"]["annotations"][PROMOTE_ANNOTATION].startswith("full@")
    code, out, err = run(["promote", "fraud", *kc])
    assert code == 0 and api.md()["metadata"]["annotations"][PROMOTE_ANNOTATION] not in (first, "step")
    code, out, err = run(["abort", "fraud", *kc])
    assert code == 0 and ABORT_ANNOTATION in api.md()["metadata"]["annotations"]
    # retry needs an aborted canary
    code, out, err = run(["retry", "fraud", *kc])
    assert code == 1 and "no aborted canary" in err
    assert RETRY_ANNOTATION not in api.md()["metadata"]["annotations"]
    api.set_status({**ROLLING, "canary": {**ROLLING["canary"], "aborted": True, "weight": 0}})
    code, out, err = run(["retry", "fraud", *kc])
    assert code == 0, err
    assert RETRY_ANNOTATION in api.md()["metadata"]["annotations"]
    code, out, err = run(["promote", "fraud", *kc])
    assert code == 1 and "aborted" in err and "retry" in err
    # writes went through the CLI's own field manager and never touched spec
    patches = [w for w in api.writes if w.method == "PATCH" and "/modeldeployments/fraud" in w.path]
    assert len(patches) == 5 and all(w.user_agent == "kubectl-modelship" for w in patches)
    assert api.md()["metadata"]["generation"] == 1


def test_actions_without_a_canary_are_refused(api) -> None:
    api.set_status({k: v for k, v in ROLLING.items() if k != "canary"})
    for command in ("promote", "abort"):
        code, out, err = run([command, "fraud", "--kubeconfig", api.kubeconfig])
        assert code == 1 and "no canary" in err
    assert not api.md()["metadata"].get("annotations")
    code, _, err = run(["promote", "nope", "--kubeconfig", api.kubeconfig])
    assert code == 1 and "ModelDeployment ml/nope not found" in err


def test_history_lists_current_and_recorded_revisions(api) -> None:
    code, out, err = run(["history", "fraud", "--kubeconfig", api.kubeconfig])
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()[1:]]
    assert rows[0][:3] == ["REVISION", "VERSION", "OUTCOME"]
    assert [r[:2] for r in rows[1:]] == [["4", "1.5.0"], ["3", "1.4.0"], ["2", "1.3.0"], ["1", "1.2.0"]]
    assert rows[1][2:4] == ["Canary", "(now)"] and rows[3][2] == "Superseded"
    assert rows[3][-1] == "pvc://models/fraud/1.3.0/model.pt"


def test_rollback_patches_the_model_back_to_the_previous_or_a_chosen_revision(api) -> None:
    kc = ["--kubeconfig", api.kubeconfig]
    code, out, err = run(["rollback", "fraud", *kc])
    assert code == 0, err
    assert "rolling back to revision 2 (version 1.3.0" in out
    md = api.md()
    assert md["spec"]["model"] == {"uri": "pvc://models/fraud/1.3.0/model.pt", "version": "1.3.0"}
    assert md["spec"]["replicas"] == 4 and md["metadata"]["generation"] == 2
    code, out, err = run(["rollback", "fraud", "--to-revision", "1", *kc])
    assert code == 0 and api.md()["spec"]["model"]["version"] == "1.2.0"
    code, out, err = run(["rollback", "fraud", "--to-revision", "1", *kc])
    assert code == 0 and "nothing to do" in out and api.md()["metadata"]["generation"] == 3
    code, out, err = run(["rollback", "fraud", "--to-revision", "9", *kc])
    assert code == 1 and "revision 9 is not in status.history (recorded: 1, 2)" in err
    api.set_status({**ROLLING, "history": []})
    code, out, err = run(["rollback", "fraud", *kc])
    assert code == 1 and "no previous revision" in err


@pytest.mark.parametrize("labels, annotations, tool", [
    ({"app.kubernetes.io/instance": "fraud-prod"}, {"argocd.argoproj.io/tracking-id": "fraud:modelship.dev/x"},
     "Argo CD (argocd.argoproj.io/tracking-id)"),
    ({"kustomize.toolkit.fluxcd.io/name": "apps", "kustomize.toolkit.fluxcd.io/namespace": "flux-system"}, {},
     "Flux (kustomize.toolkit.fluxcd.io/name)"),
    ({"helm.toolkit.fluxcd.io/name": "fraud"}, {}, "Flux (helm.toolkit.fluxcd.io/name)"),
])
def test_rollback_of_a_gitops_managed_object_warns_and_needs_force(api, labels, annotations, tool) -> None:
    api.label(labels, annotations)
    before = api.md()
    code, out, err = run(["rollback", "fraud", "--kubeconfig", api.kubeconfig])
    assert code == 1
    assert f"managed by {tool}" in err and "Revert the change in Git instead" in err and "--force" in err
    assert api.md()["spec"] == before["spec"]
    code, out, err = run(["rollback", "fraud", "--force", "--kubeconfig", api.kubeconfig])
    assert code == 0 and "Revert the change in Git" in err
    assert api.md()["spec"]["model"]["version"] == "1.3.0"


def test_gitops_detection_by_field_manager_and_plain_labels() -> None:
    from modelship_operator.gitops import gitops_manager

    def obj(labels=None, managers=()):
        return {"metadata": {"labels": labels or {}, "managedFields": [{"manager": m} for m in managers]}}

    assert gitops_manager(obj(managers=["kubectl-client-side-apply", "argocd-controller"])) == \
        "Argo CD (field manager argocd-controller)"
    assert gitops_manager(obj(managers=["kustomize-controller"])) == "Flux (field manager kustomize-controller)"
    assert gitops_manager(obj(managers=["helm-controller"])) == "Flux (field manager helm-controller)"
    # Helm or kubectl alone is no GitOps tool: app.kubernetes.io/instance by itself is common
    assert gitops_manager(obj({"app.kubernetes.io/instance": "fraud", "app.kubernetes.io/managed-by": "Helm"},
                              ["helm", "kubectl"])) is None


def test_rollback_is_conditional_on_the_object_read(api, monkeypatch) -> None:
    """A concurrent change between read and patch fails (409) instead of being overwritten."""
    from modelship_operator import cli

    real = cli.rollback_patch

    def stale(obj, entry):
        api.label({"team": "fraud"})  # someone else writes meanwhile
        return real(obj, entry)

    monkeypatch.setattr(cli, "rollback_patch", stale)
    code, out, err = run(["rollback", "fraud", "--kubeconfig", api.kubeconfig])
    assert code == 1 and "test failed at /metadata/resourceVersion" in err
    assert api.md()["spec"]["model"]["version"] == "1.5.0"


def test_rollback_restores_the_recorded_pod_shaping_spec_exactly(api) -> None:
    old_spec = {"model": {"uri": "s3://models/fraud/1.3.0/model.pt2", "version": "1.3.0", "format": "torch-export"},
                "server": {"precision": "bf16", "batching": {"maxBatchSize": 8}}}
    entry = {**ROLLING["history"][1], "spec": old_spec, "image": "ghcr.io/modelship/server:0.1.0"}
    api.set_status({**ROLLING, "history": [ROLLING["history"][0], entry]})
    api.call(lambda: api.store.patch(api.store.type_for("modelship.dev/v1alpha1", "ModelDeployment"), "ml", "fraud",
                                     "application/merge-patch+json",
                                     {"spec": {"gpu": {"count": 1}, "server": {"env": [{"name": "A", "value": "1"}]}}}))
    code, out, err = run(["rollback", "fraud", "--kubeconfig", api.kubeconfig])
    assert code == 0, err
    spec = api.md()["spec"]
    assert {k: spec.get(k) for k in ("model", "server", "gpu")} == {**old_spec, "gpu": None}
    assert spec["replicas"] == 4  # not pod-shaping: untouched
