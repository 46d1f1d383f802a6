"""The only module that talks to the Kubernetes API server.

Everything above it (reconcile, handlers, cli) calls a `Kube` object that was created from
a `Connection` and passed in. API failures come out as two exception types only:
`TemporaryError` (worth retrying: conflicts, throttling, server errors, network trouble) and
`PermanentError` (retrying the same request cannot help: invalid, forbidden, not found on write).
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import yarl

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeError(Exception):
    """An API call failed; `status` is the HTTP status (0 for network errors)."""

    def __init__(self, message: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason


class TemporaryError(KubeError):
    """Retrying later may succeed (409, 429, 5xx, timeouts, connection errors)."""


class PermanentError(KubeError):
    """Retrying the same request cannot succeed (400, 403, 404 on write, 422, ...)."""


# --------------------------------------------------------------------------- connection


@dataclass(frozen=True)
class Connection:
    """Where the API server is and how to authenticate to it."""

    server: str
    token: str | None = None
    token_file: str | None = None  # re-read periodically: projected tokens rotate
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    namespace: str = "default"

    @classmethod
    def in_cluster(cls, env: Mapping[str, str], sa_dir: Path = SERVICE_ACCOUNT_DIR) -> Connection:
        host = env["KUBERNETES_SERVICE_HOST"]
        port = env.get("KUBERNETES_SERVICE_PORT", "443")
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        ns_file = sa_dir / "namespace"
        return cls(
            server=f"https://{host}:{port}",
            token_file=str(sa_dir / "token"),
            ca_file=str(sa_dir / "ca.crt"),
            namespace=ns_file.read_text().strip() if ns_file.exists() else "default",
        )

    @classmethod
    def from_kubeconfig(cls, path: str | Path, context: str | None = None) -> Connection:
        """Load a kubeconfig with the `kubernetes` package, which also handles embedded
        certificate data (written to temp files) and exec/auth-provider plugins."""
        from kubernetes import client, config  # heavy import, only when needed

        cfg = client.Configuration()
        config.load_kube_config(config_file=str(path), context=context, client_configuration=cfg)
        auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
        token = auth.split(" ", 1)[1] if auth and " " in auth else auth
        _, active = config.list_kube_config_contexts(config_file=str(path))
        if context:
            contexts, _ = config.list_kube_config_contexts(config_file=str(path))
            active = next((c for c in contexts if c["name"] == context), active)
        namespace = (active or {}).get("context", {}).get("namespace") or "default"
        return cls(
            server=cfg.host.rstrip("/"),
            token=token,
            ca_file=cfg.ssl_ca_cert,
            cert_file=cfg.cert_file,
            key_file=cfg.key_file,
            insecure=not cfg.verify_ssl,
            namespace=namespace,
        )

    @classmethod
    def discover(cls, env: Mapping[str, str]) -> Connection:
        """In-cluster when running in a pod, else KUBECONFIG (first file) or ~/.kube/config."""
        if env.get("KUBERNETES_SERVICE_HOST") and (SERVICE_ACCOUNT_DIR / "token").exists():
            return cls.in_cluster(env)
        return cls.from_kubeconfig(kubeconfig_path(env))

    def bearer_token(self) -> str | None:
        if self.token_file:
            return Path(self.token_file).read_text().strip()
        return self.token

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        if self.insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def kubeconfig_path(env: Mapping[str, str]) -> Path:
    value = env.get("KUBECONFIG", "")
    first = value.split(os.pathsep)[0] if value else ""
    return Path(first) if first else Path(env.get("HOME", "~")).expanduser() / ".kube" / "config"


# --------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class ResourceInfo:
    plural: str
    namespaced: bool


# The kinds the operator and its tests use; anything else is resolved through discovery.
KNOWN: dict[tuple[str, str], ResourceInfo] = {
    ("v1", "Namespace"): ResourceInfo("namespaces", False),
    ("v1", "Pod"): ResourceInfo("pods", True),
    ("v1", "Service"): ResourceInfo("services", True),
    ("v1", "Event"): ResourceInfo("events", True),
    ("v1", "ConfigMap"): ResourceInfo("configmaps", True),
    ("events.k8s.io/v1", "Event"): ResourceInfo("events", True),
    ("apps/v1", "Deployment"): ResourceInfo("deployments", True),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): ResourceInfo("horizontalpodautoscalers", True),
    ("policy/v1", "PodDisruptionBudget"): ResourceInfo("poddisruptionbudgets", True),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ResourceInfo("servicemonitors", True),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): ResourceInfo("httproutes", True),
    ("keda.sh/v1alpha1", "ScaledObject"): ResourceInfo("scaledobjects", True),
    ("modelship.dev/v1alpha1", "ModelDeployment"): ResourceInfo("modeldeployments", True),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"):
        ResourceInfo("customresourcedefinitions", False),
}


def group_version_path(api_version: str) -> str:
    return f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"


def format_selector(selector: Mapping[str, str] | str | None) -> str | None:
    if selector is None or isinstance(selector, str):
        return selector or None
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or None


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    """The uid of the object's controller (the ownerReference with controller: true), if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("controller"):
            return ref.get("uid")
    return None


