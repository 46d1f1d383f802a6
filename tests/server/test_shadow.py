"""Shadow comparison over real HTTP on loopback: stable servers mirror to canary servers (the
example model, and TorchScript variants of it) and to a scripted canary that stalls or answers
garbage; the metrics are checked against numbers computed here, independently."""
from __future__ import annotations

import http.server
import json
import shutil
import socket
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pytest

from metrics_text import parse, value
from modelship_server.app import create_app
from server_harness import ServerThread, bound_socket, settings_for, wait_for


class ScriptedCanary:
    """A canary over real HTTP that records what it receives and stalls or answers as told."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.answered = 0
        self.stall = False
        self.release = threading.Event()
        self.answer: tuple[int, bytes] = (503, b'{"error": "scripted"}')
        self.lock = threading.Lock()
        canary = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with canary.lock:
                    canary.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                if canary.stall:
                    canary.release.wait(30)
                status, answer = canary.answer
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                with canary.lock:
                    canary.answered += 1

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedCanary:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _variant(model_dir: Path, out: Path, *, scale: float = 1.0, shift: float = 0.0, roll: int = 0) -> Path:
    """The example model with its input scaled, a class-dependent bias added to its logits and
    its classes rolled: close to it (few rows change class) or far from it (every row does)."""
    import torch

    class Variant(torch.nn.Module):
        def __init__(self, base: torch.nn.Module) -> None:
            super().__init__()
            self.base = base
            self.scale = scale
            self.roll = roll
            self.register_buffer("bias", torch.linspace(0.0, shift, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.roll(self.base(x * self.scale), self.roll, 1) + self.bias

    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        base = torch.jit.load(str(model_dir / "model.pt")).eval()
        torch.jit.save(torch.jit.script(Variant(base)), str(out / "model.pt"))
    shutil.copy(model_dir / "signature.json", out / "signature.json")
    return out


def _forward(path: Path, x: np.ndarray) -> np.ndarray:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path)).eval()
    with torch.inference_mode():
        return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


@pytest.fixture(scope="module")
def canaries(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("shadow")
    near = _variant(model_dir, root / "near", shift=8.0)
    far = _variant(model_dir, root / "far", roll=1)
    with ScriptedCanary() as scripted, \
         ServerThread(create_app(settings_for(near, model_version="near"))) as near_srv, \
         ServerThread(create_app(settings_for(far, model_version="far"))) as far_srv, \
         ServerThread(create_app(settings_for(model_dir, max_batch_rows=64, model_version="stable"))) as stable:
        for srv in (near_srv, far_srv, stable):
            srv.wait_ready()
        yield {"near": near_srv, "far": far_srv, "stable": stable, "scripted": scripted,
               "near_model": near / "model.pt", "far_model": far / "model.pt"}  # fmt: skip


def _signature(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "signature.json").read_text())


def _metrics(srv: ServerThread) -> dict:
    return parse(httpx.get(srv.url + "/metrics").text)


def _outcomes(srv: ServerThread, revision: str) -> dict[str, float]:
    m = _metrics(srv)
    return {o: value(m, "modelship_shadow_requests_total", revision=revision, outcome=o)
            for o in ("compared", "dropped", "error", "mismatch")}  # fmt: skip


def _put(srv: ServerThread, **body: Any) -> httpx.Response:
    return httpx.put(srv.url + "/shadow", json=body)


def _send_mixed(url: str, x: np.ndarray, sig: dict[str, Any]) -> int:
    """x's rows through every inference route and encoding; returns the number of requests."""
    name, inp = sig["name"], sig["inputs"][0]["name"]
    with httpx.Client(base_url=url, timeout=30) as c:
        sent = 0

        def ok(r: httpx.Response) -> None:
            nonlocal sent
            assert r.status_code == 200, r.text
            sent += 1

        rows = iter(range(len(x)))
        for _ in range(5):  # v2 JSON, 4 rows
            part = x[[next(rows) for _ in range(4)]]
            ok(c.post(f"/v2/models/{name}/infer", json={"inputs": [{"name": inp, "shape": list(part.shape), "datatype": "FP32",
                                                                    "data": part.ravel().tolist()}]}))  # fmt: skip
        for _ in range(4):  # v2 binary in and out, 6 rows
            part = np.ascontiguousarray(x[[next(rows) for _ in range(6)]], dtype="<f4")
            head = json.dumps({"inputs": [{"name": inp, "shape": list(part.shape), "datatype": "FP32",
                                           "parameters": {"binary_data_size": part.nbytes}}],
                               "parameters": {"binary_data_output": True}}).encode()  # fmt: skip
            ok(c.post(f"/v2/models/{name}/infer", content=head + part.tobytes(),
                      headers={"content-type": "application/octet-stream", "inference-header-content-length": str(len(head))}))
        for _ in range(6):  # /predict, one row
            ok(c.post("/predict", json={"features": x[next(rows)].tolist()}))
        for _ in range(2):  # /predict/batch, 10 rows
            ok(c.post("/predict/batch", json={"batch_features": x[[next(rows) for _ in range(10)]].tolist()}))
        for _ in range(3):  # KServe V1, 5 rows
            ok(c.post(f"/v1/models/{name}:predict", json={"instances": x[[next(rows) for _ in range(5)]].tolist()}))
        assert next(rows, None) is None, "x must have exactly the rows sent"
    return sent


