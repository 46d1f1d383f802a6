"""The runtime's scheduler on its own: per-object locks, wake-ups, resync, back-off, isolation.

A fake clock drives every sleep, and the reconcile function is a recording stub, so these
tests say exactly when each object is reconciled and never wait for real time.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest

from modelship_operator.runtime.scheduler import MIN_DELAY_S, SLACK_S, Scheduler, backoff_delay

NS = "ml"


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


class FakeClock:
    """`sleep` parks the caller until `advance` moves the fake time past its due time."""

    def __init__(self) -> None:
        self.now = 0.0
        self._seq = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future]] = []

    async def sleep(self, delay: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + delay, next(self._seq), fut))
        await fut

    async def advance(self, seconds: float) -> None:
        target = self.now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            due, _, fut = heapq.heappop(self._sleepers)
            self.now = due
            if not fut.done():
                fut.set_result(None)
            await settle()
        self.now = target


class Objects:
    """A recording reconcile function over named objects; `behaviour[name]` decides each call."""

    def __init__(self, *names: str) -> None:
        self.names = list(names)
        self.calls: list[tuple[float, str, str]] = []  # (fake time, name, trigger)
        self.behaviour: dict[str, Callable[[int], Awaitable[float | None]]] = {}
        self.clock: FakeClock | None = None

    async def reconcile(self, namespace: str, name: str, trigger: str) -> float | None:
        assert namespace == NS
        self.calls.append((self.clock.now if self.clock else 0.0, name, trigger))
        attempt = sum(1 for _, n, _ in self.calls if n == name)
        if name in self.behaviour:
            return await self.behaviour[name](attempt)
        return None

    async def list_objects(self) -> list[tuple[str, str]]:
        return [(NS, n) for n in self.names]

    def count(self, trigger: str | None = None) -> Counter:
        return Counter(n for _, n, t in self.calls if trigger is None or t == trigger)


def make(objects: Objects, clock: FakeClock, **kw) -> Scheduler:
    objects.clock = clock
    return Scheduler(objects.reconcile, objects.list_objects, sleep=clock.sleep, rng=random.Random(7), **kw)


def raising(exc: Exception) -> Callable[[int], Awaitable[float | None]]:
    async def fn(attempt: int) -> float | None:
        raise exc
    return fn


def test_backoff_doubles_from_the_base_up_to_the_cap_with_jitter() -> None:
    rng = random.Random(1)
    for failures, raw in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (30, 60.0)]:
        delays = [backoff_delay(failures, base=1.0, cap=60.0, rng=rng) for _ in range(200)]
        assert all(raw / 2 <= d <= raw for d in delays), (failures, min(delays), max(delays))
        assert max(delays) - min(delays) > raw / 4  # really jittered, not a constant


def test_one_object_raising_does_not_stop_the_resync_for_the_others() -> None:
    """Issue 9 item 7: a ValueError (not a KubeError) for one object used to end the resync task."""
    async def go() -> None:
        clock, objects = FakeClock(), Objects("bad", "good-1", "good-2")
        objects.behaviour["bad"] = raising(ValueError("a bug that only this object triggers"))
        scheduler = make(objects, clock, resync_seconds=60, backoff_cap=600)
        scheduler.start()
        await clock.advance(60 * 3 + 1)
        resyncs = objects.count("resync")
        assert resyncs["good-1"] == 3 and resyncs["good-2"] == 3, objects.calls
        assert resyncs["bad"] == 3  # still tried at every resync ...
        assert objects.count("retry")["bad"] >= 2  # ... and retried with back-off in between
        assert scheduler._resync_task is not None and not scheduler._resync_task.done()
        await scheduler.stop()

    asyncio.run(go())


def test_a_failed_reconcile_is_retried_with_growing_backoff_then_resets() -> None:
    async def go() -> None:
        clock, objects = FakeClock(), Objects("flaky")

        async def flaky(attempt: int) -> float | None:
            if attempt <= 3:
                raise RuntimeError(f"failure {attempt}")
            return None
        objects.behaviour["flaky"] = flaky
        scheduler = make(objects, clock, resync_seconds=3600, backoff_base=1.0, backoff_cap=60.0)
        assert await scheduler.run(NS, "flaky", "change") is False
        assert scheduler.failures[(NS, "flaky")] == 1
        await clock.advance(30)
        times = [t for t, _, _ in objects.calls]
        assert [trigger for _, _, trigger in objects.calls] == ["change", "retry", "retry", "retry"]
        gaps = [b - a for a, b in zip(times, times[1:])]
        for n, gap in enumerate(gaps, start=1):  # within the jitter band of 1, 2, 4 seconds
            raw = 2.0 ** (n - 1)
            assert raw / 2 <= gap <= raw + SLACK_S + 1e-9, gaps
        assert (NS, "flaky") not in scheduler.failures  # success resets the back-off
        assert scheduler.wakeups == {}  # and nothing timed is left
        await scheduler.stop()

    asyncio.run(go())


def test_a_failing_wakeup_is_retried_and_the_object_keeps_its_timer() -> None:
    """The timed wake-ups had the same gap: a non-KubeError ended the wake-up task for good."""
    async def go() -> None:
        clock, objects = FakeClock(), Objects("paused")

        async def behaviour(attempt: int) -> float | None:
            if attempt == 2:
                raise KeyError("status.canary")  # the timed reconcile hits a bug once
            return 30.0  # a pause ends in 30 s
        objects.behaviour["paused"] = behaviour
        scheduler = make(objects, clock, resync_seconds=3600)
        assert await scheduler.run(NS, "paused", "change") is True
        await clock.advance(30 + SLACK_S)  # the wake-up fires and fails
        assert [t for _, _, t in objects.calls] == ["change", "requeue"]
        assert (NS, "paused") in scheduler.wakeups  # a retry is armed, not a dead task
        await clock.advance(1)  # the first back-off is at most the 1 s base
        assert [t for _, _, t in objects.calls] == ["change", "requeue", "retry"]
        await clock.advance(30 + SLACK_S)
        assert [t for _, _, t in objects.calls][-1] == "requeue"
        await scheduler.stop()

    asyncio.run(go())


def test_a_listing_that_fails_does_not_end_the_resync() -> None:
    async def go() -> None:
        clock, objects = FakeClock(), Objects("a")
        lists = 0

        async def list_objects() -> list[tuple[str, str]]:
            nonlocal lists
            lists += 1
            if lists == 1:
                raise TypeError("the API answered something unexpected")
            return [(NS, "a")]
        objects.clock = clock
        scheduler = Scheduler(objects.reconcile, list_objects, resync_seconds=10, sleep=clock.sleep)
        scheduler.start()
        await clock.advance(25)
        assert lists == 2 and objects.count("resync")["a"] == 1
        await scheduler.stop()

    asyncio.run(go())


def test_wakeups_follow_requeue_after_one_per_object_replaced_and_cancelled() -> None:
    async def go() -> None:
        clock, objects = FakeClock(), Objects("a")
        scheduler = make(objects, clock, resync_seconds=3600)
        scheduler.schedule(NS, "a", 10)
        first = scheduler.wakeups[(NS, "a")]
        scheduler.schedule(NS, "a", 20)  # the latest reconcile knows best
        await settle()
        assert first.cancelled() and len(scheduler.wakeups) == 1
        await clock.advance(15)
        assert objects.calls == []
        await clock.advance(5 + SLACK_S)
        assert [(n, t) for _, n, t in objects.calls] == [("a", "requeue")]
        scheduler.schedule(NS, "a", 0.0)  # never sooner than the minimum: no hot loop
        await clock.advance(MIN_DELAY_S - 0.01)
        assert len(objects.calls) == 1
        await clock.advance(0.02)
        assert len(objects.calls) == 2
        scheduler.schedule(NS, "a", 5)
        scheduler.schedule(NS, "a", None)  # nothing timed
        assert scheduler.wakeups == {}
        scheduler.schedule(NS, "a", 5)
        scheduler.forget(NS, "a")  # deleted
        await clock.advance(10)
        assert len(objects.calls) == 2 and scheduler.wakeups == {}
        await scheduler.stop()

    asyncio.run(go())


def test_one_reconcile_at_a_time_per_object_and_objects_in_parallel() -> None:
    async def go() -> None:
        running: Counter = Counter()
        most: Counter = Counter()
        gate = asyncio.Event()

        async def reconcile(namespace: str, name: str, trigger: str) -> float | None:
            running[name] += 1
            most[name] = max(most[name], running[name])
            most["all"] = max(most["all"], sum(running.values()))
            await gate.wait()
            running[name] -= 1
            return None

        async def no_objects() -> list[tuple[str, str]]:
            return []
        scheduler = Scheduler(reconcile, no_objects)
        runs = [asyncio.create_task(scheduler.run(NS, name, "change")) for name in ("a", "a", "a", "b")]
        await settle()
        gate.set()
        assert await asyncio.gather(*runs) == [True] * 4
        assert most["a"] == 1 and most["b"] == 1 and most["all"] == 2

    asyncio.run(go())


def test_an_inactive_scheduler_reconciles_nothing() -> None:
    async def go() -> None:
        clock, objects = FakeClock(), Objects("a")
        leading = False
        scheduler = make(objects, clock, resync_seconds=10, active=lambda: leading)
        scheduler.start()
        assert await scheduler.run(NS, "a", "change") is False
        await clock.advance(25)
        assert objects.calls == [] and scheduler.wakeups == {}
        leading = True
        await clock.advance(10)
        assert objects.count() == Counter({"a": 1})
        await scheduler.stop()

    asyncio.run(go())


@pytest.mark.parametrize("exc", [ValueError("v"), KeyError("k"), AssertionError("a"), ZeroDivisionError()])
def test_any_exception_is_isolated_and_logged(exc: Exception, caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        clock, objects = FakeClock(), Objects("a")
        objects.behaviour["a"] = raising(exc)
        scheduler = make(objects, clock)
        assert await scheduler.run(NS, "a", "change") is False
        assert (NS, "a") in scheduler.wakeups
        await scheduler.stop()

    with caplog.at_level("WARNING", logger="modelship_operator.runtime.scheduler"):
        asyncio.run(go())
    (record,) = [r for r in caplog.records if "reconcile of ml/a (change) failed" in r.getMessage()]
    assert type(exc).__name__ in record.getMessage() and record.exc_info is not None


def test_enqueue_returns_at_once_and_requests_while_waiting_join_one_run() -> None:
    """What the kopf handler does: hand over the key and return. 100 objects behind 2 slots:
    each asked 3 times while it waits is reconciled once; one asked again while its reconcile
    runs (a change the running reconcile may have missed) is reconciled once more."""
    async def go() -> None:
        gate = asyncio.Event()
        calls: Counter = Counter()

        async def reconcile(namespace: str, name: str, trigger: str) -> float | None:
            calls[name] += 1
            await gate.wait()
            return None

        async def no_objects() -> list[tuple[str, str]]:
            return []
        scheduler = Scheduler(reconcile, no_objects, concurrency=2)
        names = [f"md-{i}" for i in range(100)]
        for _ in range(3):
            for name in names:
                assert scheduler.enqueue(NS, name, "change") is None  # never waits
        await settle()
        assert sum(calls.values()) == 2 and len(scheduler._queued) == 98  # 2 running, the rest wait
        running = next(iter(calls))
        scheduler.enqueue(NS, running, "change")  # changed while its reconcile runs
        gate.set()
        for _ in range(20):
            await settle()
        assert calls[running] == 2 and all(calls[n] == 1 for n in names if n != running)
        assert scheduler._queued == set() and scheduler._queue_tasks == set()
        await scheduler.stop()

    asyncio.run(go())


def test_stop_cancels_enqueued_runs() -> None:
    async def go() -> None:
        objects = Objects()
        clock = FakeClock()
        scheduler = make(objects, clock, concurrency=1)
        blocker = asyncio.Event()

        async def hold(attempt: int) -> float | None:
            await blocker.wait()
            return None
        objects.behaviour["a"] = hold
        scheduler.enqueue(NS, "a", "change")
        scheduler.enqueue(NS, "b", "change")
        await settle()
        await scheduler.stop()
        assert [n for _, n, _ in objects.calls] == ["a"] and scheduler._queue_tasks == set()

    asyncio.run(go())


def _one_slot_held_by_busy(label: Callable[[str, str], str]) -> tuple[Scheduler, asyncio.Event, list[str]]:
    """A one-slot scheduler whose reconcile logs `label(name, trigger)` of every run, and whose
    run of "busy" holds the slot until the returned gate is set."""
    gate = asyncio.Event()
    order: list[str] = []

    async def reconcile(namespace: str, name: str, trigger: str) -> float | None:
        order.append(label(name, trigger))
        if name == "busy":
            await gate.wait()
        return None

    async def no_objects() -> list[tuple[str, str]]:
        return []
    return Scheduler(reconcile, no_objects, concurrency=1), gate, order


def test_waiting_runs_get_a_slot_by_priority_then_in_order() -> None:
    """With every slot taken, a change to an object itself (URGENT) goes before follow-ups of
    children's status and resyncs (FOLLOW_UP) that waited longer; each class in arrival order.
    A waiter cancelled meanwhile is skipped and its slot goes on."""
    async def go() -> None:
        from modelship_operator.runtime.scheduler import FOLLOW_UP, URGENT
        scheduler, gate, order = _one_slot_held_by_busy(lambda name, trigger: name)
        busy = asyncio.create_task(scheduler.run(NS, "busy", "added"))
        await settle()
        runs = [asyncio.create_task(scheduler.run(NS, name, trigger, priority))
                for name, trigger, priority in (("f1", "deployment f1 modified", FOLLOW_UP),
                                                ("f2", "resync", FOLLOW_UP),
                                                ("gone", "added", URGENT),
                                                ("u1", "added", URGENT),
                                                ("u2", "modified", URGENT))]
        await settle()
        runs[2].cancel()  # deleted meanwhile, say: its place in the queue is skipped
        await settle()
        gate.set()
        await asyncio.gather(busy, *runs, return_exceptions=True)
        assert order == ["busy", "u1", "u2", "f1", "f2"]
        assert scheduler._slots is not None and scheduler._slots.free == 1  # every slot back
        await scheduler.stop()

    asyncio.run(go())


def test_follow_ups_enqueued_while_waiting_join_one_run_after_urgent_ones() -> None:
    """A child's status changing three times while its owner waits for a slot: one reconcile of
    the owner, after the object created meanwhile."""
    async def go() -> None:
        from modelship_operator.runtime.scheduler import FOLLOW_UP
        scheduler, gate, order = _one_slot_held_by_busy(lambda name, trigger: f"{name}:{trigger}")
        scheduler.enqueue(NS, "busy", "added")
        await settle()
        for i in range(3):
            scheduler.enqueue(NS, "owner", f"deployment owner-abc modified {i}", FOLLOW_UP)
        scheduler.enqueue(NS, "new", "added")
        await settle()
        gate.set()
        for _ in range(10):
            await settle()
        assert order == ["busy:added", "new:added", "owner:deployment owner-abc modified 0"]
        await scheduler.stop()

    asyncio.run(go())
