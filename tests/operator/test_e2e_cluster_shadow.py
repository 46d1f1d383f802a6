"""Shadow rollouts on a real cluster (`pytest --cluster`, KUBECONFIG, root): the canary takes no
user traffic while the stable pods mirror their requests to it through its role Service and
compare the answers; analysis gates on the disagreement.

Real pods (../shared/cluster/podlet.py) run the bundled server with three builds of the example
model (examples/build_model.py --variant v1 | v2 | bad) "baked into the image" under
MODELSHIP_E2E_IMAGE_ROOT; the real operator (a subprocess) pushes the canary's role Service
ClusterIP to the stable pods (PUT /shadow) and reads their modelship_shadow_* series. The podlet
has no kube-proxy, so cluster_services.ServiceProxy makes the namespace's ClusterIPs answer inside
the pod netns (the mirrors go through it, as they would through kube-proxy), and the client load
(NetnsLoad) reaches the model through the `<name>` Service's ClusterIP, as a client in the
cluster would. The tests read pods only through the API server's pod proxy.

In file order: the first version serves through its Service; a rollout to v2 (which agrees
with v1 on most inputs) shadows, answers no client request, then takes its share at weight 50
while the stable stops mirroring, and is promoted; a rollout to `bad` (which disagrees on every
input) is aborted for disagreement while the stable answers every client, and every stable pod
stops mirroring; then a second ModelDeployment in gateway mode (an HTTPRoute CRD installed if
absent, no Gateway controller) shadows through its role Service with the route's canary weight
at 0 and is promoted.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from cluster_proxy import PodProxy, is_ready, metrics_port
from cluster_services import NetnsLoad, ServiceProxy, unavailable
from modelship_operator.kube import Kube
from test_e2e import MD, Env, free_port, install_crd
from test_e2e_cluster import (INSTANCE, NAME, POD_START, REVISION, _deployments, _events, _md, _proxy_call,
                              _ready_pods, _set_model, _skip_without_cluster)
from test_e2e_header_routes import httproute_crd

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("v1", "v2", "bad")
INTERVAL = 4.0  # analysis.interval, seconds
MAX_DISAGREEMENT = 0.2
SHADOW_DURATION = 12.0  # seconds: three analysis windows
STEPS = [{"shadow": {"percent": 100, "duration": f"{SHADOW_DURATION:g}s"}}, {"setWeight": 50}]
ANALYSIS = {"interval": f"{INTERVAL:g}s", "maxErrorRate": 0.05, "minRequests": 10, "failureLimit": 2,
            "minPassedWindows": 2, "inconclusiveLimit": 50, "maxDisagreement": MAX_DISAGREEMENT}
RPS = 8  # client requests a second through the Service, all of the test
SERVER_PORT = 8080


def _model_uri(variant: str) -> str:
    return f"file:///models/digits-shadow-{variant}/model.pt"


def _bake_variants(image_root: Path, tmp: Path) -> dict[str, Path]:
    """Build the three variants with the real example script into the pods' image root."""
    out = {}
    for variant in VARIANTS:
        build = tmp / variant
        done = subprocess.run([sys.executable, str(ROOT / "examples" / "build_model.py"), "--variant", variant,
                               "--out", str(build)], capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"build_model.py --variant {variant} failed:\n{done.stdout}\n{done.stderr}"
        print(f"built {variant}: {done.stdout.strip().splitlines()[-1:] or ''}")
        target = image_root / "models" / f"digits-shadow-{variant}"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(build, target)
        out[variant] = target
    return out


def md_body(namespace: str, version: str, variant: str) -> dict:
    return {
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {"model": {"uri": _model_uri(variant), "version": version, "format": "torchscript"}, "replicas": 2,
                 "server": {"resources": {"requests": {"cpu": "100m", "memory": "256Mi"}}},
                 "rollout": {"steps": STEPS, "analysis": ANALYSIS, "traffic": "replicas",
                             "readyTimeout": "120s", "maxCanaryRestarts": 3}},
    }


@pytest.fixture(scope="module")
def shadow(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    kubeconfig = _skip_without_cluster(request)
    if reason := unavailable():
        pytest.skip(f"the mirrors need the Service proxy: {reason}")
    root = os.environ.get("MODELSHIP_E2E_IMAGE_ROOT")
    if not root:
        pytest.skip("set MODELSHIP_E2E_IMAGE_ROOT to the pods' image root to bake the model variants into it")
    tmp = tmp_path_factory.mktemp("e2e-shadow")
    models = _bake_variants(Path(root), tmp)
    import numpy as np  # the server's dependency; the operator suite needs it only here

    rows = np.load(models["v1"] / "heldout.npz")["X"].astype(float).tolist()
    e = Env(kubeconfig=kubeconfig, namespace=f"modelship-shadow-{uuid.uuid4().hex[:6]}", double=None,
            log_path=tmp / "operator.log", liveness=f"http://127.0.0.1:{free_port()}/healthz")
    e.shared.update(rows=rows, tmp=tmp)

    async def setup(kube: Kube) -> None:
        await install_crd(kube)
        await kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": e.namespace}})

    e.call(setup)
    services = None
    try:
        services = e.shared["services"] = ServiceProxy(kubeconfig, e.namespace).start()
        e.environ = dict(os.environ, MODELSHIP_NAMESPACES=e.namespace, MODELSHIP_LOG_FORMAT="json",
                         MODELSHIP_RESYNC_SECONDS="2", MODELSHIP_SERVER_IMAGE="ghcr.io/modelship/server:e2e",
                         MODELSHIP_LEASE_NAMESPACE=e.namespace)
        e.start_operator()
        e.wait_live()
        yield e
    finally:
        for key in ("load", "gw_load"):
            load = e.shared.pop(key, None)
            if load is not None:
                print(f"client load {key}, final counts: {load.stop()}")
        if services is not None:
            services.stop()
        if e.process is not None and e.process.poll() is None:
            e.process.terminate()
            try:
                e.process.wait(15)
            except Exception:
                e.process.kill()
        e.call(lambda k: k.delete("v1", "Namespace", None, e.namespace))
        if crd := e.shared.get("installed_httproute_crd"):
            e.call(lambda k: k.delete("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, crd))


# --------------------------------------------------------------------------- helpers


def parse_family(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of one metric in Prometheus text format, by their label set."""
    out = {}
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        labels: tuple[tuple[str, str], ...] = ()
        if "{" in head:
            body = head[head.index("{") + 1:head.rindex("}")]
            labels = tuple(sorted((k, v.strip('"')) for k, v in (p.split("=", 1) for p in body.split(",") if p)))
        out[labels] = float(value)
    return out


def _revision_total(text: str, name: str, revision: str, **match: str) -> float:
    return sum(v for labels, v in parse_family(text, name).items()
               if dict(labels).get("revision") == revision and all(dict(labels).get(k) == m for k, m in match.items()))


async def _pod_view(proxy: PodProxy, env: Env, pod: dict) -> dict[str, Any]:
    """A pod's GET /shadow and /metrics (admin port), through the API server's pod proxy."""
    name, port = pod["metadata"]["name"], metrics_port(pod)
    state = await proxy.get(env.namespace, name, "/shadow", port)
    metrics = await proxy.get(env.namespace, name, "/metrics", port)
    return {"pod": name, "ip": (pod.get("status") or {}).get("podIP"), "shadow_status": state.status_code,
            "shadow": state.json() if state.status_code == 200 else state.text, "metrics": metrics.text}


def _views(env: Env, revision: str) -> list[dict[str, Any]]:
    pods = env.call(lambda k: _ready_pods(k, env, revision))

    async def read(proxy: PodProxy) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(_pod_view(proxy, env, p) for p in pods)))
    return _proxy_call(env, read)


def _served(env: Env, version: str) -> dict[str, Any]:
    """Until the client load through the `<name>` Service is answered by `version`."""
    load: NetnsLoad = env.shared["load"]
    deadline = time.monotonic() + 60
    before = load.counts()
    while time.monotonic() < deadline:
        now = load.counts()
        if now["versions"].get(version, 0) - before["versions"].get(version, 0) >= 5:
            return now
        time.sleep(0.5)
    raise AssertionError(f"the Service's clients were not answered by {version}: {load.counts()}")


def _delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {key: {k: v - before[key].get(k, 0) for k, v in after[key].items() if v - before[key].get(k, 0)}
            for key in ("codes", "versions")}


def _cluster_ip(env: Env, service: str) -> str | None:
    svc = env.call(lambda k: k.get("v1", "Service", env.namespace, service)) or {}
    return (svc.get("spec") or {}).get("clusterIP")


def _shadowing_canary(env: Env, stable: str, what: str) -> dict:
    """The new canary at its shadow step with its pods ready."""
    async def at(k: Kube) -> dict | None:
        status = (await _md(k, env)).get("status") or {}
        canary = status.get("canary") or {}
        ready = canary.get("hash") and canary["hash"] != stable and await _ready_pods(k, env, canary["hash"])
        return status if ready and canary.get("shadowPercent") == 100 and not canary.get("aborted") else None

    return env.eventually(at, what, timeout=POD_START)


def _stable_mirroring(env: Env, stable: str, canary: str) -> list[dict[str, Any]]:
    """Every stable pod configured (by the operator) to mirror 100 % to the canary's role
    Service ClusterIP, and each with compared rows for the canary's revision label."""
    cluster_ip = _cluster_ip(env, f"{NAME}-canary")
    assert cluster_ip and cluster_ip != "None", f"no ClusterIP on the canary role Service: {cluster_ip!r}"
    deadline = time.monotonic() + 60
    views: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        views = _views(env, stable)
        pushed = views and all(v["shadow_status"] == 200 and v["shadow"].get("percent") == 100
                               and v["shadow"].get("url") == f"http://{cluster_ip}:{SERVER_PORT}" for v in views)
        if pushed and all(_revision_total(v["metrics"], "modelship_shadow_rows_total", canary) > 0 for v in views):
            return views
        time.sleep(1)
    raise AssertionError(f"stable pods not mirroring to http://{cluster_ip}:{SERVER_PORT} with compared rows: "
                         f"{[(v['pod'], v['shadow']) for v in views]}\n{env.log_tail()}")


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _status_of(env: Env) -> dict:
    return env.call(lambda k: _md(k, env)).get("status") or {}


def _wait(env: Env, fn: Any, what: str, timeout: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}\n{env.log_tail()}")


# --------------------------------------------------------------------------- scenarios


def test_the_first_version_serves_its_clients_through_its_service(shadow: Env) -> None:
    env = shadow
    env.call(lambda k: k.create(md_body(env.namespace, "1.0.0", "v1")))

    async def healthy(k: Kube) -> dict | None:
        status = (await _md(k, env)).get("status") or {}
        return status if status.get("phase") == "Healthy" else None

    status = env.eventually(healthy, "the first revision Healthy", timeout=POD_START)
    v1 = env.shared["v1"] = status["stable"]["hash"]
    assert len(env.call(lambda k: _ready_pods(k, env, v1))) == 2
    ip = _cluster_ip(env, NAME)
    services: ServiceProxy = env.shared["services"]
    services.wait_for(ip, SERVER_PORT, backends=2, timeout=60)
    env.shared["load"] = NetnsLoad(f"http://{ip}:{SERVER_PORT}/predict", env.shared["rows"], RPS,
                                   env.shared["tmp"]).start()
    counts = _served(env, "1.0.0")
    assert set(counts["codes"]) == {"200"}, counts
    # not mirroring outside a rollout
    assert all(v["shadow"].get("percent") == 0 for v in _views(env, v1)), _views(env, v1)


def test_a_shadow_canary_that_agrees_takes_no_client_request_then_traffic_and_is_promoted(shadow: Env) -> None:
    env = shadow
    v1 = env.shared["v1"]
    load: NetnsLoad = env.shared["load"]
    services: ServiceProxy = env.shared["services"]
    asked = time.monotonic()
    _set_model(env, "2.0.0", _model_uri("v2"))
    status = _shadowing_canary(env, v1, "the v2 canary Ready and shadowing 100 %")
    v2 = env.shared["v2"] = status["canary"]["hash"]
    assert status["stable"]["hash"] == v1 and status["canary"].get("weight", 0) == 0, status["canary"]
    assert status["canary"].get("step", 0) == 0, status["canary"]
    shadow_seen = time.time()
    # The shadow step cannot end before its duration from its start, nor before two analysis
    # windows from the first one: until then (less a second for the timestamps' resolution)
    # every client answer is from the shadow step.
    step_started = _epoch(status["canary"]["stepStartedAt"])
    first_window = (status["canary"].get("analysis") or {}).get("lastTime")
    shadow_until = max(step_started + SHADOW_DURATION, _epoch(first_window) + 2 * INTERVAL if first_window else 0) - 1

    views = _stable_mirroring(env, v1, v2)
    canary_pods = env.call(lambda k: _ready_pods(k, env, v2))
    canary_ips = {p["status"]["podIP"] for p in canary_pods}
    # the canary's request counter only counts the stable pods' mirrors: it is read first, the
    # mirrors the stable pods answered for (compared, error, mismatch) after
    canary_counters = _proxy_call(env, lambda proxy: asyncio.gather(
        *(proxy.metrics(env.namespace, p) for p in canary_pods)))
    canary_requests = sum(sum(codes.values()) for codes in canary_counters)
    time.sleep(1)
    views = _views(env, v1)
    outcomes = {o: sum(_revision_total(v["metrics"], "modelship_shadow_requests_total", v2, outcome=o) for v in views)
                for o in ("compared", "error", "mismatch", "dropped")}
    mirrored = outcomes["compared"] + outcomes["error"] + outcomes["mismatch"]  # sent (error: no answer in time)
    rows = sum(_revision_total(v["metrics"], "modelship_shadow_rows_total", v2) for v in views)
    disagreements = sum(_revision_total(v["metrics"], "modelship_shadow_disagreements_total", v2) for v in views)
    assert 0 < canary_requests <= mirrored, (canary_requests, mirrored)
    assert rows > 0 and disagreements / rows <= MAX_DISAGREEMENT, (rows, disagreements)
    # the mirrors went through the canary role Service's ClusterIP to the canary's pods
    canary_ip = _cluster_ip(env, f"{NAME}-canary")
    through = {k: n for k, n in services.connections().items() if k.startswith(f"{canary_ip}:{SERVER_PORT}>")}
    assert through and {k.split(">")[1].split(":")[0] for k in through} <= canary_ips, through

    # the next step (setWeight 50) after the shadow step's duration and passing windows
    seen: list[dict] = []

    async def weighted(k: Kube) -> dict | None:
        status = (await _md(k, env)).get("status") or {}
        canary = status.get("canary") or {}
        if canary.get("hash") == v2:
            seen.append(canary)
        return status if canary.get("hash") == v2 and canary.get("step") == 1 else None

    status = env.eventually(weighted, "the v2 canary past its shadow step", timeout=120)
    shadow_took = time.time() - step_started
    shadowed = time.time() - shadow_seen  # from the first status showing the shadow (pods ready, pushed)
    analyses = [c.get("analysis") or {} for c in seen]
    compared = [a for a in analyses if a.get("compared")]
    assert compared and all(a["disagreement"] <= MAX_DISAGREEMENT for a in compared), analyses[-3:]
    assert any(a.get("verdict") == "Pass" for a in analyses), analyses[-3:]
    assert shadow_took >= SHADOW_DURATION - 1, shadow_took  # the step lasted its duration
    # ... counted from when mirroring began (status.canary.shadowSince), not from the step's start
    # (which includes the canary pods' start); `shadow_seen` is polled, so up to a poll late
    assert shadowed >= SHADOW_DURATION - 2, (shadowed, shadow_seen - step_started)
    assert not status["canary"].get("shadowPercent"), status["canary"]
    # every client request of the shadow step was answered by the stable: none by the canary
    during = _delta(load.counts_at(shadow_until), load.counts_at(shadow_seen))
    assert sum(during["codes"].values()) >= 10, (during, shadow_until - shadow_seen)
    assert set(during["codes"]) == {"200"} and set(during["versions"]) == {"1.0.0"}, during
    # at weight 50 the stable pods stop mirroring and the canary answers clients itself
    stable_views = _wait(env, lambda: (lambda vs: vs if vs and all(v["shadow"].get("percent") == 0 for v in vs)
                                       else None)(_views(env, v1)), "the stable pods back to shadow percent 0", 30)
    weighted_clients = _served(env, "2.0.0")
    assert _status_of(env)["stable"]["hash"] == v1

    async def promoted(k: Kube) -> dict | None:
        status = (await _md(k, env)).get("status") or {}
        done = (status.get("stable") or {}).get("hash") == v2 and not (status.get("canary") or {}).get("hash")
        return status if done and set(await _deployments(k, env)) == {v2} else None

    status = env.eventually(promoted, "the v2 canary promoted and the old stable removed", timeout=180)
    assert [(h["hash"], h["outcome"]) for h in status["history"]] == [(v1, "Superseded")]
    after = _served(env, "2.0.0")
    # the new stable does not mirror
    assert all(v["shadow"].get("percent") == 0 for v in _views(env, v2))
    print(f"v2 shadow step took {shadow_took:.1f} s (duration {SHADOW_DURATION:g} s; shadowing seen "
          f"{shadow_seen - step_started:.1f} s after the step started, for {shadowed:.1f} s), promoted "
          f"{time.monotonic() - asked:.1f} s after the change; stable mirrored {outcomes}, {rows:g} rows, "
          f"{disagreements:g} disagreed; last shadow analysis {compared[-1]}; clients during the shadow step "
          f"{during}; at weight 50 {_delta(weighted_clients, load.counts_at(shadow_until))}; stable pods after the "
          f"shadow step {[v['shadow'] for v in stable_views]}; "
          f"clients in all {_delta(after, load.counts_at(shadow_seen))}")


def test_a_shadow_canary_that_disagrees_is_aborted_and_the_stable_stops_mirroring(shadow: Env) -> None:
    env = shadow
    v2 = env.shared["v2"]
    load: NetnsLoad = env.shared["load"]
    clients_before = load.counts()
    _set_model(env, "3.0.0", _model_uri("bad"))
    status = _shadowing_canary(env, v2, "the bad canary Ready and shadowing 100 %")
    v3 = status["canary"]["hash"]
    shadowing = time.monotonic()

    async def aborted(k: Kube) -> dict | None:
        status = (await _md(k, env)).get("status") or {}
        canary = status.get("canary") or {}
        return status if canary.get("hash") == v3 and canary.get("aborted") else None

    status = env.eventually(aborted, "the disagreeing shadow canary aborted", timeout=10 * INTERVAL + 60)
    took = time.monotonic() - shadowing
    canary = status["canary"]
    analysis = canary.get("analysis") or {}
    assert status["stable"]["hash"] == v2, status["stable"]
    assert analysis.get("verdict") == "Fail" and analysis.get("failures", 0) >= 2, analysis
    assert analysis.get("disagreement", 0) > MAX_DISAGREEMENT and "disagree" in analysis.get("message", "").lower(), \
        analysis
    # the reason is named where people look: the abort, the Progressing condition, a Warning Event
    assert "disagree" in (canary.get("abortReason") or "").lower(), canary.get("abortReason")
    warnings = [e for e in _events(env) if e.get("type") == "Warning" and "disagree" in e.get("message", "").lower()]
    assert warnings, [(e["reason"], e["message"]) for e in _events(env)]
    progressing = next((c for c in status.get("conditions") or () if c["type"] == "Progressing"), {})
    assert progressing.get("status") == "False" and "disagree" in progressing.get("message", "").lower(), progressing
    # failureLimit (2) windows after the canary shadowed, plus the operator's reaction
    assert took <= 3 * INTERVAL + 20, took

    # every stable pod stops mirroring; the canary goes away
    views = _wait(env, lambda: (lambda vs: vs if vs and all(v["shadow"].get("percent") == 0 for v in vs) else None)(
        _views(env, v2)), "every stable pod back to shadow percent 0", timeout=60)
    assert all(v["shadow"].get("url") in (None, "") for v in views), [v["shadow"] for v in views]

    async def scaled_down(k: Kube) -> bool:
        deps = await _deployments(k, env)
        return deps.get(v3, {}).get("spec", {}).get("replicas", 0) == 0 and deps[v2]["spec"]["replicas"] == 2

    env.eventually(scaled_down, "the aborted canary at 0, the stable at 2", timeout=60)
    time.sleep(2)
    # the stable answered every client, before, during and after the abort; the bad model none
    clients = _delta(load.counts(), clients_before)
    assert clients["codes"] and set(clients["codes"]) == {"200"} and set(clients["versions"]) == {"2.0.0"}, clients
    print(f"bad shadow canary aborted {took:.1f} s after its shadow step started (interval {INTERVAL:g} s): "
          f"{canary.get('abortReason')}; analysis {analysis}; "
          f"events {[(e['reason'], e['message']) for e in warnings]}; "
          f"clients meanwhile {clients}")


GW = "digits-gw"  # the gateway-mode ModelDeployment beside NAME
HTTPROUTE = ("gateway.networking.k8s.io/v1", "HTTPRoute")


def _gw_pods(env: Env, revision: str) -> list[dict]:
    pods = env.call(lambda k: k.list("v1", "Pod", env.namespace, {INSTANCE: GW, REVISION: revision}))
    return [p for p in pods if is_ready(p)]


def test_in_gateway_mode_the_shadow_goes_through_the_role_service_and_the_route_gives_the_canary_nothing(
        shadow: Env) -> None:
    """The other traffic mode (issue 13: "in both traffic modes, no mesh needed"): with an
    HTTPRoute CRD served (no Gateway controller runs here: the stored route is checked), the
    stable pods mirror through the canary role Service too, the route's canary weight stays 0,
    clients of the `<name>` Service (the stable only, in gateway mode) see no canary answer,
    and the agreeing canary is promoted after [shadow 100% 12s]."""
    env = shadow
    crd = httproute_crd()
    # a real API server wants this for a *.k8s.io group (Gateway API's own CRDs carry it)
    crd["metadata"]["annotations"] = {"api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api"}
    if env.call(lambda k: k.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", None,
                                crd["metadata"]["name"])) is None:
        env.call(lambda k: k.create(crd))
        env.shared["installed_httproute_crd"] = crd["metadata"]["name"]  # removed at teardown
    body = md_body(env.namespace, "1.0.0", "v1")
    body["metadata"]["name"] = GW
    body["spec"]["rollout"].update(traffic="gateway", gateway={"parentRefs": [{"name": "gw"}]},
                                   steps=[{"shadow": {"percent": 100, "duration": f"{SHADOW_DURATION:g}s"}}])

    async def created(k: Kube) -> bool:  # the operator's discovery may lag the new CRD: the MD waits
        return await k.served("gateway.networking.k8s.io", "v1", "httproutes")

    env.eventually(created, "the HTTPRoute kind served", timeout=30)
    env.call(lambda k: k.create(body))

    async def state(k: Kube) -> dict:
        return (await k.get(*MD, env.namespace, GW) or {}).get("status") or {}

    async def healthy(k: Kube) -> dict | None:
        status = await state(k)
        return status if status.get("phase") == "Healthy" and status.get("trafficMode") == "gateway" else None

    status = env.eventually(healthy, "the gateway-mode first revision Healthy", timeout=POD_START)
    v1 = status["stable"]["hash"]
    ip = _cluster_ip(env, GW)
    services: ServiceProxy = env.shared["services"]
    services.wait_for(ip, SERVER_PORT, backends=2, timeout=60)
    load = env.shared["gw_load"] = NetnsLoad(f"http://{ip}:{SERVER_PORT}/predict", env.shared["rows"], RPS,
                                             env.shared["tmp"]).start()
    env.call(lambda k: k.patch(*MD, env.namespace, GW, {"spec": {"model": {"version": "2.0.0",
                                                                           "uri": _model_uri("v2")}}}))

    async def shadowing(k: Kube) -> dict | None:
        status = await state(k)
        canary = status.get("canary") or {}
        return status if canary.get("hash") and canary["hash"] != v1 and canary.get("shadowPercent") == 100 else None

    status = env.eventually(shadowing, "the gateway-mode v2 canary shadowing 100 %", timeout=POD_START)
    shadow_seen = time.time()
    v2 = status["canary"]["hash"]
    first_window = (status["canary"].get("analysis") or {}).get("lastTime")
    shadow_until = max(_epoch(status["canary"]["stepStartedAt"]) + SHADOW_DURATION,
                       _epoch(first_window) + 2 * INTERVAL if first_window else 0) - 1
    route = env.call(lambda k: k.get(*HTTPROUTE, env.namespace, GW)) or {}
    weights = {b["name"]: b.get("weight") for rule in route["spec"]["rules"] for b in rule.get("backendRefs") or ()}
    assert weights.get(f"{GW}-canary") == 0 and weights.get(f"{GW}-stable") == 100, weights

    canary_ip = _cluster_ip(env, f"{GW}-canary")
    stable_pods = _gw_pods(env, v1)

    def mirroring() -> list[dict] | None:
        async def read(proxy: PodProxy) -> list[dict[str, Any]]:
            return list(await asyncio.gather(*(_pod_view(proxy, env, p) for p in stable_pods)))
        views = _proxy_call(env, read)
        ok = all(v["shadow"].get("url") == f"http://{canary_ip}:{SERVER_PORT}" and v["shadow"].get("percent") == 100
                 and _revision_total(v["metrics"], "modelship_shadow_rows_total", v2) > 0 for v in views)
        return views if ok else None

    views = _wait(env, mirroring, "the gateway-mode stable pods mirroring with compared rows", timeout=60)
    canary_ips = {p["status"]["podIP"] for p in _gw_pods(env, v2)}
    through = {k: n for k, n in services.connections().items() if k.startswith(f"{canary_ip}:{SERVER_PORT}>")}
    assert through and {k.split(">")[1].split(":")[0] for k in through} <= canary_ips, through

    async def promoted(k: Kube) -> dict | None:
        status = await state(k)
        done = (status.get("stable") or {}).get("hash") == v2 and not (status.get("canary") or {}).get("hash")
        return status if done else None

    status = env.eventually(promoted, "the gateway-mode v2 canary promoted", timeout=180)
    during = _delta(load.counts_at(shadow_until), load.counts_at(shadow_seen))
    assert sum(during["codes"].values()) >= 10, during
    assert set(during["codes"]) == {"200"} and set(during["versions"]) == {"1.0.0"}, during
    rows = sum(_revision_total(v["metrics"], "modelship_shadow_rows_total", v2) for v in views)
    route = env.call(lambda k: k.get(*HTTPROUTE, env.namespace, GW)) or {}
    final = {b["name"]: b.get("weight") for rule in route["spec"]["rules"] for b in rule.get("backendRefs") or ()}
    print(f"gateway mode: route weights during the shadow step {weights}, after the promotion {final}; {rows:g} rows "
          f"compared by then; clients during the shadow step {during}; promoted {time.time() - shadow_seen:.1f} s "
          f"after the shadow was seen")


def test_operator_log_has_no_errors(shadow: Env) -> None:
    bad = [line for line in shadow.log_lines() if line["level"] in ("error", "critical") or "exception" in line]
    assert bad == []