MIXED_ROWS = 5 * 4 + 4 * 6 + 6 + 2 * 10 + 3 * 5


@pytest.mark.parametrize("which", ["near", "far"])
def test_metrics_match_an_independent_comparison(canaries, model_dir, heldout, reference, which) -> None:
    """Every route and encoding is mirrored; rows, disagreements, mean and max absolute
    difference are what this test computes from the two models' own forward passes."""
    stable, canary = canaries["stable"], canaries[which]
    revision = f"rev-{which}"
    r = _put(stable, url=canary.url, percent=100, revision=revision)
    assert r.status_code == 200, r.text
    assert r.json() == {"url": canary.url, "percent": 100, "revision": revision, "queued": 0, "maxQueue": 64}
    before = _metrics(canary)
    x = heldout[0][:MIXED_ROWS]
    sent = _send_mixed(stable.url, x, _signature(model_dir))
    wait_for(lambda: _outcomes(stable, revision)["compared"] == sent, 20, "every mirror compared")
    assert _outcomes(stable, revision) == {"compared": sent, "dropped": 0, "error": 0, "mismatch": 0}

    s, c = reference(x), _forward(canaries[f"{which}_model"], x)
    d = np.abs(s.astype(np.float64) - c.astype(np.float64))
    disagreements = int((s.argmax(1) != c.argmax(1)).sum())
    m = _metrics(stable)
    assert value(m, "modelship_shadow_rows_total", revision=revision) == MIXED_ROWS
    assert value(m, "modelship_shadow_disagreements_total", revision=revision) == disagreements
    assert value(m, "modelship_shadow_abs_diff_sum", revision=revision) == pytest.approx(d.mean(axis=1).sum(), rel=1e-4)
    assert value(m, "modelship_shadow_abs_diff_max", revision=revision) == pytest.approx(d.max(), rel=1e-4)
    if which == "near":  # agrees on most inputs, not all
        assert 0 < disagreements <= MIXED_ROWS * 0.1
    else:
        assert disagreements == MIXED_ROWS
    # The canary served the mirrors like any request (its own metrics count them).
    served = value(_metrics(canary), "modelship_requests_total", code="200") - value(before, "modelship_requests_total", code="200")
    assert served == sent


def test_startup_default_from_flags_and_env() -> None:
    from modelship_server.__main__ import parse_args

    s = parse_args(["--shadow-url", "http://10.96.0.12:8080", "--shadow-revision", "abc"], {"MODELSHIP_SHADOW_PERCENT": "20"})
    assert (s.shadow_config.target.url, s.shadow_config.percent, s.shadow_config.revision) == ("http://10.96.0.12:8080", 20.0, "abc")
    with pytest.raises(SystemExit):
        parse_args([], {"MODELSHIP_SHADOW_PERCENT": "20"})  # mirroring on needs a url


