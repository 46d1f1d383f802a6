"""Online accuracy from feedback: join late ground truth to recent predictions by request id.

No torch, no FastAPI. The server records each answered request's predictions (one label or
value per row) under its `x-request-id`; clients later POST the truth for that id. The store
is bounded by entry count, by total stored rows, by estimated bytes and by age.

It is kept in generations: plain dicts filled in arrival order, each holding at most an eighth
of every bound (and of the TTL). Recording touches only the newest, small dict (the server's
one-row predictions are queued and filed 64 at a time); eviction drops the oldest generation
whole, so a full store costs a record no more than an empty one. (With one ordered map, each
record into a full store also moved the oldest entry to the remembered ids: four ordered-map
operations on 100k-entry maps, ~2.3 us of the event loop per one-row request measured inside
the server, ~5 % of its one-row throughput.) The price is granularity: a full store holds between
7/8 and all of its bounds, and a prediction is kept at least its TTL and at most 9/8 of it
(plus the time it waited in the queue: until 64 more were recorded or the next read).
Ids that left the store are remembered (without their predictions, a quarter as many) for
one more TTL, so a late answer says "expired" or "already received" instead of "unknown".

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
from operator import itemgetter
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


# Estimated bytes besides the id's characters (tracemalloc, CPython 3.11, rounded up to the
# allocator's blocks): a pending entry is its id string (~64) and a dict slot (up to ~64 in a
# generation's dict as it grows); a remembered id, its string and a slot in a presized dict;
# an answered id, its string, an ordered-dict slot and node, and its float time.
ENTRY_OVERHEAD = 128
REMEMBERED_OVERHEAD = 112
ANSWERED_OVERHEAD = 200
ARRAY_OVERHEAD = 112  # an ndarray object that owns its data, without the data
BYTES_OVERHEAD = 33  # a bytes object without its data
STORE_FULL = "store full"
GENERATIONS = 8  # a generation holds at most 1/8 of each bound: eviction granularity 1/8
_INTAKE_BATCH = 64  # one-row predictions queued before they are filed in one go


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


def _payload_size(payload: Any) -> tuple[int, int]:
    """(rows, estimated bytes) of a stored payload: what record counted for it."""
    if type(payload) is int:
        return 1, 0
    if type(payload) is bytes:
        return len(payload), BYTES_OVERHEAD + len(payload)
    return len(payload), ARRAY_OVERHEAD + payload.nbytes


class _Generation:
    """Pending predictions recorded one after another: id -> compact payload, and their sums."""

    __slots__ = ("entries", "first_at", "last_at", "rows", "bytes")

    def __init__(self, now: float) -> None:
        self.entries: dict[str, Any] = {}
        self.first_at = self.last_at = now
        self.rows = self.bytes = 0


class _Remembered:
    """Ids of a dropped generation, without predictions: why and when they left."""

    __slots__ = ("ids", "at", "why", "bytes")

    def __init__(self, ids: dict[str, None], at: float, why: str, size: int) -> None:
        self.ids, self.at, self.why, self.bytes = ids, at, why, size


class FeedbackStore:
    """A bounded, time-limited map request id -> predictions, and the rolling metric.

    Bounded by entries, rows, age and estimated bytes (`max_bytes`: pending predictions plus
    remembered ids). A request id is recorded once: a later prediction under an id that is
    pending or remembered is not stored (the first one stays; counted in `duplicates`), so
    no request can overwrite another's prediction. The server skips that check for the ids it
    draws itself (`unique=True`: 128 random bits never collide); their one-row classes are
    only queued (no lock) and filed 64 at a time into the newest generation in one dict update.

    Thread-safe (one lock, and an append-only queue); every operation O(rows of the request)
    amortised.
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
        # a generation is closed once it holds 1/GENERATIONS of any bound or of the TTL
        self._gen_entries = -(-max_entries // GENERATIONS)
        self._gen_rows = math.inf if max_rows is None else -(-max_rows // GENERATIONS)
        self._gen_bytes = math.inf if max_bytes is None else -(-max_bytes // GENERATIONS)
        self._gen_span = ttl_seconds / GENERATIONS
        self._classification = task == "classification"
        # predictions are argmax indices < num_classes (the server's classifiers): at most 256
        # classes are kept as one byte per row
        self._byte_classes = self._classification and num_classes is not None and 0 < num_classes <= 256
        self._too_old = f"older than {ttl_seconds:g}s"
        # class names (the signature's labels): truth may name a class or give its index
        self._label_index = {str(name): i for i, name in enumerate(labels or ())}
        self._clock = clock
        self._lock = threading.Lock()
        # one-row predictions under server-drawn ids, not yet filed: deque.append is atomic
        self._intake: deque[tuple[str, int]] = deque()
        self._intake_since = 0.0  # when the first of them was recorded
        now = clock()
        self._live: deque[_Generation] = deque([_Generation(now)])  # oldest first; [-1] takes records
        self._count = self._rows = 0  # pending entries and rows, every generation
        self._bytes = 0  # pending entries and remembered ids
        self._dropped: deque[_Remembered] = deque()  # ids of dropped generations, oldest first
        self._dropped_ids = 0
        self._answered: OrderedDict[str, float] = OrderedDict()  # ids whose feedback was received
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
            self._expire(self._clock())
            return self._count

    @property
    def remembered(self) -> int:
        """Ids kept without predictions to tell expired/duplicate from unknown (bounded)."""
        with self._lock:
            self._file_intake()
            self._expire(self._clock())
            return self._dropped_ids + len(self._answered)

    # -- request path ---------------------------------------------------------------
    def record(self, request_id: str, predictions: Any, unique: bool = False) -> None:
        """Remember a request's predictions: [rows] labels/values, or [rows, outputs] (regression).

        A one-row integer class may be passed as a plain int (no array at all). `unique`: the
        id cannot be known already (the server drew it: 128 random bits), so no duplicate check.
        That case (the server's one-row classes) only appends to a queue, without the lock; the
        queue is filed in one step every few records and before any read."""
        if unique and type(predictions) is int:
            intake = self._intake
            if not intake:
                self._intake_since = self._clock()
            intake.append((request_id, predictions))
            if len(intake) >= _INTAKE_BATCH:
                with self._lock:
                    self._file_intake()
            return
        payload, size = compact_predictions(predictions, self._classification, self._byte_classes)
        rows, size = 1 if type(payload) is int else len(payload), size + ENTRY_OVERHEAD + len(request_id)
        with self._lock:
            self._file_intake()  # arrival order: what was queued before this goes first
            if not unique and self._known(request_id):
                self._duplicates += 1
                return
            self._file([(request_id, payload)], rows, size, self._clock())

    def feedback(self, request_id: str, truth: Any, count_unknown: bool = True) -> FeedbackResult:
        """Join the ground truth of an earlier request (one label/value per predicted row).

        `count_unknown=False` answers an unknown id without counting it (a question from a
        peer pod, or a first look before asking the peers)."""
        with self._lock:
            self._file_intake()
            now = self._clock()
            self._expire(now)
            gen = next((g for g in reversed(self._live) if request_id in g.entries), None)
            if gen is None:
                if request_id in self._answered:
                    return self._count_outcome(DUPLICATE, request_id, "feedback for this request id was already received")
                gone = next((r for r in reversed(self._dropped) if request_id in r.ids), None)
                if gone is not None:
                    return self._count_outcome(EXPIRED, request_id, f"the prediction was dropped before feedback arrived ({gone.why})")
                if not count_unknown:
                    return FeedbackResult(UNKNOWN, request_id, UNKNOWN_MESSAGE)
                return self._count_outcome(UNKNOWN, request_id, UNKNOWN_MESSAGE)
            payload = gen.entries[request_id]
            if type(payload) is int:
                predictions = np.array([payload])
            elif type(payload) is bytes:
                predictions = np.frombuffer(payload, dtype=np.uint8).astype(np.int64)
            else:
                predictions = payload
            try:
                scores = self._score(predictions, truth)
            except ValueError as exc:  # the entry stays: the client may retry with the right truth
                return self._count_outcome(INVALID, request_id, str(exc))
            del gen.entries[request_id]
            rows, size = _payload_size(payload)
            size += ENTRY_OVERHEAD + len(request_id)
            gen.rows -= rows
            gen.bytes -= size
            self._count -= 1
            self._rows -= rows
            self._bytes -= size
            self._remember_answered(request_id, now)
            self._push(scores)
            self._matched_rows += len(scores)
            rows = len(scores)
            if self.task == "classification":
                correct = int(scores.sum())
                return self._count_outcome(MATCHED, request_id, f"{correct}/{rows} rows correct", rows, correct=correct)
            mae = float(scores.mean())
            return self._count_outcome(MATCHED, request_id, f"{rows} rows, MAE {mae:.6g}", rows, mae=mae)

    # -- metrics --------------------------------------------------------------------
    def stats(self) -> FeedbackStats:
        with self._lock:
            self._file_intake()
            self._expire(self._clock())
            n = self._filled
            value = float(self._scores[:n].mean()) if n else None
            return FeedbackStats(
                task=self.task,
                window_rows=n,
                accuracy=value if self.task == "classification" else None,
                mae=value if self.task == "regression" else None,
                pending=self._count,
                pending_rows=self._rows,
                counts=dict(self._counts),
                matched_rows=self._matched_rows,
                evicted=self._evicted,
                bytes=self._bytes,
                max_bytes=self.max_bytes,
                remembered=self._dropped_ids + len(self._answered),
                duplicates=self._duplicates,
            )

    # -- internals (lock held) --------------------------------------------------------
    def _count_outcome(self, outcome: str, request_id: str, message: str, rows: int = 0, **extra: Any) -> FeedbackResult:
        self._counts[outcome] += 1
        return FeedbackResult(outcome, request_id, message, rows, **extra)

    def _file_intake(self) -> None:
        """File the queued one-row predictions (unique ids, int classes), oldest first."""
        intake = self._intake
        n = len(intake)
        if not n:
            return
        popleft = intake.popleft
        items = [popleft() for _ in range(n)]  # the event loop may append meanwhile: those wait
        self._file(items, n, n * ENTRY_OVERHEAD + sum(map(len, map(itemgetter(0), items))), self._clock(),
                   since=self._intake_since)  # fmt: skip

    def _file(self, items: list[tuple[str, Any]], rows: int, size: int, now: float, since: float | None = None) -> None:
        """Store predictions that arrived in this order (`rows` and `size` in all), recorded
        between `since` and `now`: in one step when they fit the newest generation and every
        bound, else one at a time, closing generations and making room as they fill."""
        gen = self._live[-1]
        if (len(gen.entries) + len(items) <= self._gen_entries and gen.rows + rows <= self._gen_rows
                and gen.bytes + size <= self._gen_bytes and self._count + len(items) <= self.max_entries
                and self._rows + rows <= self._max_rows and self._bytes + size <= self._max_bytes
                and (not gen.entries or now - gen.first_at < self._gen_span)):  # fmt: skip
            if not gen.entries:
                gen.first_at = now if since is None else since
            gen.entries.update(items)
            gen.last_at = now
            gen.rows += rows
            gen.bytes += size
            self._count += len(items)
            self._rows += rows
            self._bytes += size
            return
        for rid, payload in items:
            r, b = _payload_size(payload)
            self._file_one(rid, payload, r, b + ENTRY_OVERHEAD + len(rid), now, now if since is None else since)

    def _file_one(self, request_id: str, payload: Any, rows: int, size: int, now: float, since: float) -> None:
        """One prediction recorded between `since` and `now`."""
        if rows > self._max_rows or size > self._max_bytes:  # could never fit: not kept
            self._evicted += 1
            return
        gen = self._live[-1]
        if not gen.entries:
            gen.first_at = since
        elif (len(gen.entries) >= self._gen_entries or gen.rows + rows > self._gen_rows
              or gen.bytes + size > self._gen_bytes or now - gen.first_at >= self._gen_span):  # fmt: skip
            gen = _Generation(since)
            self._live.append(gen)
            self._expire(now)
        if self._count >= self.max_entries or self._rows + rows > self._max_rows or self._bytes + size > self._max_bytes:
            self._make_room(rows, size, now)
            gen = self._live[-1]
        gen.entries[request_id] = payload
        gen.last_at = now
        gen.rows += rows
        gen.bytes += size
        self._count += 1
        self._rows += rows
        self._bytes += size

    def _known(self, request_id: str) -> bool:
        """Pending or remembered: a prediction under this id must not be stored again."""
        if request_id in self._answered:
            return True
        for gen in self._live:
            if request_id in gen.entries:
                return True
        for gone in self._dropped:
            if request_id in gone.ids:
                return True
        return False

    def _expire(self, now: float) -> None:
        """Drop what outlived the TTL: generations whose newest prediction is older than it,
        then remembered ids kept one TTL longer than that."""
        live, ttl = self._live, self.ttl
        while now - live[0].last_at > ttl and (len(live) > 1 or live[0].entries):
            self._drop_oldest(now, self._too_old)
        self._forget(now)

    def _make_room(self, rows: int, size: int, now: float) -> None:
        """Drop whole generations, oldest first, until one more prediction of `rows` rows and
        `size` bytes fits every bound; remembered ids go before any prediction."""
        while self._bytes + size > self._max_bytes and (self._dropped or self._answered):
            self._forget_oldest()
        while self._count and (self._count >= self.max_entries or self._rows + rows > self._max_rows
                               or self._bytes + size > self._max_bytes):  # fmt: skip
            self._drop_oldest(now, STORE_FULL)
            while self._bytes + size > self._max_bytes and (self._dropped or self._answered):
                self._forget_oldest()

    def _drop_oldest(self, now: float, why: str) -> None:
        """Evict the oldest generation's predictions; remember their ids if the budget allows."""
        live = self._live
        gen = live.popleft()
        if not live:
            live.append(_Generation(now))
        n = len(gen.entries)
        self._count -= n
        self._rows -= gen.rows
        self._bytes -= gen.bytes
        self._evicted += n
        if not n:
            return
        size = n * REMEMBERED_OVERHEAD + sum(map(len, gen.entries))
        if self._bytes + size <= self._max_bytes and n <= self.max_remembered:
            self._dropped.append(_Remembered(dict.fromkeys(gen.entries), now, why, size))
            self._dropped_ids += n
            self._bytes += size
        self._forget(now)

    def _remember_answered(self, request_id: str, now: float) -> None:
        size = ANSWERED_OVERHEAD + len(request_id)
        if self._bytes + size > self._max_bytes:
            return  # predictions come first; this id will answer "unknown"
        self._answered[request_id] = now
        self._bytes += size
        self._forget(now)

    def _forget(self, now: float) -> None:
        """Remembered ids: within the count bound and for one TTL after they left."""
        dropped, answered, ttl = self._dropped, self._answered, self.ttl
        while dropped or answered:
            oldest = min(dropped[0].at if dropped else math.inf, next(iter(answered.values())) if answered else math.inf)
            if self._dropped_ids + len(answered) > self.max_remembered or now - oldest > ttl:
                self._forget_oldest()
            else:
                break

    def _forget_oldest(self) -> None:
        """Forget the oldest remembered ids: a dropped generation's, or one answered id."""
        dropped, answered = self._dropped, self._answered
        if dropped and (not answered or dropped[0].at <= next(iter(answered.values()))):
            gone = dropped.popleft()
            self._dropped_ids -= len(gone.ids)
            self._bytes -= gone.bytes
        else:
            rid, _ = answered.popitem(last=False)
            self._bytes -= ANSWERED_OVERHEAD + len(rid)

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
