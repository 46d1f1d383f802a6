"""Service ClusterIPs that answer inside the podlet's pod network namespace: a test-harness
stand-in for kube-proxy on the local control plane (../shared/cluster/podlet.py).

The podlet runs every pod inside one network namespace (`podnet`) and nothing answers a
Service's ClusterIP there. Code under test that reaches another revision *through its Service*
(a stable pod mirroring requests to `http://<canary Service clusterIP>:<port>`) needs it to.
`ServiceProxy` makes the ClusterIPs of one Kubernetes namespace answer inside the netns:

* every ~1 s it lists the namespace's Services and EndpointSlices from the API server (the
  repository's `Kube` client) and turns them into a table (`service_table`, pure): per
  ClusterIP and Service port, the ready endpoints' address and port (the EndpointSlice port of
  the same name, so `targetPort` by name or number resolves as the endpoints controller did);
* a child process, `ip netns exec <netns> python service_forwarder.py`, reads that table on
  stdin, adds each ClusterIP/32 to the netns loopback, listens on ClusterIP:port and forwards
  each TCP connection to the next ready endpoint, round-robin, skipping one that refuses.

What it emulates: TCP to a ClusterIP:port from inside the pod netns reaches a ready endpoint of
the Service, and follows endpoint changes within about a second. What it does not: the host side
(only the netns sees the ClusterIPs), cluster DNS (callers use the IP), UDP/SCTP, session
affinity, externalTrafficPolicy/internalTrafficPolicy, topology hints, NodePorts, headless or
ExternalName Services, the client's source address (the backend sees the forwarder's), and
kube-proxy's in-kernel per-packet NAT (this is a userspace proxy: a connection, once
forwarded, stays on its backend, as it does with kube-proxy too).

`NetnsLoad` is the client side: load from inside the netns (service_load.py) against a URL,
e.g. a proxied ClusterIP, counting answers by status code and X-Model-Version.

Needs root and the netns (`ServiceProxy.unavailable()` says why not; tests skip on it). Stop
it with `stop()` (or `with`): the child closes its listeners, removes the addresses it added and
exits; it does the same if the test process dies (its stdin closes).
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from modelship_operator.kube import Connection, Kube

FORWARDER = Path(__file__).with_name("service_forwarder.py")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def unavailable(netns: str = "podnet") -> str | None:
    """Why a ServiceProxy cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "the Service proxy needs root (ip netns exec, ip addr add)"
    ip = shutil.which("ip")
    if ip is None:
        return "no `ip` command (iproute2)"
    listed = subprocess.run([ip, "netns", "list"], capture_output=True, text=True)
    if netns not in {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}:
        return f"no network namespace {netns!r} (is the podlet running?)"
    return None


def _ready(endpoint: Mapping[str, Any]) -> bool:
    # EndpointSlice API: an unset `ready` condition means ready
    return (endpoint.get("conditions") or {}).get("ready") is not False