def test_boot_config_from_settings_is_live(model_dir, canaries, tmp_path) -> None:
    """A server started with MODELSHIP_SHADOW_* shows it on GET /shadow and mirrors from its
    first request; a request marked as a mirror is not mirrored again, and is audited as one."""
    scripted = canaries["scripted"]
    scripted.stall, scripted.answer = False, (200, b'{"outputs": {}}')
    audit = tmp_path / "audit.jsonl"
    settings = settings_for(model_dir, shadow_url=scripted.url, shadow_percent=100, shadow_revision="boot-live",
                            audit_file=str(audit))  # fmt: skip
    with ServerThread(create_app(settings)) as srv:
        srv.wait_ready()
        assert httpx.get(srv.url + "/shadow").json() == {"url": scripted.url, "percent": 100, "revision": "boot-live",
                                                         "queued": 0, "maxQueue": 64}  # fmt: skip
        n = len(scripted.received)
        assert httpx.post(srv.url + "/predict", json={"features": [0.0] * 64}, headers={"x-request-id": "u-1"}).status_code == 200
        assert httpx.post(srv.url + "/predict", json={"features": [0.0] * 64},
                          headers={"x-request-id": "s-1", "x-modelship-shadow": "1"}).status_code == 200  # fmt: skip
        wait_for(lambda: _outcomes(srv, "boot-live")["mismatch"] == 1, 10, "the mismatch counted")
        assert len(scripted.received) == n + 1 and scripted.received[-1][1]["x-request-id"] == "u-1"
    lines = {line["request_id"]: line for line in map(json.loads, audit.read_text().splitlines())}
    assert "extra" not in lines["u-1"] and lines["s-1"]["extra"] == {"shadow": True}


def test_mirror_is_the_same_request_marked_as_shadow(canaries, heldout, model_dir) -> None:
    stable, scripted = canaries["stable"], canaries["scripted"]
    scripted.stall, scripted.answer = False, (200, b"garbage, not json")
    assert _put(stable, url=scripted.url, percent=100, revision="same").status_code == 200
    name, inp = _signature(model_dir)["name"], _signature(model_dir)["inputs"][0]["name"]
    part = np.ascontiguousarray(heldout[0][:3], dtype="<f4")
    head = json.dumps({"inputs": [{"name": inp, "shape": [3, 64], "datatype": "FP32",
                                   "parameters": {"binary_data_size": part.nbytes}}]}).encode()  # fmt: skip
    body = head + part.tobytes()
    n = len(scripted.received)
    r = httpx.post(stable.url + f"/v2/models/{name}/infer", content=body, headers={
        "content-type": "application/octet-stream", "inference-header-content-length": str(len(head)), "x-request-id": "mirror-1"})
    assert r.status_code == 200
    wait_for(lambda: len(scripted.received) == n + 1, 10, "the mirror")
    path, headers, got = scripted.received[-1]
    assert (path, got) == (f"/v2/models/{name}/infer", body)
    assert headers["x-modelship-shadow"] == "1" and headers["x-request-id"] == "mirror-1"
    assert headers["content-type"] == "application/octet-stream"
    assert headers["inference-header-content-length"] == str(len(head))
    # A 2xx that is not the stable's outputs: a mismatch, every row counted as disagreeing.
    wait_for(lambda: _outcomes(stable, "same")["mismatch"] == 1, 10, "the mismatch")
    m = _metrics(stable)
    assert value(m, "modelship_shadow_rows_total", revision="same") == 3
    assert value(m, "modelship_shadow_disagreements_total", revision="same") == 3


@pytest.mark.parametrize("status,answer,outcome", [
    (200, b'{"outputs": {"logits": [1.0, 2.0, 3.0]}}', "mismatch"),  # another shape
    (200, b'{"outputs": {"logits": [1, 2, 3, 4, 5, 6, 7, 8, 9, "x"]}}', "mismatch"),  # not numbers
    (200, b'{"outputs": {"other": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}}', "mismatch"),  # another output
    (500, b'{"error": "boom"}', "error"),
    (400, b'{"error": "bad"}', "error"),
])  # fmt: skip
def test_bad_canary_answers_fail_closed(canaries, status, answer, outcome) -> None:
    stable, scripted = canaries["stable"], canaries["scripted"]
    scripted.stall, scripted.answer = False, (status, answer)
    revision = f"bad-{status}-{len(answer)}"
    assert _put(stable, url=scripted.url, percent=100, revision=revision).status_code == 200
    assert httpx.post(stable.url + "/predict", json={"features": [1.0] * 64}).status_code == 200
    wait_for(lambda: _outcomes(stable, revision)[outcome] == 1, 10, outcome)
    m = _metrics(stable)
    rows = 1 if outcome == "mismatch" else 0
    assert value(m, "modelship_shadow_rows_total", revision=revision) == rows
    assert value(m, "modelship_shadow_disagreements_total", revision=revision) == rows


