"""Informer-style watch caches: reads served from memory, kept current by LIST + WATCH.

A reconcile in steady state makes no API request: `Kube.get`, `Kube.list` and `Kube.owned`
answer from a `WatchCache` for every kind it holds (the ModelDeployments and their children),
so API calls per reconcile are proportional to what must be written. One LIST (paged) and one
long-running WATCH per kind and namespace scope keep each cache current; a watch that ends is
resumed from the last resourceVersion seen (bookmarks keep it fresh), a `410 Gone` re-lists.

Our own writes go into the cache at once (`remember` / `forget`), so the next read sees them
before the watch event arrives; a watch event never replaces a newer object (resourceVersions
of one resource are compared as the integers etcd makes them), so the cache does not step back.

Every change that did not come from our own write is handed to `on_change(kind, event, obj)`:
the runtime maps a child to its owner and reconciles it within moments (a child edited by
someone else is put back without waiting for the resync).

Objects are kept without `metadata.managedFields` (nothing reads them; they are most of an
object's size), the way client-go's informers are usually configured, and as compact JSON
(`Stored`): a sixth of the memory of Python dicts, and a read parses a private copy.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .kube import Kube

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace or "", name)
ChangeHandler = Callable[[str, str, Obj], None]  # (kind, ADDED|MODIFIED|DELETED, object)

SYNC_TIMEOUT_S = 30.0
WATCH_TIMEOUT_S = 290  # the server ends the watch after this; we resume from the last rv
RETRY_MIN_S, RETRY_MAX_S = 0.5, 30.0


def resource_version(obj: Mapping[str, Any]) -> int | None:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or "")
    except ValueError:  # opaque on some servers: then the latest event simply wins
        return None


class Stored:
    """A cached object, kept as compact JSON (a Deployment is ~3 KB of JSON, ~20 KB of Python
    dicts: 1,000 ModelDeployments' children fit in a few MB) with what lookups need alongside.
    Reading it parses a fresh copy, which callers may change (cheaper than a deepcopy)."""

    __slots__ = ("rv", "labels", "owner", "blob")

    def __init__(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        self.rv = resource_version(obj)
        self.labels: dict[str, str] = dict(meta.get("labels") or {})
        self.owner = controller_uid(obj)
        self.blob = json.dumps(obj, separators=(",", ":")).encode()

    def obj(self) -> Obj:
        return json.loads(self.blob)


def _rv(obj: Mapping[str, Any] | Stored) -> int | None:
    return obj.rv if isinstance(obj, Stored) else resource_version(obj)


def _newer(new: Mapping[str, Any] | Stored, old: Mapping[str, Any] | Stored | None) -> bool:
    if old is None:
        return True
    a, b = _rv(new), _rv(old)
    return a is None or b is None or a > b


def _slim(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return obj


def equality_selector(selector: Mapping[str, str] | str | None) -> dict[str, str] | None:
    """A selector of k=v / k==v terms only, as a mapping; None for anything else (set-based
    terms, !=, existence), which the cache leaves to the API server."""
    if not selector:
        return {}
    if isinstance(selector, Mapping):
        return dict(selector)
    out = {}
    for term in selector.split(","):
        if not term.strip():
            continue
        key, eq, value = term.replace("==", "=").partition("=")
        if not eq or "!" in key or "(" in term or " " in key.strip() or not key.strip():
            return None
        out[key.strip()] = value.strip()
    return out


def selector_matches(selector: Mapping[str, str] | str | None, labels: Mapping[str, str] | None) -> bool:
    """Equality-based label selectors (what the operator asks the cache for)."""
    wanted = equality_selector(selector)
    if wanted is None:
        raise ValueError(f"the watch cache serves only k=v selectors, not {selector!r}")
    labels = labels or {}
    return all(labels.get(k) == v for k, v in wanted.items())


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("controller"):
            return ref.get("uid")
    return None


@dataclass
class KindCache:
    """The objects of one kind in one namespace scope (None: all namespaces)."""

    api_version: str
    kind: str
    namespace: str | None
    label_selector: str | None
    objects: dict[Key, Stored] = field(default_factory=dict)
    by_owner: dict[str, set[Key]] = field(default_factory=dict)
    tombstones: dict[Key, int] = field(default_factory=dict)  # deleted by us, rv at deletion
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    last_rv: str = ""
    task: asyncio.Task | None = None

    def covers(self, namespace: str | None) -> bool:
        return self.namespace is None or self.namespace == namespace

    @staticmethod
    def key(obj: Mapping[str, Any]) -> Key:
        meta = obj.get("metadata") or {}
        return meta.get("namespace") or "", meta["name"]

    def _index(self, key: Key, obj: Obj | None) -> None:
        old = self.objects.get(key)
        if old is not None and (uid := old.owner):
            keys = self.by_owner.get(uid)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.by_owner[uid]
        if obj is None:
            self.objects.pop(key, None)
        else:
            stored = self.objects[key] = Stored(obj)
            if uid := stored.owner:
                self.by_owner.setdefault(uid, set()).add(key)

    def replace_all(self, items: Iterable[Obj]) -> None:
        self.objects.clear()
        self.by_owner.clear()
        self.tombstones.clear()
        for item in items:
            self._index(self.key(item), _slim(item))

    def upsert(self, obj: Obj) -> bool:
        """Store obj unless what we hold is newer or we deleted it since; True if stored."""
        key = self.key(obj)
        rv = resource_version(obj)
        if key in self.tombstones and rv is not None and rv <= self.tombstones[key]:
            return False
        if not _newer(obj, self.objects.get(key)):
            return False
        self.tombstones.pop(key, None)
        self._index(key, _slim(obj))
        return True

    def remove(self, obj: Mapping[str, Any], *, tombstone: bool = False) -> bool:
        key = self.key(obj)
        present = key in self.objects
        if tombstone:
            held = _rv(self.objects.get(key) or obj) or 0
            self.tombstones[key] = max(held, resource_version(obj) or 0)
        else:
            self.tombstones.pop(key, None)
        self._index(key, None)
        return present


@dataclass
class WatchCache:
    """Watch caches of several kinds for one `Kube` (see the module docstring)."""

    kube: Kube
    namespaces: tuple[str | None, ...] = (None,)  # None: cluster-wide
    on_change: ChangeHandler | None = None
    label_selectors: dict[tuple[str, str], str] = field(default_factory=dict)  # (apiVersion, kind) -> selector
    caches: dict[tuple[str, str], list[KindCache]] = field(default_factory=dict)
    lazy: set[tuple[str, str]] = field(default_factory=set)  # kinds started by their first read
    in_flight: dict[tuple[str, str, str, str], int] = field(default_factory=dict)  # our writes under way
    held_back: dict[tuple[str, str, str, str], tuple[str, Obj]] = field(default_factory=dict)
    page_size: int = 500
    stats: dict[str, int] = field(default_factory=lambda: {"events": 0, "relists": 0})

    # ---- lifecycle

    def holds(self, api_version: str, kind: str) -> bool:
        return (api_version, kind) in self.caches

    def start(self, api_version: str, kind: str) -> None:
        """Begin caching a kind (idempotent); reads wait until its first LIST is in."""
        if (api_version, kind) in self.caches:
            return
        selector = self.label_selectors.get((api_version, kind))
        caches = [KindCache(api_version, kind, ns, selector) for ns in self.namespaces]
        self.caches[(api_version, kind)] = caches
        for cache in caches:
            cache.task = asyncio.create_task(self._run(cache), name=f"watch-{kind}-{cache.namespace or 'all'}")

    async def stop(self) -> None:
        tasks = [c.task for caches in self.caches.values() for c in caches if c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.caches.clear()

    async def wait_synced(self, timeout: float = SYNC_TIMEOUT_S) -> None:
        for caches in list(self.caches.values()):
            for cache in caches:
                await asyncio.wait_for(cache.synced.wait(), timeout)

    # ---- reads (None: this cache cannot answer, ask the API server)

    async def _scope(self, api_version: str, kind: str, namespace: str | None) -> list[KindCache] | None:
        if (api_version, kind) in self.lazy:
            self.start(api_version, kind)
        caches = self.caches.get((api_version, kind))
        if caches is None:
            return None
        if namespace is None:
            if any(c.namespace is not None for c in caches):
                return None  # a cluster-wide read of namespace-scoped caches: not all is here
            wanted = caches
        else:
            wanted = [c for c in caches if c.covers(namespace)]
            if not wanted:
                return None
        for cache in wanted:
            if not cache.synced.is_set():
                from .kube import TemporaryError
                try:
                    await asyncio.wait_for(cache.synced.wait(), SYNC_TIMEOUT_S)
                except TimeoutError as exc:
                    raise TemporaryError(f"the watch cache of {kind} has not synced yet") from exc
        return wanted

    def _selector_covers(self, caches: list[KindCache], label_selector: Mapping[str, str] | str | None) -> bool:
        """A label-filtered cache can answer only reads at least as narrow as its own filter."""
        for cache in caches:
            if cache.label_selector and not selector_matches(cache.label_selector, _as_labels(label_selector)):
                return False
        return True

    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj | None | bool:
        """The cached object, None when it does not exist, False when this cache cannot tell."""
        caches = await self._scope(api_version, kind, namespace)
        if caches is None or any(c.label_selector for c in caches):
            return False
        for cache in caches:
            stored = cache.objects.get((namespace or "", name))
            if stored is not None:
                return stored.obj()
        return None

    async def list(self, api_version: str, kind: str, namespace: str | None,
                   label_selector: Mapping[str, str] | str | None) -> list[Obj] | None:
        if equality_selector(label_selector) is None:
            return None  # set-based: the API server evaluates it
        caches = await self._scope(api_version, kind, namespace)
        if caches is None or not self._selector_covers(caches, label_selector):
            return None
        out = [o.obj() for c in caches for (ns, _), o in sorted(c.objects.items())
               if (namespace is None or ns == namespace) and selector_matches(label_selector, o.labels)]
        return out

    async def owned(self, api_version: str, kind: str, namespace: str, owner_uid: str,
                    label_selector: Mapping[str, str] | str | None) -> list[Obj] | None:
        """Objects controlled by owner_uid (index lookup, not a scan)."""
        if equality_selector(label_selector) is None:
            return None
        caches = await self._scope(api_version, kind, namespace)
        if caches is None:
            return None
        # A child whose labels someone removed is not here (nor in a label-selected LIST): the
        # caller applies it again, which restores the labels.
        return [cache.objects[key].obj() for cache in caches for key in sorted(cache.by_owner.get(owner_uid, ()))
                if key[0] == namespace and selector_matches(label_selector, cache.objects[key].labels)]

    # ---- our own writes

    def writing(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        """A write of ours is on its way: its watch event may come before its answer does, and
        must not be reported as someone else's change (see `remember`)."""
        key = (api_version, kind, namespace or "", name)
        self.in_flight[key] = self.in_flight.get(key, 0) + 1

    def written(self, api_version: str, kind: str, namespace: str | None, name: str,
                result: Mapping[str, Any] | None, *, ours: bool = False) -> None:
        """Our write is answered (result None: it failed; `ours`: a delete of ours that
        succeeded, whose DELETED event is no news). Report what the watch showed meanwhile only
        if it is newer than our own write's result."""
        key = (api_version, kind, namespace or "", name)
        count = self.in_flight.get(key, 0) - 1
        if count > 0:
            self.in_flight[key] = count
            return
        self.in_flight.pop(key, None)
        held = self.held_back.pop(key, None)
        if result:
            self.remember(result)
        if held is not None and not ours and (not result or _newer(held[1], result)):
            self._notify(kind, *held)

    def remember(self, obj: Mapping[str, Any] | None) -> None:
        """The API server's answer to our write: newer than anything cached."""
        if not obj or "metadata" not in obj:
            return
        for cache in self.caches.get((obj.get("apiVersion", ""), obj.get("kind", ""))) or ():
            if cache.covers((obj["metadata"]).get("namespace")) and cache.synced.is_set():
                if cache.label_selector and not selector_matches(cache.label_selector,
                                                                 obj["metadata"].get("labels")):
                    cache.remove(obj)
                else:
                    cache.upsert(dict(obj))

    def forget(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        """We deleted it: drop it, and ignore older events for it still on their way."""
        for cache in self.caches.get((api_version, kind)) or ():
            if cache.covers(namespace):
                cache.remove({"metadata": {"namespace": namespace or "", "name": name}}, tombstone=True)

    # ---- the informer loop

    async def _run(self, cache: KindCache) -> None:
        delay = RETRY_MIN_S
        need_list = True
        while True:
            try:
                if need_list:
                    items, cache.last_rv = await self.kube.list_all(
                        cache.api_version, cache.kind, cache.namespace, cache.label_selector, self.page_size)
                    first = not cache.synced.is_set()
                    previous = dict(cache.objects)
                    cache.replace_all(items)
                    cache.synced.set()
                    self.stats["relists"] += 0 if first else 1
                    if not first:  # what changed while we were not watching
                        self._diff(cache, previous)
                    need_list = False
                async for event_type, obj in self.kube.watch(cache.api_version, cache.kind, cache.namespace,
                                                             cache.label_selector, cache.last_rv,
                                                             timeout_s=WATCH_TIMEOUT_S):
                    delay = RETRY_MIN_S
                    self._event(cache, event_type, obj)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop must never die
                from .kube import KubeError
                if isinstance(exc, KubeError) and exc.status == 410:
                    need_list = True  # our resourceVersion is too old: start over
                    continue
                log.warning("watch of %s%s failed, retrying in %.1fs: %s", cache.kind,
                            f" in {cache.namespace}" if cache.namespace else "", delay, exc)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, RETRY_MAX_S)
                need_list = need_list or not cache.last_rv

    def _event(self, cache: KindCache, event_type: str, obj: Obj) -> None:
        self.stats["events"] += 1
        meta = obj.get("metadata") or {}
        if meta.get("resourceVersion"):
            cache.last_rv = meta["resourceVersion"]
        if event_type == "BOOKMARK":
            return
        obj.setdefault("apiVersion", cache.api_version)
        obj.setdefault("kind", cache.kind)
        if event_type == "DELETED":
            changed = cache.remove(obj)
        else:
            changed = cache.upsert(obj)
        if changed:
            key = (cache.api_version, cache.kind, meta.get("namespace") or "", meta.get("name", ""))
            if key in self.in_flight:
                self.held_back[key] = (event_type, obj)  # decided when our write is answered
            else:
                self._notify(cache.kind, event_type, obj)

    def _diff(self, cache: KindCache, previous: dict[Key, Stored]) -> None:
        for key, stored in cache.objects.items():
            if key not in previous or _newer(stored, previous[key]):
                self._notify(cache.kind, "MODIFIED" if key in previous else "ADDED", stored.obj())
        for key, stored in previous.items():
            if key not in cache.objects:
                self._notify(cache.kind, "DELETED", stored.obj())

    def _notify(self, kind: str, event_type: str, obj: Obj) -> None:
        if self.on_change is None:
            return
        with contextlib.suppress(Exception):
            self.on_change(kind, event_type, obj)


def _as_labels(selector: Mapping[str, str] | str | None) -> dict[str, str]:
    return equality_selector(selector) or {}

