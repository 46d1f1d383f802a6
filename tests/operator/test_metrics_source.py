"""Analysis against real servers: scrape-and-judge over loopback HTTP, and PromQL over a real Prometheus.

Two real inference servers run as subprocesses on 127.0.0.1: the example digits model (healthy)
and a canary that wraps the same model in TorchScript but raises on inputs outside the digits'
0..16 pixel range (a bug on unusual inputs, answered 500 for that request alone). Both get the
same traffic, a fifth of it unusual; the healthy one must pass and the flaky one fail.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

from modelship_operator import analysis as a
from modelship_operator.metrics_source import ScrapeError, query_prometheus, scrape
from modelship_operator.spec import AnalysisSpec

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
# A long name, as real ones are: Kubernetes cuts generated pod names at 63 characters, so the
# pods of this ModelDeployment have no replica-set suffix left to match a pod-name pattern by.
NAMESPACE, NAME = "ml", "fraud-detector-card-transactions-eu-west-1-scorer"
HEALTHY_HASH, FLAKY_HASH = "a1b2c3d4e5", "f6e5d4c3b2"
# p99 limit generous on purpose: the CI machine's cores are shared; the flaky canary fails on errors
LIMITS = AnalysisSpec(max_error_rate=0.01, max_latency_p99_ms=2000, min_requests=50)
REQUESTS, UNUSUAL_EVERY = 120, 5  # 24 unusual requests per server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(condition: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}")
        try:
            if condition():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def flaky_model_dir(example_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")

    class Flaky(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if bool((x[:, 0] > 16.0).any()):
                raise RuntimeError("flaky canary: pixel value out of range")
            return self.inner(x)

    out = tmp_path_factory.mktemp("flaky-model")
    scripted = torch.jit.script(Flaky(torch.jit.load(str(example_model_dir / "model.pt"))))
    scripted.save(str(out / "model.pt"))
    signature = json.loads((example_model_dir / "signature.json").read_text())
    signature["version"] = "2.0.0"
    (out / "signature.json").write_text(json.dumps(signature))
    return out


@dataclass
class Server:
    base: str
    port: int
    proc: subprocess.Popen

    @property
    def metrics_url(self) -> str:
        return f"{self.base}/metrics"


def _start_server(model: Path, version: str, log: Path) -> Server:
    port = _free_port()
    cmd = [
        sys.executable, "-m", "modelship_server", "--model-uri", str(model / "model.pt"),
        "--model-version", version, "--host", "127.0.0.1", "--port", str(port),
        "--torch-threads", "1", "--log-level", "warning",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    return Server(f"http://127.0.0.1:{port}", port, proc)


@pytest.fixture(scope="module")
def servers(example_model_dir: Path, flaky_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    pytest.importorskip("modelship_server")
    logs = tmp_path_factory.mktemp("server-logs")
    started = {
        "healthy": _start_server(example_model_dir, "1.0.0", logs / "healthy.log"),
        "flaky": _start_server(flaky_model_dir, "2.0.0", logs / "flaky.log"),
    }
    try:
        for role, s in started.items():
            _wait_for(lambda s=s: httpx.get(f"{s.base}/v2/health/ready", timeout=1).status_code == 200,
                      60, f"{role} server ready ({logs / (role + '.log')})", s.proc)
        # one usual and one unusual request each: every status-code series exists from now on,
        # so Prometheus' increase() sees them from their first sample
        asyncio.run(_drive(list(started.values()), 2, 2))
        yield started
    finally:
        for s in started.values():
            _stop(s.proc)


def _features(unusual: bool) -> list[float]:
    row = [float((i * 7) % 17) for i in range(64)]  # pixel values 0..16, like the digits data
    row[0] = 17.0 if unusual else 0.0
    return row


async def _drive(targets: list[Server], n: int, unusual_every: int) -> dict[str, dict[int, int]]:
    """n requests to every server (8 in flight per server); returns status code counts."""
    codes: dict[str, dict[int, int]] = {s.base: {} for s in targets}
    async with httpx.AsyncClient(timeout=10) as client:
        async def one(s: Server, i: int, gate: asyncio.Semaphore) -> None:
            async with gate:
                r = await client.post(f"{s.base}/predict", json={"features": _features(i % unusual_every == 0)})
            codes[s.base][r.status_code] = codes[s.base].get(r.status_code, 0) + 1

        gates = {s.base: asyncio.Semaphore(8) for s in targets}
        await asyncio.gather(*(one(s, i, gates[s.base]) for s in targets for i in range(n)))
    return codes


def test_scrape_returns_a_snapshot_or_an_error_per_url(servers: dict[str, Server]) -> None:
    healthy = servers["healthy"]
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}/metrics"
        closed_url = f"http://127.0.0.1:{_free_port()}/metrics"
        urls = [healthy.metrics_url, f"{healthy.base}/nothing-here", closed_url, silent_url]
        started = time.monotonic()
        got = asyncio.run(scrape(urls, timeout=1.0))
        assert time.monotonic() - started < 5  # concurrent, each bounded by the timeout
    assert isinstance(got[healthy.metrics_url], a.Snapshot)
    assert got[healthy.metrics_url].requests_by_code().get("200", 0) >= 2
    assert isinstance(got[urls[1]], ScrapeError) and "HTTP 404" in str(got[urls[1]])
    assert isinstance(got[closed_url], ScrapeError) and "Connect" in str(got[closed_url])
    assert isinstance(got[silent_url], ScrapeError) and "Timeout" in str(got[silent_url])


def test_scrape_and_judge_passes_healthy_and_fails_flaky(servers: dict[str, Server]) -> None:
    targets = [servers["healthy"], servers["flaky"]]
    urls = [s.metrics_url for s in targets]
    before = asyncio.run(scrape(urls))
    codes = asyncio.run(_drive(targets, REQUESTS, UNUSUAL_EVERY))
    after = asyncio.run(scrape(urls))
    unusual = math.ceil(REQUESTS / UNUSUAL_EVERY)
    assert codes[targets[0].base] == {200: REQUESTS}
    assert codes[targets[1].base] == {200: REQUESTS - unusual, 500: unusual}

    measured = {}
    for s in targets:
        b, aft = before[s.metrics_url], after[s.metrics_url]
        assert isinstance(b, a.Snapshot) and isinstance(aft, a.Snapshot)
        measured[s.base] = a.measure_pods({"pod-0": b}, {"pod-0": aft})
    healthy, flaky = measured[targets[0].base], measured[targets[1].base]
    # the scrape path counts exactly what the clients saw
    assert (healthy.requests, healthy.errors) == (REQUESTS, 0)
    assert (flaky.requests, flaky.errors) == (REQUESTS, unusual)
    assert healthy.latency_p99_ms is not None and 0 < healthy.latency_p99_ms < 2000

    ok = a.judge(healthy, LIMITS)
    bad = a.judge(flaky, LIMITS, stable=healthy)
    assert ok.result == "pass", ok.message
    assert bad.result == "fail", bad.message
    assert "error rate 20.00% above 1.00%" in bad.message and "stable: 120 requests, error rate 0.00%" in bad.message


def generated_pod_name(deployment: str, replica_set_hash: str, suffix: str) -> str:
    """A Deployment's pod name as Kubernetes generates it: the ReplicaSet `<deployment>-<hash>`
    plus "-" is the generateName, cut to 58 characters, then 5 random characters."""
    return f"{deployment}-{replica_set_hash}-"[:58] + suffix


def pod_target_labels(namespace: str, pod: str, pod_labels: dict[str, str]) -> dict[str, str]:
    """The labels Kubernetes service discovery gives the target of one pod (the part we use)."""
    labels = {"__meta_kubernetes_namespace": namespace, "__meta_kubernetes_pod_name": pod}
    labels.update({a.meta_label(k): v for k, v in pod_labels.items()})
    return labels


def servicemonitor_relabel_configs() -> list[dict]:
    """The relabel_configs the Prometheus Operator generates for the ServiceMonitor the operator
    renders: `namespace` and `pod` from discovery, then the endpoint's own relabelings."""
    from datetime import datetime, timezone

    from modelship_operator.planning import Observed, plan
    from modelship_operator.render import render
    from modelship_operator.settings import Settings
    from modelship_operator.spec import ModelDeployment

    body = {"apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "spec": {"model": {"uri": "file:///models/m.pt", "version": "1"}}}
    desired = plan(ModelDeployment.from_body(body), Observed(servicemonitor_served=True), Settings(),
                   datetime.now(timezone.utc))
    (monitor,) = [m for m in render(desired) if m["kind"] == "ServiceMonitor"]
    (endpoint,) = monitor["spec"]["endpoints"]
    configs = [{"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
               {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"}]
    return configs + [{"source_labels": r["sourceLabels"], "target_label": r["targetLabel"],
                       "action": r.get("action", "replace")} for r in endpoint["relabelings"]]


def _prometheus_config(path: Path, targets: dict[str, Server]) -> None:
    hashes = {"healthy": HEALTHY_HASH, "flaky": FLAKY_HASH}
    static = []
    for role, s in targets.items():
        pod = generated_pod_name(f"{NAME}-{hashes[role]}", "7d9f8c6b5d", "x2x4q")
        assert len(pod) == 63 and not pod.startswith(f"{NAME}-{hashes[role]}-7d9f8c6b5d-")
        pod_labels = {"app.kubernetes.io/instance": NAME, "modelship.dev/revision": hashes[role]}
        static.append({"targets": [f"127.0.0.1:{s.port}"], "labels": pod_target_labels(NAMESPACE, pod, pod_labels)})
    # the target labels a ServiceMonitor of the operator attaches in a cluster
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "modelship", "static_configs": static,
                            "relabel_configs": servicemonitor_relabel_configs()}],
    }
    path.write_text(json.dumps(config))  # JSON is YAML


@pytest.fixture(scope="module")
def prometheus(servers: dict[str, Server], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip("the prometheus binary is not installed (apt-get install prometheus); CI installs it")
    work = tmp_path_factory.mktemp("prometheus")
    _prometheus_config(work / "prometheus.yml", servers)
    port = _free_port()
    cmd = [
        PROMETHEUS, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
    ]  # fmt: skip
    with (work / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: httpx.get(f"{base}/-/ready", timeout=1).status_code == 200, 30, "prometheus ready", proc)
        yield base
    finally:
        _stop(proc)


def _instant(base: str, query: str) -> list[dict]:
    body = httpx.get(f"{base}/api/v1/query", params={"query": query}, timeout=5).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_promql_path_through_real_prometheus(servers: dict[str, Server], prometheus: str) -> None:
    targets = [servers["healthy"], servers["flaky"]]
    # both pods scraped twice before the traffic (their request series exist since the warm-up):
    # a flat baseline inside the window
    _wait_for(
        lambda: [float(r["value"][1]) >= 2 for r in _instant(prometheus, 'count_over_time(up{job="modelship"}[30s])')]
        == [True, True],
        20, "baseline scrapes",
    )
    start = time.time()
    asyncio.run(_drive(targets, REQUESTS, UNUSUAL_EVERY))
    direct = asyncio.run(scrape([s.metrics_url for s in targets]))
    expected = {  # per pod label: the total the servers report right now
        pod: sum(direct[s.metrics_url].requests_by_code().values())  # type: ignore[union-attr]
        for pod, s in zip((HEALTHY_HASH, FLAKY_HASH), targets)
    }

    def caught_up() -> bool:
        seen = {r["metric"]["revision"]: float(r["value"][1])
                for r in _instant(prometheus, "sum by (revision) (modelship_requests_total)")}
        return all(seen.get(h) == total for h, total in expected.items())

    _wait_for(caught_up, 20, "prometheus to scrape the traffic")
    caught = time.time()
    _wait_for(  # one more scrape of each pod: a flat tail inside the window
        lambda: min(float(r["value"][1]) for r in _instant(prometheus, 'timestamp(up{job="modelship"})')) > caught,
        10, "a scrape after the traffic",
    )
    now = time.time()
    window = math.ceil(now - start) + 2  # reaches back to a baseline sample taken before the traffic

    verdicts = {}
    for revision, stable in ((HEALTHY_HASH, None), (FLAKY_HASH, HEALTHY_HASH)):
        queries = a.promql_queries(NAMESPACE, NAME, revision, window)
        result = asyncio.run(query_prometheus(prometheus, queries, time=now))
        m = a.measurement_from_prometheus(result)
        stable_m = None
        if stable is not None:
            stable_q = a.promql_queries(NAMESPACE, NAME, stable, window)
            stable_m = a.measurement_from_prometheus(asyncio.run(query_prometheus(prometheus, stable_q, time=now)))
        verdicts[revision] = (m, a.judge(m, LIMITS, stable=stable_m))

    healthy, ok = verdicts[HEALTHY_HASH]
    flaky, bad = verdicts[FLAKY_HASH]
    # increase() extrapolates the sampled span (flat at both ends here) to the window edges, up to
    # window / (window - 2 scrape intervals): at least what was sent, at most about half again
    for m in (healthy, flaky):
        assert REQUESTS * 0.95 <= m.requests <= REQUESTS * window / (window - 2.2), (m, window)
    assert healthy.errors == 0 and healthy.latency_p99_ms is not None
    # both code series span the whole window, so extrapolation cancels out of the ratio
    assert flaky.error_rate == pytest.approx(math.ceil(REQUESTS / UNUSUAL_EVERY) / REQUESTS, rel=0.05)
    assert ok.result == "pass", ok.message
    assert bad.result == "fail", bad.message
    assert bad.stable is not None and bad.stable.errors == 0


def test_query_prometheus_reports_bad_queries(prometheus: str) -> None:
    with pytest.raises(ScrapeError, match="HTTP 400"):
        asyncio.run(query_prometheus(prometheus, {"broken": "sum by (code) (increase(x[5s]"}))
    with pytest.raises(ScrapeError):
        asyncio.run(query_prometheus(f"http://127.0.0.1:{_free_port()}", {"q": "up"}, timeout=1))


def test_restarted_pod_is_measured_from_its_restart(servers: dict[str, Server], flaky_model_dir: Path,
                                                    tmp_path: Path) -> None:
    """A canary pod restarts inside the interval: its counters start again at zero, and the delta
    must be what the new process served, not a negative or a stale difference."""
    old = servers["flaky"]
    before = asyncio.run(scrape([old.metrics_url]))[old.metrics_url]
    assert isinstance(before, a.Snapshot) and sum(before.requests_by_code().values()) > 60
    _stop(old.proc)
    new = servers["flaky"] = _start_server(flaky_model_dir, "2.0.0", tmp_path / "restarted.log")
    _wait_for(lambda: httpx.get(f"{new.base}/v2/health/ready", timeout=1).status_code == 200,
              60, "restarted server ready", new.proc)
    codes = asyncio.run(_drive([new], 60, UNUSUAL_EVERY))
    assert codes[new.base] == {200: 48, 500: 12}
    after = asyncio.run(scrape([new.metrics_url]))[new.metrics_url]
    assert isinstance(after, a.Snapshot)
    m = a.measure_pods({"fraud-f6e5d4c3b2-5c4b7f9d8-q8w2z": before}, {"fraud-f6e5d4c3b2-5c4b7f9d8-q8w2z": after})
    assert (m.requests, m.errors) == (60, 12)
    assert a.judge(m, LIMITS).result == "fail"