def test_unreachable_canary_is_an_error(canaries) -> None:
    stable = canaries["stable"]
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert _put(stable, url=f"http://127.0.0.1:{port}", percent=100, revision="nobody").status_code == 200
    assert httpx.post(stable.url + "/predict", json={"features": [1.0] * 64}).status_code == 200
    wait_for(lambda: _outcomes(stable, "nobody")["error"] == 1, 10, "the error")


def test_a_stalled_canary_never_delays_the_client_and_a_full_queue_drops(model_dir, canaries) -> None:
    scripted = ScriptedCanary()
    scripted.stall = True
    settings = settings_for(model_dir, shadow_url=scripted.url, shadow_percent=100, shadow_revision="stall",
                            shadow_max_queue=3, shadow_concurrency=2, shadow_timeout_ms=60_000)  # fmt: skip
    with scripted, ServerThread(create_app(settings)) as srv:
        srv.wait_ready()
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            predict = lambda: c.post("/predict", json={"features": [2.0] * 64})  # noqa: E731
            # The answer comes back while its mirror is held by the canary, unanswered.
            assert predict().status_code == 200
            wait_for(lambda: len(scripted.received) == 1, 10, "the first mirror")
            assert scripted.answered == 0
            assert predict().status_code == 200
            wait_for(lambda: len(scripted.received) == 2, 10, "the second mirror")
            # Both workers are held: 3 more fill the queue, 5 more are dropped, all answered.
            assert all(predict().status_code == 200 for _ in range(8))
            assert scripted.answered == 0
            assert c.get("/shadow").json()["queued"] == 3
            m = parse(c.get("/metrics").text)
            assert value(m, "modelship_shadow_queue_depth") == 3
            assert _outcomes(srv, "stall") == {"compared": 0, "dropped": 5, "error": 0, "mismatch": 0}
            # Switching the target drops what was queued for the old one (counted).
            assert c.put("/shadow", json={"percent": 0}).json() == {
                "url": None, "percent": 0, "revision": None, "queued": 0, "maxQueue": 3}
            assert _outcomes(srv, "stall")["dropped"] == 8
            # The two in flight finish once the canary answers (503 here: errors).
            scripted.release.set()
            wait_for(lambda: _outcomes(srv, "stall")["error"] == 2, 10, "the held mirrors")
            assert len(scripted.received) == 2


def test_shutdown_drops_pending_mirrors_without_waiting(model_dir) -> None:
    scripted = ScriptedCanary()
    scripted.stall = True
    settings = settings_for(model_dir, shadow_url=scripted.url, shadow_percent=100, shadow_revision="bye",
                            shadow_max_queue=8, shadow_concurrency=1, shadow_timeout_ms=60_000)  # fmt: skip
    with scripted:
        srv = ServerThread(create_app(settings))
        with srv:
            srv.wait_ready()
            for _ in range(4):
                assert httpx.post(srv.url + "/predict", json={"features": [3.0] * 64}).status_code == 200
            wait_for(lambda: len(scripted.received) == 1, 10, "the held mirror")
            shadow = srv.service.shadow
        # The server stopped while the canary still holds the mirror: the drain did not wait.
        assert scripted.answered == 0
        assert shadow.stats["bye"].requests == {"compared": 0, "dropped": 4, "error": 0, "mismatch": 0}


def test_percent_zero_mirrors_and_keeps_nothing(canaries) -> None:
    stable, scripted = canaries["stable"], canaries["scripted"]
    scripted.stall, scripted.answer = False, (200, b"{}")
    assert _put(stable, url=scripted.url, percent=100, revision="zero").status_code == 200
    assert _put(stable, percent=0).json() == {"url": None, "percent": 0, "revision": None, "queued": 0, "maxQueue": 64}
    n, before = len(scripted.received), _outcomes(stable, "zero")
    for _ in range(5):
        assert httpx.post(stable.url + "/predict", json={"features": [1.0] * 64}).status_code == 200
    assert httpx.delete(stable.url + "/shadow").json()["url"] is None
    # A request through the stable's loop after them: any mirror would have been queued by now.
    assert httpx.get(stable.url + "/shadow").json()["queued"] == 0
    assert len(scripted.received) == n and _outcomes(stable, "zero") == before
    assert stable.service.shadow._bytes == 0


