"""When each object is reconciled: one reconcile at a time per object, a timed wake-up at the
plan's `requeue_after`, a periodic resync of every object, and back-off with jitter after a
failure. Knows nothing of kopf or Kubernetes: the reconcile and list functions are passed in.

Error isolation: whatever one object's reconcile raises is logged and retried with back-off
for that object alone; the resync loop and the wake-ups never die of it. Only cancellation
(shutdown, a lost lease) ends them.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
# Reconciles one object and returns seconds until it wants to be reconciled again (None:
# nothing timed, e.g. a steady state or a deleted object). Anything it raises is a failure.
ReconcileFn = Callable[[str, str, str], Awaitable[float | None]]
ListFn = Callable[[], Awaitable[Iterable[Key]]]  # every object the resync should visit

# Wake-up bounds: never a hot loop, and never longer than an hour (the resync covers the rest).
MIN_DELAY_S = 0.5
MAX_DELAY_S = 3600.0
SLACK_S = 0.05  # wake just after the due time, not a hair before it


def backoff_delay(failures: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Seconds before retry number `failures` (1, 2, ...): base * 2^(failures-1) up to `cap`,
    with "equal jitter" (between half and all of it) so objects that failed together spread out."""
    raw = min(cap, base * 2.0 ** max(0, failures - 1))
    return raw / 2 + rng.random() * raw / 2


# Priorities of a run waiting for a slot (lower first): a change to the object itself (created,
# edited), its timed wake-ups and retries go before follow-ups of its children's status and
# resyncs. 1,000 objects created together: each gets its children and first status before the
# reconciles that follow the controllers' status updates of the first ones' children.
URGENT, FOLLOW_UP = 0, 1


