"""Shadow mirroring: a sampled share of this pod's successful inference requests is sent,
after the client has its answer, to a canary revision, and the canary's answer is compared
with this pod's own outputs (shadow_compare.py). Docs: README.md, "Shadow comparison".

The target is pushed at runtime (PUT /shadow on the admin surface; settings give a startup
default): changing it must not restart the stable pods. On the request path `offer` only
samples and appends to a bounded queue (items and bytes: body + kept outputs, the arrays
the stable computed, not copies); a full queue drops and counts, nothing is awaited. A few
workers send the mirrors over kept-alive HTTP/1.1 connections (h11, which uvicorn already
brings) with a short timeout. A mirrored request carries X-Modelship-Shadow: 1; the canary
serves it normally but does not store it for feedback, and never mirrors it again.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import random
import re
import ssl
import urllib.parse
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import h11
import numpy as np
import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .shadow_compare import COMPARED, DROPPED, ERROR, MISMATCH, OUTCOMES, Comparison, Request, compare_answer

log = logging.getLogger(__name__)

SHADOW_HEADER = b"x-modelship-shadow"
CONTENT_HEADERS = (b"content-type", b"inference-header-content-length")
ANSWER_HEADER_LENGTH = b"inference-header-content-length"
KEPT_REVISIONS = 4  # metric series are kept for the current revision and the 3 before it
MAX_REVISION_CHARS = 128
MAX_UPDATE_BYTES = 4096  # a PUT /shadow body
ITEM_OVERHEAD = 512  # estimated bytes of a queued mirror besides its body and outputs
OFFLOAD_BYTES = 64 * 1024  # answers larger than this are decoded and compared off the event loop
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


class ShadowConfigError(ValueError):
    """A shadow setting or PUT /shadow body is invalid; `status` is the HTTP answer."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Target:
    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_target(url: str) -> Target:
    """http(s)://host[:port], nothing else (no path, query, fragment or user info)."""
    if not isinstance(url, str) or not url or len(url) > 300 or any(c.isspace() for c in url):
        raise ShadowConfigError("url must be http(s)://host[:port]")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ShadowConfigError(f"url {url!r}: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise ShadowConfigError(f"url {url!r}: the scheme must be http or https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ShadowConfigError(f"url {url!r}: no user info allowed")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in url or "#" in url:
        raise ShadowConfigError(f"url {url!r}: no path, query or fragment allowed (the request's path is appended)")
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST_NAME.match(host):
            raise ShadowConfigError(f"url {url!r}: {host!r} is not a host name or IP address") from None
    if port == 0:
        raise ShadowConfigError(f"url {url!r}: port must be in 1..65535")
    return Target(parts.scheme, host, port or (443 if parts.scheme == "https" else 80))


@dataclass(frozen=True, slots=True)
class ShadowConfig:
    """Where to mirror and how much; off when percent is 0 (then url and revision are None)."""

    target: Target | None = None
    percent: float = 0.0
    revision: str | None = None
    url: str | None = None  # as given: GET /shadow answers it unchanged (the operator compares it)

    @property
    def on(self) -> bool:
        return self.target is not None and self.percent > 0

    @property
    def label(self) -> str:
        return self.revision or ""


def make_config(url: Any, percent: Any, revision: Any, require_url: bool = True) -> ShadowConfig:
    """A validated config; ShadowConfigError (422) names what is wrong. `require_url=False`
    checks each field alone (settings layered from env and flags may add the url later)."""
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not math.isfinite(percent):
        raise ShadowConfigError("percent must be a number in 0..100")
    if not 0 <= percent <= 100:
        raise ShadowConfigError(f"percent {percent} is outside 0..100")
    if url is not None and not isinstance(url, str):
        raise ShadowConfigError("url must be a string or null")
    if revision is not None:
        if not isinstance(revision, str):
            raise ShadowConfigError("revision must be a string or null")
        if len(revision) > MAX_REVISION_CHARS or not all(32 <= ord(c) < 127 for c in revision):
            raise ShadowConfigError(f"revision must be at most {MAX_REVISION_CHARS} printable ASCII characters")
    if percent == 0 or (not url and not require_url):
        if url:
            parse_target(url)
        return ShadowConfig()
    if not url:
        raise ShadowConfigError("url is required when percent > 0")
    return ShadowConfig(parse_target(url), float(percent), revision or None, url)


UPDATE_FIELDS = frozenset(("url", "percent", "revision"))


def parse_update(body: bytes) -> ShadowConfig:
    """A PUT /shadow body: {"url", "percent", "revision"}; the whole config is replaced."""
    if len(body) > MAX_UPDATE_BYTES:
        raise ShadowConfigError(f"body larger than {MAX_UPDATE_BYTES} bytes", 413)
    try:
        obj = orjson.loads(body) if body else None
    except orjson.JSONDecodeError as e:
        raise ShadowConfigError(f"malformed JSON: {e}", 400) from None
    if not isinstance(obj, dict):
        raise ShadowConfigError('body must be a JSON object: {"url": ..., "percent": ..., "revision": ...}', 400)
    unknown = sorted(set(obj) - UPDATE_FIELDS)
    if unknown:
        raise ShadowConfigError(f"unknown fields {unknown} (expected url, percent, revision)")
    if "percent" not in obj:
        raise ShadowConfigError("percent is required (0 turns mirroring off)")
    return make_config(obj.get("url"), obj["percent"], obj.get("revision"))


# -- per-revision counts, exported as metrics ---------------------------------------------

@dataclass
class RevisionStats:
    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    rows: int = 0
    disagreements: int = 0
    abs_diff_sum: float = 0.0
    abs_diff_max: float = 0.0

    def add(self, c: Comparison) -> None:
        self.requests[c.outcome] += 1
        self.rows += c.rows
        self.disagreements += c.disagreements
        self.abs_diff_sum += c.abs_diff_sum
        self.abs_diff_max = max(self.abs_diff_max, c.abs_diff_max)


@dataclass(slots=True)
class Mirror:
    config: ShadowConfig
    request: Request
    headers: list[tuple[bytes, bytes]]
    outputs: Mapping[str, np.ndarray]
    request_id: str
    nbytes: int


class Shadow:
    """The mirror queue and its workers; one per server. Event loop only (close() aside)."""

    def __init__(self, config: ShadowConfig, *, max_queue: int = 64, max_bytes: int = 16 << 20,
                 timeout_s: float = 5.0, concurrency: int = 4, rng: Callable[[], float] | None = None) -> None:  # fmt: skip
        self.config = config
        self.max_queue = max_queue
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.class_outputs: Sequence[str] = ()  # set when the model is attached
        self._random = rng or random.Random().random
        self._queue: deque[Mirror] = deque()
        self._bytes = 0  # queued and in-flight mirrors
        self._wake: asyncio.Event | None = None
        self._workers: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self.stats: OrderedDict[str, RevisionStats] = OrderedDict()
        if config.on:
            self._stats(config.label)

    # -- configuration ----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        c = self.config
        return {"url": c.url if c.target else None, "percent": c.percent, "revision": c.revision,
                "queued": len(self._queue), "maxQueue": self.max_queue}  # fmt: skip

    def configure(self, config: ShadowConfig) -> None:
        """Swap the config at once; queued mirrors for another target or revision are dropped."""
        old, self.config = self.config, config
        if (old.target, old.revision) != (config.target, config.revision) or not config.on:
            self._drop_queued()
        if config.on:
            self._stats(config.label)
            log.info("shadow: mirroring %g%% to %s (revision %r)", config.percent, config.target.url, config.label)  # type: ignore[union-attr]
        elif old.on:
            log.info("shadow: mirroring off")

    def _stats(self, revision: str, create: bool = True) -> RevisionStats | None:
        st = self.stats.get(revision)
        if st is None and create:
            st = self.stats[revision] = RevisionStats()
            while len(self.stats) > KEPT_REVISIONS:  # the oldest revisions' series go
                self.stats.popitem(last=False)
        elif st is not None and create:
            self.stats.move_to_end(revision)
        return st

    def _count(self, revision: str, c: Comparison) -> None:
        st = self._stats(revision, create=False)
        if st is not None:
            st.add(c)

    # -- request path -------------------------------------------------------------------------
    def offer(self, protocol: str, path: str, body: bytes, headers: list[tuple[bytes, bytes]],
              outputs: Mapping[str, np.ndarray], request_id: str) -> None:  # fmt: skip
        """Maybe mirror a request whose 2xx answer was sent. Never blocks, never raises."""
        config = self.config
        if not config.on or self._random() * 100.0 >= config.percent:
            return
        nbytes = ITEM_OVERHEAD + len(body) + sum(a.nbytes for a in outputs.values())
        if self.closed or len(self._queue) >= self.max_queue or self._bytes + nbytes > self.max_bytes:
            self._count(config.label, Comparison(DROPPED, 0))
            return
        kept = [(k, v) for k, v in headers if k in CONTENT_HEADERS]
        raw = next((v for k, v in kept if k == ANSWER_HEADER_LENGTH), None)
        header_length = int(raw) if raw is not None and raw.isdigit() else None
        self._queue.append(Mirror(config, Request(protocol, path, body, header_length), kept, outputs, request_id, nbytes))
        self._bytes += nbytes
        self._start()
        self._wake.set()  # type: ignore[union-attr]

    def _start(self) -> None:
        if self._workers:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._workers = [self._loop.create_task(self._work()) for _ in range(self.concurrency)]

    # -- shutdown -------------------------------------------------------------------------
    def close(self) -> None:
        """Stop mirroring at once (SIGTERM): queued and in-flight mirrors are dropped and
        counted, nothing is awaited. Safe from a signal handler: the work runs on the loop."""
        self.closed = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop)

    def _stop(self) -> None:
        self._drop_queued()
        for task in self._workers:
            task.cancel()  # an in-flight mirror counts itself dropped

    def _drop_queued(self) -> None:
        while self._queue:
            m = self._queue.popleft()
            self._bytes -= m.nbytes
            self._count(m.config.label, Comparison(DROPPED, 0))

    # -- workers ----------------------------------------------------------------------------
    async def _work(self) -> None:
        conn: _Connection | None = None
        try:
            while True:
                if not self._queue:
                    self._wake.clear()  # type: ignore[union-attr]
                    await self._wake.wait()  # type: ignore[union-attr]
                    continue
                m = self._queue.popleft()
                try:
                    if conn is None or conn.target != m.config.target:
                        if conn is not None:
                            conn.close()
                        conn = _Connection(m.config.target)  # type: ignore[arg-type]
                    result = await self._mirror(conn, m)
                except asyncio.CancelledError:
                    self._count(m.config.label, Comparison(DROPPED, 0))
                    raise
                except Exception as e:  # a bug: count it, keep the worker
                    log.exception("shadow: mirroring %s failed", m.request.path)
                    result = Comparison(ERROR, 0, reason=repr(e))
                finally:
                    self._bytes -= m.nbytes
                self._count(m.config.label, result)
        finally:
            if conn is not None:
                conn.close()

    async def _mirror(self, conn: _Connection, m: Mirror) -> Comparison:
        req = m.request
        rows = int(next(iter(m.outputs.values())).shape[0]) if m.outputs else 0
        headers = [*m.headers, (SHADOW_HEADER, b"1"), (b"x-request-id", m.request_id.encode())]
        try:
            status, answer_headers, answer = await asyncio.wait_for(
                conn.exchange(b"POST", req.path.encode(), headers, req.body, self.max_bytes), self.timeout_s)
        except (OSError, asyncio.TimeoutError, h11.ProtocolError, ValueError) as e:
            conn.close()
            log.debug("shadow: %s%s failed: %r", m.config.target.url, req.path, e)  # type: ignore[union-attr]
            return Comparison(ERROR, 0, reason=repr(e))
        if not 200 <= status < 300:
            return Comparison(ERROR, 0, reason=f"status {status}")
        raw = dict(answer_headers).get(ANSWER_HEADER_LENGTH)
        try:
            header_length = int(raw) if raw is not None else None
        except ValueError:
            header_length = -1  # out of range: a mismatch
        args = (req, m.outputs, self.class_outputs, answer, header_length)
        if len(answer) > OFFLOAD_BYTES:
            result = await asyncio.to_thread(compare_answer, *args)
        else:
            result = compare_answer(*args)
        if result.outcome == MISMATCH and rows:
            log.debug("shadow: mismatch from %s: %s", m.config.target.url, result.reason)  # type: ignore[union-attr]
        return result