def test_a_shadow_request_is_served_but_not_stored_for_feedback_nor_mirrored(canaries) -> None:
    near, scripted = canaries["near"], canaries["scripted"]
    scripted.stall, scripted.answer = False, (200, b"{}")
    assert _put(near, url=scripted.url, percent=100, revision="loop").status_code == 200
    try:
        n = len(scripted.received)
        shadow = httpx.post(near.url + "/predict", json={"features": [4.0] * 64},
                            headers={"x-modelship-shadow": "1", "x-request-id": "shadow-req-1"})  # fmt: skip
        user = httpx.post(near.url + "/predict", json={"features": [4.0] * 64}, headers={"x-request-id": "user-req-1"})
        assert shadow.status_code == user.status_code == 200
        label = user.json()["prediction"]
        assert httpx.post(near.url + "/feedback", json={"request_id": "user-req-1", "truth": label}).status_code == 200
        r = httpx.post(near.url + "/feedback", json={"request_id": "shadow-req-1", "truth": label})
        assert r.status_code == 404 and r.json()["result"] == "unknown"
        # The user's request was mirrored, the shadow one was not (no loops between pods).
        wait_for(lambda: len(scripted.received) == n + 1, 10, "the user's mirror")
        assert scripted.received[-1][1]["x-request-id"] == "user-req-1"
    finally:
        assert httpx.delete(near.url + "/shadow").status_code == 200


@pytest.mark.parametrize("body,status", [
    ({"url": "ftp://10.0.0.1", "percent": 10}, 422),
    ({"url": "http://10.0.0.1:8080/predict", "percent": 10}, 422),
    ({"url": "http://10.0.0.1:8080?x=1", "percent": 10}, 422),
    ({"url": "http://user:pw@10.0.0.1:8080", "percent": 10}, 422),
    ({"url": "http://10.0.0.1:99999", "percent": 10}, 422),
    ({"url": "http://bad_host!:80", "percent": 10}, 422),
    ({"url": "10.0.0.1:8080", "percent": 10}, 422),
    ({"url": 5, "percent": 10}, 422),
    ({"url": "http://10.0.0.1", "percent": 101}, 422),
    ({"url": "http://10.0.0.1", "percent": -1}, 422),
    ({"url": "http://10.0.0.1", "percent": "20"}, 422),
    ({"url": "http://10.0.0.1", "percent": True}, 422),
    ({"url": "http://10.0.0.1", "percent": None}, 422),
    ({"url": "http://10.0.0.1"}, 422),
    ({"percent": 10}, 422),
    ({"url": "http://10.0.0.1", "percent": 10, "revision": 7}, 422),
    ({"url": "http://10.0.0.1", "percent": 10, "revision": "x" * 200}, 422),
    ({"url": "http://10.0.0.1", "percent": 10, "extra": 1}, 422),
    ([1, 2], 400),
    ("not an object", 400),
])  # fmt: skip
def test_put_shadow_rejects_bad_input_and_keeps_the_state(canaries, body, status) -> None:
    stable = canaries["stable"]
    assert _put(stable, url="http://10.0.0.9:8080", percent=5, revision="kept").status_code == 200
    try:
        r = httpx.put(stable.url + "/shadow", json=body)
        assert r.status_code == status, r.text
        assert r.json()["error"]
        assert httpx.get(stable.url + "/shadow").json()["revision"] == "kept"
    finally:
        httpx.delete(stable.url + "/shadow")


def test_put_shadow_malformed_and_oversized_bodies(canaries) -> None:
    stable = canaries["stable"]
    assert httpx.put(stable.url + "/shadow", content=b"{not json").status_code == 400
    assert httpx.put(stable.url + "/shadow", content=b"").status_code == 400
    big = json.dumps({"url": "http://10.0.0.1", "percent": 1, "revision": "r" * 5000}).encode()
    assert httpx.put(stable.url + "/shadow", content=big).status_code == 413
    ok = httpx.put(stable.url + "/shadow", json={"url": "https://canary.ns.svc:8443/", "percent": 12.5})
    # The url is answered as given (a pusher compares it with what it would send).
    assert ok.json() == {"url": "https://canary.ns.svc:8443/", "percent": 12.5, "revision": None, "queued": 0, "maxQueue": 64}
    assert httpx.delete(stable.url + "/shadow").json()["percent"] == 0


