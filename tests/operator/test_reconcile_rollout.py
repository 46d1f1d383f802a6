"""The I/O side of a canary rollout in reconcile(), against the in-memory kube double.

Pods in the double point (status.podIP 127.0.0.1, container port `http`) at small real HTTP
servers on loopback that expose metrics written by `prometheus_client` exactly as the inference
server names them; the test moves their counters. Covered: analysis baseline then verdict into
status (and its Event), a pod that cannot be scraped, the restart baseline, the PromQL path when
a Prometheus address is set, and manual action annotations removed after the plan acted.
"""
from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from modelship_operator.canary_metrics import AnalysisMemory, metrics_url
from modelship_operator.planning.children import METRICS_PORT_NAME
from modelship_operator.planning import ABORT_ANNOTATION, PROMOTE_ANNOTATION
from modelship_operator.reconcile import Discovery, ReconcileResult, reconcile
from modelship_operator.settings import Settings
from test_reconcile import NS, SETTINGS, Cluster, example

INSTANCE, REVISION = "app.kubernetes.io/instance", "modelship.dev/revision"
INTERVAL_S = 10  # Cluster.reconcile advances the clock 5 s per call


class MetricsServer:
    """A real HTTP /metrics endpoint with the server's request counter and latency histogram."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["model", "version", "protocol"]
        self.requests = Counter("modelship_requests", "requests", [*labels, "code"], registry=self.registry)
        self.latency = Histogram("modelship_request_duration_seconds", "latency", labels, registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
        self.hits = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                owner.hits += 1
                body = generate_latest(owner.registry)
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def serve(self, ok: int, errors: int = 0, seconds: float = 0.02) -> None:
        """Record requests as the inference server would have served them."""
        for code, n in (("200", ok), ("500", errors)):
            for _ in range(n):
                self.requests.labels("digits", "x", "v2", code).inc()
                self.latency.labels("digits", "x", "v2").observe(seconds)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class PrometheusDouble:
    """Answers /api/v1/query like Prometheus, from canned vectors; records the queries."""

    def __init__(self, requests_by_code: dict[str, float], p99_seconds: float) -> None:
        self.queries: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                query = form["query"][0]
                owner.queries.append(query)
                if query.startswith("sum by (code)"):
                    result = [{"metric": {"code": c}, "value": [0, str(v)]} for c, v in requests_by_code.items()]
                else:
                    result = [{"metric": {}, "value": [0, str(p99_seconds)]}]
                body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Rollout(Cluster):
    """Cluster plus pods (as the kubelet would report them) and one analysis memory."""

    def __init__(self, settings: Settings = SETTINGS) -> None:
        super().__init__()
        self.settings = settings
        self.memory = AnalysisMemory()
        self.pod_type = self.kube.store.type_for("v1", "Pod")
        self.ports: dict[str, list[int]] = {}  # revision hash -> one port per pod

    def reconcile(self, name: str = "digits", seconds: float = 5) -> ReconcileResult:
        self.now += timedelta(seconds=seconds)
        return asyncio.run(reconcile(self.md(name), self.kube, self.settings, self.now,
                                     discovery=Discovery(ttl=0), memory=self.memory))

    def sync_pods(self) -> None:
        """Pods follow the Deployments' replicas; Deployments report them ready."""
        store = self.kube.store
        for dep in self.deployments():
            rev = dep["metadata"]["labels"][REVISION]
            have = store.list(self.pod_type, NS, f"{REVISION}={rev}")
            ports = self.ports.get(rev, [])
            for extra in have[int(dep["spec"]["replicas"]):]:
                store.delete(self.pod_type, NS, extra["metadata"]["name"])
            for i in range(len(have), int(dep["spec"]["replicas"])):
                port = ports[i % len(ports)] if ports else 1
                labels = dict(dep["spec"]["template"]["metadata"]["labels"])
                pod = store.create(self.pod_type, NS, {
                    "metadata": {"name": f"{dep['metadata']['name']}-{i}", "labels": labels},
                    # the template's ports, the admin one (where /metrics is) at this pod's loopback server
                    "spec": {"containers": [{"name": "server", "ports": [
                        dict(p, containerPort=port) if p["name"] == METRICS_PORT_NAME else p
                        for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]]}]}})
                store.set_status(self.pod_type, NS, pod["metadata"]["name"], {"phase": "Running", "podIP": "127.0.0.1"})
            self.available(dep["metadata"]["name"])

    def by_role(self) -> dict[str, dict]:
        return {d["metadata"]["labels"]["modelship.dev/role"]: d for d in self.deployments()}


