"""Canary rollouts on a real cluster (`pytest --cluster`, KUBECONFIG): real pods run the bundled
server, the real operator (`python -m modelship_operator`, a subprocess) scrapes their metrics,
and the test reaches the pods only through the API server's pod proxy (cluster_proxy.py), as it
could on kind or any cluster. Skipped without --cluster (the doubles cover the same state machine
in test_e2e_rollout.py and test_reconcile_rollout*.py).

One ModelDeployment with 2 replicas walks through the scenarios in file order (a canary at weight
50 is one stable and one canary pod): a canary without traffic is held, not promoted; the PDB
guards both revisions; a wiped status does not skip the canary; with traffic the canary passes
and is promoted; a manual promote acts once; a crash-looping canary is aborted within readyTimeout;
a canary answering 5xx is aborted within two analysis intervals of taking traffic while the stable
answers no error.

The error-rate scenario needs the flaky model "baked into the image": set
MODELSHIP_E2E_IMAGE_ROOT to the folder the cluster's pods see as the image root (the podlet's
--image-root); the test writes models/digits-flaky/ there. Without it that scenario is skipped.
"""
from __future__ import annotations

import asyncio
import io
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster_proxy import PodProxy, is_ready
from modelship_operator.cli import main as cli_main
from modelship_operator.kube import Connection, Kube, kubeconfig_path
from modelship_operator.planning import PROMOTE_ANNOTATION
from test_e2e import MD, Env, free_port, install_crd
from test_metrics_source import _features, flaky_model_dir  # noqa: F401  (fixture)

pytestmark = pytest.mark.cluster

NAME = "digits"
INSTANCE = "app.kubernetes.io/instance"
REVISION = "modelship.dev/revision"
ROLE = "modelship.dev/role"
INTERVAL = 4.0  # analysis.interval, seconds
READY_TIMEOUT = 120.0  # rollout.readyTimeout, seconds: pods of a loaded machine start slowly
STEPS = [{"setWeight": 50}, {"pause": {"duration": "4s"}}]
ANALYSIS = {"interval": f"{INTERVAL:g}s", "maxErrorRate": 0.05, "minRequests": 10, "failureLimit": 2,
            "minPassedWindows": 2, "inconclusiveLimit": 50}
POD_START = 240  # seconds a pod may take to become Ready here (CPU is shared)


def _skip_without_cluster(request: pytest.FixtureRequest) -> Path:
    if not request.config.getoption("--cluster"):
        pytest.skip("needs --cluster: real pods reached through the API server's pod proxy")
    kubeconfig = kubeconfig_path(os.environ)
    if not kubeconfig.exists():
        pytest.skip(f"--cluster given but there is no kubeconfig at {kubeconfig} (set KUBECONFIG)")
    return kubeconfig


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    kubeconfig = _skip_without_cluster(request)
    tmp = tmp_path_factory.mktemp("e2e-cluster")
    e = Env(kubeconfig=kubeconfig, namespace=f"modelship-cluster-{uuid.uuid4().hex[:6]}", double=None,
            log_path=tmp / "operator.log", liveness=f"http://127.0.0.1:{free_port()}/healthz")

    async def setup(kube: Kube) -> None:
        await install_crd(kube)
        await kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": e.namespace}})

    e.call(setup)
    try:
        e.environ = dict(os.environ, MODELSHIP_NAMESPACES=e.namespace, MODELSHIP_LOG_FORMAT="json",
                         MODELSHIP_RESYNC_SECONDS="2", MODELSHIP_SERVER_IMAGE="ghcr.io/modelship/server:e2e",
                         MODELSHIP_LEASE_NAMESPACE=e.namespace)  # its own Lease, gone with the namespace
        e.start_operator()
        e.wait_live()
        yield e
    finally:
        traffic = e.shared.get("traffic")
        if traffic is not None:
            traffic.stop()
        if e.process is not None and e.process.poll() is None:
            e.process.terminate()
            try:
                e.process.wait(15)
            except Exception:
                e.process.kill()
        e.call(lambda k: k.delete("v1", "Namespace", None, e.namespace))


# --------------------------------------------------------------------------- helpers


def md_body(namespace: str, version: str, uri: str = "file:///models/digits/model.pt") -> dict:
    return {
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {"model": {"uri": uri, "version": version, "format": "torchscript"}, "replicas": 2,
                 "server": {"resources": {"requests": {"cpu": "100m", "memory": "256Mi"}}},
                 "rollout": {"steps": STEPS, "analysis": ANALYSIS, "traffic": "replicas",
                             "readyTimeout": f"{READY_TIMEOUT:g}s", "maxCanaryRestarts": 3}},
    }


