"""A canary rollout end to end: the real kopf operator, real inference servers, real metrics.

The operator (`python -m modelship_operator`) runs against the HTTP API server double. The test
plays the kubelet and the Deployment controller (`PodController`): for every Deployment of the
ModelDeployment it keeps `spec.replicas` Pods, Running with `status.podIP` 127.0.0.1 and the
container port named `http` set to the port of a REAL `python -m modelship_server` process for
the Deployment's model version, and reports the Deployment available. The operator's analysis
therefore scrapes real `/metrics` of real servers while the test drives real traffic to them
(bounded): 1.0.0 and 2.0.0 serve the example model; 3.0.0 wraps it in TorchScript that raises
on a fifth of the inputs (as in test_metrics_source.py), so its canary fails analysis.

Pods of one revision share one server process (the servers are the expensive part): their
scrapes then count the same requests once per pod, which leaves error rates and latency as
they are.

With `pytest --cluster` the same file runs against a real cluster: it checks that a version
change creates a canary Deployment, that a canary no request reaches is paused on inconclusive
analysis and never promoted, and that a canary whose model cannot load is aborted within
`readyTimeout` (its pods really run: a kubelet such as ../shared/cluster/podlet.py with
`file:///models/digits/model.pt` under its image root); it skips the steps that need traffic
driven to real servers here -- see the skip reasons.
"""
from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from apiserver_double import ApiServerDouble
from kube_double import deployment_status
from modelship_operator.cli import main as cli_main
from modelship_operator.kube import Kube
from modelship_operator.planning import PROMOTE_ANNOTATION
from modelship_operator.planning.children import METRICS_PORT_NAME
from test_e2e import MD, Env, free_port, install_crd
from test_metrics_source import (PROMETHEUS, _features, _start_server, _stop, _wait_for, flaky_model_dir,  # noqa: F401
                                 generated_pod_name, pod_target_labels, servicemonitor_relabel_configs)

pytestmark = pytest.mark.cluster

NAME = "digits"
MANAGED = "app.kubernetes.io/managed-by=modelship-operator"
STEPS = [{"setWeight": 20}, {"pause": {"duration": "2s"}}, {"setWeight": 50}, {"pause": {}}, {"setWeight": 100}]
ANALYSIS = {"interval": "1s", "maxErrorRate": 0.05, "minRequests": 5, "failureLimit": 2}
INSTANCE = "app.kubernetes.io/instance"
REVISION = "modelship.dev/revision"
# 10 pods: replicas mode realises weights 20 and 50 exactly (2/8, 5/5); the status reports the
# effective weight (canary pods / all pods), so fewer pods could not tell the steps apart.
REPLICAS = 10
TRAFFIC_RPS = 15  # per server
TRAFFIC_CAP = 20000  # requests in all, whatever happens