def rollout_body(replicas: int = 2, **analysis: Any) -> dict:
    body = example("quickstart-cpu.yaml")
    body["spec"]["replicas"] = replicas  # at 50%: half of them canary pods
    body["spec"]["rollout"] = {"steps": [{"setWeight": 50}, {"pause": {}}],
                               "analysis": {"interval": f"{INTERVAL_S}s", "maxErrorRate": 0.05, "minRequests": 10,
                                            "failureLimit": 2, **analysis}}
    return body


@pytest.fixture
def servers() -> Iterator[dict[str, MetricsServer]]:
    started = {role: MetricsServer() for role in ("stable", "canary")}
    try:
        yield started
    finally:
        for s in started.values():
            s.close()


def start_canary(r: Rollout, servers: dict[str, MetricsServer], canary_ports: list[int] | None = None,
                 replicas: int = 2) -> dict:
    """Stable 1.0.0 healthy, then 1.1.0 as a canary at 50% whose analysis window has started.

    Each canary pod gets its own port from `canary_ports` (default: one pod, the canary server).
    """
    r.create(rollout_body(replicas))
    r.reconcile()
    stable = r.by_role()["stable"]["metadata"]["labels"][REVISION]
    r.ports[stable] = [servers["stable"].port]
    r.sync_pods()
    assert r.reconcile().phase == "Healthy"
    r.patch_spec("digits", {"model": {"version": "1.1.0"}})
    r.reconcile()
    canary = r.by_role()["canary"]["metadata"]["labels"][REVISION]
    r.ports[canary] = canary_ports or [servers["canary"].port]
    for _ in range(3):  # pods ready -> weight 50 -> the analysis window starts
        r.sync_pods()
        r.reconcile(seconds=1)
        if (r.md("digits")["status"].get("canary") or {}).get("weight") == 50:
            break
    r.sync_pods()
    status = r.md("digits")["status"]
    # step 1 of 2 (setWeight 50) holds until a window at 50% passed
    assert status["canary"]["weight"] == 50 and status["canary"]["step"] == 0, status
    assert (status["canary"].get("analysis") or {}).get("lastTime"), status["canary"]
    return status


def test_metrics_url_follows_the_pod_spec() -> None:
    pod = {"metadata": {"name": "p"}, "status": {"phase": "Running", "podIP": "10.1.2.3"},
           "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080},
                                              {"name": "admin", "containerPort": 9091}]}]}}
    assert metrics_url(pod) == "http://10.1.2.3:9091/metrics"  # the admin port, never inference
    # A pod rendered before the admin port existed serves /metrics on its only port.
    assert metrics_url({**pod, "spec": {"containers": [{}]}}) == "http://10.1.2.3:8080/metrics"
    assert metrics_url({**pod, "status": {"phase": "Running", "podIP": "fd00::7"}}) == "http://[fd00::7]:9091/metrics"
    assert metrics_url({**pod, "status": {"phase": "Pending"}}) is None
    assert metrics_url({**pod, "metadata": {"name": "p", "deletionTimestamp": "2026-01-01T00:00:00Z"}}) is None


def test_failing_canary_verdict_reaches_status_and_events(servers: dict[str, MetricsServer]) -> None:
    r = Rollout()
    start_canary(r, servers)
    assert servers["canary"].hits >= 1  # the window's baseline was scraped when it started
    servers["canary"].serve(ok=90, errors=10)
    servers["stable"].serve(ok=100)
    first = r.reconcile()  # 5 s into a 10 s window: nothing measured
    assert first.analysis is None and 0 < first.requeue_after <= INTERVAL_S
    result = r.reconcile()
    assert result.analysis is not None and result.analysis.result == "fail"
    analysis = r.md("digits")["status"]["canary"]["analysis"]
    assert analysis["verdict"] == "Fail" and analysis["failures"] == 1
    assert analysis["requests"] == 100 and analysis["errorRate"] == pytest.approx(0.1)
    assert "error rate 10.00% above 5.00%" in analysis["message"]
    assert "stable: 100 requests, error rate 0.00%" in analysis["message"]
    events = [(e["type"], e["reason"]) for e in r.kube.events_for("digits")]
    assert ("Warning", "AnalysisFailed") in events
    # the next window starts from this scrape: a clean interval passes
    servers["canary"].serve(ok=50)
    r.reconcile(seconds=INTERVAL_S)
    analysis = r.md("digits")["status"]["canary"]["analysis"]
    assert analysis["verdict"] == "Pass" and analysis["requests"] == 50 and analysis["failures"] == 1