def error_from_response(status: int, body: bytes, what: str) -> KubeError:
    """Map an API status to the retry decision, keeping the API server's own message."""
    reason, message = "", ""
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            reason, message = str(data.get("reason", "")), str(data.get("message", ""))
    except ValueError:
        message = body.decode(errors="replace")[:500]
    text = f"{what}: HTTP {status}{' ' + reason if reason else ''}: {message or '(no message)'}"
    if status in (409, 429) or status >= 500:
        return TemporaryError(text, status=status, reason=reason)
    return PermanentError(text, status=status, reason=reason)


# --------------------------------------------------------------------------- client


@dataclass
class Kube:
    """An async Kubernetes API client with just the operations the operator needs."""

    connection: Connection
    field_manager: str = "modelship-operator"
    timeout: float = 30.0
    _client: aiohttp.ClientSession | None = field(default=None, repr=False)
    _discovered: dict[tuple[str, str], ResourceInfo] = field(default_factory=dict, repr=False)
    _token: tuple[float, str | None] = field(default=(0.0, None), repr=False)
    # Reads are served from here for the kinds it holds (see watchcache.py); None: always ask.
    cache: Any = field(default=None, repr=False)
    # Requests sent, by verb (GET, LIST, WATCH, PATCH, ...): what the benchmark reports.
    requests: Counter = field(default_factory=Counter, repr=False)
    _discovering: dict[str, asyncio.Future] = field(default_factory=dict, repr=False)  # in flight

    # ---- plumbing

    def _http(self) -> aiohttp.ClientSession:
        # aiohttp, not httpx: httpx's pool polls every idle connection on each request (with
        # the reconciles in flight and the watches, a tenth of the operator's CPU at scale),
        # and beyond 20 kept-alive connections it closed and re-opened them all the time,
        # each a TLS handshake on both ends. aiohttp keeps up to `limit` open and reuses them.
        if self._client is None or self._client.closed:
            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100, ssl=self.connection.ssl_context()),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        return self._client

    def _url(self, path: str, params: Mapping[str, str] | None) -> yarl.URL:
        """The request URL as sent: the server's URL may carry a path (a proxy); query values
        fully percent-encoded (a selector's `/`, `=`, `,` as %2F, %3D, %2C)."""
        query = urlencode(params, quote_via=quote, safe="") if params else ""
        return yarl.URL(self.connection.server.rstrip("/") + path + (f"?{query}" if query else ""), encoded=True)

    def _auth_headers(self) -> dict[str, str]:
        read_at, token = self._token
        if self.connection.token_file and time.monotonic() - read_at > 60:
            token = self.connection.bearer_token()
            self._token = (time.monotonic(), token)
        elif not self.connection.token_file:
            token = self.connection.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        what: str,
        missing_ok: bool = False,
    ) -> dict[str, Any] | None:
        headers = {"Accept": "application/json", "User-Agent": self.field_manager, **self._auth_headers()}
        self.requests["LIST" if method == "GET" and what.startswith("list ") else method] += 1
        content = None
        if body is not None:
            headers["Content-Type"] = content_type
            content = json.dumps(body).encode()
        try:
            async with self._http().request(method, self._url(path, params), data=content, headers=headers) as rsp:
                status, data = rsp.status, await rsp.read()
        except TimeoutError as exc:
            raise TemporaryError(f"{what}: timed out: {exc!r}") from exc
        except aiohttp.ClientError as exc:
            raise TemporaryError(f"{what}: connection error: {exc!r}") from exc
        if status == 404 and missing_ok:
            return None
        if status == 401 and self.connection.token_file:
            # A rotated service-account token: re-read it and let the caller retry.
            self._token = (0.0, None)
            raise TemporaryError(f"{what}: HTTP 401 Unauthorized (re-reading the token)", status=401)
        if status >= 400:
            raise error_from_response(status, data, what)
        return json.loads(data) if data else {}

    async def resource(self, api_version: str, kind: str) -> ResourceInfo:
        """The plural and scope of a kind: static table first, discovery as the fallback."""
        key = (api_version, kind)
        if key in KNOWN:
            return KNOWN[key]
        if key not in self._discovered:
            data = await self._request(
                "GET", group_version_path(api_version), what=f"discover {api_version}"
            )
            for res in (data or {}).get("resources", []):
                if res.get("kind") == kind and "/" not in res.get("name", ""):
                    self._discovered[key] = ResourceInfo(res["name"], bool(res.get("namespaced")))
                    break
            else:
                raise PermanentError(f"{kind} is not served by {api_version}", status=404)
        return self._discovered[key]

    async def path(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        info = await self.resource(api_version, kind)
        parts = [group_version_path(api_version)]
        if info.namespaced and namespace:
            parts.append(f"namespaces/{quote(namespace, safe='')}")
        parts.append(info.plural)
        if name:
            parts.append(quote(name, safe=""))
        if subresource:
            parts.append(subresource)
        return "/".join(parts)

    async def _write(
        self, ident: tuple[str, str, str | None, str | None], method: str, path: str,
        *, deleting: bool = False, **kwargs: Any,
    ) -> dict[str, Any] | None:
        """A write request. The watch cache holds its answer at once (read-your-writes), and its
        watch event, which may come first, is not taken for someone else's change."""
        api_version, kind, namespace, name = ident
        cache = self.cache if name else None
        if cache is not None:
            cache.writing(api_version, kind, namespace, name)
        result = None
        try:
            result = await self._request(method, path, **kwargs)
        finally:
            if cache is not None:
                if deleting:
                    cache.forget(api_version, kind, namespace, name)
                cache.written(api_version, kind, namespace, name, None if deleting else result,
                              ours=deleting and result is not None)
        return result

    @staticmethod
    def _ident(obj: Mapping[str, Any]) -> tuple[str, str, str | None, str]:
        meta = obj.get("metadata") or {}
        return obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"]

    # ---- reads

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        """The live object, or None when it does not exist (from the watch cache when it holds
        the kind)."""
        if self.cache is not None:
            cached = await self.cache.get(api_version, kind, namespace, name)
            if cached is not False:
                return cached
        path = await self.path(api_version, kind, namespace, name)
        return await self._request("GET", path, what=f"get {kind} {namespace}/{name}", missing_ok=True)

    async def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        label_selector: Mapping[str, str] | str | None = None,
    ) -> list[dict[str, Any]]:
        if self.cache is not None:
            cached = await self.cache.list(api_version, kind, namespace, label_selector)
            if cached is not None:
                return cached
        path = await self.path(api_version, kind, namespace)
        params = {}
        if (selector := format_selector(label_selector)) is not None:
            params["labelSelector"] = selector
        data = await self._request("GET", path, params=params, what=f"list {kind} in {namespace}")
        items = (data or {}).get("items", [])
        for item in items:  # list items come without apiVersion/kind
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    async def owned(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        owner_uid: str,
        label_selector: Mapping[str, str] | str | None = None,
    ) -> list[dict[str, Any]]:
        """The objects whose controller ownerReference is `owner_uid` (a label alone proves
        nothing: a user's copy keeps the labels). `label_selector` narrows the LIST."""
        if self.cache is not None:
            cached = await self.cache.owned(api_version, kind, namespace, owner_uid, label_selector)
            if cached is not None:
                return cached
        items = await self.list(api_version, kind, namespace, label_selector)
        return [item for item in items if controller_uid(item) == owner_uid]

    async def list_all(
        self, api_version: str, kind: str, namespace: str | None,
        label_selector: Mapping[str, str] | str | None = None, page_size: int = 500,
    ) -> tuple[list[dict[str, Any]], str]:
        """Every object (paged LIST, never from the cache) and the list's resourceVersion,
        from which a watch continues."""
        path = await self.path(api_version, kind, namespace)
        params: dict[str, str] = {"limit": str(page_size)}
        if (selector := format_selector(label_selector)) is not None:
            params["labelSelector"] = selector
        items: list[dict[str, Any]] = []
        while True:
            data = await self._request("GET", path, params=params, what=f"list {kind} in {namespace}") or {}
            for item in data.get("items", []):
                item.setdefault("apiVersion", api_version)
                item.setdefault("kind", kind)
                items.append(item)
            meta = data.get("metadata") or {}
            if not meta.get("continue"):
                return items, str(meta.get("resourceVersion", ""))
            params["continue"] = meta["continue"]

    async def watch(
        self, api_version: str, kind: str, namespace: str | None,
        label_selector: Mapping[str, str] | str | None, resource_version: str, *, timeout_s: int = 290,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(type, object) events after `resource_version` until the server ends the watch.
        An ERROR event becomes the KubeError it carries (410: start over with a LIST)."""
        path = await self.path(api_version, kind, namespace)
        params = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_s)}
        if resource_version:
            params["resourceVersion"] = resource_version
        if (selector := format_selector(label_selector)) is not None:
            params["labelSelector"] = selector
        headers = {"Accept": "application/json", "User-Agent": self.field_manager, **self._auth_headers()}
        what = f"watch {kind} in {namespace}"
        self.requests["WATCH"] += 1
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_read=timeout_s + 30)
        try:
            async with self._http().get(self._url(path, params), headers=headers, timeout=timeout) as rsp:
                if rsp.status >= 400:
                    raise error_from_response(rsp.status, await rsp.read(), what)
                rest = b""  # one event per line; a line may span chunks
                async for chunk in rsp.content.iter_any():
                    lines = (rest + chunk).split(b"\n")
                    rest = lines.pop()
                    for line in lines:
                        if line.strip():
                            yield self._watch_event(line, what)
                if rest.strip():
                    yield self._watch_event(rest, what)
        except TimeoutError as exc:
            raise TemporaryError(f"{what}: timed out: {exc!r}") from exc
        except aiohttp.ClientError as exc:
            raise TemporaryError(f"{what}: connection error: {exc!r}") from exc

    @staticmethod
    def _watch_event(line: bytes, what: str) -> tuple[str, dict[str, Any]]:
        """A watch line as (type, object); an ERROR event becomes the KubeError it carries."""
        event = json.loads(line)
        obj = event.get("object") or {}
        if event.get("type") == "ERROR":
            raise error_from_response(int(obj.get("code") or 500), json.dumps(obj).encode(), what)
        return str(event.get("type")), obj

    async def served(self, group: str, version: str, plural: str) -> bool:
        """Discovery: does the API server serve this resource (e.g. is a CRD installed)?
        Callers asking at the same time share one request (a thousand reconciles starting
        together make one discovery GET per group-version, not a thousand)."""
        api_version = f"{group}/{version}" if group else version
        pending = self._discovering.get(api_version)
        if pending is None:
            pending = asyncio.ensure_future(self._request(
                "GET", group_version_path(api_version), what=f"discover {api_version}", missing_ok=True))
            self._discovering[api_version] = pending
            pending.add_done_callback(lambda _: self._discovering.pop(api_version, None))
        data = await asyncio.shield(pending)
        return any(r.get("name") == plural for r in (data or {}).get("resources", []))

    # ---- writes

    async def apply(self, manifest: Mapping[str, Any], *, force: bool = True) -> dict[str, Any]:
        """Server-side apply under our field manager (JSON is valid apply-patch YAML)."""
        api_version, kind, namespace, name = self._ident(manifest)
        path = await self.path(api_version, kind, namespace, name)
        params = {"fieldManager": self.field_manager}
        if force:
            params["force"] = "true"
        result = await self._write(
            (api_version, kind, namespace, name), "PATCH", path, params=params, body=manifest,
            content_type="application/apply-patch+yaml", what=f"apply {kind} {namespace}/{name}",
        )
        return result or {}

    async def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        api_version, kind = manifest["apiVersion"], manifest["kind"]
        namespace = (manifest.get("metadata") or {}).get("namespace")
        path = await self.path(api_version, kind, namespace)
        result = await self._write(
            (api_version, kind, namespace, (manifest.get("metadata") or {}).get("name")), "POST", path,
            body=manifest, params={"fieldManager": self.field_manager}, what=f"create {kind} in {namespace}",
        )
        return result or {}

    async def delete(
        self, api_version: str, kind: str, namespace: str | None, name: str,
        *, propagation: str = "Background",
    ) -> bool:
        """Delete; returns False when it was already gone (not an error)."""
        path = await self.path(api_version, kind, namespace, name)
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        result = await self._write(
            (api_version, kind, namespace, name), "DELETE", path, deleting=True, body=body,
            what=f"delete {kind} {namespace}/{name}", missing_ok=True,
        )
        return result is not None

    async def patch_status(
        self, api_version: str, kind: str, namespace: str | None, name: str,
        status_patch: Mapping[str, Any],
    ) -> dict[str, Any]:
        """JSON merge patch on the /status subresource; the API server ignores spec there."""
        path = await self.path(api_version, kind, namespace, name, "status")
        result = await self._write(
            (api_version, kind, namespace, name), "PATCH", path, body={"status": dict(status_patch)},
            content_type="application/merge-patch+json", what=f"patch status of {kind} {namespace}/{name}",
        )
        return result or {}

    async def patch(
        self, api_version: str, kind: str, namespace: str | None, name: str, body: Any,
        *, json_patch: bool = False,
    ) -> dict[str, Any]:
        """Patch the object under our field manager (what `kubectl patch` does): a JSON merge
        patch (a mapping), or with `json_patch` an RFC 6902 list of operations.

        Make it conditional with `metadata.resourceVersion` in a merge patch (409 on a
        concurrent change) or a `test` operation in a JSON patch (422 when it does not hold).
        """
        path = await self.path(api_version, kind, namespace, name)
        result = await self._write(
            (api_version, kind, namespace, name), "PATCH", path, params={"fieldManager": self.field_manager},
            body=list(body) if json_patch else dict(body),
            content_type="application/json-patch+json" if json_patch else "application/merge-patch+json",
            what=f"patch {kind} {namespace}/{name}",
        )
        return result or {}

    async def patch_metadata(
        self, api_version: str, kind: str, namespace: str | None, name: str,
        *, annotations: Mapping[str, str | None] | None = None,
        labels: Mapping[str, str | None] | None = None,
    ) -> dict[str, Any]:
        """Merge-patch labels/annotations (a None value removes the key)."""
        meta: dict[str, Any] = {}
        if annotations is not None:
            meta["annotations"] = dict(annotations)
        if labels is not None:
            meta["labels"] = dict(labels)
        path = await self.path(api_version, kind, namespace, name)
        result = await self._write(
            (api_version, kind, namespace, name), "PATCH", path, body={"metadata": meta},
            content_type="application/merge-patch+json", what=f"patch metadata of {kind} {namespace}/{name}",
        )
        return result or {}

    async def create_event(
        self, involved: Mapping[str, Any], type: str, reason: str, message: str,
        *, component: str | None = None, name: str | None = None, at: str | None = None,
    ) -> dict[str, Any]:
        """A core/v1 Event about `involved` (what `kubectl describe` shows). `name`: the Event's
        own name (recorder.py names a series; default a generated one); `at`: its timestamp."""
        meta = involved.get("metadata") or {}
        namespace = meta.get("namespace") or self.connection.namespace
        now = at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        component = component or self.field_manager
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"namespace": namespace,
                         **({"name": name} if name else {"generateName": f"{meta.get('name', 'modelship')}."})},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": socket.gethostname(),
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        return await self.create(event)
