"""Monitoring over real HTTP with the example model and its held-out data: drift gauges from
the interval worker, online accuracy from feedback, bounded feedback memory, peer forwarding."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pytest

from modelship_server.app import create_app
from metrics_text import Samples, parse, value
from server_harness import ServerThread, bound_socket, settings_for, wait_for

MODEL = "digits"
INFER = f"/v2/models/{MODEL}/infer"


def _v2(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}


def _request(kind: str, x: np.ndarray) -> tuple[str, dict[str, Any]]:
    """Single-row and multi-row requests over every protocol."""
    if kind == "predict":
        return "/predict", {"features": x[0].tolist()}
    if kind == "batch":
        return "/predict/batch", {"batch_features": x.tolist()}
    if kind == "v1":
        return f"/v1/models/{MODEL}:predict", {"instances": x.tolist()}
    return INFER, _v2(x)


def _chunks(n: int) -> list[tuple[str, int, int]]:
    """(protocol, start, rows) covering rows 0..n-1 once: single rows mixed with batches of 2..9."""
    kinds = ["predict", "v2", "batch", "v1", "predict", "v2"]
    plan, start, i = [], 0, 0
    while start < n:
        kind = kinds[i % len(kinds)]
        rows = 1 if kind == "predict" else min(2 + (i * 5) % 8, n - start)
        plan.append((kind, start, rows))
        start += rows
        i += 1
    return plan


def _predict_all(url: str, X: np.ndarray, concurrency: int = 8) -> list[tuple[str, int, int]]:
    """Send X through the server in mixed requests; (x-request-id, start, rows) of each."""

    async def run() -> list[tuple[str, int, int]]:
        sem = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:

            async def one(kind: str, start: int, rows: int) -> tuple[str, int, int]:
                path, body = _request(kind, X[start : start + rows])
                async with sem:
                    r = await client.post(path, json=body)
                assert r.status_code == 200, r.text
                return r.headers["x-request-id"], start, rows

            return await asyncio.gather(*(one(*c) for c in _chunks(len(X))))

    return asyncio.run(run())


def _metrics(url: str) -> Samples:
    return parse(httpx.get(url + "/metrics", timeout=10).text)


def _serve(model_dir: Path, **overrides: Any) -> ServerThread:
    overrides.setdefault("drift_interval_s", 0.1)
    app = create_app(settings_for(model_dir, max_batch_size=32, max_delay_ms=2, **overrides))
    return ServerThread(app)


@pytest.fixture()
def server(model_dir: Path) -> Iterator[ServerThread]:
    with _serve(model_dir) as srv:
        srv.wait_ready()
        yield srv


def _scored_after(url: str, rows: int, since: float) -> Samples:
    """/metrics once the interval worker has scored a window of `rows` rows computed after `since`."""
    holder: dict[str, Samples] = {}

    def scored() -> bool:
        m = holder["m"] = _metrics(url)
        return (value(m, "modelship_drift_window_rows") == rows
                and value(m, "modelship_drift_last_run_timestamp_seconds") > since)  # fmt: skip

    wait_for(scored, 20, "a drift computation over the sent rows")
    return holder["m"]


def _flagged(m: Samples) -> set[str]:
    return {dict(ls)["feature"] for (n, ls), v in m.items() if n == "modelship_drift_feature_detected" and v == 1}


# -- drift ----------------------------------------------------------------------------------


def test_heldout_inputs_raise_no_drift(server: ServerThread, heldout) -> None:
    X, _ = heldout
    m = _metrics(server.url)
    assert value(m, "modelship_drift_enabled") == 1  # the example ships reference_profile.json
    assert value(m, "modelship_drift_inconclusive") == 1 and value(m, "modelship_drift_detected") == 0
    sent = time.time()
    _predict_all(server.url, X)
    m = _scored_after(server.url, len(X), sent)
    assert value(m, "modelship_drift_inconclusive") == 0
    assert value(m, "modelship_drift_detected") == 0
    assert _flagged(m) == set()
    psi = {dict(ls)["feature"]: v for (n, ls), v in m.items() if n == "modelship_drift_psi"}
    assert len(psi) == 64 and max(psi.values()) == pytest.approx(value(m, "modelship_drift_psi_max"))
    assert value(m, "modelship_drift_psi_max") < value(m, "modelship_drift_threshold") / 2
    # the on-demand report agrees with the exported one on the same window
    report = httpx.get(f"{server.url}/v2/models/{MODEL}/drift").json()
    assert report["rows"] == len(X) and report["drift"] is False and report["input"] == "input"
    assert report["psi_max"] == pytest.approx(value(m, "modelship_drift_psi_max"))


def test_shifted_and_rescaled_features_raise_drift_for_those_only(server: ServerThread, heldout) -> None:
    X, _ = heldout
    order = np.argsort(-X.std(axis=0))  # features that vary: moving them is a real change
    shifted, rescaled = [int(order[0]), int(order[1])], int(order[2])
    Z = X.copy()
    Z[:, shifted] += 3.0  # e.g. a sensor offset
    Z[:, rescaled] *= 0.5  # e.g. a unit change
    sent = time.time()
    _predict_all(server.url, Z)
    m = _scored_after(server.url, len(Z), sent)
    moved = {f"f{j}" for j in [*shifted, rescaled]}
    assert value(m, "modelship_drift_detected") == 1
    assert _flagged(m) == moved
    for (n, ls), v in m.items():
        if n == "modelship_drift_psi":
            feature = dict(ls)["feature"]
            assert (v >= 0.2) == (feature in moved), (feature, v)


def test_drift_off_without_a_profile_and_feedback_off(model_dir: Path) -> None:
    with _serve(model_dir, drift_reference="off", feedback_max_entries=0) as srv:
        srv.wait_ready()
        m = _metrics(srv.url)
        assert value(m, "modelship_drift_enabled") == 0
        assert ("modelship_drift_detected", frozenset({("model", MODEL), ("version", "1.0.0")})) not in m
        r = httpx.get(f"{srv.url}/v2/models/{MODEL}/drift")
        assert r.status_code == 404 and "off" in r.json()["error"]
        r = httpx.post(srv.url + "/feedback", json={"request_id": "x", "truth": 1})
        assert r.status_code == 404 and "feedback is off" in r.json()["error"]


# -- feedback -------------------------------------------------------------------------------


def test_online_accuracy_equals_offline_accuracy_of_the_heldout_set(server: ServerThread, heldout, reference) -> None:
    X, y = heldout
    offline = float((reference(X).argmax(axis=1) == y).mean())
    sent = _predict_all(server.url, X)
    assert len({rid for rid, _, _ in sent}) == len(sent)
    m = _metrics(server.url)
    assert value(m, "modelship_feedback_pending_predictions") == len(sent)
    assert value(m, "modelship_feedback_pending_rows") == len(X)
    # Truth as class indices or label names, one by one on both routes, then the rest in bulk.
    one_by_one, bulk = sent[:20], sent[20:]
    for i, (rid, start, rows) in enumerate(one_by_one):
        truth = y[start : start + rows].tolist()
        if i % 2:
            truth = [str(t) for t in truth]  # the signature's labels are "0".."9"
        path = "/feedback" if i % 3 else f"/v2/models/{MODEL}/feedback"
        r = httpx.post(server.url + path, json={"request_id": rid, "truth": truth})
        assert r.status_code == 200, r.text
        assert r.json()["result"] == "matched" and r.json()["rows"] == rows
    r = httpx.post(server.url + "/feedback", json={
        "feedback": [{"request_id": rid, "truth": y[s : s + n].tolist()} for rid, s, n in bulk]})  # fmt: skip
    assert r.status_code == 200 and r.json()["matched"] == len(bulk) and r.json()["unmatched"] == 0
    m = _metrics(server.url)
    assert value(m, "modelship_online_accuracy") == pytest.approx(offline, abs=1e-12)
    assert value(m, "modelship_feedback_window_rows") == len(X)
    assert value(m, "modelship_feedback_matched_rows_total") == len(X)
    assert value(m, "modelship_feedback_total", result="matched") == len(sent)
    assert value(m, "modelship_feedback_pending_predictions") == 0
    # Feedback is not inference: no modelship_requests series for it.
    assert value(m, "modelship_requests_total") == len(sent)

    # A second answer for the same id, an unknown id, a wrong row count, a malformed body:
    rid, start, rows = sent[-1]
    r = httpx.post(server.url + "/feedback", json={"request_id": rid, "truth": y[start : start + rows].tolist()})
    assert r.status_code == 409 and r.json()["result"] == "duplicate" and "error" in r.json()
    r = httpx.post(f"{server.url}/v2/models/{MODEL}/feedback", json={"request_id": "no-such-id", "truth": [1]})
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    assert r.json() == {"request_id": "no-such-id", "result": "unknown",
                        "error": "no prediction with this request id is known"}  # fmt: skip
    assert r.headers["x-request-id"] and r.headers["x-model-version"] == "1.0.0"
    rid2 = _predict_all(server.url, X[:3])[0][0]
    r = httpx.post(server.url + "/feedback", json={"request_id": rid2, "truth": [1, 2, 3, 4]})
    assert r.status_code == 400 and r.json()["result"] == "invalid"
    r = httpx.post(server.url + "/feedback", content=b"{not json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = httpx.post(f"{server.url}/v2/models/other/feedback", json={"request_id": rid2, "truth": [1]})
    assert r.status_code == 404 and "other" in r.json()["error"]
    m = _metrics(server.url)
    assert value(m, "modelship_feedback_total", result="unknown") == 1
    assert value(m, "modelship_feedback_total", result="duplicate") == 1
    assert value(m, "modelship_feedback_total", result="invalid") == 1
    assert value(m, "modelship_online_accuracy") == pytest.approx(offline, abs=1e-12)  # unchanged
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200


def test_feedback_memory_stays_bounded_under_a_flood(model_dir: Path, heldout) -> None:
    X, y = heldout
    bound = 40
    with _serve(model_dir, feedback_max_entries=bound, feedback_max_rows=100) as srv:
        srv.wait_ready()
        # more predictions than the store keeps; one at a time, so the eviction order is known
        sent = _predict_all(srv.url, X[:300], concurrency=1)
        m = _metrics(srv.url)
        pending = int(value(m, "modelship_feedback_pending_predictions"))
        assert 0 < pending <= bound
        assert value(m, "modelship_feedback_pending_rows") <= 100
        assert value(m, "modelship_feedback_evicted_total") == len(sent) - pending
        # the oldest were pushed out: feedback for a recently evicted one is "expired", not an error page
        rid, start, rows = sent[len(sent) - pending - 1]
        r = httpx.post(srv.url + "/feedback", json={"request_id": rid, "truth": y[start : start + rows].tolist()})
        assert r.status_code == 404 and r.json()["result"] == "expired" and "store full" in r.json()["error"]
        # a flood of ids nobody predicted: answered, counted, never stored
        flood = 0
        for batch in range(5):
            items = [{"request_id": f"flood-{batch}-{i}", "truth": [i % 10]} for i in range(1000)]
            r = httpx.post(srv.url + "/feedback", json={"feedback": items}, timeout=30)
            assert r.status_code == 200 and r.json()["unmatched"] == 1000
            flood += 1000
            m = _metrics(srv.url)
            assert value(m, "modelship_feedback_pending_predictions") <= bound
        assert srv.service.monitoring.feedback.remembered <= bound  # late-id memory is bounded too
        assert value(m, "modelship_feedback_total", result="unknown") == flood
        # the pending predictions are still joinable after the flood
        rid, start, rows = sent[-1]
        r = httpx.post(srv.url + "/feedback", json={"request_id": rid, "truth": y[start : start + rows].tolist()})
        assert r.status_code == 200 and r.json()["result"] == "matched"
        assert httpx.get(srv.url + "/v2/health/ready").status_code == 200


def test_feedback_after_the_ttl_is_expired(model_dir: Path, heldout) -> None:
    X, y = heldout
    # An evicted id is remembered as expired for one more TTL: 2 s leaves a loaded machine
    # time between seeing the eviction and posting the feedback.
    with _serve(model_dir, feedback_ttl_s=2.0) as srv:
        srv.wait_ready()
        (rid, _, _), = _predict_all(srv.url, X[:1])
        wait_for(lambda: value(_metrics(srv.url), "modelship_feedback_pending_predictions") == 0, 10, "ttl eviction")
        r = httpx.post(srv.url + "/feedback", json={"request_id": rid, "truth": int(y[0])})
        assert r.status_code == 404 and r.json()["result"] == "expired"


def test_feedback_reaches_the_pod_that_served_the_prediction(model_dir: Path, heldout) -> None:
    """Two replicas: feedback sent to B for a prediction A served is joined on A (one hop)."""
    X, y = heldout
    sock_a, sock_b, dead = bound_socket(), bound_socket(), bound_socket()  # `dead` never listens
    port_a, port_b, port_dead = (s.getsockname()[1] for s in (sock_a, sock_b, dead))
    # A names its peer by DNS (as with a headless Service), B by address, plus a dead peer.
    a = ServerThread(create_app(settings_for(model_dir, feedback_peers=f"localhost:{port_b}")), sock_a)
    b = ServerThread(create_app(settings_for(model_dir, feedback_peers=f"127.0.0.1:{port_a},127.0.0.1:{port_dead}",
                                             feedback_peer_timeout_ms=1000)), sock_b)  # fmt: skip
    try:
        with a, b:
            a.wait_ready()
            b.wait_ready()
            on_a = _predict_all(a.url, X[:30])
            on_b = _predict_all(b.url, X[30:60])
            rid, start, rows = on_a[0]
            r = httpx.post(b.url + "/feedback", json={"request_id": rid, "truth": y[start : start + rows].tolist()})
            assert r.status_code == 200 and r.json()["result"] == "matched", r.text
            # a mixed batch at A: one of A's, one of B's, one nobody knows
            (ra, sa, na), (rb, sb, nb) = on_a[1], on_b[0]
            r = httpx.post(a.url + "/feedback", json={"feedback": [
                {"request_id": ra, "truth": y[sa : sa + na].tolist()},
                {"request_id": rb, "truth": y[sb : sb + nb].tolist()},
                {"request_id": "nobody", "truth": [0]},
            ]})  # fmt: skip
            body = r.json()
            assert r.status_code == 200 and body["matched"] == 2 and body["unmatched"] == 1
            assert [x["result"] for x in body["results"]] == ["matched", "matched", "unknown"]
            # a second answer for A's id, sent to B, is a duplicate (A remembers it), not unknown
            r = httpx.post(b.url + "/feedback", json={"request_id": rid, "truth": y[start : start + rows].tolist()})
            assert r.status_code == 409 and r.json()["result"] == "duplicate"
            ma, mb = _metrics(a.url), _metrics(b.url)
            # every item counted once, by the pod that holds it (or the one asked, when nobody does)
            assert value(ma, "modelship_feedback_total", result="matched") == 2
            assert value(mb, "modelship_feedback_total", result="matched") == 1
            assert value(ma, "modelship_feedback_total", result="unknown") == 1
            assert value(mb, "modelship_feedback_total", result="unknown") == 0
            assert value(ma, "modelship_feedback_total", result="duplicate") == 1
            assert value(mb, "modelship_feedback_forwarded_total", result="matched") == 1
            assert value(mb, "modelship_feedback_forwarded_total", result="duplicate") == 1
            assert value(ma, "modelship_feedback_forwarded_total", result="matched") == 1
            assert value(ma, "modelship_feedback_matched_rows_total") == na + rows
    finally:
        dead.close()
