"""Pushing the shadow mirror config to the stable's pods (shadow_config.py) over real HTTP.

Two halves:

* the protocol, against small loopback pods that keep a config the way the server does
  (GET/PUT /shadow) and count what they were sent: PUT only where the config differs, a
  restarted pod configured again, pods that are not ready, unreachable or silent, and the
  level-triggered "off" that `sync` retries until every pod is seen off;
* the whole loop against REAL `python -m modelship_server` processes: a stable with its admin
  port, told by `push` to mirror to a canary running the same model (agrees) or the example's
  `bad` variant (its classes permuted: disagrees on every row); its /metrics, parsed by analysis.parse_metrics and judged,
  pass and fail accordingly; off stops the mirror. The same judged through a real Prometheus
  that scrapes them with the ServiceMonitor's relabelings (canary_metrics.measure_prometheus: the
  server's `revision` label arrives as `exported_revision`).
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelship_operator import analysis as a
from modelship_operator import shadow_config as sc
from modelship_operator.canary_metrics import AnalysisMemory
from modelship_operator.metrics_source import scrape
from modelship_operator.spec import AnalysisSpec
from test_metrics_source import _free_port, _stop, _wait_for

ROOT = Path(__file__).resolve().parents[2]

CANARY_URL, CANARY_HASH = "http://10.96.0.7:8080", "c4n4ry0001"
ON = sc.MirrorConfig(CANARY_URL, 20.0, CANARY_HASH)


class FakeStablePod:
    """A pod's admin surface that keeps a shadow config as the server does; counts requests."""

    def __init__(self, status: int = 200, has_shadow: bool = True) -> None:
        self.config: dict[str, Any] = {"url": None, "percent": 0, "revision": None}
        self.gets = self.puts = 0
        self.status = status
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                owner.gets += 1
                if not has_shadow:
                    return self._answer(404, {"error": "not found"})
                self._answer(owner.status, {**owner.config, "queued": 0, "maxQueue": 256})

            def do_PUT(self) -> None:  # noqa: N802
                owner.puts += 1
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if owner.status != 200:
                    return self._answer(owner.status, {"error": "broken"})
                owner.config = {"url": None, "revision": None, **body} if body.get("percent") else \
                    {"url": None, "percent": 0, "revision": None}
                self._answer(200, {**owner.config, "queued": 0, "maxQueue": 256})

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def restart(self) -> None:
        """The container restarted: the runtime config is gone."""
        self.config = {"url": None, "percent": 0, "revision": None}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def pod(name: str, port: int, ready: bool = True, ip: str = "127.0.0.1", revision: str = "st4b1e") -> dict:
    """A pod as the API server returns it: the admin port named as the Deployment template does."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml",
                     "labels": {"app.kubernetes.io/instance": "fraud", "modelship.dev/revision": revision}},
        "spec": {"containers": [{"name": "server", "ports": [{"name": "http", "containerPort": 1},
                                                             {"name": "admin", "containerPort": port}]}]},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


@pytest.fixture()
def pods() -> Iterator[list[FakeStablePod]]:
    made = [FakeStablePod() for _ in range(3)]
    yield made
    for p in made:
        p.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_push_puts_only_where_the_config_differs_and_again_after_a_restart(pods: list[FakeStablePod]) -> None:
    listed = [pod(f"s-{i}", p.port) for i, p in enumerate(pods)]
    report = run(sc.push(listed, "st4b1e", ON))
    assert report.complete and sorted(report.changed) == ["s-0", "s-1", "s-2"]
    assert all(p.config == {"url": CANARY_URL, "percent": 20.0, "revision": CANARY_HASH} for p in pods)
    # the next pass reads each pod and writes nothing
    report = run(sc.push(listed, "st4b1e", ON))
    assert report.complete and report.changed == [] and sorted(report.held) == ["s-0", "s-1", "s-2"]
    assert [p.puts for p in pods] == [1, 1, 1] and [p.gets for p in pods] == [2, 2, 2]
    # a restarted pod lost its config: it gets it at the next pass, the others are left alone
    pods[1].restart()
    report = run(sc.push(listed, "st4b1e", ON))
    assert report.changed == ["s-1"] and [p.puts for p in pods] == [1, 2, 1]
    # another percent or canary is a different config
    report = run(sc.push(listed, "st4b1e", sc.MirrorConfig(CANARY_URL, 50.0, CANARY_HASH)))
    assert len(report.changed) == 3 and pods[0].config["percent"] == 50.0
    # off: percent 0 where it is on, nothing where it is off already
    pods[2].restart()
    report = run(sc.push(listed, "st4b1e", sc.OFF))
    assert sorted(report.changed) == ["s-0", "s-1"] and report.complete
    assert all(p.config["percent"] == 0 for p in pods)


def test_unready_unreachable_and_silent_pods_never_block_the_others(pods: list[FakeStablePod]) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused_port = closed.getsockname()[1]
    silent = socket.socket()  # accepts connections (backlog) but never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        listed = [pod("s-0", pods[0].port), pod("s-1", pods[1].port, ready=False), pod("s-2", refused_port),
                  pod("s-3", silent.getsockname()[1]), {**pod("s-4", pods[2].port), "status": {"phase": "Pending"}}]
        started = time.monotonic()
        report = run(sc.push(listed, "st4b1e", ON, timeout=1.0))
        took = time.monotonic() - started
    finally:
        silent.close()
    assert report.held == ["s-0"] and report.waiting == 1 and not report.complete
    assert [e.split(":")[0] for e in report.errors] == ["s-2", "s-3"]
    assert "ConnectError" in report.errors[0] and "Timeout" in report.errors[1]
    assert took < 2.5  # the pods are tried at once: one timeout, not one per pod
    assert pods[1].puts == 0 and pods[2].gets == 0  # not ready: nothing to mirror; no IP: nothing to ask


def test_a_pod_that_refuses_the_config_is_reported(pods: list[FakeStablePod]) -> None:
    pods[0].status = 500
    report = run(sc.push([pod("s-0", pods[0].port)], "st4b1e", ON))
    assert report.errors == ["s-0: GET /shadow: HTTP 500"] and report.held == []
    old = FakeStablePod(has_shadow=False)  # an image from before shadow support
    try:
        assert run(sc.push([pod("s-9", old.port)], "st4b1e", sc.OFF)).complete  # mirrors nothing: off
        refused = run(sc.push([pod("s-9", old.port)], "st4b1e", ON))
        assert refused.errors == ["s-9: the server has no /shadow (an older image?)"]
    finally:
        old.close()


class PodsAndServices:
    """What `sync` reads through kube: pods by revision label, the Services the object controls."""

    def __init__(self, pods_by_revision: dict[str, list[dict]], cluster_ip: str | None = "10.96.0.7") -> None:
        self.pods_by_revision = pods_by_revision
        self.cluster_ip = cluster_ip

    async def list(self, api_version: str, kind: str, namespace: str | None = None,
                   label_selector: Any = None) -> list[dict]:
        assert kind == "Pod" and label_selector["app.kubernetes.io/instance"] == "fraud"
        return self.pods_by_revision.get(label_selector["modelship.dev/revision"], [])

    async def owned(self, api_version: str, kind: str, namespace: str, owner_uid: str,
                    label_selector: Any = None) -> list[dict]:
        assert kind == "Service" and owner_uid == "u1" and label_selector == {"app.kubernetes.io/instance": "fraud"}
        return [{"metadata": {"name": "fraud"}, "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 8080}]}},
                {"metadata": {"name": "fraud-canary"},
                 "spec": {"clusterIP": self.cluster_ip, "ports": [{"name": "http", "port": 8080}]}}]


def test_sync_turns_it_on_then_keeps_trying_off_until_every_pod_is_off(pods: list[FakeStablePod]) -> None:
    memory = AnalysisMemory()
    kube = PodsAndServices({"st4b1e": [pod(f"s-{i}", p.port) for i, p in enumerate(pods)]})
    on = ("st4b1e", "fraud-canary", 20, CANARY_HASH)
    reports = run(sc.sync(kube, memory, uid="u1", namespace="ml", name="fraud", on=on, off=()))
    assert [r.complete for r in reports] == [True]
    assert all(p.config == {"url": "http://10.96.0.7:8080", "percent": 20, "revision": CANARY_HASH} for p in pods)
    assert memory.mirroring["u1"] == {"st4b1e"} and sc.shadow_note(memory, "u1") is None
    # the step is over but one pod cannot be reached: the revision stays remembered
    down = pods[2]
    down.close()
    reports = run(sc.sync(kube, memory, uid="u1", namespace="ml", name="fraud", on=None, off=()))
    assert len(reports) == 1 and not reports[0].complete and sorted(reports[0].held) == ["s-0", "s-1"]
    assert memory.mirroring["u1"] == {"st4b1e"} and pods[0].config["percent"] == 0
    # the pod is gone (no longer listed): every pod of the revision is off, nothing is left to do
    kube.pods_by_revision["st4b1e"] = kube.pods_by_revision["st4b1e"][:2]
    reports = run(sc.sync(kube, memory, uid="u1", namespace="ml", name="fraud", on=None, off=()))
    assert reports[0].complete and reports[0].changed == [] and "u1" not in memory.mirroring


def test_sync_without_a_cluster_ip_configures_nothing_and_says_so(pods: list[FakeStablePod]) -> None:
    memory = AnalysisMemory()
    kube = PodsAndServices({"st4b1e": [pod("s-0", pods[0].port)]}, cluster_ip=None)
    reports = run(sc.sync(kube, memory, uid="u1", namespace="ml", name="fraud",
                          on=("st4b1e", "fraud-canary", 20, CANARY_HASH), off=()))
    assert reports[0].errors == ["Service fraud-canary has no cluster IP yet"] and pods[0].puts == 0
    assert sc.shadow_note(memory, "u1") == ("no stable pod could be configured to mirror to the canary: "
                                            "Service fraud-canary has no cluster IP yet")


def test_mirror_url_is_the_services_cluster_ip_and_http_port() -> None:
    assert sc.mirror_url({"spec": {"clusterIP": "10.0.0.9", "ports": [{"name": "http", "port": 8080}]}}) == \
        "http://10.0.0.9:8080"
    assert sc.mirror_url({"spec": {"clusterIP": "fd00::9", "ports": [{"name": "http", "port": 80}]}}) == \
        "http://[fd00::9]:80"
    assert sc.mirror_url({"spec": {"clusterIP": "None", "ports": [{"port": 80}]}}) is None
    assert sc.mirror_url(None) is None


# --------------------------------------------------------------------------- real servers


@dataclass
class Server:
    base: str
    admin: str
    port: int
    admin_port: int
    proc: subprocess.Popen


def _start(model: Path, version: str, log: Path) -> Server:
    port, admin = _free_port(), _free_port()
    cmd = [sys.executable, "-m", "modelship_server", "--model-uri", str(model / "model.pt"),
           "--model-version", version, "--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin),
           "--torch-threads", "1", "--log-level", "warning"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    return Server(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}", port, admin, proc)


@pytest.fixture(scope="module")
def bad_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's `bad` variant (examples/build_model.py): trained on the same split with its
    classes permuted, it disagrees with v1 on every held-out row."""
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("bad-model")
    subprocess.run([sys.executable, str(ROOT / "examples" / "build_model.py"), "--out", str(out), "--variant", "bad"],
                   check=True, timeout=300, stdout=subprocess.DEVNULL)
    return out