async def _md(k: Kube, env: Env) -> dict:
    return await k.get(*MD, env.namespace, NAME) or {}


def _status(env: Env) -> dict:
    return env.call(lambda k: _md(k, env)).get("status") or {}


async def _deployments(k: Kube, env: Env) -> dict[str, dict]:
    deps = await k.list("apps/v1", "Deployment", env.namespace, {INSTANCE: NAME})
    return {d["metadata"]["labels"][REVISION]: d for d in deps}


async def _ready_pods(k: Kube, env: Env, revision: str) -> list[dict]:
    pods = await k.list("v1", "Pod", env.namespace, {INSTANCE: NAME, REVISION: revision})
    return [p for p in pods if is_ready(p)]


def _set_model(env: Env, version: str, uri: str | None = None) -> None:
    model: dict[str, Any] = {"version": version}
    if uri:
        model["uri"] = uri
    env.call(lambda k: k.patch(*MD, env.namespace, NAME, {"spec": {"model": model}}))


def _events(env: Env) -> list[dict]:
    return [e for e in env.call(lambda k: k.list("v1", "Event", env.namespace))
            if e["involvedObject"]["name"] == NAME]


def _cli(env: Env, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli_main([*argv, "-n", env.namespace, "--kubeconfig", str(env.kubeconfig)], env={},
                    stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def _proxy_call(env: Env, fn: Any) -> Any:
    async def go() -> Any:
        async with PodProxy(Connection.from_kubeconfig(env.kubeconfig)) as proxy:
            return await fn(proxy)
    return asyncio.run(go())


def _canary_at_weight(env: Env, revision: str, weight: int, what: str) -> dict:
    async def at(k: Kube) -> dict | None:
        status = (await _md(k, env)).get("status") or {}
        canary = status.get("canary") or {}
        ready = await _ready_pods(k, env, revision)
        return status if canary.get("hash") == revision and canary.get("weight") == weight and ready else None

    return env.eventually(at, what, timeout=POD_START)


class ProxyTraffic:
    """Bounded background load through the pod proxy on the given pods: `rps` each, every
    `unusual_every`-th input out of the digits range (the flaky model answers those with 500)."""

    def __init__(self, env: Env, pods: list[str], rps: float = 8, unusual_every: int = 5, cap: int = 6000) -> None:
        self.env, self.pods, self.rps, self.unusual_every, self.cap = env, pods, rps, unusual_every, cap
        self.codes: dict[str, dict[int, int]] = {p: {} for p in pods}
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="proxy-traffic", daemon=True)

    def start(self) -> "ProxyTraffic":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _run(self) -> None:
        async with PodProxy(Connection.from_kubeconfig(self.env.kubeconfig), timeout=10) as proxy:
            i = 0
            while not self._stop.is_set() and self.sent < self.cap:
                started = time.monotonic()
                batch = await proxy.drive(self.env.namespace, self.pods,
                                          lambda n, i=i: _features((i + n) % self.unusual_every == 0), 1)
                for pod, codes in batch.items():
                    for code, count in codes.items():
                        self.codes[pod][code] = self.codes[pod].get(code, 0) + count
                self.sent += len(self.pods)
                i += 1
                await asyncio.sleep(max(0.0, 1 / self.rps - (time.monotonic() - started)))


def _start_traffic(env: Env, pods: list[str], **kw: Any) -> ProxyTraffic:
    old = env.shared.pop("traffic", None)
    if old is not None:
        old.stop()
    traffic = env.shared["traffic"] = ProxyTraffic(env, pods, **kw).start()
    return traffic


def _stop_traffic(env: Env) -> ProxyTraffic | None:
    traffic = env.shared.pop("traffic", None)
    if traffic is not None:
        traffic.stop()
    return traffic


# --------------------------------------------------------------------------- scenarios


def test_first_version_serves_through_the_pod_proxy(cluster: Env) -> None:
    env = cluster
    env.call(lambda k: k.create(md_body(env.namespace, "1.0.0")))

    async def healthy(k: Kube) -> dict | None:
        status = (await _md(k, env)).get("status") or {}
        return status if status.get("phase") == "Healthy" else None

    status = env.eventually(healthy, "the first revision Healthy (its pods really serve)", timeout=POD_START)
    v1 = env.shared["v1"] = status["stable"]["hash"]
    pods = env.call(lambda k: _ready_pods(k, env, v1))
    assert len(pods) == 2

    async def probe(proxy: PodProxy) -> tuple[list[int], dict, list[dict]]:
        ready = [(await proxy.get(env.namespace, p["metadata"]["name"], "/v2/health/ready")).status_code
                 for p in pods]
        codes = await proxy.drive(env.namespace, [p["metadata"]["name"] for p in pods], lambda n: _features(False), 5)
        return ready, codes, [await proxy.metrics(env.namespace, p) for p in pods]

    ready, codes, metrics = _proxy_call(env, probe)
    assert ready == [200, 200]
    assert all(c == {200: 5} for c in codes.values()), codes
    # each pod's own /metrics (on the port the operator scrapes) counted what it answered
    assert all(m.get("200", 0) >= 5 and not any(code.startswith("5") for code in m) for m in metrics), metrics


def test_canary_without_traffic_is_held_not_promoted(cluster: Env) -> None:
    """Issue 10: no requests is no evidence: the canary's step (and the timed pause after it)
    never completes, whatever the number of analysis intervals."""
    env = cluster
    v1 = env.shared["v1"]
    _set_model(env, "2.0.0")

    async def canary(k: Kube) -> str | None:
        deps = await _deployments(k, env)
        new = [h for h in deps if h != v1]
        return new[0] if new else None

    v2 = env.shared["v2"] = env.eventually(canary, "a canary Deployment beside the stable", timeout=60)
    deps = env.call(lambda k: _deployments(k, env))
    assert deps[v2]["metadata"]["labels"][ROLE] == "canary" and deps[v1]["metadata"]["labels"][ROLE] == "stable"
    status = _canary_at_weight(env, v2, 50, "the canary pod Ready at weight 50")
    started = time.monotonic()
    seen_steps: set[int] = set()
    while time.monotonic() - started < 6 * INTERVAL:  # six analysis intervals without a request
        status = _status(env)
        seen_steps.add(int(status["canary"].get("step") or 0))
        assert status["stable"]["hash"] == v1 and status["canary"]["hash"] == v2, status
        time.sleep(1)
    analysis = status["canary"].get("analysis") or {}
    assert seen_steps == {0}, seen_steps
    assert analysis.get("successes", 0) == 0 and analysis.get("stepPassed", 0) == 0, analysis
    assert analysis.get("verdict") == "Inconclusive", analysis
    assert status["canary"].get("holdReason"), status["canary"]
    replicas = {h: d["spec"]["replicas"] for h, d in env.call(lambda k: _deployments(k, env)).items()}
    assert replicas == {v1: 1, v2: 1}


def test_pdb_guards_both_revisions_during_the_canary(cluster: Env) -> None:
    """Issue 9: replicas 2 at weight 50 is one pod per revision: a PDB over every revision
    (one selector) keeps a voluntary eviction from taking the last serving pod."""
    env = cluster
    pdb = env.call(lambda k: k.get("policy/v1", "PodDisruptionBudget", env.namespace, NAME))
    assert pdb is not None, "no PodDisruptionBudget during the canary"
    selector = pdb["spec"]["selector"].get("matchLabels") or {}
    assert REVISION not in selector and selector.get(INSTANCE) == NAME, selector
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") in (1, "50%"), pdb["spec"]

    async def counted(k: Kube) -> dict | None:  # the disruption controller sees both pods
        live = await k.get("policy/v1", "PodDisruptionBudget", env.namespace, NAME)
        return live if (live.get("status") or {}).get("expectedPods") == 2 else None

    env.eventually(counted, "the disruption controller counting both revisions' pods", timeout=60)


def test_wiped_status_does_not_skip_the_canary(cluster: Env) -> None:
    """Issue 9: the rollout state comes back from the Deployments' records; the canary is
    neither promoted nor replaced because status forgot it."""
    env = cluster
    v1, v2 = env.shared["v1"], env.shared["v2"]
    status = _status(env)
    env.call(lambda k: k.patch_status(*MD, env.namespace, NAME, {key: None for key in status}))

    seen: list[tuple] = []

    async def recovered(k: Kube) -> dict | None:
        status = (await _md(k, env)).get("status") or {}
        deps = await _deployments(k, env)
        state = ((status.get("stable") or {}).get("hash"), (status.get("canary") or {}).get("hash"),
                 tuple(sorted((h, d["spec"]["replicas"], d["metadata"]["labels"][ROLE]) for h, d in deps.items())))
        if not seen or seen[-1] != state:
            seen.append(state)
        return status if state[0] == v1 and state[1] == v2 else None

    status = env.eventually(recovered, "status recovered with the canary still a canary", timeout=60)
    # meanwhile the children never moved: one stable and one canary pod, roles unchanged
    assert all(set(s[2]) == {(v1, 1, "stable"), (v2, 1, "canary")} for s in seen), seen
    assert status["canary"]["step"] == 0 and status["canary"].get("weight") == 50
    assert "RolloutStateRecovered" in {e["reason"] for e in _events(env)}


def test_canary_with_traffic_passes_and_is_promoted(cluster: Env) -> None:
    """The positive control of the held canary: requests through the pod proxy to both pods
    give passing windows, the steps complete and the canary becomes the stable."""
    env = cluster
    v1, v2 = env.shared["v1"], env.shared["v2"]
    pods = [p["metadata"]["name"] for h in (v1, v2) for p in env.call(lambda k, h=h: _ready_pods(k, env, h))]
    traffic = _start_traffic(env, pods, unusual_every=10**9)
    before: dict[str, dict[int, int]] = {}

    async def promoted(k: Kube) -> dict | None:
        status = (await _md(k, env)).get("status") or {}
        if (status.get("stable") or {}).get("hash") == v2 and not before:
            # the answers up to the promotion: afterwards the old stable pod goes away, and
            # requests sent straight to it (not through the Service) fail by design
            before.update({p: dict(c) for p, c in traffic.codes.items()})
            _stop_traffic(env)
        deps = await _deployments(k, env)
        done = (status.get("stable") or {}).get("hash") == v2 and not (status.get("canary") or {}).get("hash")
        return status if done and set(deps) == {v2} else None

    status = env.eventually(promoted, "the canary promoted and the old stable removed", timeout=120)
    _stop_traffic(env)
    assert status["stable"]["version"] == "2.0.0"
    assert [(h["hash"], h["outcome"]) for h in status["history"]] == [(v1, "Superseded")]
    assert all(c.get(200, 0) > 0 and set(c) == {200} for c in before.values()), before


def test_a_manual_promote_acts_once(cluster: Env) -> None:
    """Issue 9: one `promote` finishes one step, however many reconciles see its annotation."""
    env = cluster
    v2 = env.shared["v2"]
    _set_model(env, "3.0.0")

    async def canary(k: Kube) -> str | None:
        c = ((await _md(k, env)).get("status") or {}).get("canary") or {}
        return c["hash"] if c.get("version") == "3.0.0" and c.get("hash") in await _deployments(k, env) else None

    v3 = env.shared["v3"] = env.eventually(canary, "the 3.0.0 canary Deployment", timeout=60)
    assert _status(env)["stable"]["hash"] == v2
    _canary_at_weight(env, v3, 50, "the 3.0.0 canary Ready at weight 50")
    code, out, err = _cli(env, "promote", NAME)
    assert code == 0, err

    async def stepped(k: Kube) -> dict | None:
        md = await _md(k, env)
        canary = (md.get("status") or {}).get("canary") or {}
        gone = PROMOTE_ANNOTATION not in (md["metadata"].get("annotations") or {})
        return md if canary.get("step") == 1 and gone else None

    env.eventually(stepped, "step 1 (the timed pause) and the annotation removed", timeout=60)
    for _ in range(int(4 * INTERVAL)):  # resyncs every 2 s: none of them acts again
        status = _status(env)
        assert status["canary"]["hash"] == v3 and status["canary"]["step"] == 1, status["canary"]
        time.sleep(1)
    assert [e.get("count", 1) for e in _events(env) if e["reason"] == "StepPromoted"] == [1]

    code, out, err = _cli(env, "promote", NAME, "--full")
    assert code == 0, err

    async def promoted(k: Kube) -> dict | None:
        md = await _md(k, env)
        status = md.get("status") or {}
        gone = PROMOTE_ANNOTATION not in (md["metadata"].get("annotations") or {})
        done = (status.get("stable") or {}).get("hash") == v3 and not (status.get("canary") or {}).get("hash")
        return status if done and gone and set(await _deployments(k, env)) == {v3} else None

    status = env.eventually(promoted, "3.0.0 promoted by the full promote", timeout=120)
    assert [h["version"] for h in status["history"]] == ["1.0.0", "2.0.0"]


def test_a_crash_looping_canary_is_aborted_within_ready_timeout(cluster: Env) -> None:
    """Issue 10: a canary whose server cannot start (its model file is missing) restarts in a
    loop; the rollout is aborted within readyTimeout and the stable keeps serving."""
    env = cluster
    v3 = env.shared["v3"]
    asked = time.monotonic()
    _set_model(env, "4.0.0", "file:///models/missing/model.pt")

    async def aborted(k: Kube) -> dict | None:
        status = (await _md(k, env)).get("status") or {}
        canary = status.get("canary") or {}
        return status if canary.get("hash") and canary.get("hash") != v3 and canary.get("aborted") else None

    status = env.eventually(aborted, "the crash-looping canary aborted", timeout=READY_TIMEOUT + 60)
    took = time.monotonic() - asked
    # readyTimeout counts from when the canary's pods were asked for; allow for the operator's
    # own latency (a resync, a loaded machine) on top
    assert took <= READY_TIMEOUT + 20, took
    canary = status["canary"]
    assert status["stable"]["hash"] == v3 and status["phase"] == "Degraded"
    assert "restart" in canary["abortReason"] or "readyTimeout" in canary["abortReason"], canary["abortReason"]

    async def scaled_down(k: Kube) -> bool:
        deps = await _deployments(k, env)
        return deps.get(canary["hash"], {}).get("spec", {}).get("replicas", 0) == 0 and deps[v3]["spec"]["replicas"] == 2

    env.eventually(scaled_down, "the aborted canary at 0, the stable back at 2", timeout=60)
    stable = env.call(lambda k: _ready_pods(k, env, v3))
    ready = _proxy_call(env, lambda proxy: asyncio.gather(
        *(proxy.get(env.namespace, p["metadata"]["name"], "/v2/health/ready") for p in stable)))
    assert stable and [r.status_code for r in ready] == [200] * len(stable)
    print(f"crash-looping canary aborted {took:.1f} s after it was asked for: {canary['abortReason']}")


def test_an_erroring_canary_is_aborted_within_two_intervals(cluster: Env, request: pytest.FixtureRequest) -> None:
    """Issue 10: the canary answers 500 to a fifth of the requests, the stable to none; two
    failed windows (failureLimit 2) abort it within two intervals of it taking traffic."""
    env = cluster
    root = os.environ.get("MODELSHIP_E2E_IMAGE_ROOT")
    if not root:
        pytest.skip("set MODELSHIP_E2E_IMAGE_ROOT to the pods' image root to bake the flaky model into it")
    flaky = request.getfixturevalue("flaky_model_dir")
    target = Path(root) / "models" / "digits-flaky"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("model.pt", "signature.json"):
        shutil.copy(flaky / name, target / name)
    v3 = env.shared["v3"]
    _set_model(env, "5.0.0", "file:///models/digits-flaky/model.pt")

    async def canary(k: Kube) -> str | None:
        status = (await _md(k, env)).get("status") or {}
        hash_ = (status.get("canary") or {}).get("hash")
        return hash_ if hash_ and not status["canary"].get("aborted") and hash_ != v3 else None

    v5 = env.eventually(canary, "the flaky canary started", timeout=60)
    _canary_at_weight(env, v5, 50, "the flaky canary Ready at weight 50")
    pods = {h: [p["metadata"]["name"] for p in env.call(lambda k, h=h: _ready_pods(k, env, h))] for h in (v3, v5)}
    traffic = _start_traffic(env, pods[v3] + pods[v5], unusual_every=5)
    took_traffic = time.monotonic()

    async def aborted(k: Kube) -> dict | None:
        status = (await _md(k, env)).get("status") or {}
        c = status.get("canary") or {}
        return status if c.get("hash") == v5 and c.get("aborted") else None

    status = env.eventually(aborted, "the erroring canary aborted", timeout=6 * INTERVAL + 60)
    took = time.monotonic() - took_traffic
    _stop_traffic(env)
    analysis = status["canary"]["analysis"]
    assert analysis["verdict"] == "Fail" and analysis["failures"] >= 2 and "error rate" in analysis["message"]
    assert status["stable"]["hash"] == v3
    # two intervals of traffic, plus the operator's reaction (a reconcile on a loaded machine)
    assert took <= 2 * INTERVAL + 10, took
    print(f"erroring canary aborted {took:.1f} s after it took traffic (interval {INTERVAL:g} s): "
          f"{analysis['message']}")
    stable_codes = [traffic.codes[p] for p in pods[v3]]
    canary_codes = [traffic.codes[p] for p in pods[v5]]
    assert all(set(c) == {200} for c in stable_codes), stable_codes
    assert any(c.get(500, 0) > 0 for c in canary_codes), canary_codes


def test_operator_log_has_no_errors(cluster: Env) -> None:
    bad = [line for line in cluster.log_lines() if line["level"] in ("error", "critical") or "exception" in line]
    assert bad == []
