"""The batcher alone: injected predict function and a fake clock that tests advance."""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

import pytest

from modelship_server.batcher import Batcher
from modelship_server.errors import InferenceFailed, QueueFull, ShuttingDown, Timeout, Unavailable


class FakeClock:
    """Time stands still until advance(); due timers then fire in order."""

    class Handle:
        def __init__(self, when: float, callback: Callable[[], None]) -> None:
            self.when, self.callback, self.cancelled = when, callback, False

        def cancel(self) -> None:
            self.cancelled = True

    def __init__(self) -> None:
        self.t = 0.0
        self.timers: list[FakeClock.Handle] = []

    def now(self) -> float:
        return self.t

    def call_later(self, delay: float, callback: Callable[[], None]) -> Handle:
        handle = self.Handle(self.t + delay, callback)
        self.timers.append(handle)
        return handle

    def advance(self, dt: float) -> None:
        self.t += dt
        due = sorted((h for h in self.timers if h.when <= self.t + 1e-12), key=lambda h: h.when)
        self.timers = [h for h in self.timers if h not in due]
        for handle in due:
            if not handle.cancelled:
                handle.callback()


class Recorder:
    """A predict function that records each call's payloads and doubles them."""

    def __init__(self, gate: threading.Event | None = None, bad: Any = None) -> None:
        self.calls: list[list[Any]] = []
        self.gate = gate
        self.bad = bad
        self.entered = threading.Event()

    def __call__(self, payloads: list[Any]) -> list[Any]:
        self.calls.append(list(payloads))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(5), "test gate never opened"
        if self.bad is not None and self.bad in payloads:
            raise ValueError("cannot handle this one")
        return [p * 2 for p in payloads]


class Seen:
    """A BatchObserver that keeps what it was told."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.batches: list[int] = []
        self.splits = 0

    def on_dispatch(self, queue_wait_s: float) -> None:
        self.waits.append(queue_wait_s)

    def on_batch(self, rows: int, compute_s: float) -> None:
        self.batches.append(rows)

    def on_split(self) -> None:
        self.splits += 1


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    """Yield to the loop (and the worker thread) until condition() holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


async def settle() -> None:
    """Let every ready callback run (the batcher reacts within a few loop iterations)."""
    for _ in range(20):
        await asyncio.sleep(0)


def make(predict: Recorder, clock: FakeClock, **kw: Any) -> Batcher:
    params = dict(max_batch_size=4, max_delay=0.010, max_queue=64, timeout=30.0)
    params.update(kw)
    batcher = Batcher(predict, clock=clock, **params)
    batcher.start()
    return batcher


def test_size_flush_without_waiting_for_delay() -> None:
    async def main() -> None:
        clock, rec = FakeClock(), Recorder()
        b = make(rec, clock, max_batch_size=4)
        tasks = [asyncio.ensure_future(b.submit(i, 1)) for i in range(4)]
        results = await asyncio.wait_for(asyncio.gather(*tasks), 3)  # the clock never moves
        assert results == [0, 2, 4, 6]
        assert rec.calls == [[0, 1, 2, 3]]
        await b.drain()

    asyncio.run(main())


def test_delay_counts_from_the_oldest_request() -> None:
    async def main() -> None:
        clock, rec, seen = FakeClock(), Recorder(), Seen()
        b = make(rec, clock, max_batch_size=100, max_delay=0.010, observer=seen)
        first = asyncio.ensure_future(b.submit(1, 1))
        await settle()
        clock.advance(0.006)
        second = asyncio.ensure_future(b.submit(2, 1))
        await settle()
        assert rec.calls == [] and b.queued_rows == 2
        clock.advance(0.003)  # 9 ms after the oldest: still waiting
        await settle()
        assert rec.calls == []
        clock.advance(0.001)  # 10 ms after the oldest, 4 ms after the newest: flush both
        assert await asyncio.wait_for(asyncio.gather(first, second), 3) == [2, 4]
        assert rec.calls == [[1, 2]]
        assert seen.waits == pytest.approx([0.010, 0.004]) and seen.batches == [2]
        await b.drain()

    asyncio.run(main())


def test_rows_are_counted_and_requests_never_split() -> None:
    async def main() -> None:
        clock, rec = FakeClock(), Recorder()
        b = make(rec, clock, max_batch_size=8)
        a = asyncio.ensure_future(b.submit(10, 3))
        bb = asyncio.ensure_future(b.submit(20, 3))
        c = asyncio.ensure_future(b.submit(30, 3))  # 9 rows queued >= 8: flush 3 + 3 now
        await asyncio.wait_for(asyncio.gather(a, bb), 3)
        assert rec.calls == [[10, 20]]
        assert not c.done() and b.queued_rows == 3
        big = asyncio.ensure_future(b.submit(40, 20))  # larger than a batch: runs alone
        await asyncio.wait_for(asyncio.gather(c, big), 3)
        assert rec.calls == [[10, 20], [30], [40]]
        await b.drain()

    asyncio.run(main())


def test_queue_full_sheds_by_rows() -> None:
    async def main() -> None:
        gate = threading.Event()
        clock, rec = FakeClock(), Recorder(gate=gate)
        b = make(rec, clock, max_batch_size=1, max_delay=0.0, max_queue=4)
        running = asyncio.ensure_future(b.submit(0, 1))
        await until(rec.entered.is_set)  # the worker is busy with request 0
        queued = [asyncio.ensure_future(b.submit(i, 2)) for i in (1, 2)]
        await settle()
        assert b.queued_rows == 4
        with pytest.raises(QueueFull):
            await b.submit(3, 1)
        gate.set()
        assert await asyncio.wait_for(asyncio.gather(running, *queued), 3) == [0, 2, 4]
        assert 3 not in [p for call in rec.calls for p in call]
        await b.drain()

    asyncio.run(main())