@pytest.fixture(scope="module")
def servers(example_model_dir: Path, bad_model_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    pytest.importorskip("modelship_server")
    logs = tmp_path_factory.mktemp("shadow-logs")
    started = {"stable": _start(example_model_dir, "1.0.0", logs / "stable.log"),
               "same": _start(example_model_dir, "1.1.0", logs / "same.log"),
               "bad": _start(bad_model_dir, "2.0.0", logs / "bad.log")}
    try:
        for role, s in started.items():
            _wait_for(lambda s=s: httpx.get(f"{s.base}/v2/health/ready", timeout=1).status_code == 200,
                      90, f"{role} server ready ({logs / (role + '.log')})", s.proc)
        yield started
    finally:
        for s in started.values():
            _stop(s.proc)


def _drive(target: Server, n: int) -> None:
    async def go() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            gate = asyncio.Semaphore(8)

            async def one(i: int) -> None:
                async with gate:
                    row = [float((i * 7 + j * 3) % 17) for j in range(64)]
                    r = await client.post(f"{target.base}/predict", json={"features": row})
                    assert r.status_code == 200, r.text

            await asyncio.gather(*(one(i) for i in range(n)))

    asyncio.run(go())


def _snapshot(url: str) -> a.Snapshot:
    answer = asyncio.run(scrape([url]))[url]
    assert isinstance(answer, a.Snapshot), answer
    return answer


LIMITS = AnalysisSpec(max_error_rate=0.01, min_requests=40, max_disagreement=0.05, max_mean_abs_diff=0.5)


def _mirror_window(stable: Server, canary: Server, revision: str, n: int = 60) -> a.Verdict:
    """Push the mirror (100%) to the real stable, serve n requests, judge what both exported."""
    listed = [pod("stable-0", stable.admin_port)]
    config = sc.MirrorConfig(canary.base, 100.0, revision)
    assert asyncio.run(sc.push(listed, "st4b1e", config)).changed == ["stable-0"]
    state = httpx.get(stable.admin + "/shadow").json()
    assert (state["url"], state["percent"], state["revision"]) == (canary.base, 100, revision)
    assert asyncio.run(sc.push(listed, "st4b1e", config)).changed == []  # held: no second PUT
    before_stable, before_canary = _snapshot(stable.admin + "/metrics"), _snapshot(canary.admin + "/metrics")
    _drive(stable, n)

    def compared() -> float:
        s = a.measure_shadow_pods({"stable-0": before_stable}, {"stable-0": _snapshot(stable.admin + "/metrics")},
                                  revision)
        return sum(s.outcomes.values())

    _wait_for(lambda: compared() >= n, 30, f"{n} mirrors answered by {canary.base}")
    after_stable, after_canary = _snapshot(stable.admin + "/metrics"), _snapshot(canary.admin + "/metrics")
    measured = a.measure_pods({"c": before_canary}, {"c": after_canary})
    assert measured.requests >= n  # the mirrored requests are the canary's traffic
    shadow = a.measure_shadow_pods({"stable-0": before_stable}, {"stable-0": after_stable}, revision)
    return a.judge(measured, LIMITS, shadow=shadow)


def test_a_real_stable_mirrors_to_an_agreeing_canary_and_passes(servers: dict[str, Server]) -> None:
    verdict = _mirror_window(servers["stable"], servers["same"], "same0001")
    assert verdict.result == a.PASS, verdict.message
    assert verdict.shadow is not None and verdict.shadow.rows >= 60 and verdict.shadow.disagreement == 0
    # the same model: the same classes; outputs equal up to float rounding (rows batched differently)
    assert verdict.to_status()["disagreement"] == 0 and verdict.to_status()["meanAbsDiff"] < 1e-4


def test_a_real_stable_mirrors_to_a_disagreeing_canary_and_fails_then_stops(servers: dict[str, Server]) -> None:
    stable = servers["stable"]
    verdict = _mirror_window(stable, servers["bad"], "bad00001")
    assert verdict.result == a.FAIL
    assert verdict.reasons[0].startswith("disagreement 100.00% above maxDisagreement 5.00%")
    # off: the stable stops mirroring; the canary sees no more of its requests
    listed = [pod("stable-0", stable.admin_port)]
    assert asyncio.run(sc.push(listed, "st4b1e", sc.OFF)).changed == ["stable-0"]
    assert httpx.get(stable.admin + "/shadow").json()["percent"] == 0
    before = _snapshot(servers["bad"].admin + "/metrics")
    _drive(stable, 20)
    time.sleep(0.5)
    assert a.measure_pods({"c": before}, {"c": _snapshot(servers["bad"].admin + "/metrics")}).requests == 0


# --------------------------------------------------------------------------- through a real Prometheus

NAMESPACE, NAME = "ml", "fraud"
HASHES = {"stable": "st4b1e0001", "same": "s4me000001", "bad": "b4d0000001"}


@pytest.fixture(scope="module")
def prometheus(servers: dict[str, Server], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping each server's admin port with the target labels (and the
    relabelings) the operator's ServiceMonitor gives a pod of that revision."""
    from test_metrics_source import PROMETHEUS, pod_target_labels, servicemonitor_relabel_configs

    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip("the prometheus binary is not installed (apt-get install prometheus); CI installs it")
    work = tmp_path_factory.mktemp("prometheus-shadow")
    static = [{"targets": [f"127.0.0.1:{s.admin_port}"],
               "labels": pod_target_labels(NAMESPACE, f"{NAME}-{HASHES[role]}-x2x4q",
                                           {"app.kubernetes.io/instance": NAME,
                                            "modelship.dev/revision": HASHES[role]})}
              for role, s in servers.items()]
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": "modelship", "static_configs": static,
                                  "relabel_configs": servicemonitor_relabel_configs()}]}
    (work / "prometheus.yml").write_text(json.dumps(config))
    port = _free_port()
    with (work / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen([PROMETHEUS, f"--config.file={work / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                                 "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: httpx.get(f"{base}/-/ready", timeout=1).status_code == 200, 30, "prometheus ready", proc)
        yield base
    finally:
        _stop(proc)


def _prom(base: str, query: str) -> list[dict]:
    body = httpx.get(f"{base}/api/v1/query", params={"query": query}, timeout=5).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def _promql_window(prometheus: str, stable: Server, canary: Server, role: str, n: int = 60) -> a.Verdict:
    from datetime import datetime, timezone

    from modelship_operator.canary_metrics import measure_prometheus

    revision = HASHES[role]
    assert asyncio.run(sc.push([pod("stable-0", stable.admin_port)], "st4b1e",
                               sc.MirrorConfig(canary.base, 100.0, revision))).changed == ["stable-0"]
    _drive(stable, 3)  # the canary's shadow series exist before the window (increase() needs a first sample)
    rows = f'modelship_shadow_rows_total{{exported_revision="{revision}",revision="{HASHES["stable"]}"}}'
    _wait_for(lambda: [float(r["value"][1]) for r in _prom(prometheus, rows)] == [3.0], 20, "the warm-up scraped")
    time.sleep(2.5)  # flat samples before the traffic
    start = time.time()
    _drive(stable, n)
    _wait_for(lambda: [float(r["value"][1]) for r in _prom(prometheus, rows)] == [3.0 + n], 30,
              "prometheus to scrape the mirrored traffic")
    time.sleep(2.5)  # flat samples after it
    now = time.time()
    verdict = asyncio.run(measure_prometheus(
        prometheus, LIMITS, namespace=NAMESPACE, name=NAME, canary=revision, stable=HASHES["stable"],
        window_s=now - start + 2, now=datetime.fromtimestamp(now, timezone.utc), shadow=True))
    asyncio.run(sc.push([pod("stable-0", stable.admin_port)], "st4b1e", sc.OFF))
    return verdict


def test_the_promql_path_judges_the_stable_pods_shadow_series(servers: dict[str, Server], prometheus: str) -> None:
    same = _promql_window(prometheus, servers["stable"], servers["same"], "same")
    assert same.result == a.PASS, same.message
    assert same.shadow is not None and same.shadow.rows >= 60 and same.shadow.disagreement == 0
    bad = _promql_window(prometheus, servers["stable"], servers["bad"], "bad")
    assert bad.result == a.FAIL
    assert bad.reasons[0].startswith("disagreement 100.00% above maxDisagreement 5.00%"), bad.reasons
    # the canary's own requests (the mirrored ones) were read from its series too
    assert bad.canary.requests >= 60