class PodController:
    """What the Deployment controller and the kubelet would do, inside the API server double.

    Pods are named as Kubernetes names them (cut to 63 characters). With `sd_path` set it also
    writes Prometheus file-based service discovery: one target per pod with the labels Kubernetes
    service discovery gives it (namespace, pod name, pod labels), which the scrape config
    relabels as the operator's ServiceMonitor does.
    """

    def __init__(self, double: ApiServerDouble, namespace: str, ports: dict[str, int]) -> None:
        self.double, self.ports = double, ports
        self.namespaces = [namespace]
        self.sd_path: Path | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-controller", daemon=True)
        self._names = itertools.count(1)
        self.errors: list[str] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                targets = [t for ns in list(self.namespaces) for t in self.double.call(lambda ns=ns: self.sync(ns))]
                if self.sd_path is not None:
                    tmp = self.sd_path.with_suffix(".tmp")
                    tmp.write_text(json.dumps(targets))
                    tmp.replace(self.sd_path)  # atomic: Prometheus never reads half a file
            except Exception as exc:  # surfaced by the test through self.errors
                self.errors.append(repr(exc))

    def sync(self, namespace: str) -> list[dict]:
        """One pass: pods follow their Deployments; Deployments report what their pods are."""
        store = self.double.store
        pod_type, dep_type = store.type_for("v1", "Pod"), store.type_for("apps/v1", "Deployment")
        deps = store.list(dep_type, namespace, MANAGED)
        pods = store.list(pod_type, namespace, MANAGED)
        by_owner: dict[str, list[dict]] = {}
        for pod in pods:
            by_owner.setdefault(pod["metadata"]["labels"].get("owner-deployment", ""), []).append(pod)
        for dep in deps:
            name = dep["metadata"]["name"]
            template = dep["spec"]["template"]
            container = template["spec"]["containers"][0]
            version = next(e["value"] for e in container["env"] if e["name"] == "MODELSHIP_MODEL_VERSION")
            wanted, have = int(dep["spec"].get("replicas", 1)), by_owner.pop(name, [])
            for extra in have[wanted:]:
                store.delete(pod_type, namespace, extra["metadata"]["name"])
            for _ in range(wanted - len(have)):
                self._create_pod(namespace, name, template, container, self.ports.get(version))
            # a version no server runs crash-loops: its pods never become ready
            status = deployment_status(dep, wanted if version in self.ports else 0)
            live = dep.get("status") or {}
            if any(live.get(k) != status.get(k) for k in ("observedGeneration", "replicas", "readyReplicas")):
                store.set_status(dep_type, namespace, name, status)
        for orphans in by_owner.values():  # their Deployment is gone
            for pod in orphans:
                store.delete(pod_type, namespace, pod["metadata"]["name"])
        return [{"targets": [f"127.0.0.1:{self._port(p)}"],
                 "labels": pod_target_labels(namespace, p["metadata"]["name"],
                                             {k: v for k, v in p["metadata"]["labels"].items() if k != "owner-deployment"})}
                for p in store.list(pod_type, namespace, MANAGED)]

    @staticmethod
    def _port(pod: dict) -> int:
        return next(p["containerPort"] for p in pod["spec"]["containers"][0]["ports"] if p["name"] == METRICS_PORT_NAME)

    def _create_pod(self, namespace: str, deployment: str, template: dict, container: dict,
                    port: int | None) -> None:
        """A pod of the Deployment: its metrics on `port`, or, with no server for its version, a
        container that exits at once (as the server does when its model file is missing)."""
        store = self.double.store
        labels = {**template["metadata"]["labels"], "owner-deployment": deployment}
        # /metrics lives on the admin port: there this pod's loopback metrics server answers
        ports = [dict(p, containerPort=port or 1) if p.get("name") == METRICS_PORT_NAME else p
                 for p in container.get("ports", [])]
        pod = store.create(store.type_for("v1", "Pod"), namespace, {
            "metadata": {"name": generated_pod_name(deployment, "6d4cf56db6", f"{next(self._names):05d}"),
                         "labels": labels},
            "spec": {"containers": [{"name": container["name"], "image": container["image"], "ports": ports}]},
        })
        status = {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
        if port is None:
            status = {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "False"}],
                      "containerStatuses": [{"name": container["name"], "ready": False, "started": False,
                                             "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                             "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                                                          "message": "model file not found"}}}]}
        store.set_status(store.type_for("v1", "Pod"), namespace, pod["metadata"]["name"], status)


class Traffic:
    """Bounded background load on every server: TRAFFIC_RPS each, a fifth of it unusual inputs."""

    def __init__(self, bases: list[str]) -> None:
        self.bases = bases
        self.sent = 0
        self.codes: dict[str, dict[int, int]] = {b: {} for b in bases}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="traffic", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            i = 0
            while not self._stop.is_set() and self.sent < TRAFFIC_CAP:
                started = time.monotonic()

                async def one(base: str, n: int) -> None:
                    try:
                        r = await client.post(f"{base}/predict", json={"features": _features(n % 5 == 0)})
                        self.codes[base][r.status_code] = self.codes[base].get(r.status_code, 0) + 1
                    except httpx.HTTPError:
                        self.codes[base][0] = self.codes[base].get(0, 0) + 1

                await asyncio.gather(*(one(b, i) for b in self.bases))
                self.sent += len(self.bases)
                i += 1
                await asyncio.sleep(max(0.0, 1 / TRAFFIC_RPS - (time.monotonic() - started)))


