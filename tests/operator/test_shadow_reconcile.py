"""A [shadow, setWeight 50] rollout through reconcile() on the in-memory kube double.

The stable's pods are small loopback servers that keep the shadow config pushed to them
(GET/PUT /shadow, as the server does) and expose the server's modelship_shadow_* and request
series, which the test moves as mirroring would; the canary's pod exposes its request counter
(the mirrored requests are its traffic). The double assigns Services a clusterIP like the real
API server, so the pushed URL is the canary role Service's address. The real server's side of
the same protocol is tested in test_shadow_push.py.

Covered: the shadow step pushes the canary's address to every stable pod and selects only the
stable for clients; the analysis reads the stable pods' comparison into status; an agreeing
canary walks on to 50% and is promoted with every stable pod set back to percent 0; a
disagreeing one is aborted (Event, condition, abortReason naming the value and the limit) and the
stable stops mirroring; a stable pod that restarts is configured again; the stable serves
throughout.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from modelship_operator.reconcile import ReconcileResult
from test_reconcile import NS
from test_reconcile_rollout import INTERVAL_S, REVISION, MetricsServer, Rollout, rollout_body

NAME = "digits"


class StablePod:
    """A stable pod's admin surface: /shadow (the pushed config) and /metrics."""

    def __init__(self) -> None:
        self.config: dict[str, Any] = {"url": None, "percent": 0, "revision": None}
        self.puts: list[dict] = []
        self.registry = CollectorRegistry()
        self.served = Counter("modelship_requests", "requests", ["model", "version", "protocol", "code"],
                              registry=self.registry)
        self.mirrored = Counter("modelship_shadow_requests", "m", ["revision", "outcome"], registry=self.registry)
        self.rows = Counter("modelship_shadow_rows", "r", ["revision"], registry=self.registry)
        self.disagreements = Counter("modelship_shadow_disagreements", "d", ["revision"], registry=self.registry)
        self.diff_sum = Gauge("modelship_shadow_abs_diff_sum", "s", ["revision"], registry=self.registry)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/metrics":
                    return self._send(200, generate_latest(owner.registry), "text/plain; version=0.0.4")
                self._send(200, json.dumps({**owner.config, "queued": 0, "maxQueue": 256}).encode())

            def do_PUT(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.puts.append(body)
                owner.config = ({"url": body["url"], "percent": body["percent"], "revision": body.get("revision")}
                                if body.get("percent") else {"url": None, "percent": 0, "revision": None})
                self._send(200, json.dumps(owner.config).encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def serve_and_mirror(self, n: int, disagree: int, canary: MetricsServer) -> None:
        """Serve n client requests and, when configured, mirror them (one row each) to the canary."""
        self.served.labels("digits", "1.0.0", "v2", "200").inc(n)
        revision, percent = self.config["revision"], self.config["percent"]
        if not percent:
            return
        mirrored = int(n * percent // 100)
        canary.serve(ok=mirrored)
        self.mirrored.labels(revision, "compared").inc(mirrored)
        self.rows.labels(revision).inc(mirrored)
        self.disagreements.labels(revision).inc(min(disagree, mirrored))
        self.diff_sum.labels(revision).inc(0.01 * mirrored)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ShadowRollout(Rollout):
    """Rollout whose pods report Ready (the push configures ready stable pods)."""

    def sync_pods(self) -> None:
        super().sync_pods()
        for pod in self.kube.store.list(self.pod_type, NS):
            status = dict(pod.get("status") or {})
            if not status.get("conditions"):
                status["conditions"] = [{"type": "Ready", "status": "True"}]
                self.kube.store.set_status(self.pod_type, NS, pod["metadata"]["name"], status)

    def status(self) -> dict:
        return self.md(NAME)["status"]

    def service(self, name: str) -> dict | None:
        return self.kube.store.find(self.kube.store.type_for("v1", "Service"), NS, name)


@pytest.fixture
def world() -> Iterator[tuple[ShadowRollout, list[StablePod], MetricsServer]]:
    stable = [StablePod(), StablePod()]
    canary = MetricsServer()
    try:
        yield ShadowRollout(), stable, canary
    finally:
        for s in stable:
            s.close()
        canary.close()


def start_shadow(r: ShadowRollout, stable: list[StablePod], canary: MetricsServer) -> tuple[str, str]:
    body = rollout_body(2, maxDisagreement=0.1, minPassedWindows=1)
    body["spec"]["rollout"]["steps"] = [{"shadow": {"percent": 50, "duration": f"{INTERVAL_S}s"}}, {"setWeight": 50}]
    r.create(body)
    r.reconcile()
    v1 = r.by_role()["stable"]["metadata"]["labels"][REVISION]
    r.ports[v1] = [s.port for s in stable]
    r.sync_pods()
    assert r.reconcile().phase == "Healthy"
    r.patch_spec(NAME, {"model": {"version": "1.1.0"}})
    r.reconcile()
    v2 = r.by_role()["canary"]["metadata"]["labels"][REVISION]
    r.ports[v2] = [canary.port]
    r.sync_pods()
    r.reconcile(seconds=1)
    return v1, v2


def check_stable_serves(r: ShadowRollout, v1: str) -> None:
    """Clients reach the stable: the Service selects its pods, which keep running."""
    selector = r.service(NAME)["spec"]["selector"]  # type: ignore[index]
    assert all(selector.get(k) == v for k, v in {"app.kubernetes.io/instance": NAME}.items())
    assert selector.get(REVISION) in (None, v1)
    stable = next(d for d in r.deployments() if d["metadata"]["labels"][REVISION] == v1)
    assert stable["spec"]["replicas"] >= 1


def window(r: ShadowRollout, stable: list[StablePod], canary: MetricsServer, disagree: int) -> ReconcileResult:
    for s in stable:
        s.serve_and_mirror(40, disagree, canary)
    result = r.reconcile(seconds=INTERVAL_S)
    r.sync_pods()
    return result


def test_an_agreeing_shadow_canary_is_promoted_and_every_stable_pod_stops_mirroring(world: Any) -> None:
    r, stable, canary = world
    v1, v2 = start_shadow(r, stable, canary)
    status = r.status()
    assert status["canary"]["shadowPercent"] == 50 and status["canary"]["weight"] == 0
    # one shadow pod beside the stable's two; clients reach the stable alone
    replicas = {d["metadata"]["labels"]["modelship.dev/role"]: d["spec"]["replicas"] for d in r.deployments()}
    assert replicas == {"stable": 2, "canary": 1}
    assert r.service(NAME)["spec"]["selector"][REVISION] == v1  # type: ignore[index]
    role = r.service(f"{NAME}-canary")
    assert role is not None and role["spec"]["selector"][REVISION] == v2
    address = f"http://{role['spec']['clusterIP']}:8080"
    assert [s.config for s in stable] == [{"url": address, "percent": 50, "revision": v2}] * 2
    events = [e["message"] for e in r.kube.events_for(NAME) if e["reason"] == "ShadowConfigured"]
    assert events == [f"2 stable pod(s) of revision {v1} copy 50% of their requests to {address} (canary {v2})"]
    # the next reconcile reads each pod's config and writes nothing more
    result = r.reconcile(seconds=1)
    assert [len(s.puts) for s in stable] == [1, 1] and not result.events
    # a stable pod restarts (its runtime config is gone): configured again at the next pass
    stable[1].config = {"url": None, "percent": 0, "revision": None}
    r.reconcile(seconds=1)
    assert stable[1].config["percent"] == 50 and len(stable[1].puts) == 2
    check_stable_serves(r, v1)

    # a window of mirrored requests that agree: passed, the step's time is up: on to 50%
    result = window(r, stable, canary, disagree=1)
    assert result.analysis is not None and result.analysis.result == "pass", result.analysis
    status = r.status()
    analysis = status["canary"]["analysis"]
    assert analysis["compared"] == 40 and analysis["disagreement"] == 0.05 and analysis["meanAbsDiff"] == 0.01
    assert status["canary"]["step"] == 1 and "shadowPercent" not in status["canary"]
    # the shadow is over: both stable pods were set to percent 0 in that same reconcile
    assert [s.config["percent"] for s in stable] == [0, 0] and [s.puts[-1] for s in stable] == [{"percent": 0}] * 2
    assert f"2 stable pod(s) of revision {v1} stopped mirroring" in [e["message"] for e in r.kube.events_for(NAME)]
    assert r.service(f"{NAME}-canary") is None and REVISION not in r.service(NAME)["spec"]["selector"]  # type: ignore[index]
    check_stable_serves(r, v1)

    # at 50% the canary serves clients itself; a passing window promotes it
    for _ in range(3):
        r.sync_pods()
        r.reconcile(seconds=1)
    canary.serve(ok=40)
    r.reconcile(seconds=INTERVAL_S)
    for _ in range(4):
        r.sync_pods()
        r.reconcile(seconds=1)
    status = r.status()
    assert "canary" not in status and status["stable"]["hash"] == v2, status.get("canary")
    reasons = [e["reason"] for e in r.kube.events_for(NAME)]
    assert "Promoted" in reasons
    assert [s.config["percent"] for s in stable] == [0, 0]


def test_a_disagreeing_shadow_canary_is_aborted_and_the_stable_stops_mirroring(world: Any) -> None:
    r, stable, canary = world
    v1, v2 = start_shadow(r, stable, canary)
    assert [s.config["percent"] for s in stable] == [50, 50]
    for _ in range(2):  # failureLimit 2
        result = window(r, stable, canary, disagree=10)  # 10 of 20 mirrored rows per pod
        assert result.analysis is not None and result.analysis.result == "fail"
        check_stable_serves(r, v1)
    status = r.status()
    canary_status = status["canary"]
    assert canary_status["aborted"] and status["phase"] == "Degraded"
    assert "disagreement 50.00% above maxDisagreement 10.00%" in canary_status["abortReason"]
    assert canary_status["analysis"]["disagreement"] == 0.5 and canary_status["analysis"]["compared"] == 40
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and "disagreement 50.00% above maxDisagreement 10.00%" in degraded["message"]
    warnings = [e["message"] for e in r.kube.events_for(NAME) if e["type"] == "Warning"]
    assert any("disagreement 50.00% above maxDisagreement 10.00%" in m for m in warnings), warnings
    # the stable stops mirroring; the canary's pods go; the stable keeps both pods for clients
    assert [s.config["percent"] for s in stable] == [0, 0]
    replicas = {d["metadata"]["labels"]["modelship.dev/role"]: d["spec"]["replicas"] for d in r.deployments()}
    assert replicas == {"stable": 2, "canary": 0}
    assert r.service(NAME)["spec"]["selector"][REVISION] == v1  # type: ignore[index]
    # later reconciles keep it off (a restarted pod is off anyway; nothing turns it on again)
    r.reconcile(seconds=INTERVAL_S)
    assert [s.config["percent"] for s in stable] == [0, 0]


def test_an_unreachable_stable_pod_is_retried_and_makes_the_window_inconclusive(world: Any) -> None:
    r, stable, canary = world
    v1, v2 = start_shadow(r, stable, canary)
    for s in stable:  # the stable's pods cannot be reached any more (and so not scraped either)
        s.close()
    result = r.reconcile(seconds=1)
    assert result.requeue_after is not None and result.requeue_after <= 10  # retried soon
    assert result.error is None and result.shadow and result.shadow[0].errors
    result = r.reconcile(seconds=INTERVAL_S)
    assert result.analysis is not None and result.analysis.result == "inconclusive"
    message = r.status()["canary"]["analysis"]["message"]
    assert message.startswith("no stable pod could be configured to mirror to the canary: ")
    assert "ConnectError" in message
