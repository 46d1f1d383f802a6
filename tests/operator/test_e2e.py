"""The real operator (`python -m modelship_operator`, kopf) end to end.

By default against the HTTP API server double; with `pytest --cluster` the same test bodies
run against the cluster of KUBECONFIG (or ~/.kube/config): the CRD from crds/ is installed
(server-side apply), a fresh namespace is used and deleted afterwards, and the operator runs
locally, watching only that namespace. The tests run in file order and share one operator.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from urllib.parse import parse_qs, urlsplit
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from apiserver_double import ApiServerDouble
from modelship_operator.kube import Connection, Kube, kubeconfig_path

ROOT = Path(__file__).resolve().parents[2]
MD = ("modelship.dev/v1alpha1", "ModelDeployment")
CRD = ("apiextensions.k8s.io/v1", "CustomResourceDefinition")
NAME = "digits"
LEASE_CLIENT = "modelship-leader-election"  # user agent of the operator's Lease requests
T = TypeVar("T")

pytestmark = pytest.mark.cluster


@dataclass
class Env:
    kubeconfig: Path
    namespace: str
    double: ApiServerDouble | None  # None: a real cluster
    log_path: Path
    liveness: str
    environ: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    shared: dict[str, Any] = field(default_factory=dict)

    def start_operator(self) -> None:
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "modelship_operator", "--kubeconfig", str(self.kubeconfig),
                 "--liveness", self.liveness], stdout=log, stderr=subprocess.STDOUT, env=self.environ, cwd=ROOT)

    def wait_live(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.log_tail()
            try:
                with urllib.request.urlopen(self.liveness, timeout=2) as rsp:
                    if rsp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the liveness endpoint never answered 200\n{self.log_tail()}")

    def call(self, fn: Callable[[Kube], Awaitable[T]]) -> T:
        async def go() -> T:
            kube = Kube(Connection.from_kubeconfig(self.kubeconfig), field_manager="modelship-e2e")
            try:
                return await fn(kube)
            finally:
                await kube.close()
        return asyncio.run(go())

    def eventually(self, fn: Callable[[Kube], Awaitable[T | None]], what: str, timeout: float = 60) -> T:
        """Poll until fn returns something truthy; fail with the last value after the deadline."""
        async def go(kube: Kube) -> T:
            deadline = time.monotonic() + timeout
            last: Any = None
            while time.monotonic() < deadline:
                last = await fn(kube)
                if last:
                    return last
                await asyncio.sleep(0.2)
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}\n"
                                 f"operator log tail:\n{self.log_tail()}")
        return self.call(go)

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text().splitlines()[-n:]) if self.log_path.exists() else ""

    def log_lines(self) -> list[dict]:
        lines = []
        for raw in self.log_path.read_text().splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                lines.append({"level": "raw", "message": raw})
        return lines


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def install_crd(kube: Kube) -> None:
    crd = yaml.safe_load((ROOT / "crds" / "modeldeployments.modelship.dev.yaml").read_text())
    await kube.apply(crd)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        live = await kube.get(*CRD, None, crd["metadata"]["name"])
        conditions = (live or {}).get("status", {}).get("conditions") or []
        if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the CRD did not become Established")


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("e2e")
    double = None
    if request.config.getoption("--cluster"):
        kubeconfig = kubeconfig_path(os.environ)
        if not kubeconfig.exists():
            pytest.skip(f"--cluster given but there is no kubeconfig at {kubeconfig} (set KUBECONFIG)")
    else:
        double = ApiServerDouble()
        double.start()
        kubeconfig = double.write_kubeconfig(tmp / "kubeconfig")
    port = free_port()
    e = Env(kubeconfig=kubeconfig, namespace=f"modelship-e2e-{uuid.uuid4().hex[:6]}", double=double,
            log_path=tmp / "operator.log", liveness=f"http://127.0.0.1:{port}/healthz")

    async def setup(kube: Kube) -> None:
        await install_crd(kube)
        await kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": e.namespace}})
    e.call(setup)

    e.environ = dict(os.environ, MODELSHIP_NAMESPACES=e.namespace, MODELSHIP_LOG_FORMAT="json",
                     MODELSHIP_RESYNC_SECONDS="2", MODELSHIP_SERVER_IMAGE="ghcr.io/modelship/server:e2e")
    e.start_operator()
    try:
        yield e
    finally:
        if e.process.poll() is None:
            e.process.terminate()
            try:
                e.process.wait(15)
            except subprocess.TimeoutExpired:
                e.process.kill()
                e.process.wait(5)
        if double is None:
            e.call(lambda k: k.delete("v1", "Namespace", None, e.namespace))
        else:
            double.stop()


# Field managers of the cluster's own controllers (the Deployment and disruption controllers
# write status under the controller manager's name).
OTHER_CONTROLLERS = ("kube-controller-manager",)


def writes_not_by(obj: dict, managers: tuple[str, ...]) -> tuple:
    """The object's generation and who else last wrote which part, from the API server's view
    (managedFields: manager, operation, subresource and time of each writer's latest change)."""
    entries = [(m.get("manager"), m.get("operation"), m.get("subresource", ""), m.get("time"))
               for m in obj["metadata"].get("managedFields") or () if m.get("manager") not in managers]
    return obj["metadata"].get("generation"), sorted(entries)


def manifest(namespace: str) -> dict:
    body = yaml.safe_load((ROOT / "examples" / "quickstart-cpu.yaml").read_text())
    body["metadata"]["namespace"] = namespace
    return body


def deployments(env: Env) -> Callable[[Kube], Awaitable[list[dict]]]:
    return lambda k: k.list("apps/v1", "Deployment", env.namespace, {"app.kubernetes.io/instance": NAME})


def test_operator_starts_and_reports_live(env: Env) -> None:
    env.wait_live()


def test_apply_creates_owned_children(env: Env) -> None:
    created = env.call(lambda k: k.create(manifest(env.namespace)))
    uid = created["metadata"]["uid"]
    env.shared["uid"] = uid

    async def children(k: Kube) -> list[dict] | None:
        deps = await deployments(env)(k)
        svc = await k.get("v1", "Service", env.namespace, NAME)
        pdb = await k.get("policy/v1", "PodDisruptionBudget", env.namespace, NAME)
        return [*deps, svc, pdb] if deps and svc and pdb else None

    found = env.eventually(children, "Deployment, Service and PodDisruptionBudget")
    for child in found:
        refs = child["metadata"]["ownerReferences"]
        assert [(r["kind"], r["name"], r["uid"], r.get("controller")) for r in refs] == \
            [("ModelDeployment", NAME, uid, True)]
    dep = found[0]
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/modelship/server:e2e"
    env.shared["first"] = dep["metadata"]["name"]

    md = env.eventually(lambda k: _with_status(k, env), "a status on the ModelDeployment")
    assert md["status"]["observedGeneration"] == 1
    assert md["status"]["phase"] in ("Pending", "Progressing", "Healthy")
    assert not md["metadata"].get("finalizers")


async def _with_status(k: Kube, env: Env) -> dict | None:
    md = await k.get(*MD, env.namespace, NAME)
    return md if md and md.get("status", {}).get("observedGeneration") else None


def test_available_deployment_turns_status_ready(env: Env) -> None:
    if env.double is not None:  # on a cluster the kubelet runs the server pods and they turn ready
        env.double.mark_deployment_available(env.namespace, env.shared["first"])

    async def ready(k: Kube) -> dict | None:
        md = await k.get(*MD, env.namespace, NAME)
        conds = {c["type"]: c for c in (md or {}).get("status", {}).get("conditions", [])}
        return md if conds.get("Ready", {}).get("status") == "True" else None

    md = env.eventually(ready, "Ready=True", timeout=30 if env.double else 240)
    status = md["status"]
    assert status["phase"] == "Healthy"
    assert status["observedGeneration"] == md["metadata"]["generation"] == 1
    assert status["stable"]["readyReplicas"] == 2 and status["replicas"] == 2


def test_steady_state_writes_nothing(env: Env) -> None:
    async def versions(k: Kube) -> dict[str, Any]:
        md = await k.get(*MD, env.namespace, NAME)
        svc = await k.get("v1", "Service", env.namespace, NAME)
        if env.double is None:
            # In a real cluster other controllers legitimately write Deployment and PDB status;
            # the API server's managedFields say who wrote what: every other writer's entries.
            pdb = await k.get("policy/v1", "PodDisruptionBudget", env.namespace, NAME)
            return {"md": md["metadata"]["resourceVersion"], "service": svc["metadata"]["resourceVersion"],
                    **{o["kind"] + "/" + o["metadata"]["name"]: writes_not_by(o, OTHER_CONTROLLERS)
                       for o in [pdb, *(await deployments(env)(k))]}}
        objs = [md, svc, *(await deployments(env)(k))]
        return {o["kind"] + "/" + o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in objs}

    if env.double is not None:  # the Event that follows the Ready status write may still be on its way
        quiet_since, seen, deadline = time.monotonic(), len(env.double.writes), time.monotonic() + 15
        while time.monotonic() - quiet_since < 1.0 and time.monotonic() < deadline:
            time.sleep(0.1)
            if any(w.user_agent != LEASE_CLIENT for w in env.double.writes[seen:]):
                quiet_since, seen = time.monotonic(), len(env.double.writes)
    writes_before = len(env.double.writes) if env.double else 0
    requests_before = len(env.double.requests) if env.double else 0
    before = env.call(versions)
    time.sleep(4.5)  # two resync periods (MODELSHIP_RESYNC_SECONDS=2)
    assert env.call(versions) == before
    if env.double is not None:
        # The leader-election Lease is renewed by design (its own client); nothing else writes.
        assert [w for w in env.double.writes[writes_before:] if w.user_agent != LEASE_CLIENT] == []
        # Issue 9 item 11: the resyncs read from the watch caches, so the operator sent no
        # request at all meanwhile (kopf's own and ours), beyond watches that ended and resumed.
        verbs = {r.verb for r in list(env.double.request_log)[requests_before:]
                 if r.user_agent not in ("modelship-e2e", LEASE_CLIENT)}
        assert verbs <= {"watch"}, verbs
        # The caches watch only our own children (server-side label selector).
        watches = [path for _, path in env.double.requests if "/deployments?" in path and "watch=true" in path]
        assert watches and all(parse_qs(urlsplit(path).query).get("labelSelector")
                               == ["app.kubernetes.io/managed-by=modelship-operator"] for path in watches), watches


def test_edited_children_are_put_back(env: Env) -> None:
    """Issue 9 item 2: `kubectl scale deploy/<child> --replicas=0` and a Service patched to another
    selector are reverted by the operator (its watch sees the change), and then left alone."""
    dep = env.shared["first"]
    base = f"/apis/apps/v1/namespaces/{env.namespace}/deployments/{dep}"

    async def edit(k: Kube) -> None:
        await k._request("PATCH", base + "/scale", body={"spec": {"replicas": 0}},
                         content_type="application/merge-patch+json", what="kubectl scale")
        await k.patch("v1", "Service", env.namespace, NAME, {"spec": {"selector": {"app": "elsewhere"}}})
    env.call(edit)

    async def healed(k: Kube) -> dict | None:
        live = await k.get("apps/v1", "Deployment", env.namespace, dep)
        svc = await k.get("v1", "Service", env.namespace, NAME)
        selector = svc["spec"]["selector"]
        return live if live["spec"]["replicas"] == 2 and "app" not in selector \
            and selector.get("app.kubernetes.io/instance") == NAME else None

    live = env.eventually(healed, "the Deployment scaled back to 2 and the Service selector restored", timeout=20)

    def written(obj: dict) -> Any:  # on a cluster the Deployment controller keeps writing status
        return obj["metadata"]["resourceVersion"] if env.double else writes_not_by(obj, OTHER_CONTROLLERS)

    settled = env.call(lambda k: k.get("apps/v1", "Deployment", env.namespace, dep))
    time.sleep(2.5)  # a resync later: nothing more to do
    assert written(env.call(lambda k: k.get("apps/v1", "Deployment", env.namespace, dep))) == written(settled)
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/modelship/server:e2e"


def test_spec_change_rolls_a_new_revision_and_prunes_the_old(env: Env) -> None:
    first = env.shared["first"]
    env.call(lambda k: k._request(
        "PATCH", f"/apis/modelship.dev/v1alpha1/namespaces/{env.namespace}/modeldeployments/{NAME}",
        body={"spec": {"model": {"version": "1.1.0"}}}, content_type="application/merge-patch+json",
        what="change the version"))

    async def new_revision(k: Kube) -> str | None:
        names = [d["metadata"]["name"] for d in await deployments(env)(k)]
        return next((n for n in names if n != first), None)

    second = env.eventually(new_revision, "a Deployment for the new revision")
    if env.double is not None:  # the old one serves until the new one is available
        env.double.mark_deployment_available(env.namespace, second)

    if env.double is not None:  # the old one is scaled to 0 first; the controller reports its pods gone
        async def drained(k: Kube) -> bool:
            return any(d["metadata"]["name"] == first and d["spec"]["replicas"] == 0
                       for d in await deployments(env)(k))

        env.eventually(drained, f"the old revision {first} scaled to 0")
        env.double.mark_deployment_available(env.namespace, first)

    async def only_new(k: Kube) -> bool:
        return [d["metadata"]["name"] for d in await deployments(env)(k)] == [second]

    env.eventually(only_new, f"the old revision {first} pruned", timeout=60 if env.double else 240)

    async def observed(k: Kube) -> dict | None:
        md = await k.get(*MD, env.namespace, NAME)
        status = (md or {}).get("status", {})
        return md if status.get("observedGeneration") == 2 and status.get("stable", {}).get("version") == "1.1.0" \
            else None

    md = env.eventually(observed, "status of generation 2")
    assert md["status"]["stable"]["revision"] == 2
    if env.double is not None:
        assert md["status"]["phase"] == "Healthy"
        events = env.call(lambda k: k.list("v1", "Event", env.namespace))
        reasons = [e["reason"] for e in events if e["involvedObject"]["name"] == NAME]
        # without rollout steps the new revision is a canary until ready, then promoted
        assert {"RevisionCreated", "Ready", "CanaryStarted", "Promoted"} <= set(reasons)
        assert [h["version"] for h in md["status"]["history"]] == ["1.0.0"]


def test_delete_lets_go_cleanly(env: Env) -> None:
    env.call(lambda k: k.delete(*MD, env.namespace, NAME))

    async def gone(k: Kube) -> bool:
        return await k.get(*MD, env.namespace, NAME) is None

    env.eventually(gone, "the ModelDeployment to be deleted (no finalizer holding it)")

    async def children_gone(k: Kube) -> bool:
        return not await deployments(env)(k) and await k.get("v1", "Service", env.namespace, NAME) is None

    env.eventually(children_gone, "the children to be garbage collected", timeout=90)
    time.sleep(1)
    assert env.process is not None and env.process.poll() is None, env.log_tail()


def test_transient_api_failure_is_retried(env: Env) -> None:
    if env.double is None:
        pytest.skip("real cluster: API failures can only be injected into the API server double")
    env.double.fail_next(503, "injected-by-test: etcd is busy", method="PATCH", path_part="/deployments/retry-me-")
    body = manifest(env.namespace)
    body["metadata"]["name"] = "retry-me"
    env.call(lambda k: k.create(body))

    async def created(k: Kube) -> list[dict]:
        return await k.list("apps/v1", "Deployment", env.namespace, {"app.kubernetes.io/instance": "retry-me"})

    env.eventually(created, "the Deployment after kopf's retry", timeout=30)
    failed = [line for line in env.log_lines() if "injected-by-test" in line.get("message", "")]
    assert failed, "the first attempt should have failed (and been logged)"
    md = env.eventually(lambda k: _named_with_status(k, env, "retry-me"), "status after the retry")
    assert md["status"]["observedGeneration"] == 1 and not md["metadata"].get("finalizers")


async def _named_with_status(k: Kube, env: Env, name: str) -> dict | None:
    md = await k.get(*MD, env.namespace, name)
    return md if md and md.get("status", {}).get("observedGeneration") else None


def test_operator_stops_cleanly_with_structured_logs_and_no_errors(env: Env) -> None:
    assert env.process is not None
    env.process.terminate()
    assert env.process.wait(30) == 0, env.log_tail()
    lines = env.log_lines()
    assert lines and all(line["level"] != "raw" for line in lines), env.log_tail()
    bad = [line for line in lines if (line["level"] in ("error", "critical") or "exception" in line)
           and "injected-by-test" not in line["message"]]
    assert bad == []
    reconciled = [line for line in lines if line["message"].startswith("reconciled")]
    assert reconciled and all(line.get("object", {}).get("namespace") == env.namespace for line in reconciled)


def test_restarted_operator_resumes_without_writing(env: Env) -> None:
    if env.double is None:
        pytest.skip("real cluster: counting every write needs the API server double's request log")
    assert env.call(lambda k: k.get(*MD, env.namespace, "retry-me")) is not None
    mark = len(env.double.writes)
    env.log_path = env.log_path.with_name("operator-restarted.log")
    env.start_operator()
    env.wait_live()

    def resumed() -> bool:
        return any(line.get("message", "").startswith("resumed: ") for line in env.log_lines())

    deadline = time.monotonic() + 30
    while not resumed() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert resumed(), env.log_tail()
    time.sleep(2.5)  # past one resync period as well
    assert [w for w in env.double.writes[mark:] if w.user_agent != LEASE_CLIENT] == []


def test_invalid_settings_stop_the_operator_at_start() -> None:
    proc = subprocess.run([sys.executable, "-m", "modelship_operator", "--liveness", ""],
                          env=dict(os.environ, MODELSHIP_LOG_FORMAT="xml"), capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert "MODELSHIP_LOG_FORMAT" in proc.stderr
