"""Dynamic batching: no torch, no FastAPI.

Requests queue as opaque payloads carrying a row count. A batch runs when the queued rows
reach `max_batch_size` or the oldest queued request has waited `max_delay` seconds. A
request is never split here; one larger than `max_batch_size` runs alone (the predict
function may compute it in chunks: service.py does). The predict function
(injected, synchronous) runs on one dedicated worker thread so batches run back to back
while the event loop keeps accepting; the clock is injected so tests can drive time.

Batches are pipelined: while one batch computes, the next one may already be formed and
handed to the worker (at most `pipeline_depth` batches in flight), so the worker never idles
through the event loop's round trip of answering one batch before it is given the next.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Callable, Protocol, Sequence

from .errors import InferenceFailed, QueueFull, ServerError, ShuttingDown, Timeout, Unavailable

log = logging.getLogger(__name__)

# payloads -> one result per payload, in order. Runs on the worker thread.
PredictFn = Callable[[list[Any]], Sequence[Any]]


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle: ...


class LoopClock:
    """The running event loop's monotonic clock and timers."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.now = loop.time

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return self._loop.call_later(delay, callback)


class BatchObserver(Protocol):
    """Hooks for metrics; called on the event loop."""

    def on_dispatch(self, queue_wait_s: float) -> None: ...

    def on_batch(self, rows: int, compute_s: float) -> None: ...

    def on_split(self) -> None:
        """A batched call failed and its requests were re-run one by one."""


_QUEUED, _RUNNING, _DONE = 0, 1, 2


class _Item:
    __slots__ = ("payload", "rows", "future", "enqueued", "timer", "state")

    def __init__(self, payload: Any, rows: int, future: asyncio.Future, enqueued: float) -> None:
        self.payload = payload
        self.rows = rows
        self.future = future
        self.enqueued = enqueued
        self.timer: TimerHandle | None = None
        self.state = _QUEUED


