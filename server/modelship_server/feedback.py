"""Online accuracy from feedback: join late ground truth to recent predictions by request id.

No torch, no FastAPI. The server records each answered request's predictions (one label or
value per row) under its `x-request-id`; clients later POST the truth for that id. The store
is bounded by entry count, by total stored rows and by age, with O(1) amortised eviction: an
OrderedDict in insertion order is also age order (monotonic clock), so eviction pops from
the front. Ids that left the store are remembered (without their predictions, equally
bounded) for one more TTL, so a late answer says "expired" or "already received" instead
of "unknown".

Metrics over a window of the last `window` matched rows: accuracy (classification: the
fraction of rows whose prediction equals the truth) or MAE (regression: the mean over rows
of the mean absolute error over the row's outputs).
"""
from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
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
    evicted: int  # predictions dropped unanswered (age or capacity)


# An entry is a plain (time recorded, predictions) tuple: a tuple holding only a float and an
# array is untracked by the cyclic GC, so a full store does not lengthen the gen-2 collections
# that stall the event loop (a dataclass or NamedTuple entry stays tracked).
_AT, _PREDICTIONS = 0, 1


class FeedbackStore:
    """A bounded, time-limited map request id -> predictions, and the rolling metric.

    Thread-safe (one lock); every operation is O(rows of the request) amortised.
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
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if ttl_seconds <= 0 or max_entries < 1 or window < 1 or (max_rows is not None and max_rows < 1):
            raise ValueError("ttl_seconds, max_entries, window and max_rows must be positive")
        self.ttl, self.max_entries, self.task, self.window = ttl_seconds, max_entries, task, window
        self.max_rows = max_rows
        # class names (the signature's labels): truth may name a class or give its index
        self._label_index = {str(name): i for i, name in enumerate(labels or ())}
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, np.ndarray]] = OrderedDict()
        self._rows = 0
        # id -> (time it left, why): answers "expired"/"duplicate" for one more TTL
        self._gone: OrderedDict[str, tuple[float, str]] = OrderedDict()
        # rolling window of per-row scores: 1.0/0.0 correct, or the row's absolute error
        self._scores = np.zeros(window, dtype=np.float64)
        self._next = 0
        self._filled = 0
        self._counts = dict.fromkeys(OUTCOMES, 0)
        self._matched_rows = 0
        self._evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def remembered(self) -> int:
        """Ids kept without predictions to tell expired/duplicate from unknown (bounded)."""
        return len(self._gone)

    # -- request path ---------------------------------------------------------------
    def record(self, request_id: str, predictions: Any) -> None:
        """Remember a request's predictions: [rows] labels/values, or [rows, outputs] (regression)."""
        preds = np.asarray(predictions)
        if preds.ndim == 0:
            preds = preds.reshape(1)
        if self.task == "classification" and preds.ndim != 1:
            raise ValueError("classification predictions must be one label per row")
        now = self._clock()
        with self._lock:
            old = self._entries.pop(request_id, None)
            if old is not None:
                self._rows -= len(old[_PREDICTIONS])
            self._gone.pop(request_id, None)
            self._entries[request_id] = (now, preds)
            self._rows += len(preds)
            self._evict(now)

    def feedback(self, request_id: str, truth: Any, count_unknown: bool = True) -> FeedbackResult:
        """Join the ground truth of an earlier request (one label/value per predicted row).

        `count_unknown=False` answers an unknown id without counting it (a question from a
        peer pod, or a first look before asking the peers)."""
        now = self._clock()
        with self._lock:
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
            try:
                scores = self._score(entry[_PREDICTIONS], truth)
            except ValueError as exc:  # the entry stays: the client may retry with the right truth
                return self._count(INVALID, request_id, str(exc))
            del self._entries[request_id]
            self._rows -= len(entry[_PREDICTIONS])
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
            )

    # -- internals (lock held) --------------------------------------------------------
    def _count(self, outcome: str, request_id: str, message: str, rows: int = 0, **extra: Any) -> FeedbackResult:
        self._counts[outcome] += 1
        return FeedbackResult(outcome, request_id, message, rows, **extra)

    def _evict(self, now: float) -> None:
        entries = self._entries
        while entries:
            rid, entry = next(iter(entries.items()))
            if now - entry[_AT] > self.ttl:
                why = f"older than {self.ttl:g}s"
            elif len(entries) > self.max_entries or (self.max_rows is not None and self._rows > self.max_rows):
                why = "store full"
            else:
                break
            entries.popitem(last=False)
            self._rows -= len(entry[_PREDICTIONS])
            self._evicted += 1
            self._forget(rid, now, why)
        gone = self._gone
        while gone:
            at = next(iter(gone.values()))[0]
            if now - at > self.ttl or len(gone) > self.max_entries:
                gone.popitem(last=False)
            else:
                break

    def _forget(self, request_id: str, now: float, why: str) -> None:
        self._gone.pop(request_id, None)
        self._gone[request_id] = (now, why)
        if len(self._gone) > self.max_entries:
            self._gone.popitem(last=False)

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


def parse_feedback(body: bytes | str, max_items: int = MAX_FEEDBACK_ITEMS) -> tuple[list[tuple[str, Any]], bool] | str:
    """([(request_id, truth), ...], single?) of a feedback body, or an error message."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"feedback body is not valid JSON: {exc}"
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