class Slots:
    """A semaphore whose waiters are served by priority, then in arrival order."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: list[tuple[int, int, asyncio.Future]] = []
        self._order = itertools.count()

    async def acquire(self, priority: int) -> None:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # handed a slot just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():  # a cancelled waiter is skipped
                future.set_result(None)  # the slot goes straight to the next waiter
                return
        self.free += 1


@dataclass
class Scheduler:
    reconcile: ReconcileFn
    list_objects: ListFn
    resync_seconds: float = 60.0
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    resync_concurrency: int = 4  # reconciles in flight at once during a resync
    # Reconciles in flight at once, whatever started them (controller-runtime's
    # MaxConcurrentReconciles): 1,000 objects created together must not put 1,000 reconciles'
    # requests in front of the API server and the HTTP pool at once (each then finishes late,
    # requests time out in the pool, and the Lease renewal waits behind them all).
    concurrency: int = 32
    # Failures expected in normal operation (e.g. the API server answering 503): logged without
    # a traceback. Anything else is a bug and is logged with one; both are retried.
    expected_errors: tuple[type[BaseException], ...] = ()
    # While this says False (this instance does not hold the lease), nothing is reconciled.
    active: Callable[[], bool] = lambda: True
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: random.Random = field(default_factory=random.Random)
    wakeups: dict[Key, asyncio.Task] = field(default_factory=dict)  # one per object
    failures: dict[Key, int] = field(default_factory=dict)  # consecutive failures per object
    _resync_task: asyncio.Task | None = None
    _locks: weakref.WeakValueDictionary = field(default_factory=weakref.WeakValueDictionary)
    _slots: Slots | None = None
    # Objects with a run asked for by `enqueue` that has not started yet (at most one each).
    _queued: set[Key] = field(default_factory=set)
    _queue_tasks: set[asyncio.Task] = field(default_factory=set)

    # ---- one object

    def _lock(self, key: Key) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    async def run(self, namespace: str, name: str, trigger: str, priority: int = URGENT) -> bool:
        """Reconcile the object now, after any reconcile of it in flight (and, while every slot
        is taken, after the runs waiting with a lower `priority`). Never raises (except on
        cancellation); True when the reconcile succeeded."""
        key = (namespace, name)
        async with self._lock(key):
            if not self.active():
                self._queued.discard(key)
                log.debug("not reconciling %s/%s (%s): not the leader", namespace, name, trigger)
                return False
            if self._slots is None:
                self._slots = Slots(max(1, self.concurrency))
            try:
                await self._slots.acquire(priority)
                try:
                    # The reconcile reads the object from now on: a change after this point
                    # needs a run of its own.
                    self._queued.discard(key)
                    requeue = await self.reconcile(namespace, name, trigger)
                finally:
                    self._slots.release()
            except Exception as exc:  # noqa: BLE001 - isolation is the point: any error, this object only
                failures = self.failures.get(key, 0) + 1
                self.failures[key] = failures
                delay = backoff_delay(failures, base=self.backoff_base, cap=self.backoff_cap, rng=self.rng)
                log.warning("reconcile of %s/%s (%s) failed (%d in a row), retrying in %.1fs: %s: %s",
                            namespace, name, trigger, failures, delay, type(exc).__name__, exc,
                            exc_info=not isinstance(exc, self.expected_errors),
                            extra={"object": {"namespace": namespace, "name": name}, "trigger": trigger,
                                   "failures": failures, "retry_in": round(delay, 3)})
                self.schedule(namespace, name, delay, trigger="retry")
                return False
            self.failures.pop(key, None)
            self.schedule(namespace, name, requeue)
            return True

    def enqueue(self, namespace: str, name: str, trigger: str, priority: int = URGENT) -> None:
        """Reconcile the object soon, without waiting for it (a workqueue's Add): at most one run
        per object waits for its turn, and requests while it waits join it (a Deployment whose
        status the controller updates three times while its owner waits costs one reconcile).
        Only the key waits, never a body: a burst of 1,000 new objects holds 1,000 keys, not
        1,000 objects, while `concurrency` reconciles run (each reads its object when it starts)."""
        key = (namespace, name)
        if key in self._queued:
            return
        self._queued.add(key)
        task = asyncio.create_task(self.run(namespace, name, trigger, priority),
                                   name=f"modelship-queued-{namespace}/{name}")
        self._queue_tasks.add(task)
        task.add_done_callback(self._queue_tasks.discard)

    def schedule(self, namespace: str, name: str, delay: float | None, trigger: str = "requeue") -> None:
        """Reconcile the object again after `delay` seconds (None: no timed wake-up). Replaces any
        earlier wake-up of the object: the latest reconcile knows best."""
        key = (namespace, name)
        self._cancel(key)
        if delay is None:
            return
        delay = min(max(delay + SLACK_S, MIN_DELAY_S), MAX_DELAY_S)
        self.wakeups[key] = asyncio.create_task(self._wake(key, delay, trigger),
                                                name=f"modelship-wakeup-{namespace}/{name}")

    def forget(self, namespace: str, name: str) -> None:
        """The object is gone: no wake-up, no back-off state."""
        self._cancel((namespace, name))
        self.failures.pop((namespace, name), None)

    def _cancel(self, key: Key) -> None:
        task = self.wakeups.pop(key, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _wake(self, key: Key, delay: float, trigger: str) -> None:
        await self.sleep(delay)
        if self.wakeups.get(key) is asyncio.current_task():
            del self.wakeups[key]  # done waiting; the reconcile may schedule the next one
        await self.run(key[0], key[1], trigger)

    # ---- every object

    async def resync_once(self) -> None:
        """Reconcile every object once, a few at a time; one failing object delays no other."""
        if not self.active():
            return
        try:
            keys = list(await self.list_objects())
        except Exception as exc:  # noqa: BLE001 - the next period tries again
            log.warning("resync: cannot list the objects: %s: %s", type(exc).__name__, exc,
                        exc_info=not isinstance(exc, self.expected_errors))
            return
        gate = asyncio.Semaphore(max(1, self.resync_concurrency))

        async def one(key: Key) -> None:
            async with gate:
                await self.run(key[0], key[1], "resync", FOLLOW_UP)

        await asyncio.gather(*(one(key) for key in keys))

    async def resync_forever(self) -> None:
        while True:
            await self.sleep(self.resync_seconds)
            try:
                await self.resync_once()
            except Exception:  # noqa: BLE001 - the loop must outlive any bug in one pass
                log.exception("resync pass failed; the next one runs in %ss", self.resync_seconds)

    # ---- lifecycle

    def start(self) -> None:
        if self._resync_task is None or self._resync_task.done():
            self._resync_task = asyncio.create_task(self.resync_forever(), name="modelship-resync")

    async def stop(self) -> None:
        tasks = list(self.wakeups.values()) + list(self._queue_tasks)
        self.wakeups.clear()
        self._queued.clear()
        if self._resync_task is not None:
            tasks.append(self._resync_task)
            self._resync_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