def test_timeout_answers_504_and_drops_queued_work() -> None:
    async def main() -> None:
        gate = threading.Event()
        clock, rec = FakeClock(), Recorder(gate=gate)
        b = make(rec, clock, max_batch_size=1, max_delay=0.0, timeout=1.0)
        running = asyncio.ensure_future(b.submit(1, 1))
        await until(rec.entered.is_set)
        queued = asyncio.ensure_future(b.submit(2, 1))
        await settle()
        clock.advance(1.0)
        with pytest.raises(Timeout):
            await asyncio.wait_for(running, 3)
        with pytest.raises(Timeout):
            await asyncio.wait_for(queued, 3)
        assert b.queued_rows == 0
        gate.set()
        # The worker finishes the running batch, and the timed-out queued one is never computed.
        assert await asyncio.wait_for(b.submit(3, 1), 3) == 6
        assert rec.calls == [[1], [3]]
        await b.drain()

    asyncio.run(main())


def test_one_failing_request_does_not_fail_its_batch_mates() -> None:
    async def main() -> None:
        clock, rec, seen = FakeClock(), Recorder(bad=7), Seen()
        b = make(rec, clock, max_batch_size=3, observer=seen)
        tasks = [asyncio.ensure_future(b.submit(p, 1)) for p in (1, 7, 3)]
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 3)
        assert results[0] == 2 and results[2] == 6
        assert isinstance(results[1], InferenceFailed)
        assert "cannot handle this one" in results[1].message
        assert rec.calls == [[1, 7, 3], [1], [7], [3]]
        assert seen.batches == [3] and seen.splits == 1 and len(seen.waits) == 3
        await b.drain()

    asyncio.run(main())


def test_close_refuses_new_work_and_flushes_the_queue() -> None:
    async def main() -> None:
        clock, rec = FakeClock(), Recorder()
        b = make(rec, clock, max_batch_size=100, max_delay=60.0)
        queued = [asyncio.ensure_future(b.submit(i, 1)) for i in (1, 2)]
        await settle()
        assert rec.calls == []  # waiting for batch-mates (the clock never moves)
        b.close()
        drained = asyncio.ensure_future(b.drain())
        with pytest.raises(ShuttingDown):
            await b.submit(3, 1)
        assert await asyncio.wait_for(asyncio.gather(*queued), 3) == [2, 4]
        await asyncio.wait_for(drained, 3)
        assert rec.calls == [[1, 2]]

    asyncio.run(main())


class BrokenObserver(Seen):
    """A metrics hook with a bug: it raises inside the batching loop."""

    def on_dispatch(self, queue_wait_s: float) -> None:
        raise RuntimeError("observer bug")


def test_a_dead_loop_is_reported_and_fails_requests_fast(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        clock, rec = FakeClock(), Recorder()
        b = make(rec, clock, max_batch_size=2, observer=BrokenObserver())
        assert b.problem() is None and not b.dead
        # A full batch is handed to the worker, then the hook kills the loop.
        taken = [asyncio.ensure_future(b.submit(p, 1)) for p in (1, 2)]
        left = asyncio.ensure_future(b.submit(3, 1))
        assert await asyncio.wait_for(asyncio.gather(*taken), 3) == [2, 4]  # the batch in hand completes
        with pytest.raises(Unavailable):  # the queued request fails at once, not at its timeout
            await asyncio.wait_for(left, 3)
        assert b.dead and "batching loop is dead" in (b.problem() or "") and "observer bug" in (b.problem() or "")
        with pytest.raises(Unavailable, match="batching loop is dead"):
            await b.submit(4, 1)
        assert rec.calls == [[1, 2]]

    asyncio.run(main())
    assert any("batching loop is dead" in r.getMessage() for r in caplog.records)


def test_a_cancelled_loop_fails_its_queued_requests() -> None:
    async def main() -> None:
        clock, rec = FakeClock(), Recorder()
        b = make(rec, clock, max_batch_size=100, max_delay=60.0)
        queued = asyncio.ensure_future(b.submit(1, 1))  # waits for batch-mates: the clock never moves
        await settle()
        b._task.cancel()  # the loop dies while a request waits
        with pytest.raises(Unavailable):
            await asyncio.wait_for(queued, 3)
        assert b.dead and "cancelled" in (b.problem() or "")

    asyncio.run(main())


def test_a_forward_pass_running_past_the_timeout_is_stuck_until_it_returns(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        gate = threading.Event()
        clock, rec = FakeClock(), Recorder(gate=gate)
        b = make(rec, clock, max_batch_size=1, max_delay=0.0, timeout=5.0)
        assert b.stuck_after == 5.0  # defaults to the request timeout
        hanging = asyncio.ensure_future(b.submit(1, 1))
        await until(rec.entered.is_set)  # the predict function hangs in the worker
        clock.advance(4.9)
        assert b.problem() is None and not b.stuck and b.forward_running_s() == pytest.approx(4.9)
        clock.advance(0.2)  # past the timeout: the request got its 504, the forward is stuck
        with pytest.raises(Timeout):
            await asyncio.wait_for(hanging, 3)
        assert b.stuck and "stuck" in (b.problem() or "")
        assert any("stuck" in r.getMessage() for r in caplog.records)
        gate.set()  # it returns at last: healthy again
        await until(lambda: b.forward_running_s() is None)
        assert b.problem() is None and not b.stuck
        assert await asyncio.wait_for(b.submit(2, 1), 3) == 4
        await b.drain()
        assert b.problem() is None and not b.dead  # a drained loop is not a dead one

    asyncio.run(main())