def test_too_few_requests_are_inconclusive_and_do_not_count(servers: dict[str, MetricsServer]) -> None:
    r = Rollout()
    start_canary(r, servers)
    servers["canary"].serve(ok=3, errors=3)
    r.reconcile(seconds=INTERVAL_S)
    analysis = r.md("digits")["status"]["canary"]["analysis"]
    assert analysis["verdict"] == "Inconclusive" and analysis["failures"] == 0
    assert "only 6 requests in the window, 10 needed" in analysis["message"]


def test_a_pod_that_cannot_be_scraped_does_not_break_the_reconcile(servers: dict[str, MetricsServer]) -> None:
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    r = Rollout()
    start_canary(r, servers, canary_ports=[servers["canary"].port, closed], replicas=4)
    servers["canary"].serve(ok=40)
    result = r.reconcile(seconds=INTERVAL_S)
    assert result.error is None and result.analysis is not None
    analysis = r.md("digits")["status"]["canary"]["analysis"]
    # two canary pods: one answered (its 40 requests count), one refused the connection
    assert analysis["verdict"] == "Pass" and analysis["requests"] == 40
    assert "1 canary pod(s) not scraped" in analysis["message"] and "ConnectError" in analysis["message"]


def test_no_scrapeable_canary_pod_is_inconclusive(servers: dict[str, MetricsServer]) -> None:
    r = Rollout()
    start_canary(r, servers)
    servers["canary"].close()
    result = r.reconcile(seconds=INTERVAL_S)
    assert result.analysis is not None and result.analysis.result == "inconclusive"
    analysis = r.md("digits")["status"]["canary"]["analysis"]
    assert analysis["failures"] == 0 and "no canary pod could be scraped" in analysis["message"]


def test_after_a_restart_the_first_window_is_only_a_baseline(servers: dict[str, MetricsServer]) -> None:
    r = Rollout()
    start_canary(r, servers)
    r.memory = AnalysisMemory()  # a new operator process: baselines are gone, status is not
    servers["canary"].serve(ok=90, errors=10)
    r.reconcile(seconds=INTERVAL_S)
    analysis = r.md("digits")["status"]["canary"]["analysis"]
    assert analysis["verdict"] == "Inconclusive" and "operator restarted" in analysis["message"]
    servers["canary"].serve(ok=45, errors=5)
    r.reconcile(seconds=INTERVAL_S)
    analysis = r.md("digits")["status"]["canary"]["analysis"]
    assert analysis["verdict"] == "Fail" and analysis["requests"] == 50  # only the second window


def test_prometheus_address_selects_the_promql_path(servers: dict[str, MetricsServer]) -> None:
    prometheus = PrometheusDouble({"200": 180.0, "503": 20.0}, p99_seconds=0.12)
    try:
        r = Rollout(Settings(server_image=SETTINGS.server_image, prometheus_url=prometheus.url))
        status = start_canary(r, servers)
        hits = servers["canary"].hits + servers["stable"].hits
        assert prometheus.queries == []  # the window only just started
        r.reconcile(seconds=INTERVAL_S)
        analysis = r.md("digits")["status"]["canary"]["analysis"]
        assert analysis["verdict"] == "Fail" and analysis["requests"] == 200
        assert analysis["errorRate"] == pytest.approx(0.1) and analysis["latencyP99Ms"] == pytest.approx(120.0)
        # canary and stable, two queries each, selected by the labels the operator controls (the
        # ServiceMonitor copies them from the pods), never by pod name; over four scrape intervals
        canary_hash, stable_hash = status["canary"]["hash"], status["stable"]["hash"]
        assert len(prometheus.queries) == 4
        for revision in (canary_hash, stable_hash):
            assert any(f'namespace="{NS}",modeldeployment="digits",revision="{revision}"' in q
                       for q in prometheus.queries)
        assert not any("pod" in q for q in prometheus.queries)
        assert all("[120s]" in q for q in prometheus.queries)  # 4 x the default 30 s scrape > interval
        assert servers["canary"].hits + servers["stable"].hits == hits == 0  # no pod was scraped
    finally:
        prometheus.close()


def test_unreachable_prometheus_is_inconclusive(servers: dict[str, MetricsServer]) -> None:
    r = Rollout(Settings(server_image=SETTINGS.server_image, prometheus_url="http://127.0.0.1:9"))
    start_canary(r, servers)
    result = r.reconcile(seconds=INTERVAL_S)
    assert result.error is None
    analysis = r.md("digits")["status"]["canary"]["analysis"]
    assert analysis["verdict"] == "Inconclusive" and "metrics unavailable" in analysis["message"]