def test_metric_series_are_kept_for_the_last_revisions_only(canaries) -> None:
    stable = canaries["stable"]
    for i in range(7):
        assert _put(stable, url="http://10.0.0.9:8080", percent=1, revision=f"churn-{i}").status_code == 200
    httpx.delete(stable.url + "/shadow")
    revisions = {dict(ls)["revision"] for n, ls in _metrics(stable) if n == "modelship_shadow_rows_total"}
    assert revisions == {"churn-3", "churn-4", "churn-5", "churn-6"}


def test_shadow_routes_live_on_the_admin_port(model_dir) -> None:
    from test_http_admin import TwoPortServer

    sock, admin = bound_socket(), bound_socket()
    with TwoPortServer(create_app(settings_for(model_dir, admin_port=admin.getsockname()[1])), sock, admin) as srv:
        assert httpx.get(srv.url + "/shadow").status_code == 404
        assert httpx.put(srv.url + "/shadow", json={"percent": 0}).status_code == 404
        assert httpx.get(srv.admin_url + "/shadow").json()["url"] is None
        assert httpx.put(srv.admin_url + "/shadow", json={"url": "http://10.0.0.1:8080", "percent": 3}).json()["percent"] == 3


@pytest.mark.slow  # a process of its own: torch import and model load (~8 s)
def test_sigterm_exits_at_once_while_a_canary_holds_a_mirror(model_dir) -> None:
    """The real process and signal path: pending mirrors never delay the drain."""
    import signal

    from server_harness import free_port, start_process

    with ScriptedCanary() as scripted:
        scripted.stall = True
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_process((model_dir / "model.pt").as_uri(), port, "--torch-threads", "1", "--shadow-url", scripted.url,
                             "--shadow-percent", "100", "--shadow-timeout-ms", "60000", "--shadow-concurrency", "1")  # fmt: skip
        try:
            def ready() -> bool:
                try:
                    return httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return proc.poll() is not None

            wait_for(ready, 90, "the server process to turn ready")
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            for _ in range(3):
                assert httpx.post(url + "/predict", json={"features": [1.0] * 64}).status_code == 200
            wait_for(lambda: len(scripted.received) == 1, 10, "the held mirror")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
            assert scripted.answered == 0  # it exited while the canary still held the mirror
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def _regressor(model_dir: Path, out: Path, *, shift: float) -> Path:
    """The example model turned regressor: one float output per row (no class dimension)."""
    import torch

    class Regressor(torch.nn.Module):
        def __init__(self, base: torch.nn.Module) -> None:
            super().__init__()
            self.base = base
            self.shift = shift

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.base(x).sum(dim=1, keepdim=True) + self.shift

    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        base = torch.jit.load(str(model_dir / "model.pt")).eval()
        torch.jit.save(torch.jit.script(Regressor(base)), str(out / "model.pt"))
    sig = _signature(model_dir)
    sig.pop("labels", None)
    sig["task"] = "regression"
    sig["outputs"] = [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}]
    (out / "signature.json").write_text(json.dumps(sig))
    return out


def test_a_regressor_exports_differences_and_no_disagreement_series(model_dir, tmp_path) -> None:
    """No class outputs: the disagreement series is absent (an analysis gating on
    maxDisagreement then has no data and holds), while the differences are exported."""
    stable_dir = _regressor(model_dir, tmp_path / "stable", shift=0.0)
    canary_dir = _regressor(model_dir, tmp_path / "canary", shift=0.5)
    with ServerThread(create_app(settings_for(canary_dir, model_version="c"))) as canary, \
         ServerThread(create_app(settings_for(stable_dir, model_version="s"))) as stable:
        canary.wait_ready()
        stable.wait_ready()
        assert _put(stable, url=canary.url, percent=100, revision="reg").status_code == 200
        for i in range(3):
            r = httpx.post(stable.url + "/predict", json={"features": [float(i)] * 64})
            assert r.status_code == 200
        wait_for(lambda: _outcomes(stable, "reg")["compared"] == 3, 10, "three comparisons")
        m = _metrics(stable)
        assert value(m, "modelship_shadow_rows_total", revision="reg") == 3
        assert value(m, "modelship_shadow_abs_diff_sum", revision="reg") == pytest.approx(1.5, rel=1e-4)
        assert value(m, "modelship_shadow_abs_diff_max", revision="reg") == pytest.approx(0.5, rel=1e-4)
        assert "modelship_shadow_disagreements_total" not in httpx.get(stable.url + "/metrics").text