def service_table(services: Iterable[Mapping[str, Any]], slices: Iterable[Mapping[str, Any]]) -> list[dict]:
    """The forwarder's table: one entry per TCP port of every Service with a ClusterIP, its
    backends the ready endpoints of the Service's IPv4 EndpointSlices at the slice port of the
    same name. Sorted, so an unchanged cluster gives an equal table."""
    by_service: dict[str, list[Mapping[str, Any]]] = {}
    for s in slices:
        if s.get("addressType", "IPv4") == "IPv4":
            owner = ((s.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
            if owner:
                by_service.setdefault(owner, []).append(s)
    table = []
    for svc in services:
        spec, meta = svc.get("spec") or {}, svc.get("metadata") or {}
        ip = spec.get("clusterIP")
        if not ip or ip == "None" or spec.get("type") == "ExternalName":
            continue
        for port in spec.get("ports") or ():
            if port.get("protocol", "TCP") != "TCP":
                continue
            name = port.get("name") or ""
            backends = set()
            for s in by_service.get(meta.get("name", ""), ()):
                target = next((p.get("port") for p in s.get("ports") or ()
                               if (p.get("name") or "") == name and p.get("protocol", "TCP") == "TCP"), None)
                if target is None:
                    continue
                for endpoint in s.get("endpoints") or ():
                    if _ready(endpoint) and endpoint.get("addresses"):
                        backends.add((endpoint["addresses"][0], int(target)))
            table.append({"ip": ip, "port": int(port["port"]),
                          "name": f"{meta.get('namespace')}/{meta.get('name')}:{name}", "backends": sorted(backends)})
    return sorted(table, key=lambda e: (e["ip"], e["port"]))


def in_netns(argv: list[str], netns: str = "podnet", timeout: float = 30) -> subprocess.CompletedProcess:
    """Run argv inside the pod network namespace (as the pods do)."""
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=timeout)


class ServiceProxy:
    """The ClusterIPs of `namespace`'s Services, answering inside `netns` (see the module doc)."""

    def __init__(self, kubeconfig: str | Path, namespace: str, netns: str = "podnet", interval: float = 1.0) -> None:
        self.kubeconfig, self.namespace, self.netns, self.interval = Path(kubeconfig), namespace, netns, interval
        self.table: list[dict] = []
        self.seq = 0  # tables sent; the forwarder echoes the last one it applied
        self.state: dict[str, Any] = {"listening": [], "errors": [], "connections": {}}
        self.errors: list[str] = []  # refresh failures (the last few)
        self._child: subprocess.Popen | None = None
        self._stderr = tempfile.TemporaryFile(mode="w+")  # the forwarder's: a test can show it is clean
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._threads: list[threading.Thread] = []

    # ---- lifecycle

    def start(self) -> "ServiceProxy":
        reason = unavailable(self.netns)
        if reason:
            raise RuntimeError(reason)
        self._child = subprocess.Popen(["ip", "netns", "exec", self.netns, sys.executable, str(FORWARDER)],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                       text=True, bufsize=1)
        for target, name in ((self._read, "service-proxy-reader"), (self._refresh, "service-proxy-refresh")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads[1:]:
            thread.join(10)
        child, self._child = self._child, None
        if child is None:
            return
        try:
            child.stdin.close()  # EOF: the forwarder closes its listeners and removes its addresses
        except OSError:
            pass
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)
            for ip in {e["ip"] for e in self.table}:  # it could not clean up: do it for it
                in_netns(["ip", "addr", "del", f"{ip}/32", "dev", "lo"], self.netns)
        self._threads[0].join(5)

    def __enter__(self) -> "ServiceProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- what tests ask

    def stderr(self) -> str:
        """What the forwarder wrote to stderr so far (tracebacks would land here)."""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read()

    def connections(self, at_least: int = 0, timeout: float = 5) -> dict[str, int]:
        """Connections forwarded so far, by "clusterIP:port>endpointIP:port" (waits up to
        `timeout` for the forwarder to report `at_least` of them in all: it reports every 0.2 s)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum((self.state.get("connections") or {}).values()) < at_least and time.monotonic() < deadline:
                self._changed.wait(0.2)
            return dict(self.state.get("connections") or {})

    def wait_for(self, ip: str, port: int, backends: int = 1, timeout: float = 30) -> None:
        """Until the forwarder listens on ip:port with at least `backends` ready endpoints."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                entry = next((e for e in self.table if (e["ip"], e["port"]) == (ip, port)), None)
                applied = self.state.get("seq", 0) >= self.seq
                listening = f"{ip}:{port}" in self.state["listening"]
                if applied and listening and entry and len(entry["backends"]) >= backends:
                    return
                left = deadline - time.monotonic()
                if left <= 0 or self._child is None or self._child.poll() is not None:
                    raise TimeoutError(f"{ip}:{port} with {backends} endpoint(s) not proxied: table {self.table}, "
                                       f"forwarder {self.state}, refresh errors {self.errors[-3:]}")
                self._changed.wait(min(left, 0.5))

    # ---- threads

    def _read(self) -> None:
        assert self._child is not None and self._child.stdout is not None
        for line in self._child.stdout:
            try:
                state = json.loads(line)
            except ValueError:
                continue
            with self._changed:
                self.state = state
                self._changed.notify_all()

    def _refresh(self) -> None:
        asyncio.run(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        kube = Kube(Connection.from_kubeconfig(self.kubeconfig), field_manager="modelship-e2e-services")
        try:
            while not self._stop.is_set():
                try:
                    services = await kube.list("v1", "Service", self.namespace)
                    slices = await kube.list("discovery.k8s.io/v1", "EndpointSlice", self.namespace)
                    table = service_table(services, slices)
                    if table != self.table:
                        self._send(table)
                except Exception as exc:  # the API server restarting, a timeout: keep the last table
                    self.errors = [*self.errors[-9:], repr(exc)]
                await asyncio.to_thread(self._stop.wait, self.interval)
        finally:
            await kube.close()

    def _send(self, table: list[dict]) -> None:
        child = self._child
        if child is None or child.stdin is None:
            return
        with self._changed:
            self.seq += 1
            child.stdin.write(json.dumps({"seq": self.seq, "services": table}) + "\n")
            child.stdin.flush()
            self.table = table
            self._changed.notify_all()


LOADER = Path(__file__).with_name("service_load.py")


class NetnsLoad:
    """Client traffic from inside the netns (service_load.py): POST `{"features": row}` to `url`
    (a ClusterIP through a running ServiceProxy, as a pod's client would reach a Service) at `rps`,
    one connection per request, until stopped. `counts()`: the cumulative answers so far, by
    status code (0: none) and by the X-Model-Version of the 2xx ones."""

    def __init__(self, url: str, rows: list[list[float]], rps: float, workdir: Path, netns: str = "podnet") -> None:
        self.url, self.rps, self.netns = url, rps, netns
        self._bodies = workdir / f"load-{time.monotonic_ns()}.json"
        self._bodies.write_text(json.dumps(rows))
        self._latest: dict[str, Any] = {"sent": 0, "codes": {}, "versions": {}}
        self._history: list[tuple[float, dict[str, Any]]] = []  # (time.time() received, counts), 4 a second
        self._lock = threading.Lock()
        self._child: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> "NetnsLoad":
        self._child = subprocess.Popen(["ip", "netns", "exec", self.netns, sys.executable, str(LOADER), self.url,
                                        str(self._bodies), str(self.rps)],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, name="netns-load", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._child is not None and self._child.stdout is not None
        for line in self._child.stdout:
            try:
                latest = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self._latest = latest
                self._history.append((time.time(), latest))
                del self._history[:-20000]

    def counts(self) -> dict[str, Any]:
        with self._lock:
            return json.loads(json.dumps(self._latest))

    def counts_at(self, wall: float) -> dict[str, Any]:
        """The counts as last reported at or before `wall` (time.time()); answers counted by then
        were received by then (within the loader's 0.25 s reporting period)."""
        with self._lock:
            before = [c for t, c in self._history if t <= wall]
            return json.loads(json.dumps(before[-1] if before else {"sent": 0, "codes": {}, "versions": {}}))

    def stop(self) -> dict[str, Any]:
        """Stop and return the final counts."""
        child, self._child = self._child, None
        if child is not None:
            try:
                child.stdin.close()  # EOF: the loader prints its final counts and exits
            except OSError:
                pass
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        return self.counts()
