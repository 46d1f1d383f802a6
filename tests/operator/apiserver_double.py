"""A small HTTP Kubernetes API server double for the real kopf operator and kube.py.

It serves an `ObjectStore` (kube_double.py) over real HTTP on 127.0.0.1: discovery (/api,
/apis, resource lists, /version), list and watch (?watch=true, JSON lines, resumable from a
resourceVersion, 410 when too old), get / create (incl. generateName) / replace / delete,
PATCH as server-side apply, merge patch, strategic merge (treated as merge) and JSON patch,
the status and scale subresources, bearer-token auth, CRDs that become served resources
when created, the garbage collector running a moment after each change, and a fault hook
(`fault`) that answers chosen write requests with an error, before or after applying them. It runs in a background thread with its own event loop; the sync helpers
(`mark_deployment_available`, `snapshot`, ...) are safe to call from the test thread.
Every write request is logged in `writes` so a test can assert that a steady state is quiet.
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from aiohttp import web

from kube_double import ApiError, ObjectStore, ResourceType, WatchEvent, field_selector_matches, \
    parse_selector, selector_matches

T = TypeVar("T")
WATCH_MAX_SECONDS = 300.0  # a watch without timeoutSeconds still ends, like the real default
GC_PERIOD_S = 0.2  # how soon the garbage collector acts after a change


@dataclass(frozen=True)
class WriteRecord:
    method: str
    path: str
    content_type: str
    user_agent: str


@dataclass(frozen=True)
class Injected:
    """An injected failure: the error answered, and whether the write was applied anyway."""

    error: ApiError
    after: bool = False


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str  # with the query string
    verb: str  # get | list | watch | create | update | patch | delete | discovery
    user_agent: str


def request_verb(method: str, path: str, query: Any) -> str:
    """The Kubernetes verb of a request, as the API server's audit log names it."""
    parts = [p for p in path.split("/") if p]
    resource_path = (parts[:1] == ["api"] and len(parts) >= 3) or (parts[:1] == ["apis"] and len(parts) >= 4)
    if method == "GET":
        if not resource_path:
            return "discovery"
        rest = parts[2:] if parts[0] == "api" else parts[3:]
        if rest[:1] == ["namespaces"] and len(rest) >= 3:
            rest = rest[2:]
        if len(rest) > 1:
            return "get"
        return "watch" if query.get("watch") in ("true", "1") else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower())


def _manager(request: web.Request) -> str:
    """The field manager of an update or patch: ?fieldManager, else the user agent up to its first
    '/', as the API server derives it."""
    return request.query.get("fieldManager") or request.headers.get("User-Agent", "unknown").split("/")[0] \
        or "unknown"


@dataclass
class _Watcher:
    rtype: ResourceType
    namespace: str | None
    label_selector: str | None
    field_selector: str | None
    queue: asyncio.Queue

    def wants(self, event: WatchEvent) -> bool:
        meta = event.obj["metadata"]
        return (event.rtype.key == self.rtype.key
                and (not self.namespace or meta.get("namespace") == self.namespace)
                and selector_matches(self.label_selector, meta.get("labels"))
                and field_selector_matches(self.field_selector, event.obj))


