"""Feedback joins on real digits predictions, bounded memory and expiry with an injected clock."""
from __future__ import annotations

import gc
import json
import tracemalloc
import weakref

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from modelship_server.feedback import FeedbackStore, answer_feedback, feedback_denied


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def heldout_predictions() -> tuple[np.ndarray, np.ndarray]:
    """A deterministic nearest-centroid classifier on the example model's split: (pred, truth)."""
    digits = load_digits()
    x_tr, x_ho, y_tr, y_ho = train_test_split(
        digits.data, digits.target, test_size=0.25, stratify=digits.target, random_state=0
    )
    centroids = np.stack([x_tr[y_tr == c].mean(axis=0) for c in range(10)])
    dist = ((x_ho[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    return dist.argmin(axis=1), y_ho


def chunks(n: int, seed: int) -> list[slice]:
    """Variable-size requests (1..16 rows) covering n rows."""
    rng = np.random.default_rng(seed)
    out, start = [], 0
    while start < n:
        size = int(rng.integers(1, 17))
        out.append(slice(start, min(start + size, n)))
        start += size
    return out


def test_online_accuracy_equals_offline_accuracy(heldout_predictions) -> None:
    pred, truth = heldout_predictions
    offline = float((pred == truth).mean())
    assert 0.8 < offline < 1.0  # a real classifier with real mistakes
    store = FeedbackStore(ttl_seconds=60, max_entries=10_000, window=1000, clock=Clock())
    requests = chunks(len(pred), seed=3)
    for i, sl in enumerate(requests):
        store.record(f"req-{i}", pred[sl])
    results = [store.feedback(f"req-{i}", truth[sl].tolist()) for i, sl in enumerate(requests)]
    assert all(r.matched and r.http_status == 200 for r in results)
    assert sum(r.correct for r in results) == int((pred == truth).sum())
    stats = store.stats()
    assert stats.accuracy == offline  # exactly
    assert stats.window_rows == stats.matched_rows == len(pred)
    assert stats.counts["matched"] == len(requests) and stats.pending == 0 and stats.mae is None


def test_rolling_window_covers_the_last_n_matched_rows(heldout_predictions) -> None:
    pred, truth = heldout_predictions
    store = FeedbackStore(ttl_seconds=60, max_entries=10_000, window=100, clock=Clock())
    requests = chunks(len(pred), seed=4)
    for i, sl in enumerate(requests):
        store.record(str(i), pred[sl])
        store.feedback(str(i), truth[sl])
    assert store.stats().accuracy == float((pred[-100:] == truth[-100:]).mean())
    assert store.stats().window_rows == 100


def test_string_labels_match_integer_predictions() -> None:
    store = FeedbackStore(ttl_seconds=60, max_entries=10, clock=Clock())
    store.record("a", np.array([3, 5, 7]))
    result = store.feedback("a", ["3", "5", "1"])
    assert result.matched and result.correct == 2 and result.to_dict()["result"] == "matched"
    store.record("b", np.array(["cat", "dog"]))
    assert store.feedback("b", "cat dog".split()).correct == 2
    assert store.stats().accuracy == pytest.approx(4 / 5)


def test_regression_mae_over_rows_and_outputs() -> None:
    store = FeedbackStore(ttl_seconds=60, max_entries=10, task="regression", clock=Clock())
    store.record("r1", np.array([1.0, 2.0, 3.0]))
    store.record("r2", np.array([[0.0, 0.0], [1.0, 1.0]]))
    assert store.feedback("r1", [1.5, 2.0, 1.0]).mae == pytest.approx((0.5 + 0 + 2) / 3)
    assert store.feedback("r2", [[1.0, 3.0], [1.0, 1.0]]).mae == pytest.approx((2.0 + 0.0) / 2)
    stats = store.stats()
    assert stats.mae == pytest.approx((0.5 + 0 + 2 + 2 + 0) / 5) and stats.accuracy is None
    store.record("r3", [1.0])
    bad = store.feedback("r3", [float("nan")])
    assert bad.outcome == "invalid" and "NaN" in bad.message


def test_shape_mismatch_is_invalid_and_the_prediction_waits_for_a_retry() -> None:
    store = FeedbackStore(ttl_seconds=60, max_entries=10, clock=Clock())
    store.record("x", np.array([1, 2, 3]))
    bad = store.feedback("x", [1, 2])
    assert bad.outcome == "invalid" and bad.http_status == 400
    assert "shape [2]" in bad.message and "shape [3]" in bad.message
    assert len(store) == 1
    assert store.feedback("x", [1, 2, 0]).correct == 2
    again = store.feedback("x", [1, 2, 3])
    assert again.outcome == "duplicate" and again.http_status == 409
    assert store.stats().counts == {"matched": 1, "unknown": 0, "expired": 0, "duplicate": 1, "invalid": 1}
    assert store.stats().window_rows == 3  # the duplicate did not count twice


def test_expiry_by_injected_clock() -> None:
    clock = Clock()
    store = FeedbackStore(ttl_seconds=30, max_entries=100, clock=clock)
    store.record("old", [1])
    clock.t += 20
    store.record("young", [2])
    clock.t += 15  # "old" is 35 s old, "young" 15 s
    late = store.feedback("old", [1])
    assert late.outcome == "expired" and late.http_status == 404 and "older than 30s" in late.message
    assert store.feedback("young", [2]).matched
    assert store.feedback("never-seen", [0]).outcome == "unknown"
    clock.t += 31  # the memory of "old" expires too: now it is simply unknown
    assert store.feedback("old", [1]).outcome == "unknown"
    stats = store.stats()
    assert stats.counts["expired"] == 1 and stats.counts["unknown"] == 2 and stats.evicted == 1
    assert stats.pending == 0 and store.remembered == 0


def test_capacity_eviction_says_store_full() -> None:
    store = FeedbackStore(ttl_seconds=3600, max_entries=3, clock=Clock())
    for i in range(5):
        store.record(f"r{i}", [i])
    assert len(store) == 3
    result = store.feedback("r0", [0])
    assert result.outcome == "expired" and "store full" in result.message
    assert store.feedback("r4", [4]).matched


def test_rows_bound() -> None:
    store = FeedbackStore(ttl_seconds=3600, max_entries=1000, max_rows=100, clock=Clock())
    for i in range(50):
        store.record(str(i), np.zeros(30, dtype=np.int64))
        assert store.stats().pending_rows <= 100
    assert len(store) == 3


def test_count_and_rows_bounds_in_one_filing_match_filing_one_by_one() -> None:
    """Records that pass the entry bound and then the rows bound evict the same whether or not
    the store is read in between: the oldest first, every evicted id remembered."""

    def fill(store: FeedbackStore, one_by_one: bool) -> None:
        for i in range(10):
            store.record(f"r{i}", np.full(5, i, dtype=np.int64))  # 50 rows
            if one_by_one:
                len(store)  # files the intake
        for i in range(54):
            store.record(f"i{i}", i % 10)
            if one_by_one:
                len(store)

    batched = FeedbackStore(ttl_seconds=3600, max_entries=40, max_rows=30, clock=Clock())
    single = FeedbackStore(ttl_seconds=3600, max_entries=40, max_rows=30, clock=Clock())
    fill(batched, one_by_one=False)  # 64 records: filed in one go
    fill(single, one_by_one=True)
    for store in (batched, single):
        stats = store.stats()
        assert (len(store), stats.pending_rows, stats.evicted, stats.remembered) == (30, 30, 34, 34)
        assert stats.bytes == single.stats().bytes
        for rid in [f"r{i}" for i in range(10)] + [f"i{i}" for i in range(24)]:
            result = store.feedback(rid, [0])
            assert result.outcome == "expired" and "store full" in result.message, rid
        assert store.feedback("i24", [4]).matched and store.feedback("i53", [3]).matched


def test_memory_bounded_under_a_flood() -> None:
    clock = Clock()
    store = FeedbackStore(ttl_seconds=300, max_entries=1000, clock=clock)
    store.record("real", [7])
    n = 200_000
    for i in range(n):  # unknown ids: counted, never stored
        result = store.feedback(f"bogus-{i}", [1])
        assert result.outcome == "unknown"
    assert len(store) == 1 and store.remembered == 0
    assert store.stats().counts["unknown"] == n
    pred = np.array([1])
    for i in range(n):  # predictions nobody answers: the oldest go
        store.record(f"p-{i}", pred)
        if len(store) > 1000:
            pytest.fail(f"store grew to {len(store)}")
        clock.t += 0.001
    assert store.remembered <= 1000
    stats = store.stats()
    # eviction drops the oldest generation (an eighth of the bound) whole
    assert 1000 - 1000 // 8 <= stats.pending <= 1000 and stats.evicted == n + 1 - stats.pending
    assert store.feedback(f"p-{n - 1}", [1]).matched
    assert store.feedback("real", [7]).outcome == "unknown"  # long forgotten, memory bounded too


def test_answer_feedback_bodies_single_and_batch() -> None:
    store = FeedbackStore(ttl_seconds=60, max_entries=100, clock=Clock())
    store.record("a", np.array([1, 2]))
    store.record("b", np.array([3]))
    status, body = answer_feedback(store, json.dumps({"request_id": "a", "truth": [1, 0]}).encode())
    assert status == 200 and body == {"request_id": "a", "result": "matched", "message": "1/2 rows correct", "rows": 2, "correct": 1}
    status, body = answer_feedback(store, b'{"id": "nope", "truth": 1}')
    assert status == 404 and body["result"] == "unknown" and "no prediction" in body["error"]
    status, body = answer_feedback(store, b'{"request_id": "b", "truth": {"x": 1}}')
    assert status == 400 and "numbers or label strings" in body["error"]
    store.record("c", np.array([4]))
    status, body = answer_feedback(
        store, json.dumps({"feedback": [{"request_id": "b", "truth": 3}, {"request_id": "a", "truth": [1, 2]}, {"request_id": "c", "truth": [4]}]})
    )
    assert status == 200 and body["matched"] == 2 and body["unmatched"] == 1
    assert [r["result"] for r in body["results"]] == ["matched", "duplicate", "matched"]
    assert store.stats().accuracy == pytest.approx(3 / 4)
    for bad, needle in [
        (b"{nope", "not valid JSON"),
        (b"[1, 2]", "must be an object"),
        (b'{"truth": [1]}', "request_id"),
        (b'{"request_id": "a"}', '"truth" is required'),
        (b'{"feedback": []}', "non-empty list"),
        (json.dumps({"feedback": [{"request_id": "a", "truth": 1}] * 3}).encode(), "at most 2"),
    ]:
        status, body = answer_feedback(store, bad, max_items=2)
        assert status == 400 and needle in body["error"], (bad, body)


def test_truth_may_name_the_class_when_labels_are_known() -> None:
    store = FeedbackStore(ttl_seconds=60, max_entries=10, labels=["cat", "dog", "bird"], clock=Clock())
    store.record("a", np.array([0, 1, 2]))  # class indices, as the server's argmax gives them
    assert store.feedback("a", ["cat", "bird", "bird"]).correct == 2
    store.record("b", np.array([1]))
    assert store.feedback("b", [1]).correct == 1  # indices work too
    store.record("c", np.array([1]))
    bad = store.feedback("c", ["horse"])
    assert bad.outcome == "invalid" and "horse" in bad.message


# -- byte budget, compact copies, first prediction wins ---------------------------------------


def test_a_second_prediction_under_an_id_never_replaces_the_first() -> None:
    store = FeedbackStore(ttl_seconds=60, max_entries=100, clock=Clock())
    store.record("victim", np.array([1, 2]))
    store.record("victim", np.array([7, 7]))  # e.g. another client choosing the same x-request-id
    assert len(store) == 1 and store.stats().duplicates == 1
    result = store.feedback("victim", [1, 2])
    assert result.matched and result.correct == 2
    store.record("victim", np.array([7, 7]))  # answered ids are remembered: still not re-recorded
    assert len(store) == 0 and store.stats().duplicates == 2
    assert store.feedback("victim", [7, 7]).outcome == "duplicate"


def test_stored_predictions_are_copies_that_do_not_pin_the_batch_output() -> None:
    store = FeedbackStore(ttl_seconds=60, max_entries=100, task="regression", clock=Clock())
    classes = FeedbackStore(ttl_seconds=60, max_entries=100, clock=Clock())
    batch = np.random.default_rng(0).random((4096, 64)).astype(np.float32)  # 1 MiB "output buffer"
    labels = np.arange(4096, dtype=np.int64)
    alive = [weakref.ref(batch), weakref.ref(labels)]
    store.record("r", batch[:2])  # views, as np.split hands them out
    classes.record("c", labels[:3])
    classes.record("one", labels[5:6])
    del batch, labels
    gc.collect()
    assert [ref() for ref in alive] == [None, None]  # nothing kept the 1 MiB alive
    assert classes.feedback("c", [0, 1, 2]).correct == 3 and classes.feedback("one", [5]).correct == 1
    assert store.feedback("r", np.zeros((2, 64))).matched


def test_byte_budget_bounds_the_memory_really_held() -> None:
    budget = 2 << 20
    store = FeedbackStore(ttl_seconds=3600, max_entries=1_000_000, max_rows=100_000_000, max_bytes=budget, clock=Clock())
    preds = np.arange(32, dtype=np.int64) % 10
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(40_000):  # ~4x what fits
            store.record(f"{i:032x}", preds)
            if i % 1000 == 999:
                assert store.stats().bytes <= budget
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    stats = store.stats()
    assert stats.evicted > 20_000 and stats.pending > 1000
    assert budget * 0.8 < stats.bytes <= budget
    assert held < budget * 1.25, f"{held} bytes held for an estimate of {stats.bytes}"  # the estimate is honest
    assert store.feedback(f"{39_999:032x}", preds.tolist()).matched


def test_remembered_ids_count_in_the_budget() -> None:
    store = FeedbackStore(ttl_seconds=3600, max_entries=1_000_000, max_bytes=100_000, clock=Clock())
    for i in range(5000):
        store.record(f"id-{i}", [i % 10])
        store.feedback(f"id-{i}", [i % 10])  # matched: remembered without predictions
    stats = store.stats()
    assert stats.pending == 0 and 0 < stats.remembered < 5000 and stats.bytes <= 100_000


def test_feedback_token() -> None:
    assert feedback_denied("", None) is None and feedback_denied("", "Bearer x") is None
    status, body, headers = feedback_denied("s3cret", None)
    assert status == 401 and "Bearer" in body["error"] and headers["www-authenticate"].startswith("Bearer")
    assert feedback_denied("s3cret", "Basic czNjcmV0")[0] == 401
    assert feedback_denied("s3cret", "Bearer guess")[:2] == (403, {"error": "the feedback token is not valid"})
    assert feedback_denied("s3cret", "bearer  s3cret ") is None


def test_up_to_256_classes_are_kept_as_one_byte_per_row(heldout_predictions) -> None:
    pred, truth = heldout_predictions
    small = FeedbackStore(ttl_seconds=60, max_entries=10_000, num_classes=10, clock=Clock())
    plain = FeedbackStore(ttl_seconds=60, max_entries=10_000, clock=Clock())
    requests = chunks(len(pred), seed=5)
    for store in (small, plain):
        for i, sl in enumerate(requests):
            store.record(f"req-{i}", pred[sl].astype(np.int64))
    assert small.stats().bytes < 0.75 * plain.stats().bytes  # ~1 byte a row instead of 8 + an array header
    for i, sl in enumerate(requests):
        a, b = small.feedback(f"req-{i}", truth[sl].tolist()), plain.feedback(f"req-{i}", truth[sl].tolist())
        assert a.matched and a.correct == b.correct
    assert small.stats().accuracy == plain.stats().accuracy == float((pred == truth).mean())


# -- generations: bounds, arrival order, age, server-drawn ids ---------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from modelship_server.feedback import GENERATIONS  # noqa: E402

_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("server"), st.integers(0, 9)),  # one-row class under a server-drawn id
        st.tuples(st.just("client"), st.integers(1, 12)),  # rows under a client id (may repeat)
        st.tuples(st.just("feedback"), st.integers(0, 400)),
        st.tuples(st.just("tick"), st.floats(0.0, 20.0)),
    ),
    max_size=400,
)


