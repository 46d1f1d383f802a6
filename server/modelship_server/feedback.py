"""Online accuracy from feedback: join late ground truth to recent predictions by request id.

No torch, no FastAPI. The server records each answered request's predictions (one label or
value per row) under its `x-request-id`; clients later POST the truth for that id. The store
is bounded by entry count, by total stored rows and by age, with O(1) amortised eviction: an
OrderedDict in insertion order is also age order (monotonic clock), so eviction pops from
the front. Ids that left the store are remembered (without their predictions, a quarter as
many) for one more TTL, so a late answer says "expired" or "already received" instead
of "unknown".

Metrics over a window of the last `window` matched rows: accuracy (classification: the
fraction of rows whose prediction equals the truth) or MAE (regression: the mean over rows
of the mean absolute error over the row's outputs).
"""
from __future__ import annotations

import hmac
import json
import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Callable, Sequence

import numpy as np

TASKS = ("classification", "regression")
MATCHED, UNKNOWN, EXPIRED, DUPLICATE, INVALID = "matched", "unknown", "expired", "duplicate", "invalid"
OUTCOMES = (MATCHED, UNKNOWN, EXPIRED, DUPLICATE, INVALID)
# What a route should answer for each outcome: a clear JSON body, never an error page.
HTTP_STATUS = {MATCHED: 200, UNKNOWN: 404, EXPIRED: 404, DUPLICATE: 409, INVALID: 400}
UNKNOWN_MESSAGE = "no prediction with this request id is known"


@dataclass(frozen=True)
class FeedbackResult:
    outcome: str  # one of OUTCOMES
    request_id: str
    message: str
    rows: int = 0  # rows joined (matched only)
    correct: int | None = None  # rows predicted right (classification, matched only)
    mae: float | None = None  # this request's MAE (regression, matched only)

    @property
    def matched(self) -> bool:
        return self.outcome == MATCHED

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.outcome]

    def to_dict(self) -> dict[str, Any]:
        """The JSON answer; unmatched outcomes carry the server's usual {"error": ...} key."""
        body: dict[str, Any] = {"request_id": self.request_id, "result": self.outcome}
        body["message" if self.matched else "error"] = self.message
        if self.matched:
            body["rows"] = self.rows
            if self.correct is not None:
                body["correct"] = self.correct
            if self.mae is not None:
                body["mae"] = self.mae
        return body


@dataclass(frozen=True)
class FeedbackStats:
    task: str
    window_rows: int  # matched rows in the rolling window
    accuracy: float | None  # classification; None until a row matched
    mae: float | None  # regression; None until a row matched
    pending: int  # predictions waiting for feedback
    pending_rows: int
    counts: dict[str, int]  # feedback requests by outcome
    matched_rows: int  # all rows ever matched
    evicted: int  # predictions dropped unanswered (age, capacity or byte budget)
    bytes: int = 0  # estimated memory held: pending predictions and remembered ids
    max_bytes: int | None = None  # the byte budget (None: unbounded in bytes)
    remembered: int = 0  # ids kept without predictions (expired / already answered)
    duplicates: int = 0  # predictions not recorded: their request id was already known


# An entry is a plain (time recorded, predictions, bytes) tuple: a tuple holding only numbers
# and an array is untracked by the cyclic GC, so a full store does not lengthen the gen-2
# collections that stall the event loop (a dataclass or NamedTuple entry stays tracked).
# Predictions are compact copies: a one-row class is a Python int, anything else a small
# array that owns its data (never a view: a view pins the whole batch's output buffer,
# and under glibc malloc the freed activations around it, ~100x its own size).
_AT, _PREDICTIONS, _BYTES = 0, 1, 2
# Estimated bytes of one entry besides its predictions and id text: the tuple, the float,
# the str header and the OrderedDict slot and link (measured with tracemalloc, CPython 3.11).
ENTRY_OVERHEAD = 220
ARRAY_OVERHEAD = 112  # an ndarray object that owns its data, without the data
STORE_FULL = "store full"
_INTAKE_BATCH = 64  # recorded predictions queued before they are filed in one go


BYTES_OVERHEAD = 33  # a bytes object without its data