class ApiServerDouble:
    def __init__(self, token: str = "double-token") -> None:
        self.token = token
        self.store = ObjectStore()
        self.writes: list[WriteRecord] = []
        self.requests: deque[tuple[str, str]] = deque(maxlen=200000)  # (method, path_qs), reads too
        self.request_log: deque[RequestRecord] = deque(maxlen=200000)  # the same, with verb and client
        self._watchers: list[_Watcher] = []
        self._failures: list[tuple[str | None, str, ApiError]] = []  # (method, path part, error)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._collector: asyncio.Task | None = None
        # Fault injection (benchmarks/fault_injection.py): called for every write request with
        # (method, path, user agent); an Injected answer replaces the response, before the
        # write is applied or, with `after`, once it has been (the answer is lost on its way).
        self.fault: Callable[[str, str, str], Injected | None] | None = None
        self.url = ""

    # ---- lifecycle

    def start(self) -> str:
        ready = threading.Event()
        errors: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:  # surfaced to the caller below
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=main, name="apiserver-double", daemon=True)
        self._thread.start()
        if not ready.wait(10) or errors:
            raise RuntimeError(f"API server double did not start: {errors}")
        return self.url

    async def _start(self) -> None:
        self._stopping = asyncio.Event()
        self.store.listeners.append(self._fan_out)
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        await web.SockSite(self._runner, sock).start()
        self._collector = asyncio.get_running_loop().create_task(self._collect_garbage())

    async def _collect_garbage(self) -> None:
        """The garbage collector's loop: a moment after a change, as on a real cluster."""
        assert self._stopping is not None
        while not self._stopping.is_set():
            await asyncio.sleep(GC_PERIOD_S)
            self.store.collect_garbage()

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            assert self._stopping is not None and self._runner is not None
            self._stopping.set()
            if self._collector is not None:
                self._collector.cancel()
            for watcher in list(self._watchers):
                watcher.queue.put_nowait(None)
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the server's loop (the store is not thread-safe) and return its result."""
        assert self._loop is not None

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "double",
            "clusters": [{"name": "double", "cluster": {"server": self.url}}],
            "users": [{"name": "double", "user": {"token": self.token}}],
            "contexts": [{"name": "double", "context": {"cluster": "double", "user": "double",
                                                        "namespace": namespace}}],
        }))
        return path

    # ---- sync helpers for tests

    def fail_next(self, status: int, message: str, *, method: str | None = None, path_part: str = "",
                  reason: str = "") -> None:
        """Make the next request matching method and path fail as the API server would."""
        self._failures.append((method, path_part, ApiError(status, reason or "Injected", message)))

    def mark_deployment_available(self, namespace: str, name: str, ready: int | None = None) -> dict:
        return self.call(lambda: self.store.mark_deployment_available(namespace, name, ready))

    def verbs(self, since: int = 0, user_agent: str | None = None) -> dict[str, int]:
        """Requests by verb from request number `since` on (optionally of one client only)."""
        counts: dict[str, int] = {}
        for record in list(self.request_log)[since:]:
            if user_agent is None or record.user_agent.startswith(user_agent):
                counts[record.verb] = counts.get(record.verb, 0) + 1
        return counts

    def snapshot(self, api_version: str, kind: str, namespace: str | None = None) -> list[dict]:
        return self.call(lambda: self.store.list(self.store.type_for(api_version, kind), namespace))

    # ---- watch plumbing

    def _fan_out(self, event: WatchEvent) -> None:
        for watcher in self._watchers:
            if watcher.wants(event):
                watcher.queue.put_nowait(event)

    # ---- HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(ApiError(401, "Unauthorized", "Unauthorized").body(), status=401)
        self.requests.append((request.method, request.path_qs))
        self.request_log.append(RequestRecord(request.method, request.path_qs,
                                              request_verb(request.method, request.path, request.query),
                                              request.headers.get("User-Agent", "")))
        for i, (method, part, error) in enumerate(self._failures):
            if method in (None, request.method) and part in request.path:
                del self._failures[i]
                return web.json_response(error.body(), status=error.status)
        injected = None
        if self.fault is not None and request.method != "GET":
            injected = self.fault(request.method, request.path, request.headers.get("User-Agent", ""))
            if injected is not None and not injected.after:
                return web.json_response(injected.error.body(), status=injected.error.status)
        try:
            response = await self._dispatch(request)
        except ApiError as exc:
            response = web.json_response(exc.body(), status=exc.status)
        except (ValueError, KeyError, TypeError) as exc:
            response = web.json_response(ApiError(400, "BadRequest", f"bad request: {exc!r}").body(), status=400)
        if injected is not None:
            return web.json_response(injected.error.body(), status=injected.error.status)
        return response

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if parts == ["version"]:
            return web.json_response({"major": "1", "minor": "33", "gitVersion": "v1.33.0-double",
                                      "platform": "linux/amd64"})
        if parts == ["api"]:
            return web.json_response({"kind": "APIVersions", "versions": ["v1"],
                                      "serverAddressByClientCIDRs": []})
        if parts == ["apis"]:
            return web.json_response(self._group_list())
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource {request.path}")
        if not rest:
            return web.json_response(self._resource_list(group, version))
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and (group, rest[2]) in self.store.types:
            namespace, rest = rest[1], rest[2:]
        rtype = self.store.type_for_path(group, version, rest[0])
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if rtype.namespaced and namespace is None and name is not None:
            raise ApiError(404, "NotFound", "a namespace is required for a namespaced object")
        if sub is not None and sub not in rtype.subresources:
            raise ApiError(404, "NotFound", f"{rtype.plural} has no subresource {sub}")
        if request.method != "GET":
            self.writes.append(WriteRecord(request.method, request.path,
                                           request.headers.get("Content-Type", ""),
                                           request.headers.get("User-Agent", "")))
        return await self._resource_call(request, rtype, namespace, name, sub)

    def _group_list(self) -> dict:
        groups = []
        for api_version in sorted(self.store.group_versions()):
            if "/" not in api_version:
                continue
            group, version = api_version.split("/")
            gv = {"groupVersion": api_version, "version": version}
            groups.append({"name": group, "versions": [gv], "preferredVersion": gv})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def _resource_list(self, group: str, version: str) -> dict:
        api_version = f"{group}/{version}" if group else version
        rtypes = self.store.group_versions().get(api_version)
        if not rtypes:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource {api_version}")
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": api_version,
                "resources": [r for rtype in rtypes for r in rtype.discovery()]}

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            raise ApiError(400, "BadRequest", "empty body")
        if request.content_type == "application/apply-patch+yaml":
            return yaml.safe_load(raw)  # JSON is YAML too
        return json.loads(raw)

    async def _resource_call(self, request: web.Request, rtype: ResourceType, namespace: str | None,
                             name: str | None, sub: str | None) -> web.StreamResponse:
        store, q, method = self.store, request.query, request.method
        if name is None:
            if method == "GET":
                if q.get("watch") in ("true", "1"):
                    return await self._watch(request, rtype, namespace)
                items = store.list(rtype, namespace, q.get("labelSelector"), q.get("fieldSelector"))
                return web.json_response({"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version,
                                          "metadata": {"resourceVersion": str(store.rv)}, "items": items})
            if method == "POST":
                body = await self._body(request)
                return web.json_response(store.create(rtype, namespace, body, _manager(request)), status=201)
            raise ApiError(405, "MethodNotAllowed", f"{method} not allowed on a collection")
        if method == "GET":
            obj = store.get(rtype, namespace, name)
            return web.json_response(store.scale_of(rtype, obj) if sub == "scale" else obj)
        if method == "DELETE":
            options = json.loads(await request.read() or b"{}")
            propagation = q.get("propagationPolicy") or options.get("propagationPolicy") or "Background"
            obj = store.delete(rtype, namespace, name, propagation)
            return web.json_response(obj)
        if method == "PUT":
            return web.json_response(store.replace(rtype, namespace, name, await self._body(request),
                                                   subresource=sub, manager=_manager(request)))
        if method == "PATCH":
            body = await self._body(request)
            if request.content_type == "application/apply-patch+yaml":
                result = store.apply(rtype, namespace, name, body, q.get("fieldManager", ""),
                                     force=q.get("force") in ("true", "1"), subresource=sub)
            else:
                result = store.patch(rtype, namespace, name, request.content_type, body, subresource=sub,
                                     manager=_manager(request))
            return web.json_response(result)
        raise ApiError(405, "MethodNotAllowed", f"{method} not allowed")

    async def _watch(self, request: web.Request, rtype: ResourceType, namespace: str | None) -> web.StreamResponse:
        q = request.query
        parse_selector(q.get("labelSelector"))  # 400 before the stream starts
        watcher = _Watcher(rtype, namespace, q.get("labelSelector"), q.get("fieldSelector"), asyncio.Queue())
        since = q.get("resourceVersion")
        # Collect the backlog and subscribe in one step (no await between): nothing is missed.
        backlog: list[dict] = []
        if since and since != "0":
            oldest = self.store.history[0].rv if self.store.history else self.store.rv + 1
            if int(since) < oldest - 1:
                backlog.append({"type": "ERROR", "object": ApiError(410, "Expired",
                                                                    "too old resource version").body()})
            else:
                backlog += [{"type": e.type, "object": e.obj} for e in self.store.history
                            if e.rv > int(since) and watcher.wants(e)]
        else:
            backlog += [{"type": "ADDED", "object": o} for o in self.store.list(
                rtype, namespace, watcher.label_selector, watcher.field_selector)]
        self._watchers.append(watcher)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            await response.prepare(request)
            for item in backlog:
                await response.write(json.dumps(item).encode() + b"\n")
            if backlog and backlog[0]["type"] == "ERROR":
                return response
            loop = asyncio.get_running_loop()
            deadline = loop.time() + min(float(q.get("timeoutSeconds") or WATCH_MAX_SECONDS), WATCH_MAX_SECONDS)
            assert self._stopping is not None
            while not self._stopping.is_set():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), timeout=remaining)
                except TimeoutError:
                    break
                if event is None:
                    break
                await response.write(json.dumps({"type": event.type, "object": event.obj}).encode() + b"\n")
        except ConnectionResetError:
            pass  # the client went away
        finally:
            self._watchers.remove(watcher)
        return response
