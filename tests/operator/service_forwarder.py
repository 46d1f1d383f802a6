"""The in-namespace half of cluster_services.py: a TCP forwarder for Service ClusterIPs.

Runs as `ip netns exec <netns> python service_forwarder.py` (root), stdlib only. It reads its
table from stdin, one JSON line per change:

    {"seq": 3, "services": [{"ip": "127.32.0.10", "port": 8080, "name": "ns/svc:http",
                   "backends": [["198.18.10.7", 8080], ...]}, ...]}

and keeps, for each entry, the ClusterIP on the namespace's loopback (`ip addr add IP/32 dev lo`;
only addresses it added are removed again) and a listener on IP:port that forwards every
accepted connection to the next backend, round-robin (a backend that refuses is skipped; with no
backend left the client connection is closed, as kube-proxy rejects a Service without ready
endpoints). After applying a table, and every 0.2 s while counters move, it writes one JSON line
to stdout: {"seq": 3, "listening": ["ip:port", ...], "errors": [...], "connections": {"ip:port>bip:bport": n}}.
At EOF on stdin (the harness stopped, or died) it closes the listeners, removes its addresses and
exits.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from typing import Any

Addr = tuple[str, int]


class Listener:
    def __init__(self, addr: Addr) -> None:
        self.addr = addr
        self.backends: list[Addr] = []
        self._next = itertools.count()
        self.server: asyncio.AbstractServer | None = None

    def order(self) -> list[Addr]:
        """The backends starting at the round-robin position (one step per connection)."""
        if not self.backends:
            return []
        start = next(self._next) % len(self.backends)
        return self.backends[start:] + self.backends[:start]


class Forwarder:
    def __init__(self) -> None:
        self.listeners: dict[Addr, Listener] = {}
        self.added: set[str] = set()  # addresses this process put on lo (and removes)
        self.errors: list[str] = []
        self.connections: dict[str, int] = {}
        self._reported: dict[str, int] | None = None
        self.open: set[asyncio.StreamWriter] = set()  # both ends of every forwarded connection
        self.seq = 0  # of the last table applied (echoed: the harness knows when a change took)

    def _ip(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", *argv], capture_output=True, text=True)

    def _add_address(self, ip: str) -> None:
        if ip in self.added:
            return
        done = self._ip("addr", "add", f"{ip}/32", "dev", "lo")
        if done.returncode == 0:
            self.added.add(ip)
        elif "exists" not in done.stderr:  # present already (not ours): use it, never remove it
            raise OSError(f"ip addr add {ip}/32 dev lo: {done.stderr.strip()}")

    def _remove_address(self, ip: str) -> None:
        if ip in self.added:
            self._ip("addr", "del", f"{ip}/32", "dev", "lo")
            self.added.discard(ip)

    async def apply(self, table: dict[str, Any]) -> None:
        wanted: dict[Addr, list[Addr]] = {}
        for entry in table.get("services") or ():
            wanted[(entry["ip"], int(entry["port"]))] = [(b[0], int(b[1])) for b in entry.get("backends") or ()]
        for addr in [a for a in self.listeners if a not in wanted]:
            await self._close(self.listeners.pop(addr))
        for addr, backends in wanted.items():
            listener = self.listeners.get(addr)
            if listener is None:
                listener = Listener(addr)
                try:
                    self._add_address(addr[0])
                    listener.server = await asyncio.start_server(
                        lambda r, w, listener=listener: self._forward(listener, r, w), addr[0], addr[1],
                        reuse_address=True)
                except OSError as exc:
                    self.errors.append(f"{addr[0]}:{addr[1]}: {exc}")
                    continue
                self.listeners[addr] = listener
            listener.backends = backends
        self.seq = int(table.get("seq") or 0)
        for ip in list(self.added):
            if not any(a[0] == ip for a in self.listeners):
                self._remove_address(ip)
        self.report(force=True)

    async def _close(self, listener: Listener) -> None:
        # new connections are refused; established ones run on (kube-proxy leaves them too), and
        # wait_closed() is not awaited: from Python 3.12 on it would wait for them
        if listener.server is not None:
            listener.server.close()

    async def _forward(self, listener: Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        for backend in listener.order():
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection(*backend), 5)
            except (OSError, asyncio.TimeoutError):
                continue
            key = f"{listener.addr[0]}:{listener.addr[1]}>{backend[0]}:{backend[1]}"
            self.connections[key] = self.connections.get(key, 0) + 1
            break
        if upstream is None:  # no ready endpoint answers: reject
            writer.close()
            return
        up_reader, up_writer = upstream
        self.open.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()  # half-close: the other side may still answer
            except (OSError, RuntimeError):  # a reset on either side ends both directions
                writer.close()
                up_writer.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except asyncio.CancelledError:  # shutting down
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
                self.open.discard(w)

    def report(self, force: bool = False) -> None:
        if not force and self._reported == self.connections:
            return
        self._reported = dict(self.connections)
        line = {"seq": self.seq, "listening": sorted(f"{a[0]}:{a[1]}" for a in self.listeners),
                "errors": self.errors[-20:], "connections": self._reported}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    async def shutdown(self) -> None:
        for listener in self.listeners.values():
            await self._close(listener)
        self.listeners.clear()
        for w in list(self.open):  # the pipes see EOF and their tasks end
            w.close()
        self.open.clear()
        await asyncio.sleep(0.1)
        for ip in list(self.added):
            self._remove_address(ip)


async def main() -> None:
    forwarder = Forwarder()
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    async def reports() -> None:
        while True:
            await asyncio.sleep(0.2)
            forwarder.report()

    ticker = asyncio.create_task(reports())
    try:
        while line := await stdin.readline():
            try:
                table = json.loads(line)
            except ValueError as exc:
                forwarder.errors.append(f"bad table line: {exc}")
                continue
            await forwarder.apply(table)
    finally:
        ticker.cancel()
        await forwarder.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