def compact_predictions(predictions: Any, classification: bool, byte_classes: bool = False) -> tuple[Any, int]:
    """(compact copy, its estimated bytes): an int for one integer class; with `byte_classes`
    (class indices known to be < 256) one byte per row; else an owned array."""
    if type(predictions) is int:
        return predictions, 0
    preds = np.asarray(predictions)
    if preds.ndim == 0:
        preds = preds.reshape(1)
    if classification:
        if preds.ndim != 1:
            raise ValueError("classification predictions must be one label per row")
        if preds.dtype.kind in "iu":
            if len(preds) == 1:
                return int(preds[0]), 0
            if byte_classes:
                data = preds.astype(np.uint8).tobytes()
                return data, BYTES_OVERHEAD + len(data)
    preds = preds.copy()  # owns its data: never pins the array it came from
    return preds, ARRAY_OVERHEAD + preds.nbytes


class FeedbackStore:
    """A bounded, time-limited map request id -> predictions, and the rolling metric.

    Bounded by entries, rows, age and estimated bytes (`max_bytes`: pending predictions plus
    remembered ids). A request id is recorded once: a later prediction under an id that is
    pending or remembered is not stored (the first one stays; counted in `duplicates`), so
    no request can overwrite another's prediction.

    `record` (the request path) appends to a queue without taking the lock; the queue is
    filed every few records and before any read. Everything else holds one lock: thread-safe,
    every operation O(rows of the request) amortised.
    """

    def __init__(
        self,
        ttl_seconds: float,
        max_entries: int,
        task: str = "classification",
        window: int = 1000,
        max_rows: int | None = None,
        labels: Sequence[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if ttl_seconds <= 0 or max_entries < 1 or window < 1 or (max_rows is not None and max_rows < 1):
            raise ValueError("ttl_seconds, max_entries, window and max_rows must be positive")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.ttl, self.max_entries, self.task, self.window = ttl_seconds, max_entries, task, window
        self.max_rows, self.max_bytes = max_rows, max_bytes
        self._max_rows = math.inf if max_rows is None else max_rows
        self._max_bytes = math.inf if max_bytes is None else max_bytes
        # ids remembered after they left (for "expired"/"duplicate" answers): a quarter of the
        # entries (at least 1000), since they only improve the answer to late feedback
        self.max_remembered = min(max_entries, max(1000, max_entries // 4))
        self._classification = task == "classification"
        # predictions are argmax indices < num_classes (the server's classifiers): at most 256
        # classes are kept as one byte per row
        self._byte_classes = self._classification and num_classes is not None and 0 < num_classes <= 256
        self._too_old = f"older than {ttl_seconds:g}s"  # one shared string for every remembered id
        # class names (the signature's labels): truth may name a class or give its index
        self._label_index = {str(name): i for i, name in enumerate(labels or ())}
        self._clock = clock
        self._lock = threading.Lock()
        # (request id, time, predictions, bytes) recorded, not yet filed: deque.append is atomic
        self._intake: deque[tuple[str, float, Any, int]] = deque()
        self._entries: OrderedDict[str, tuple[float, Any, int]] = OrderedDict()
        self._rows = 0
        self._bytes = 0  # entries and remembered ids
        # id -> (time it left, why): answers "expired"/"duplicate" for one more TTL
        self._gone: OrderedDict[str, tuple[float, str]] = OrderedDict()
        # rolling window of per-row scores: 1.0/0.0 correct, or the row's absolute error
        self._scores = np.zeros(window, dtype=np.float64)
        self._next = 0
        self._filled = 0
        self._counts = dict.fromkeys(OUTCOMES, 0)
        self._matched_rows = 0
        self._evicted = 0
        self._duplicates = 0

    def __len__(self) -> int:
        with self._lock:
            self._file_intake()
            return len(self._entries)

    @property
    def remembered(self) -> int:
        """Ids kept without predictions to tell expired/duplicate from unknown (bounded)."""
        with self._lock:
            self._file_intake()
            return len(self._gone)

    # -- request path ---------------------------------------------------------------
    def record(self, request_id: str, predictions: Any) -> None:
        """Remember a request's predictions: [rows] labels/values, or [rows, outputs] (regression).

        A one-row integer class may be passed as a plain int (no array at all)."""
        if type(predictions) is int:  # the server's one-row classes: nothing to copy
            payload, size = predictions, 0
        else:
            payload, size = compact_predictions(predictions, self._classification, self._byte_classes)
        intake = self._intake
        intake.append((request_id, self._clock(), payload, size + ENTRY_OVERHEAD + len(request_id)))
        if len(intake) >= _INTAKE_BATCH:
            with self._lock:
                self._file_intake()

    def feedback(self, request_id: str, truth: Any, count_unknown: bool = True) -> FeedbackResult:
        """Join the ground truth of an earlier request (one label/value per predicted row).

        `count_unknown=False` answers an unknown id without counting it (a question from a
        peer pod, or a first look before asking the peers)."""
        now = self._clock()
        with self._lock:
            self._file_intake()
            self._evict(now)
            entry = self._entries.get(request_id)
            if entry is None:
                gone = self._gone.get(request_id)
                if gone is None:
                    if not count_unknown:
                        return FeedbackResult(UNKNOWN, request_id, UNKNOWN_MESSAGE)
                    return self._count(UNKNOWN, request_id, UNKNOWN_MESSAGE)
                if gone[1] == MATCHED:
                    return self._count(DUPLICATE, request_id, "feedback for this request id was already received")
                return self._count(EXPIRED, request_id, f"the prediction was dropped before feedback arrived ({gone[1]})")
            predictions = entry[_PREDICTIONS]
            if isinstance(predictions, int):
                predictions = np.array([predictions])
            elif isinstance(predictions, bytes):
                predictions = np.frombuffer(predictions, dtype=np.uint8).astype(np.int64)
            try:
                scores = self._score(predictions, truth)
            except ValueError as exc:  # the entry stays: the client may retry with the right truth
                return self._count(INVALID, request_id, str(exc))
            del self._entries[request_id]
            self._rows -= len(predictions)
            self._bytes -= entry[_BYTES]
            self._forget(request_id, now, MATCHED)
            self._push(scores)
            self._matched_rows += len(scores)
            rows = len(scores)
            if self.task == "classification":
                correct = int(scores.sum())
                return self._count(MATCHED, request_id, f"{correct}/{rows} rows correct", rows, correct=correct)
            mae = float(scores.mean())
            return self._count(MATCHED, request_id, f"{rows} rows, MAE {mae:.6g}", rows, mae=mae)

    # -- metrics --------------------------------------------------------------------
    def stats(self) -> FeedbackStats:
        with self._lock:
            self._file_intake()
            self._evict(self._clock())
            n = self._filled
            value = float(self._scores[:n].mean()) if n else None
            return FeedbackStats(
                task=self.task,
                window_rows=n,
                accuracy=value if self.task == "classification" else None,
                mae=value if self.task == "regression" else None,
                pending=len(self._entries),
                pending_rows=self._rows,
                counts=dict(self._counts),
                matched_rows=self._matched_rows,
                evicted=self._evicted,
                bytes=self._bytes,
                max_bytes=self.max_bytes,
                remembered=len(self._gone),
                duplicates=self._duplicates,
            )

    # -- internals (lock held) --------------------------------------------------------
    def _count(self, outcome: str, request_id: str, message: str, rows: int = 0, **extra: Any) -> FeedbackResult:
        self._counts[outcome] += 1
        return FeedbackResult(outcome, request_id, message, rows, **extra)

    def _file_intake(self) -> None:
        """Move the recorded predictions into the map, oldest first; the first prediction
        under an id wins."""
        intake, entries, gone = self._intake, self._entries, self._gone
        rows = size_sum = duplicates = 0
        while intake:
            rid, at, payload, size = intake.popleft()
            if rid in entries or rid in gone:
                duplicates += 1
                continue
            entries[rid] = (at, payload, size)
            rows += 1 if type(payload) is int else len(payload)
            size_sum += size
        self._duplicates += duplicates
        if size_sum:
            self._rows += rows
            self._bytes += size_sum
            self._evict(self._clock())

    def _evict(self, now: float) -> None:
        gone, entries, ttl = self._gone, self._entries, self.ttl
        max_bytes = self._max_bytes
        # remembered ids go first: they only improve the answer to a late feedback
        while gone:
            if self._bytes > max_bytes or len(gone) > self.max_remembered or now - next(iter(gone.values()))[0] > ttl:
                rid, _ = gone.popitem(last=False)
                self._bytes -= ENTRY_OVERHEAD + len(rid)
            else:
                break
        while entries:  # too old
            rid, entry = next(iter(entries.items()))
            if now - entry[_AT] <= ttl:
                break
            self._drop(rid, entries.popitem(last=False)[1], now, self._too_old)
        max_entries, max_rows, max_remembered = self.max_entries, self._max_rows, self.max_remembered
        rows, size, evicted = self._rows, self._bytes, 0
        excess = len(entries) - max_entries
        if excess > 0 and size <= max_bytes:
            # Full by count (every recorded prediction once the store has filled): the oldest
            # `excess` go in one step, exactly as the loop below would take them. No step can
            # grow `size` (an entry's bytes include its id's), so with size within the budget
            # every evicted id is remembered; the loop then goes on only if rows still exceed.
            popitem = entries.popitem
            old = [popitem(False) for _ in range(excess)]
            for rid, entry in old:
                p = entry[_PREDICTIONS]
                rows -= 1 if type(p) is int else len(p)
                size += ENTRY_OVERHEAD + len(rid) - entry[_BYTES]
            evicted = excess
            # not in `gone`: ids are filed only when unknown there
            gone.update(zip([rid for rid, _ in old], repeat((now, STORE_FULL))))
            for _ in range(len(gone) - max_remembered):
                rid, _ = gone.popitem(last=False)
                size -= ENTRY_OVERHEAD + len(rid)
        while entries and (len(entries) > max_entries or rows > max_rows or size > max_bytes):
            rid, entry = entries.popitem(last=False)  # the oldest: arrival order is age order
            p = entry[_PREDICTIONS]
            rows -= 1 if type(p) is int else len(p)
            size -= entry[_BYTES]
            evicted += 1
            # remembered (inlined _forget: this loop runs once per recorded prediction when full)
            remember = ENTRY_OVERHEAD + len(rid)
            if size + remember <= max_bytes:
                gone[rid] = (now, STORE_FULL)  # not in `gone`: ids are filed only when unknown there
                size += remember
                if len(gone) > max_remembered:
                    old, _ = gone.popitem(last=False)
                    size -= ENTRY_OVERHEAD + len(old)
        self._rows, self._bytes = rows, size
        self._evicted += evicted

    def _drop(self, rid: str, entry: tuple[float, Any, int], now: float, why: str) -> None:
        p = entry[_PREDICTIONS]
        self._rows -= 1 if type(p) is int else len(p)
        self._bytes -= entry[_BYTES]
        self._evicted += 1
        self._forget(rid, now, why)

    def _forget(self, request_id: str, now: float, why: str) -> None:
        """Remember an id that left the map, within the entry and byte bounds."""
        gone = self._gone
        size = ENTRY_OVERHEAD + len(request_id)
        if self._bytes + size > self._max_bytes:
            return  # predictions come first; this id will answer "unknown"
        if request_id in gone:
            del gone[request_id]
            self._bytes -= size
        gone[request_id] = (now, why)
        self._bytes += size
        if len(gone) > self.max_remembered:
            rid, _ = gone.popitem(last=False)
            self._bytes -= ENTRY_OVERHEAD + len(rid)

    def _score(self, predictions: np.ndarray, truth: Any) -> np.ndarray:
        try:
            t = np.asarray(truth)
        except (TypeError, ValueError) as exc:  # ragged lists
            raise ValueError(f"truth is not a regular array: {exc}") from None
        if t.ndim == 0:
            t = t.reshape(1)
        if t.dtype.kind not in "biufUS":
            raise ValueError("truth must be numbers or label strings")
        if t.shape != predictions.shape:
            raise ValueError(
                f"truth has shape {list(t.shape)}, the prediction has shape {list(predictions.shape)}: "
                f"send one {'label' if self.task == 'classification' else 'value'} per predicted row"
            )
        if self.task == "classification":
            p = predictions
            if self._label_index and t.dtype.kind in "US" and p.dtype.kind in "biu":
                try:
                    t = np.array([self._label_index[str(v)] for v in t.tolist()], dtype=np.int64)
                except KeyError as exc:
                    raise ValueError(f"unknown label {exc.args[0]!r}") from None
            if t.dtype.kind in "biuf" and p.dtype.kind in "biuf":
                return (t == p).astype(np.float64)
            # labels as strings on one side (e.g. "3" vs 3): compare their text
            return (t.astype(str) == p.astype(str)).astype(np.float64)
        if t.dtype.kind not in "biuf":
            raise ValueError("regression truth must be numbers")
        err = np.abs(t.astype(np.float64) - predictions.astype(np.float64))
        if not np.isfinite(err).all():
            raise ValueError("truth contains NaN or infinite values")
        return err.reshape(len(err), -1).mean(axis=1)

    def _push(self, scores: np.ndarray) -> None:
        if len(scores) > self.window:
            scores = scores[-self.window :]
        k, start = len(scores), self._next
        first = min(k, self.window - start)
        self._scores[start : start + first] = scores[:first]
        if first < k:
            self._scores[: k - first] = scores[first:]
        self._next = (start + k) % self.window
        self._filled = min(self._filled + k, self.window)


MAX_FEEDBACK_ITEMS = 1000


def feedback_denied(token: str, authorization: str | None) -> tuple[int, dict[str, Any], dict[str, str]] | None:
    """None when a feedback request may proceed, else (status, JSON body, headers).

    With a token set (MODELSHIP_FEEDBACK_TOKEN), feedback needs `Authorization: Bearer <token>`:
    without the header 401 (and a WWW-Authenticate challenge), with a wrong token 403. Feedback
    moves the online accuracy that alerts and dashboards read, so it can be kept to the
    systems that hold the ground truth."""
    if not token:
        return None
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return 401, {"error": "feedback needs an Authorization: Bearer <token> header (MODELSHIP_FEEDBACK_TOKEN is set)"}, \
            {"www-authenticate": 'Bearer realm="modelship-feedback"'}  # fmt: skip
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return 403, {"error": "the feedback token is not valid"}, {}
    return None


def parse_feedback(body: bytes | str, max_items: int = MAX_FEEDBACK_ITEMS) -> tuple[list[tuple[str, Any]], bool] | str:
    """([(request_id, truth), ...], single?) of a feedback body, or an error message."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"feedback body is not valid JSON: {exc}"
    except RecursionError:
        return "feedback body is nested too deeply"
    if isinstance(doc, dict) and "feedback" in doc:
        items = doc["feedback"]
        if not isinstance(items, list) or not items:
            return '"feedback" must be a non-empty list of {"request_id", "truth"} objects'
        if len(items) > max_items:
            return f"at most {max_items} feedback items per request, got {len(items)}"
        parsed = [_item(x, f"feedback[{i}]") for i, x in enumerate(items)]
        bad = next((p for p in parsed if isinstance(p, str)), None)
        if bad is not None:
            return bad
        return parsed, False  # type: ignore[return-value]
    one = _item(doc, "feedback")
    if isinstance(one, str):
        return one
    return [one], True


def feedback_answer(results: Sequence[tuple[int, dict[str, Any]]], single: bool) -> tuple[int, dict[str, Any]]:
    """The route's (status, body) from per-item (status, body) answers."""
    if single:
        return results[0]
    matched = sum(1 for _, body in results if body.get("result") == MATCHED)
    return 200, {"matched": matched, "unmatched": len(results) - matched, "results": [body for _, body in results]}


def answer_feedback(store: FeedbackStore, body: bytes | str, max_items: int = MAX_FEEDBACK_ITEMS,
                    count_unknown: bool = True) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """The feedback routes' whole job: parse a JSON body, join it, return (status, JSON body).

    One:  {"request_id": "<x-request-id of the prediction>", "truth": [label or value per row]}
          ("id" is accepted for "request_id"; a bare value is fine for a one-row request)
          -> the FeedbackResult's status and body (200 matched, 404 unknown/expired, ...).
    Many: {"feedback": [{"request_id": ..., "truth": ...}, ...]} (at most `max_items`)
          -> 200 {"matched": n, "unmatched": m, "results": [...]} whatever the outcomes.
    A malformed body is 400 {"error": ...}.
    """
    parsed = parse_feedback(body, max_items)
    if isinstance(parsed, str):
        return 400, {"error": parsed}
    items, single = parsed
    results = [store.feedback(rid, truth, count_unknown) for rid, truth in items]
    return feedback_answer([(r.http_status, r.to_dict()) for r in results], single)


def _item(obj: Any, what: str) -> tuple[str, Any] | str:
    """(request_id, truth), or an error message."""
    if not isinstance(obj, dict):
        return f'{what} must be an object {{"request_id": ..., "truth": [...]}}'
    rid = obj.get("request_id", obj.get("id"))
    if not isinstance(rid, str) or not rid:
        return f'{what}: "request_id" must be a non-empty string (the x-request-id of the prediction)'
    if "truth" not in obj or obj["truth"] is None:
        return f'{what}: "truth" is required (one label or value per predicted row)'
    return rid, obj["truth"]
