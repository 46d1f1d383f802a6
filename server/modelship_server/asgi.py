"""The ASGI layer in front of the FastAPI routes.

Every response gets `x-model-version` and `x-request-id` here (errors and 404s included).
The inference POSTs are dispatched straight to their protocol handlers: no routing table
walk, no Request object, headers pre-built. That is the server's hot path.
"""
from __future__ import annotations

import logging
import re
import time
from typing import Any, Awaitable, Callable

from .audit import AuditRecord
from .errors import ServerError
from .ids import new_request_id  # 128 random bits, never guessable
from .protocols import Reply, dumps, plain, v1, v2
from .service import Call, Service
from .shadow import SHADOW_HEADER

log = logging.getLogger(__name__)

REQUEST_ID = b"x-request-id"
MODEL_VERSION = b"x-model-version"
Handler = Callable[[Service, dict, bytes], Awaitable[Reply]]


def _client_request_id(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for key, value in headers:
        if key == REQUEST_ID:
            # Echo a sane client id; anything odd is replaced rather than reflected.
            if 0 < len(value) <= 200 and all(32 < c < 127 for c in value):
                return value
            return None
    return None


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def error_reply(e: ServerError) -> Reply:
    headers = [(k.encode(), v.encode()) for k, v in e.headers.items()] or None
    return Reply(e.status, dumps({"error": e.message}), headers=headers)


# Health and readiness answer on both ports (kubelet probes the inference port).
HEALTH_PATHS = frozenset(("/health", "/ready", "/v2/health/live", "/v2/health/ready"))
# Model metadata and per-model readiness belong to the inference protocols (main port).
METADATA_PATH = re.compile(r"^/v2(/models/[^/]+(/versions/[^/]+)?(/ready)?)?$|^/v1/models/[^/:]+$")
FALLBACK_BODY_LIMIT = 1 << 20  # framework routes before the model (and so the limits) is known


class BodyTooLarge(ServerError):
    status = 413


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    raw = _header(headers, b"content-length")
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _expects_continue(headers: list[tuple[bytes, bytes]]) -> bool:
    value = _header(headers, b"expect")
    return value is not None and value.lower() == b"100-continue"


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"request body larger than {limit} bytes (the limit follows MODELSHIP_MAX_BATCH_ROWS"
                        " and the model's row size; MODELSHIP_MAX_BODY_BYTES sets it)")  # fmt: skip


async def _read_body(receive: Callable[[], Awaitable[dict]], limit: int) -> bytes:
    """The whole body, or BodyTooLarge as soon as it passes `limit` (chunked bodies included:
    reading stops there; the server discards the rest of the upload without keeping it)."""
    message = await receive()
    body = message.get("body", b"")
    if len(body) > limit:
        raise _too_large(limit)
    if not message.get("more_body", False):
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _limited_receive(receive: Callable[[], Awaitable[dict]], limit: int) -> Callable[[], Awaitable[dict]]:
    """`receive` for the framework routes (feedback): BodyTooLarge once `limit` bytes pass."""
    size = 0

    async def limited() -> dict:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise _too_large(limit)
        return message

    return limited


def _route(method: str, path: str) -> tuple[str, Callable[..., Awaitable[Reply]], tuple] | None:
    """(protocol, handler, path arguments) of an inference POST, else None."""
    if method != "POST":
        return None
    if path == "/predict":
        return plain.PROTOCOL, plain.predict, ()
    if path == "/predict/batch":
        return plain.PROTOCOL, plain.predict_batch, ()
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        middle = path[len("/v2/models/") : -len("/infer")]
        name, sep, version = middle.partition("/versions/")
        if name and "/" not in name and (not sep or (version and "/" not in version)):
            return v2.PROTOCOL, v2.infer, (name, version or None)
        return None
    if path.startswith("/v1/models/") and path.endswith(":predict"):
        name = path[len("/v1/models/") : -len(":predict")]
        if name and "/" not in name:
            return v1.PROTOCOL, v1.predict, (name,)
    return None