class _Connection:
    """One kept-alive HTTP/1.1 connection to the canary (reopened when it closes)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._h11: h11.Connection | None = None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = self._h11 = None

    async def _open(self) -> None:
        t = self.target
        context = ssl.create_default_context() if t.scheme == "https" else None
        self._reader, self._writer = await asyncio.open_connection(t.host, t.port, ssl=context)
        self._h11 = h11.Connection(h11.CLIENT)

    async def exchange(self, method: bytes, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes,
                       max_answer: int) -> tuple[int, list[tuple[bytes, bytes]], bytes]:  # fmt: skip
        reused = self._h11 is not None
        try:
            return await self._exchange(method, path, headers, body, max_answer)
        except (OSError, h11.RemoteProtocolError, _ClosedBeforeAnswer):
            self.close()
            if not reused:
                raise
        # A kept-alive connection the canary had closed meanwhile: once more on a fresh one.
        return await self._exchange(method, path, headers, body, max_answer)

    async def _exchange(self, method: bytes, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes,
                        max_answer: int) -> tuple[int, list[tuple[bytes, bytes]], bytes]:  # fmt: skip
        if self._h11 is None:
            await self._open()
        conn, reader, writer = self._h11, self._reader, self._writer
        assert conn is not None and reader is not None and writer is not None
        host = self.target.url.split("://", 1)[1].encode()
        head = [(b"host", host), (b"content-length", str(len(body)).encode()), *headers]
        writer.writelines([
            *conn.send_with_data_passthrough(h11.Request(method=method, target=path, headers=head)),
            *conn.send_with_data_passthrough(h11.Data(data=body)),
            *conn.send_with_data_passthrough(h11.EndOfMessage()),
        ])  # fmt: skip
        await writer.drain()
        status, answer_headers, chunks, size = 0, [], [], 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Response):
                status, answer_headers = event.status_code, [(k.lower(), v) for k, v in event.headers]
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > max_answer:
                    raise ValueError(f"answer larger than {max_answer} bytes")
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise _ClosedBeforeAnswer() if not status else OSError("connection closed mid-answer")
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            self.close()
        return status, answer_headers, b"".join(chunks)


class _ClosedBeforeAnswer(Exception):
    pass


# -- metrics ----------------------------------------------------------------------------------

class ShadowCollector(Collector):
    """modelship_shadow_* at scrape time (docs: README.md, "Shadow comparison")."""

    def __init__(self, shadow: Shadow) -> None:
        self._shadow = shadow

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        sh = self._shadow
        requests = CounterMetricFamily("modelship_shadow_requests",
                                       "Mirrored requests by outcome: compared, dropped (queue full, mirroring "
                                       "switched or shutting down), error (no 2xx answer in time), mismatch (an "
                                       "answer of another form than the stable's outputs).",
                                       labels=["revision", "outcome"])  # fmt: skip
        rows = CounterMetricFamily("modelship_shadow_rows",
                                   "Rows compared with the canary (mismatched answers included).", labels=["revision"])
        disagreements = CounterMetricFamily("modelship_shadow_disagreements",
                                            "Compared rows whose predicted class differed (classifiers), and every "
                                            "row of a mismatched answer.", labels=["revision"])  # fmt: skip
        # A gauge by type, a counter by meaning: text-format parsers rename a counter without
        # "_total" (this name is what the operator reads); it only grows, like a histogram's _sum.
        diff_sum = GaugeMetricFamily("modelship_shadow_abs_diff_sum",
                                     "Sum over compared rows of each row's mean absolute difference of the float "
                                     "outputs (mean = increase of this / increase of rows_total); only grows.",
                                     labels=["revision"])  # fmt: skip
        diff_max = GaugeMetricFamily("modelship_shadow_abs_diff_max",
                                     "Largest absolute difference of a float output seen for the revision.",
                                     labels=["revision"])  # fmt: skip
        for revision, st in list(sh.stats.items()):
            for outcome in OUTCOMES:
                requests.add_metric([revision, outcome], st.requests[outcome])
            rows.add_metric([revision], st.rows)
            if sh.class_outputs:  # no class outputs: no series, so a maxDisagreement gate is inconclusive, not 0 %
                disagreements.add_metric([revision], st.disagreements)
            diff_sum.add_metric([revision], st.abs_diff_sum)
            diff_max.add_metric([revision], st.abs_diff_max)
        yield from (requests, rows, diff_sum, diff_max, *((disagreements,) if sh.class_outputs else ()))
        yield GaugeMetricFamily("modelship_shadow_queue_depth", "Mirrors waiting to be sent.", value=len(sh._queue))


__all__ = ["COMPARED", "DROPPED", "ERROR", "MISMATCH", "SHADOW_HEADER", "Shadow", "ShadowCollector", "ShadowConfig",
           "ShadowConfigError", "make_config", "parse_target", "parse_update"]  # fmt: skip