def test_action_annotations_are_removed_once_acted_on(servers: dict[str, MetricsServer]) -> None:
    r = Rollout()
    start_canary(r, servers)
    store = r.kube.store
    store.patch(r.md_type, NS, "digits", "application/merge-patch+json",
                {"metadata": {"annotations": {PROMOTE_ANNOTATION: "step", "team": "fraud"}}})
    generation = r.md("digits")["metadata"]["generation"]
    mark = len(r.kube.writes)
    result = r.reconcile()
    assert result.cleared == [PROMOTE_ANNOTATION]
    md = r.md("digits")
    assert md["metadata"]["annotations"] == {"team": "fraud"}  # only the consumed one
    assert md["metadata"]["generation"] == generation  # spec untouched
    cleared = [w for w in r.kube.writes_since(mark) if w.verb == "patch"]
    path = "/metadata/annotations/modelship.dev~1promote"
    assert [w.body for w in cleared] == [[{"op": "test", "path": path, "value": "step"},
                                          {"op": "remove", "path": path}]]
    # the status was written before the annotation went away: the promote is not lost
    kinds = [w.verb for w in r.kube.writes_since(mark)]
    assert kinds.index("patch_status") < kinds.index("patch")
    # step 1 of [setWeight 50, pause {}] is completed by hand: on to the manual pause
    canary = md["status"]["canary"]
    assert canary["hash"] and canary["step"] == 1 and canary["requestedWeight"] == 50
    # the same for abort; a reconcile without annotations removes nothing
    store.patch(r.md_type, NS, "digits", "application/merge-patch+json",
                {"metadata": {"annotations": {ABORT_ANNOTATION: "now"}}})
    r.reconcile()
    assert ABORT_ANNOTATION not in (r.md("digits")["metadata"].get("annotations") or {})
    assert r.reconcile().cleared == []


def test_an_action_set_anew_meanwhile_is_kept_for_the_next_reconcile(servers: dict[str, MetricsServer]) -> None:
    r = Rollout()
    start_canary(r, servers)
    store = r.kube.store
    store.patch(r.md_type, NS, "digits", "application/merge-patch+json",
                {"metadata": {"annotations": {PROMOTE_ANNOTATION: "step"}}})
    body = r.md("digits")  # what the reconcile read ...
    store.patch(r.md_type, NS, "digits", "application/merge-patch+json",  # ... then the user asks for more
                {"metadata": {"annotations": {PROMOTE_ANNOTATION: "full"}}})
    r.now += timedelta(seconds=1)
    result = asyncio.run(reconcile(body, r.kube, r.settings, r.now, discovery=Discovery(ttl=0), memory=r.memory))
    assert result.cleared == [] and result.error is None
    assert r.md("digits")["metadata"]["annotations"][PROMOTE_ANNOTATION] == "full"
    assert r.reconcile().cleared == [PROMOTE_ANNOTATION]
    assert PROMOTE_ANNOTATION not in (r.md("digits")["metadata"].get("annotations") or {})


def test_wakeups_reconcile_when_due_one_per_object_and_cancellable() -> None:
    from modelship_operator.kube import Connection
    from modelship_operator.runtime import Runtime

    async def go() -> None:
        r = Rollout()
        r.create(rollout_body())
        scheduler = Runtime(settings=SETTINGS, connection=Connection(server="http://127.0.0.1:9"),
                            kube=r.kube, clock=lambda: r.now).scheduler  # type: ignore[arg-type]
        scheduler.schedule(NS, "digits", 0.0)  # at least MIN_DELAY_S later
        first = scheduler.wakeups[(NS, "digits")]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not r.kube.writes and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert [w.kind for w in r.kube.writes if w.verb == "apply"], "the wake-up reconciled the object"
        assert first.done() and not first.cancelled()
        # a newer schedule replaces the older one: one task per object, the old one cancelled
        scheduler.schedule(NS, "digits", 60)
        older = scheduler.wakeups[(NS, "digits")]
        scheduler.schedule(NS, "digits", 60)
        await asyncio.sleep(0)
        assert len(scheduler.wakeups) == 1 and older.cancelled()
        # nothing timed (None) or a deleted object: no wake-up left
        scheduler.schedule(NS, "digits", None)
        assert scheduler.wakeups == {}
        scheduler.schedule(NS, "digits", 0.0)
        r.kube.store.delete(r.md_type, NS, "digits")
        deadline = loop.time() + 5
        while scheduler.wakeups and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert scheduler.wakeups == {}
        await scheduler.stop()

    asyncio.run(go())
