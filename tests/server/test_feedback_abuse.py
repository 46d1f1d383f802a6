"""Ids and feedback that cannot be abused, over real HTTP with the example model: random
128-bit server ids, a client-chosen id never replaces a stored prediction, feedback behind a
token (peer forwarding included), and the stores' memory exported against their budgets."""
from __future__ import annotations

import re
from pathlib import Path

import httpx
import numpy as np

from modelship_server.app import create_app
from modelship_server.ids import RandomIds
from metrics_text import parse, value
from server_harness import ServerThread, bound_socket, settings_for


def _serve(model_dir: Path, **overrides) -> ServerThread:
    return ServerThread(create_app(settings_for(model_dir, max_batch_size=32, max_delay_ms=2, **overrides)))


def _two_classes(X: np.ndarray, reference) -> tuple[np.ndarray, np.ndarray]:
    """Two held-out rows the model puts in different classes."""
    pred = reference(X[:50]).argmax(axis=1)
    j = int(np.flatnonzero(pred != pred[0])[0])
    return X[0], X[j]


def test_server_ids_are_random_128_bit(model_dir: Path, heldout) -> None:
    X, _ = heldout
    with _serve(model_dir) as srv:
        srv.wait_ready()
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            ids = [c.post("/predict", json={"features": X[i % 50].tolist()}).headers["x-request-id"] for i in range(300)]
            ids.append(c.get("/v2/health/ready").headers["x-request-id"])
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and len(set(ids)) == len(ids)
    # no shared prefix or counter: every hex digit position takes many values
    assert min(len({i[k] for i in ids}) for k in range(32)) >= 10
    gen = RandomIds(pool_bytes=64)  # refills its pool every 4 ids
    assert len({gen() for _ in range(1000)}) == 1000


def test_a_client_chosen_id_never_replaces_the_stored_prediction(model_dir: Path, heldout, reference) -> None:
    X, _ = heldout
    first, other = _two_classes(X, reference)
    want = int(reference(first[None])[0].argmax())
    with _serve(model_dir) as srv:
        srv.wait_ready()
        r1 = httpx.post(srv.url + "/predict", json={"features": first.tolist()}, headers={"x-request-id": "order-17"})
        r2 = httpx.post(srv.url + "/predict", json={"features": other.tolist()}, headers={"x-request-id": "order-17"})
        assert r1.status_code == r2.status_code == 200
        assert r1.headers["x-request-id"] == r2.headers["x-request-id"] == "order-17"  # echoed: it traces the call
        r = httpx.post(srv.url + "/feedback", json={"request_id": "order-17", "truth": want})
        assert r.status_code == 200 and r.json()["correct"] == 1, r.text  # joined to the first prediction
        m = parse(httpx.get(srv.url + "/metrics").text)
        assert value(m, "modelship_feedback_duplicate_ids_total") == 1
        assert value(m, "modelship_feedback_pending_predictions") == 0


def test_feedback_needs_the_token_when_one_is_set(model_dir: Path, heldout) -> None:
    X, y = heldout
    with _serve(model_dir, feedback_token="s3cret-t0ken") as srv:
        srv.wait_ready()
        rid = httpx.post(srv.url + "/predict", json={"features": X[0].tolist()}).headers["x-request-id"]
        item = {"request_id": rid, "truth": int(y[0])}
        r = httpx.post(srv.url + "/feedback", json=item)
        assert r.status_code == 401 and "Bearer" in r.json()["error"] and r.headers["www-authenticate"].startswith("Bearer")
        r = httpx.post(srv.url + "/v2/models/digits/feedback", json=item, headers={"authorization": "Bearer " + rid})
        assert r.status_code == 403 and r.json() == {"error": "the feedback token is not valid"}
        m = parse(httpx.get(srv.url + "/metrics").text)
        assert value(m, "modelship_feedback_total") == 0  # refused requests never reach the store
        r = httpx.post(srv.url + "/feedback", json=item, headers={"authorization": "Bearer s3cret-t0ken"})
        assert r.status_code == 200 and r.json()["result"] == "matched"


def test_peers_forward_feedback_with_the_token(model_dir: Path, heldout) -> None:
    X, y = heldout
    sock_a, sock_b = bound_socket(), bound_socket()
    port_a, port_b = (s.getsockname()[1] for s in (sock_a, sock_b))
    token = {"authorization": "Bearer tok"}
    a = ServerThread(create_app(settings_for(model_dir, feedback_token="tok", feedback_peers=f"127.0.0.1:{port_b}")), sock_a)
    b = ServerThread(create_app(settings_for(model_dir, feedback_token="tok", feedback_peers=f"127.0.0.1:{port_a}")), sock_b)
    with a, b:
        a.wait_ready()
        b.wait_ready()
        rid = httpx.post(a.url + "/predict", json={"features": X[3].tolist()}).headers["x-request-id"]
        assert httpx.post(b.url + "/feedback", json={"request_id": rid, "truth": int(y[3])}).status_code == 401
        r = httpx.post(b.url + "/feedback", json={"request_id": rid, "truth": int(y[3])}, headers=token)
        assert r.status_code == 200 and r.json()["result"] == "matched", r.text


def test_store_memory_is_exported_against_its_budget(model_dir: Path, heldout, tmp_path: Path) -> None:
    X, _ = heldout
    budget = 64 << 10
    with _serve(model_dir, feedback_max_bytes=budget, audit_file=str(tmp_path / "audit.jsonl")) as srv:
        srv.wait_ready()
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            for i in range(600):
                assert c.post("/predict/batch", json={"batch_features": X[i % 400 : i % 400 + 8].tolist()}).status_code == 200
        m = parse(httpx.get(srv.url + "/metrics").text)
    held = {s: value(m, "modelship_monitor_store_bytes", store=s) for s in ("feedback", "audit", "drift")}
    assert 0.5 * budget < held["feedback"] <= budget == value(m, "modelship_monitor_store_budget_bytes", store="feedback")
    assert value(m, "modelship_feedback_evicted_total") > 0
    assert value(m, "modelship_monitor_store_entries", store="feedback") > 50
    assert held["drift"] == 1000 * 64 * 4 and value(m, "modelship_monitor_store_entries", store="drift") == 1000  # full window
    assert value(m, "modelship_monitor_store_budget_bytes", store="audit") == 8 << 20


def test_a_forked_child_never_repeats_its_parents_ids() -> None:
    import os

    gen = RandomIds()
    gen()  # the pool is full of drawn-but-unused ids when the fork happens
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next ids and leave at once
        os.write(write, b"".join(gen() for _ in range(8)))
        os._exit(0)
    os.close(write)
    child = os.read(read, 1024)
    os.close(read)
    os.waitpid(pid, 0)
    parent = b"".join(gen() for _ in range(8))
    assert len(child) == len(parent) == 8 * 32
    assert {child[i : i + 32] for i in range(0, 256, 32)}.isdisjoint(parent[i : i + 32] for i in range(0, 256, 32))