@pytest.fixture(scope="module")
def rollout(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("e2e-rollout")
    cluster = request.config.getoption("--cluster")
    double = None
    servers: list[Any] = []
    if cluster:
        from modelship_operator.kube import kubeconfig_path

        kubeconfig = kubeconfig_path(os.environ)
        if not kubeconfig.exists():
            pytest.skip(f"--cluster given but there is no kubeconfig at {kubeconfig} (set KUBECONFIG)")
    else:
        pytest.importorskip("modelship_server")
        example = request.getfixturevalue("example_model_dir")
        flaky = request.getfixturevalue("flaky_model_dir")
        for version, model in (("1.0.0", example), ("2.0.0", example), ("3.0.0", flaky)):
            servers.append((version, _start_server(model, version, tmp / f"server-{version}.log")))
        double = ApiServerDouble()
        double.start()
        kubeconfig = double.write_kubeconfig(tmp / "kubeconfig")
    e = Env(kubeconfig=kubeconfig, namespace=f"modelship-rollout-{uuid.uuid4().hex[:6]}", double=double,
            log_path=tmp / "operator.log", liveness=f"http://127.0.0.1:{free_port()}/healthz")

    async def setup(kube: Kube) -> None:
        await install_crd(kube)
        await kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": e.namespace}})

    controller = traffic = None
    try:
        e.call(setup)
        e.environ = dict(os.environ, MODELSHIP_NAMESPACES=e.namespace, MODELSHIP_LOG_FORMAT="json",
                         MODELSHIP_RESYNC_SECONDS="30", MODELSHIP_SERVER_IMAGE="ghcr.io/modelship/server:e2e")
        e.start_operator()
        for version, s in servers:
            _wait_for(lambda s=s: httpx.get(f"{s.base}/v2/health/ready", timeout=1).status_code == 200,
                      60, f"server {version} ready", s.proc)
        if double is not None:
            controller = PodController(double, e.namespace, {v: s.port for v, s in servers})
            controller.start()
            traffic = Traffic([s.base for _, s in servers])
            traffic.start()
        e.shared.update(controller=controller, traffic=traffic, tmp=tmp, bases={v: s.base for v, s in servers})
        e.wait_live()
        yield e
    finally:
        for helper in (traffic, controller):
            if helper is not None:
                helper.stop()
        if e.process is not None and e.process.poll() is None:
            e.process.terminate()
            try:
                e.process.wait(15)
            except Exception:
                e.process.kill()
        for _, s in servers:
            _stop(s.proc)
        if double is None:
            e.call(lambda k: k.delete("v1", "Namespace", None, e.namespace))
        else:
            double.stop()


def _needs_pods(env: Env) -> None:
    if env.double is None:
        pytest.skip("real cluster: this step needs pods that run the server image and answer /metrics "
                    "(a kubelet, the image, CPU); the API server double's pod controller drives them here")


def md_body(namespace: str, version: str, steps: list | None = None, analysis: dict | None = None,
            name: str = NAME) -> dict:
    return {
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"model": {"uri": "file:///models/digits/model.pt", "version": version, "format": "torchscript"},
                 "replicas": REPLICAS, "rollout": {"steps": steps or STEPS, "analysis": analysis or ANALYSIS,
                                                   "traffic": "replicas"}},
    }


async def _md(k: Kube, env: Env) -> dict:
    return await k.get(*MD, env.namespace, env.shared.get("name", NAME)) or {}


def _status(env: Env) -> dict:
    return env.call(lambda k: _md(k, env)).get("status") or {}


async def _deployments(k: Kube, env: Env) -> dict[str, dict]:
    deps = await k.list("apps/v1", "Deployment", env.namespace, {INSTANCE: NAME})
    return {d["metadata"]["labels"][REVISION]: d for d in deps}


def _set_version(env: Env, version: str) -> None:
    name = env.shared.get("name", NAME)
    env.call(lambda k: k.patch(*MD, env.namespace, name, {"spec": {"model": {"version": version}}}))


def _events(env: Env) -> list[dict]:
    events = env.call(lambda k: k.list("v1", "Event", env.namespace))
    return [e for e in events if e["involvedObject"]["name"] == NAME]