class Batcher:
    def __init__(
        self,
        predict: PredictFn,
        *,
        max_batch_size: int,
        max_delay: float,
        max_queue: int,
        timeout: float,
        clock: Clock | None = None,
        executor: Executor | None = None,
        observer: BatchObserver | None = None,
        pipeline_depth: int = 2,
        stuck_after: float | None = None,
    ) -> None:
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay
        self.max_queue = max_queue
        self.timeout = timeout
        self._clock = clock
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="modelship-forward")
        self._observer = observer
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._waiter: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self._pipeline_depth = max(1, pipeline_depth)
        self._in_flight: set[asyncio.Task] = set()
        # Batches handed to the worker, oldest first: the oldest is computing, the others
        # wait in the pipeline and their live requests still count as queued for admission.
        self._flight: deque[list[_Item]] = deque()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # Health (problem()): the loop must run until close(), and no forward pass may run
        # longer than `stuck_after` (default: the request timeout, which it has outlived).
        self.stuck_after = timeout if stuck_after is None else stuck_after
        self._closing = False
        self._dead: str | None = None
        self._computing_since: float | None = None  # when the oldest batch in flight started
        self._stuck_timer: TimerHandle | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._loop = asyncio.get_running_loop()
        if self._clock is None:
            self._clock = LoopClock(self._loop)
        self._task = self._loop.create_task(self._run_loop(), name="modelship-batcher")
        self._task.add_done_callback(self._loop_ended)

    def close(self) -> None:
        """Stop admitting; queued work is still flushed (without waiting for batch-mates)."""
        self._closing = True
        self._closed = True
        self._wake()

    def _loop_ended(self, task: asyncio.Task) -> None:
        if self._closing:
            return  # a drain: the normal end
        why = "cancelled" if task.cancelled() else repr(task.exception())
        self._dead = f"batching loop is dead ({why})"
        self._closed = True
        log.error("%s: inference answers 503, readiness and liveness fail until the process restarts", self._dead)
        for item in self._queue:
            if item.state == _QUEUED and not item.future.done():
                item.future.set_exception(Unavailable("batcher failed"))

    def problem(self) -> str | None:
        """Why this batcher cannot serve (a dead loop, a stuck forward pass), or None."""
        if self._dead is not None:
            return self._dead
        running = self.forward_running_s()
        if running is not None and running > self.stuck_after:
            return f"a forward pass has run for {running:.1f}s (stuck: limit {self.stuck_after:g}s)"
        return None

    @property
    def dead(self) -> bool:
        """The batching loop ended without close() (a bug, or it was cancelled)."""
        return self._dead is not None

    @property
    def stuck(self) -> bool:
        """A forward pass has run longer than `stuck_after`."""
        running = self.forward_running_s()
        return running is not None and running > self.stuck_after

    def forward_running_s(self) -> float | None:
        """How long the oldest forward pass in flight has run (None: none is running)."""
        since = self._computing_since
        if since is None or self._clock is None:
            return None
        return self._clock.now() - since

    def _forward_started(self) -> None:
        """The oldest batch in flight changed: restart the stuck watchdog for it."""
        if self._stuck_timer is not None:
            self._stuck_timer.cancel()
            self._stuck_timer = None
        if not self._flight:
            self._computing_since = None
            return
        assert self._clock is not None
        self._computing_since = self._clock.now()
        self._stuck_timer = self._clock.call_later(self.stuck_after, self._stuck_alarm)

    def _stuck_alarm(self) -> None:
        self._stuck_timer = None
        log.error("a forward pass has run for more than %gs: stuck; readiness and liveness fail until it returns",
                  self.stuck_after)  # fmt: skip

    async def drain(self) -> None:
        """close() and wait until every admitted request has been answered."""
        self.close()
        if self._task is not None:
            await asyncio.shield(self._task)
        if self._own_executor:
            self._executor.shutdown(wait=False)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued_rows(self) -> int:
        """Rows waiting: in the queue or in a batch that waits for the worker."""
        waiting = sum(it.rows for batch in list(self._flight)[1:] for it in batch if it.state == _RUNNING)
        return self._queued_rows + waiting

    # -- admission -------------------------------------------------------------------------

    def admits(self, rows: int = 1) -> bool:
        """Whether a request of `rows` rows would be queued now (submit's rule, without a
        payload: the server asks with rows=1 before reading a body, to shed without decoding).
        An empty queue admits any request, so one larger than max_queue is not shed forever."""
        waiting = self.queued_rows
        return not waiting or waiting + rows <= self.max_queue

    async def submit(self, payload: Any, rows: int) -> Any:
        """Queue `payload` (carrying `rows` rows) and return its result.

        Raises ShuttingDown or QueueFull (503), Timeout (504), or the request's own error.
        """
        if self._closed or self._task is None:
            if self._dead is not None:
                raise Unavailable(f"server unhealthy: {self._dead}")
            raise ShuttingDown()
        if not self.admits(rows):
            raise QueueFull()
        clock = self._clock
        assert clock is not None and self._loop is not None
        item = _Item(payload, rows, self._loop.create_future(), clock.now())
        item.timer = clock.call_later(self.timeout, lambda: self._expire(item))
        self._queue.append(item)
        self._queued_rows += rows
        self._wake()
        try:
            return await item.future
        except asyncio.CancelledError:
            self._expire(item, cancelled=True)
            raise

    def _expire(self, item: _Item, cancelled: bool = False) -> None:
        if item.state == _QUEUED:
            # Dropped from the queue (skipped lazily), never computed.
            self._queued_rows -= item.rows
            self._wake()
        item.state = _DONE
        if item.timer is not None:
            item.timer.cancel()
        if not item.future.done() and not cancelled:
            item.future.set_exception(Timeout())

    # -- the loop --------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, timeout: float | None) -> None:
        assert self._loop is not None and self._clock is not None
        self._waiter = self._loop.create_future()
        timer = self._clock.call_later(timeout, self._wake) if timeout is not None else None
        try:
            await self._waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _head(self) -> _Item | None:
        queue = self._queue
        while queue and queue[0].state != _QUEUED:
            queue.popleft()
        return queue[0] if queue else None

    async def _run_loop(self) -> None:
        try:
            while True:
                head = self._head()
                if head is None:
                    if self._closed:
                        break
                    await self._wait(None)
                    continue
                # Wait for batch-mates until full or the oldest request's delay is spent.
                while not self._closed and self._queued_rows < self.max_batch_size:
                    remaining = head.enqueued + self.max_delay - self._clock.now()  # type: ignore[union-attr]
                    if remaining <= 0:
                        break
                    await self._wait(remaining)
                    head = self._head()
                    if head is None:
                        break
                # A free pipeline slot first: the batch is taken from the queue only when it
                # can be handed to the worker, so late arrivals can still join it.
                while len(self._in_flight) >= self._pipeline_depth:
                    await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
                batch = self._take()
                if batch:
                    task = self._loop.create_task(self._run_batch(batch))  # type: ignore[union-attr]
                    self._in_flight.add(task)
                    task.add_done_callback(self._in_flight.discard)
                    # After the hand-off: a failing hook must not strand the batch's requests.
                    if self._observer is not None:
                        now = self._clock.now()  # type: ignore[union-attr]
                        for item in batch:
                            self._observer.on_dispatch(now - item.enqueued)
            if self._in_flight:
                await asyncio.wait(self._in_flight)
        except Exception:  # a bug here would hang every request: fail them loudly instead
            log.exception("batcher loop crashed")
            self._closed = True
            for item in self._queue:
                if item.state == _QUEUED and not item.future.done():
                    item.future.set_exception(ShuttingDown("batcher failed"))
            raise

    def _take(self) -> list[_Item]:
        """Pop the FIFO head and as many following requests as fit in max_batch_size rows."""
        batch: list[_Item] = []
        rows = 0
        queue = self._queue
        while queue:
            item = queue[0]
            if item.state != _QUEUED:
                queue.popleft()
                continue
            if batch and rows + item.rows > self.max_batch_size:
                break
            queue.popleft()
            item.state = _RUNNING
            rows += item.rows
            batch.append(item)
        self._queued_rows -= rows
        return batch

    async def _run_batch(self, batch: list[_Item]) -> None:
        self._flight.append(batch)
        if len(self._flight) == 1:
            self._forward_started()
        assert self._loop is not None
        try:
            computed, outcomes, compute_s, split = await self._loop.run_in_executor(
                self._executor, self._compute, batch
            )
        except Exception as e:  # the executor itself failed (e.g. shut down)
            computed, outcomes, compute_s, split = batch, [(False, e)] * len(batch), 0.0, False
        self._flight.popleft()  # one worker thread: batches finish in order
        self._forward_started()
        if self._observer is not None and computed:
            self._observer.on_batch(sum(item.rows for item in computed), compute_s)
            if split:
                self._observer.on_split()
        for item, (ok, value) in zip(computed, outcomes):
            if item.timer is not None:
                item.timer.cancel()
            item.state = _DONE
            if item.future.done():  # timed out while running: the result is dropped
                continue
            if ok:
                item.future.set_result(value)
            else:
                item.future.set_exception(_as_server_error(value))

    def _compute(
        self, batch: list[_Item]
    ) -> tuple[list[_Item], list[tuple[bool, Any]], float, bool]:
        """On the worker thread: the batched call, or on failure each payload alone.

        Requests that timed out while their batch waited in the pipeline are skipped.
        """
        start = time.perf_counter()
        computed = [item for item in batch if item.state != _DONE]
        payloads = [item.payload for item in computed]
        if not payloads:
            return computed, [], 0.0, False
        split = False
        try:
            results = self._predict(payloads)
            if len(results) != len(payloads):
                raise RuntimeError(f"predict returned {len(results)} results for {len(payloads)} requests")
            outcomes = [(True, r) for r in results]
        except Exception as e:
            if len(payloads) == 1:
                outcomes = [(False, e)]
            else:
                # Isolate the offender: only the request that fails on its own gets an error.
                split = True
                outcomes = []
                for payload in payloads:
                    try:
                        outcomes.append((True, self._predict([payload])[0]))
                    except Exception as single:
                        outcomes.append((False, single))
        return computed, outcomes, time.perf_counter() - start, split


def _as_server_error(e: BaseException) -> ServerError:
    if isinstance(e, ServerError):
        return e
    return InferenceFailed(f"model failed on this request: {type(e).__name__}: {e}")