@settings(max_examples=60, deadline=None)
@given(ops=_OPS, max_entries=st.integers(1, 60), max_rows=st.integers(12, 200), max_bytes=st.integers(600, 20_000))
def test_bounds_and_arrival_order_hold_for_any_sequence(ops, max_entries, max_rows, max_bytes) -> None:
    """Whatever is recorded, answered or aged: every bound holds after every step, and the
    predictions still pending are always the newest of those never answered (eviction and
    expiry take the oldest first), across both recording paths."""
    clock = Clock()
    store = FeedbackStore(ttl_seconds=60, max_entries=max_entries, max_rows=max_rows, max_bytes=max_bytes,
                          num_classes=10, clock=clock)  # fmt: skip
    stored: list[str] = []  # ids recorded and not refused as duplicates, in arrival order
    answered: set[str] = set()
    for step, (op, arg) in enumerate(ops):
        if op == "server":
            rid = f"s{step:030d}"
            store.record(rid, arg, unique=True)
            stored.append(rid)
        elif op == "client":
            rid = f"c{step % 7}"  # client ids collide on purpose
            before = store.stats().duplicates
            store.record(rid, np.arange(arg) % 10)
            if store.stats().duplicates == before:
                stored.append(rid)
        elif op == "feedback" and stored:
            rid = stored[arg % len(stored)]
            if store.feedback(rid, [0] * 64).outcome in ("matched", "invalid") and rid not in answered:
                # a wrong-length truth is "invalid" and keeps the prediction; retry with its rows
                rows = store.stats().pending_rows
                for n in range(1, 13):
                    if store.feedback(rid, [0] * n).matched:
                        answered.add(rid)
                        break
                assert store.stats().pending_rows <= rows
        else:
            clock.t += arg
        stats = store.stats()
        assert stats.pending <= max_entries and stats.pending_rows <= max_rows and stats.bytes <= max_bytes
        assert stats.remembered <= store.max_remembered
        waiting = [rid for rid in dict.fromkeys(stored) if rid not in answered]
        pending = [_pending(store, rid) for rid in waiting]
        assert pending == sorted(pending), "a younger prediction left before an older one"


