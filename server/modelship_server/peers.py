"""Feedback across pods: ask the other replicas about a request id this pod does not know.

The feedback store is per pod, and a Service may route the feedback to another replica than
the one that served the prediction. With `MODELSHIP_FEEDBACK_PEERS` set, ids unknown here
are sent (one hop, marked with FORWARDED_HEADER so a peer never forwards again, a short
timeout per peer) to every peer; the first answer that is not "unknown" wins.

Peers are `host:port` entries; a host name is resolved on use (all its A/AAAA records, cached
for a few seconds), so one headless Service name covers every pod. A pod asking itself is
harmless: forwarded questions about unknown ids are answered "unknown" and not counted.
A tiny HTTP/1.1 client on asyncio streams keeps the server free of an HTTP client dependency.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import Counter
from typing import Any, Sequence

import orjson

from .feedback import HTTP_STATUS, UNKNOWN, FeedbackStore, feedback_answer, parse_feedback

log = logging.getLogger(__name__)

FORWARDED_HEADER = "x-modelship-forwarded"
FEEDBACK_PATH = "/feedback"
RESOLVE_TTL_S = 5.0
MAX_ANSWER_BYTES = 8 << 20


def parse_peer(spec: str) -> tuple[str, int]:
    host, sep, port = spec.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"feedback peer {spec!r} must be host:port")
    return host.strip("[]"), int(port)


class FeedbackPeers:
    def __init__(self, peers: Sequence[str], timeout_s: float) -> None:
        self.peers = [parse_peer(p) for p in peers]
        self.timeout_s = timeout_s
        self.answered: Counter[str] = Counter()  # peer answers used, by result
        self.errors = 0  # peers that failed or timed out
        self._resolved: dict[str, tuple[float, list[str]]] = {}

    async def addresses(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for host, port in self.peers:
            out.extend((ip, port) for ip in await self._resolve(host))
        return list(dict.fromkeys(out))

    async def _resolve(self, host: str) -> list[str]:
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            pass
        now = time.monotonic()
        cached = self._resolved.get(host)
        if cached is not None and now - cached[0] < RESOLVE_TTL_S:
            return cached[1]
        try:
            infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM), self.timeout_s)
            ips = list(dict.fromkeys(str(info[4][0]) for info in infos))
        except (OSError, asyncio.TimeoutError) as e:
            log.warning("feedback peers: cannot resolve %s: %s", host, e)
            ips = cached[1] if cached else []
        self._resolved[host] = (now, ips)
        return ips

    async def ask(self, items: list[tuple[str, Any]], token: str = "") -> dict[str, tuple[int, dict[str, Any]]]:
        """request id -> (status, body) of the first peer that knew it (`token`: the feedback
        token, sent as a Bearer token: the peers require the same one)."""
        payload = orjson.dumps({"feedback": [{"request_id": rid, "truth": truth} for rid, truth in items]})
        addrs = await self.addresses()
        replies = await asyncio.gather(*(self._post(host, port, payload, token) for host, port in addrs), return_exceptions=True)
        known: dict[str, tuple[int, dict[str, Any]]] = {}
        for (host, port), reply in zip(addrs, replies):
            if isinstance(reply, BaseException):
                self.errors += 1
                log.debug("feedback peer %s:%s: %s", host, port, reply)
                continue
            status, body = reply
            results = body.get("results") if status == 200 and isinstance(body, dict) else None
            if not isinstance(results, list):
                self.errors += 1
                continue
            for r in results:
                if isinstance(r, dict) and r.get("result") not in (None, UNKNOWN) and r.get("request_id") not in known:
                    known[str(r["request_id"])] = (HTTP_STATUS.get(str(r["result"]), 200), r)
        for _, body in known.values():
            self.answered[str(body["result"])] += 1
        return known

    async def _post(self, host: str, port: int, payload: bytes, token: str = "") -> tuple[int, Any]:
        return await asyncio.wait_for(_http_post(host, port, FEEDBACK_PATH, payload, token), self.timeout_s)


async def _http_post(host: str, port: int, path: str, payload: bytes, token: str = "") -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {authority}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\n{FORWARDED_HEADER}: 1\r\nconnection: close\r\n"
            + (f"authorization: Bearer {token}\r\n" if token else "") + "\r\n"
        )
        writer.write(head.encode() + payload)
        await writer.drain()
        data = b""
        while len(data) <= MAX_ANSWER_BYTES:
            chunk = await reader.read(65536)
            if not chunk:
                break
            data += chunk
    finally:
        writer.close()
    header, _, body = data.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    return status, orjson.loads(body) if body else None


async def answer_feedback_with_peers(store: FeedbackStore, body: bytes, peers: FeedbackPeers | None,
                                     forwarded: bool, token: str = "") -> tuple[int, dict[str, Any]]:  # fmt: skip
    """The feedback routes: join here; ids unknown here go to the peers (unless this is a
    peer's question); what nobody knows is counted "unknown" here, once."""
    parsed = parse_feedback(body)
    if isinstance(parsed, str):
        return 400, {"error": parsed}
    items, single = parsed
    ask_peers = peers is not None and not forwarded
    results = [store.feedback(rid, truth, count_unknown=not (ask_peers or forwarded)) for rid, truth in items]
    answers = [(r.http_status, r.to_dict()) for r in results]
    unknown = [i for i, r in enumerate(results) if r.outcome == UNKNOWN]
    if ask_peers and unknown:
        known = await peers.ask([items[i] for i in unknown], token)  # type: ignore[union-attr]
        for i in unknown:
            rid, truth = items[i]
            if rid in known:
                answers[i] = known[rid]
            else:  # nobody has it: count it here (or join it, had it been recorded meanwhile)
                r = store.feedback(rid, truth)
                answers[i] = (r.http_status, r.to_dict())
    return feedback_answer(answers, single)