def _cli(env: Env, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli_main([*argv, "-n", env.namespace, "--kubeconfig", str(env.kubeconfig)], env={},
                    stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_first_version_goes_straight_to_stable(rollout: Env) -> None:
    env = rollout
    env.call(lambda k: k.create(md_body(env.namespace, "1.0.0")))

    async def healthy(k: Kube) -> dict | None:
        status = (await _md(k, env)).get("status") or {}
        # On a cluster: until a stable pod serves, a version change rightly replaces the stable
        # directly instead of starting a canary (plan._plan), so the next test waits for one.
        serving = ((status.get("stable") or {}).get("readyReplicas") or 0) > 0
        return status if status.get("phase") == "Healthy" or env.double is None and serving else None

    status = env.eventually(healthy, "the first revision stable (and Healthy)", timeout=30 if env.double else 240)
    assert status["stable"]["version"] == "1.0.0" and not (status.get("canary") or {}).get("hash")
    env.shared["v1"] = status["stable"]["hash"]


def test_new_version_becomes_a_canary_with_a_replica_split(rollout: Env) -> None:
    env = rollout
    _set_version(env, "2.0.0")

    async def canary(k: Kube) -> dict | None:
        deps = await _deployments(k, env)
        return deps if len(deps) == 2 else None

    deps = env.eventually(canary, "a canary Deployment beside the stable one", timeout=30)
    v1 = env.shared["v1"]
    (v2,) = set(deps) - {v1}
    env.shared["v2"] = v2
    assert deps[v2]["metadata"]["labels"]["modelship.dev/role"] == "canary"
    _needs_pods(env)

    seen: list[tuple] = []

    async def split(k: Kube) -> dict | None:
        status = (await _md(k, env)).get("status") or {}
        replicas = {h: d["spec"]["replicas"] for h, d in (await _deployments(k, env)).items()}
        canary = status.get("canary") or {}
        if not seen or seen[-1] != (canary.get("weight"), replicas):
            seen.append((canary.get("weight"), replicas))
        return status if canary.get("weight") == 20 and replicas == {v1: 8, v2: 2} else None

    try:
        status = env.eventually(split, "weight 20: 2 canary and 8 stable pods out of 10", timeout=30)
    except AssertionError as exc:
        raise AssertionError(f"(canary weight, replicas) seen: {seen}; events: "
                             f"{[(e['reason'], e['message'], e.get('firstTimestamp')) for e in _events(env)]}") from exc
    assert status["stable"]["hash"] == v1 and status["canary"]["version"] == "2.0.0"


def test_weights_move_through_the_steps_to_the_manual_pause(rollout: Env) -> None:
    env = rollout
    _needs_pods(env)
    seen: set[int] = set()

    async def paused(k: Kube) -> dict | None:
        status = (await _md(k, env)).get("status") or {}
        canary = status.get("canary") or {}
        seen.add(int(canary.get("weight") or 0))
        passes = (canary.get("analysis") or {}).get("successes") or 0
        return status if status.get("phase") == "Paused" and canary.get("weight") == 50 and passes >= 1 else None

    status = env.eventually(paused, "the manual pause at weight 50 with a passing analysis", timeout=30)
    assert 50 in seen and seen <= {0, 20, 50}, seen  # 20 was seen by the previous test
    replicas = {h: d["spec"]["replicas"] for h, d in env.call(lambda k: _deployments(k, env)).items()}
    assert replicas == {env.shared["v1"]: 5, env.shared["v2"]: 5}
    analysis = status["canary"]["analysis"]
    assert analysis["verdict"] in ("Pass", "Inconclusive") and analysis["failures"] == 0
    assert analysis["requests"] >= 0 and "lastTime" in analysis
    reasons = [e["reason"] for e in _events(env)]
    assert "AnalysisPassed" in reasons and "RolloutPaused" in reasons
    # it waits: a few analysis intervals later it is still paused at 50
    time.sleep(2.5)
    again = _status(env)
    assert again["phase"] == "Paused" and again["canary"]["weight"] == 50
    code, out, err = _cli(env, "status", NAME)
    assert code == 0, err
    assert "weight 50%" in out and "version 2.0.0" in out and "verdict" in out


def test_promote_completes_the_rollout(rollout: Env) -> None:
    env = rollout
    _needs_pods(env)
    code, out, err = _cli(env, "promote", NAME)
    assert code == 0, err
    v1, v2 = env.shared["v1"], env.shared["v2"]

    async def promoted(k: Kube) -> dict | None:
        md = await _md(k, env)
        status = md.get("status") or {}
        deps = await _deployments(k, env)
        done = (status.get("stable") or {}).get("hash") == v2 and not (status.get("canary") or {}).get("hash")
        return md if done and set(deps) == {v2} and status.get("phase") == "Healthy" else None

    md = env.eventually(promoted, "revision 2 stable, revision 1 removed", timeout=30)
    assert PROMOTE_ANNOTATION not in (md["metadata"].get("annotations") or {})  # consumed, then cleared
    status = md["status"]
    assert status["stable"]["version"] == "2.0.0"
    assert [(h["hash"], h["version"], h["outcome"]) for h in status["history"]] == [(v1, "1.0.0", "Superseded")]
    deps = env.call(lambda k: _deployments(k, env))
    assert deps[v2]["spec"]["replicas"] == REPLICAS and deps[v2]["metadata"]["labels"]["modelship.dev/role"] == "stable"
    code, out, err = _cli(env, "history", NAME)
    assert code == 0 and "1.0.0" in out and "Superseded" in out


def test_a_failing_canary_is_aborted(rollout: Env) -> None:
    env = rollout
    _needs_pods(env)
    _set_version(env, "3.0.0")
    seen: dict[str, float] = {}

    async def aborted(k: Kube) -> dict | None:
        status = (await _md(k, env)).get("status") or {}
        canary = status.get("canary") or {}
        if canary.get("version") == "3.0.0" and int(canary.get("weight") or 0) > 0:
            seen.setdefault("traffic", time.monotonic())
        return status if canary.get("aborted") and status.get("phase") == "Degraded" else None

    status = env.eventually(aborted, "the flaky canary aborted", timeout=30)
    # within two analysis intervals (failureLimit 2) of taking traffic, plus the operator's and
    # this poll's latency on a busy machine
    interval = float(ANALYSIS["interval"].rstrip("s"))
    assert "traffic" in seen and time.monotonic() - seen["traffic"] <= 2 * interval + 4, seen
    canary = status["canary"]
    # weight 0 asked at once; its ready pods serve until the stable has all its replicas ready
    assert canary["version"] == "3.0.0" and canary["requestedWeight"] == 0
    assert canary["analysis"]["failures"] >= 2 and canary["analysis"]["verdict"] == "Fail"
    assert "error rate" in canary["analysis"]["message"]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert status["stable"]["version"] == "2.0.0"

    async def scaled_down(k: Kube) -> bool:
        deps = await _deployments(k, env)
        weight = ((await _md(k, env)).get("status") or {}).get("canary", {}).get("weight")
        return deps.get(canary["hash"], {}).get("spec", {}).get("replicas", 0) == 0 and \
            deps[env.shared["v2"]]["spec"]["replicas"] == REPLICAS and weight == 0

    env.eventually(scaled_down, "the aborted canary scaled to 0, stable back to all replicas", timeout=15)
    warnings = [e for e in _events(env) if e["type"] == "Warning"]
    assert any(e["reason"] == "AnalysisFailed" and "error rate" in e["message"] for e in warnings)
    # the real servers saw what the operator measured: the flaky one answered 500s, the stable none
    traffic = env.shared["traffic"]
    assert traffic.codes[env.shared["bases"]["3.0.0"]].get(500, 0) > 0
    stable_codes = traffic.codes[env.shared["bases"]["2.0.0"]]
    assert stable_codes.get(200, 0) > 0 and not any(code >= 500 for code in stable_codes), stable_codes
    assert not env.shared["controller"].errors
    # the scrape path found the pods through the API (by revision label)
    assert [path for method, path in list(env.double.requests)
            if method == "GET" and path.startswith(f"/api/v1/namespaces/{env.namespace}/pods?")
            and "modelship.dev%2Frevision" in path]


def test_a_canary_without_traffic_is_paused_not_promoted(rollout: Env) -> None:
    """No request reaches the canary (here: none counts, minRequests is out of reach; on a real
    cluster nothing sends any): every window is inconclusive, the step holds, and after
    inconclusiveLimit windows the rollout pauses. It is never promoted."""
    env = rollout
    stable = _status(env)["stable"]["version"]  # 2.0.0 here; 1.0.0 on a cluster (no pods ran the steps)
    target = "1.0.0" if stable != "1.0.0" else "2.0.0"
    analysis = {**ANALYSIS, "minRequests": 1000000, "inconclusiveLimit": 2}
    env.call(lambda k: k.patch(*MD, env.namespace, NAME, {"spec": {
        "model": {"version": target}, "rollout": {"analysis": analysis, "steps": [{"setWeight": 20}]}}}))

    async def paused(k: Kube) -> dict | None:
        status = (await _md(k, env)).get("status") or {}
        canary = status.get("canary") or {}
        return status if canary.get("version") == target and canary.get("heldReason") else None

    status = env.eventually(paused, "the quiet canary paused on inconclusive analysis", timeout=60)
    assert status["phase"] == "Paused" and status["canary"]["step"] == 0
    assert "inconclusive analysis windows in a row" in status["canary"]["heldReason"]
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "InconclusiveAnalysis"

    async def warned(k: Kube) -> bool:  # posted right after the status that says Paused
        events = await k.list("v1", "Event", env.namespace)
        return any(e["involvedObject"]["name"] == NAME and e["reason"] == "InconclusiveAnalysis"
                   and e["type"] == "Warning" for e in events)

    env.eventually(warned, "a Warning event InconclusiveAnalysis", timeout=10)
    time.sleep(3 * float(ANALYSIS["interval"].rstrip("s")))  # more windows: still not promoted
    again = _status(env)
    assert again["stable"]["version"] == stable and again["canary"]["version"] == target
    # (repeated events are one series now, so the earlier promotion of 2.0.0 -- whose message names
    # 1.0.0 as the removed revision -- is among the last objects: match the promoted version itself)
    assert again["phase"] == "Paused" and not any(
        e["reason"] == "Promoted" and f"version {target}) is now stable" in e["message"] for e in _events(env)[-20:])
    code, out, err = _cli(env, "status", NAME)
    assert code == 0 and "Paused:    " in out and "Windows:   this step 0 passed" in out, out


def test_a_crash_looping_canary_is_aborted_within_ready_timeout(rollout: Env) -> None:
    """A model that cannot load: the container exits, restarts, never gets Ready. The rollout
    aborts within readyTimeout with a Warning naming the container's last termination."""
    env = rollout
    ready_timeout = 8
    stable = _status(env)["stable"]["version"]
    env.call(lambda k: k.patch(*MD, env.namespace, NAME, {"spec": {
        "model": {"uri": "file:///models/missing/model.pt", "version": "9.9.9"},
        "rollout": {"readyTimeout": f"{ready_timeout}s", "analysis": ANALYSIS, "steps": [{"setWeight": 20}]}}}))
    started: dict[str, float] = {}

    async def aborted(k: Kube) -> dict | None:
        status = (await _md(k, env)).get("status") or {}
        canary = status.get("canary") or {}
        if canary.get("version") == "9.9.9":
            started.setdefault("canary", time.monotonic())
        return status if canary.get("version") == "9.9.9" and canary.get("aborted") else None

    status = env.eventually(aborted, "the crash-looping canary aborted", timeout=ready_timeout + 60)
    assert time.monotonic() - started["canary"] <= ready_timeout + 10, "aborted within readyTimeout (and a poll)"
    reason = status["canary"]["abortReason"]
    assert f"not Ready within readyTimeout {ready_timeout}s" in reason or "restarted" in reason, reason
    assert status["phase"] == "Degraded" and status["stable"]["version"] == stable

    async def warned(k: Kube) -> dict | None:  # posted right after the status that says aborted
        events = await k.list("v1", "Event", env.namespace)
        return next((e for e in events if e["involvedObject"]["name"] == NAME and e["reason"] == "CanaryAborted"
                     and "9.9.9" in e["message"]), None)

    warning = env.eventually(warned, "a CanaryAborted event for 9.9.9", timeout=10)
    assert warning["type"] == "Warning"
    if env.double is not None:  # the pod controller's crash: the reason reaches the event
        assert "CrashLoopBackOff: Error exit 1: model file not found" in warning["message"], warning["message"]


def test_operator_log_has_no_errors(rollout: Env) -> None:
    bad = [line for line in rollout.log_lines() if line["level"] in ("error", "critical") or "exception" in line]
    assert bad == []


# --------------------------------------------------------------------------- the PromQL path


@pytest.fixture(scope="module")
def promql(rollout: Env) -> Iterator[Env]:
    """A real Prometheus scraping the pods (file-based discovery written by the pod controller)
    and a second operator, for a second namespace, configured with its address."""
    _needs_pods(rollout)
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip("the prometheus binary is not installed (apt-get install prometheus); CI installs it")
    controller: PodController = rollout.shared["controller"]
    work = rollout.shared["tmp"] / "prometheus"
    work.mkdir()
    controller.sd_path = work / "pods.json"
    (work / "prometheus.yml").write_text(json.dumps({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "pods", "file_sd_configs": [
            {"files": [str(controller.sd_path)], "refresh_interval": "1s"}],
            "relabel_configs": servicemonitor_relabel_configs()}],
    }))
    port = free_port()
    with (work / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen([PROMETHEUS, f"--config.file={work / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                                 "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    e = Env(kubeconfig=rollout.kubeconfig, namespace=f"modelship-promql-{uuid.uuid4().hex[:6]}",
            double=rollout.double, log_path=work / "operator.log",
            liveness=f"http://127.0.0.1:{free_port()}/healthz")
    try:
        _wait_for(lambda: httpx.get(f"{base}/-/ready", timeout=1).status_code == 200, 30, "prometheus ready", proc)
        e.call(lambda k: k.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": e.namespace}}))
        controller.namespaces.append(e.namespace)
        # A second install next to the first (another namespace) holds its own Lease, as the
        # chart gives each release its own.
        e.environ = dict(rollout.environ, MODELSHIP_NAMESPACES=e.namespace, MODELSHIP_PROMETHEUS_URL=base,
                         MODELSHIP_PROMETHEUS_SCRAPE_INTERVAL="1s", MODELSHIP_LEASE_NAME="modelship-promql")
        e.start_operator()
        e.wait_live()
        # a long name: Kubernetes cuts the generated pod names, analysis must not depend on them
        e.shared.update(prometheus=base, name=PROMQL_NAME)
        yield e
    finally:
        if e.process is not None and e.process.poll() is None:
            e.process.terminate()
            try:
                e.process.wait(15)
            except subprocess.TimeoutExpired:
                e.process.kill()
        _stop(proc)


PROMQL_NAME = "digits-fraud-detector-card-transactions-eu-west"


def test_promql_path_aborts_a_failing_canary(promql: Env) -> None:
    env = promql
    # analysis every 3 s over 1 s scrapes (windows of at least 4 s); one failed window aborts
    analysis = {**ANALYSIS, "interval": "3s", "failureLimit": 1}
    env.call(lambda k: k.create(md_body(env.namespace, "1.0.0", [{"setWeight": 50}, {"pause": {}}], analysis,
                                        name=PROMQL_NAME)))
    env.eventually(lambda k: _healthy_stable(k, env), "the first revision stable", timeout=30)
    _set_version(env, "3.0.0")

    async def aborted(k: Kube) -> dict | None:
        status = (await _md(k, env)).get("status") or {}
        return status if (status.get("canary") or {}).get("aborted") else None

    status = env.eventually(aborted, "the flaky canary aborted by the PromQL analysis", timeout=30)
    result = status["canary"]["analysis"]
    assert status["phase"] == "Degraded" and result["verdict"] == "Fail"
    assert "error rate" in result["message"] and result["errorRate"] > ANALYSIS["maxErrorRate"]
    # ... and the numbers came from Prometheus: it holds the canary pods' series
    canary = status["canary"]["hash"]
    series = httpx.get(f"{env.shared['prometheus']}/api/v1/series",
                       params={"match[]": f'modelship_requests_total{{namespace="{env.namespace}"}}'}, timeout=5).json()
    mine = [s for s in series["data"] if s.get("modeldeployment") == PROMQL_NAME and s.get("revision") == canary]
    assert mine, series["data"][:3]
    # ... whose pod names Kubernetes cut: no replica-set suffix left for a pod-name pattern
    assert all(len(s["pod"]) == 63 and "6d4cf56db6" not in s["pod"] for s in mine), [s["pod"] for s in mine]
    # the operator never listed the stable's pods to scrape them (the scrape path would have; it
    # lists the canary's own pods for their restarts and readiness either way)
    stable = status["stable"]["hash"]
    assert not [path for method, path in list(env.double.requests)
                if method == "GET" and path.startswith(f"/api/v1/namespaces/{env.namespace}/pods")
                and f"revision%3D{stable}" in path]
    bad = [line for line in env.log_lines() if line["level"] in ("error", "critical") or "exception" in line]
    assert bad == []


async def _healthy_stable(k: Kube, env: Env) -> dict | None:
    status = (await _md(k, env)).get("status") or {}
    return status if status.get("phase") == "Healthy" else None