class ModelshipASGI:
    def __init__(self, app: Any, service: Service) -> None:
        self.app = app
        self.service = service
        self._version = (MODEL_VERSION, service.version.encode())
        self._admin_port = service.settings.admin_port
        service.on_identity.append(self._identity_changed)

    def _served_here(self, scope: dict, route: tuple | None) -> bool:
        """With an admin port: inference and model metadata on the main port only; /metrics,
        /feedback, /drift, the API docs and anything else on the admin port only; health on both."""
        path = scope["path"]
        if path in HEALTH_PATHS or (path.endswith("/ready") and METADATA_PATH.match(path)):
            return True
        server = scope.get("server")
        on_admin = bool(server) and server[1] == self._admin_port
        inference = route is not None or _route("POST", path) is not None or METADATA_PATH.match(path) is not None
        return inference != on_admin

    def _identity_changed(self) -> None:
        self._version = (MODEL_VERSION, self.service.version.encode())

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client_id = _client_request_id(scope["headers"])
        request_id = client_id or new_request_id()
        route = _route(scope["method"], scope["path"])
        if self._admin_port and not self._served_here(scope, route):
            await _send_reply(send, Reply(404, dumps({"error": "not found"})), [self._version, (REQUEST_ID, request_id)])
            return
        if route is not None:
            await self._infer(scope, receive, send, request_id, client_id is None, *route)
            return
        extra = [self._version, (REQUEST_ID, request_id)]
        if scope["method"] != "POST" and _route("POST", scope["path"]) is not None:
            await _send_reply(send, Reply(405, dumps({"error": "method not allowed: use POST"}),
                                          headers=[(b"allow", b"POST")]), extra)  # fmt: skip
            return
        if scope["method"] not in ("GET", "HEAD"):
            # Framework routes (feedback) read their bodies through a limited receive.
            limit = self.service.feedback_body_limit or FALLBACK_BODY_LIMIT
            declared = _declared_length(scope["headers"])
            if declared is not None and declared > limit:
                await _send_reply(send, error_reply(_too_large(limit)), extra)
                return
            receive = _limited_receive(receive, limit)

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _infer(self, scope: dict, receive: Callable, send: Callable, request_id: bytes, drawn: bool,
                     protocol: str, handler: Callable[..., Awaitable[Reply]], args: tuple) -> None:  # fmt: skip
        service = self.service
        start = time.perf_counter()
        service.inflight += 1
        call = Call(request_id.decode(), shadow=_header(scope["headers"], SHADOW_HEADER) == b"1", drawn=drawn)
        body = b""
        body_read = False
        error: str | None = None
        try:
            # 0 until a model is attached: the handler answers 503 (or 404) without the body.
            limit = service.body_limit
            if limit:
                declared = _declared_length(scope["headers"])
                if declared is not None and declared > limit:
                    raise _too_large(limit)
                # Shed before reading or decoding the body (404 for another model first). The
                # body is left unread: the HTTP server still parses it off the connection and
                # discards it, so keep-alive framing holds (closing instead would reset a
                # connection with unread bytes and could lose the 503 itself).
                if args:
                    service.check_model(*args)
                service.check_admission()
                body = await _read_body(receive, limit)
                body_read = True
            if protocol == v2.PROTOCOL:
                raw = _header(scope["headers"], v2.HEADER_LENGTH)
                try:
                    header_length = int(raw) if raw is not None else None
                except ValueError:
                    header_length = -1  # rejected as out of range by the handler
                reply = await handler(service, *args, body, header_length, call)
            else:
                reply = await handler(service, *args, body, call)
        except ServerError as e:
            reply = error_reply(e)
            error = e.message
        except Exception as e:  # a bug: say so, keep serving
            log.exception("unexpected error in %s %s", scope["method"], scope["path"])
            error = f"internal error: {type(e).__name__}"
            reply = Reply(500, dumps({"error": error}))
        finally:
            service.inflight -= 1
        if not body_read and _expects_continue(scope["headers"]):
            # Answered before "100 Continue": the client sends no body, so none may be expected
            # on this connection any more.
            reply.headers = [*(reply.headers or ()), (b"connection", b"close")]
        await _send_reply(send, reply, [self._version, (REQUEST_ID, request_id)])
        elapsed = time.perf_counter() - start
        service.metrics.observe_request(protocol, reply.status, elapsed)
        monitoring = service.monitoring
        if monitoring is not None and monitoring.audit is not None:
            audit = monitoring.audit
            client = scope.get("client")
            audit.log(AuditRecord(
                call.request_id, service.name, service.version, protocol, reply.status, elapsed * 1000.0,
                call.rows, call.batch_size, client=f"{client[0]}:{client[1]}" if client else None, error=error,
                inputs=call.inputs if audit.wants_inputs else None, body=body if audit.wants_body else None,
                # A mirror is still audited (a header must not hide a request), marked for filtering.
                extra={"shadow": True} if call.shadow else None,
            ))  # fmt: skip
        # After the answer went out: maybe mirror it to the shadow canary (queued, never awaited).
        if service.shadow.config.on and call.outputs is not None and 200 <= reply.status < 300 and not call.shadow:
            service.shadow.offer(protocol, scope["path"], body, scope["headers"], call.outputs, call.request_id)


async def _send_reply(send: Callable, reply: Reply, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"content-type", reply.content_type), (b"content-length", str(len(reply.body)).encode()), *extra]
    if reply.headers:
        headers.extend(reply.headers)
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


__all__ = ["ModelshipASGI", "error_reply", "new_request_id"]