def _pending(store: FeedbackStore, rid: str) -> bool:
    with store._lock:  # a look without consuming: is the prediction still held?
        store._file_intake()
        return any(rid in g.entries for g in store._live)


def test_a_full_store_keeps_at_least_seven_eighths_of_its_bound() -> None:
    store = FeedbackStore(ttl_seconds=3600, max_entries=8000, clock=Clock())
    lows = []
    for i in range(40_000):
        store.record(f"{i:032x}", i % 10, unique=True)
        if i >= 8000 and i % 97 == 0:
            lows.append(len(store))
    assert 8000 - 8000 // GENERATIONS <= min(lows) and max(lows) <= 8000
    stats = store.stats()
    assert stats.evicted == 40_000 - stats.pending
    assert store.feedback(f"{39_999:032x}", [39_999 % 10]).matched
    newest_evicted = 40_000 - stats.pending - 1  # remembered (its generation, the last dropped)
    assert "store full" in store.feedback(f"{newest_evicted:032x}", [0]).message
    assert store.feedback(f"{0:032x}", [0]).outcome == "unknown"  # remembered ids are bounded too


def test_a_prediction_lives_at_least_its_ttl_and_at_most_nine_eighths_of_it() -> None:
    clock = Clock()
    ttl = 80.0
    store = FeedbackStore(ttl_seconds=ttl, max_entries=100_000, clock=clock)
    born = {}
    for i in range(4000):  # one prediction every 0.1 s for 400 s
        rid = f"{i:032x}"
        store.record(rid, i % 10, unique=True)
        born[rid] = clock.t
        clock.t += 0.1
        if i % 50 == 0:
            store.stats()  # reads expire what outlived the TTL
    now = clock.t
    pending = [rid for rid in born if _pending(store, rid)]
    ages = [now - born[rid] for rid in pending]
    # a generation spans TTL/8, and its predictions count as recorded when filed (here at least
    # every 5 s: a read every 50 records files the queue)
    assert max(ages) <= ttl * (1 + 1 / GENERATIONS) + 5.0 + 0.1
    assert all(_pending(store, rid) for rid, t in born.items() if now - t < ttl)
    oldest_gone = max((rid for rid in born if rid not in pending), key=born.get)
    assert "older than 80s" in store.feedback(oldest_gone, [0]).message


def test_server_ids_queue_without_the_lock_and_keep_arrival_order_with_client_ids() -> None:
    """One-row classes under server-drawn ids wait in a queue; a client-id record files it
    first, so the two paths keep one arrival order (the oldest is evicted first)."""
    store = FeedbackStore(ttl_seconds=3600, max_entries=8, clock=Clock())
    store.record("s1", 1, unique=True)
    store.record("s2", 2, unique=True)
    store.record("client", np.array([3, 4]))  # files s1, s2 first
    for i in range(3, 8):
        store.record(f"s{i}", i, unique=True)
    assert len(store) == 8
    store.record("s9", 9, unique=True)  # one over the bound: s1, the oldest, goes
    assert store.feedback("s1", [1]).outcome == "expired"
    assert store.feedback("s2", [2]).matched and store.feedback("client", [3, 4]).correct == 2
    store.record("s9", 5)  # a client reusing a server id that is still pending: refused
    assert store.stats().duplicates == 1 and store.feedback("s9", [9]).matched
