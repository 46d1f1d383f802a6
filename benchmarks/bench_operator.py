"""How the operator scales: N ModelDeployments created at once, the real operator converging them.

    python benchmarks/bench_operator.py --n 200                 # against the HTTP API server double
    python benchmarks/bench_operator.py --n 1000 --kubeconfig ~/.kube/config   # a real API server

Prints the time until every ModelDeployment has converged (status.observedGeneration equals its
generation and its Deployment and Service exist; against the double, which plays the Deployment
controller here, also phase Healthy), the API requests by verb while converging and during a
steady-state window afterwards (zero writes expected), and the operator's peak RSS (VmHWM).

Requests are counted by the double itself (every client of the operator process: kopf and our
own), and, on any server, by the operator's own client (`api requests` logged at shutdown).
Targets on a real API server: 1,000 converge within 60 s, RSS <= 150 MB, zero steady-state writes.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "operator"))  # the API server double lives with the tests

from modelship_operator.kube import Connection, Kube  # noqa: E402
from modelship_operator.watchcache import WatchCache  # noqa: E402

MD = ("modelship.dev/v1alpha1", "ModelDeployment")
BENCH = "modelship-bench"  # our client's user agent, not counted as the operator's
LEASE_CLIENT = "modelship-leader-election"
WRITES = {"create", "update", "patch", "delete"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def manifest(name: str, namespace: str, replicas: int) -> dict[str, Any]:
    body = yaml.safe_load((ROOT / "examples" / "quickstart-cpu.yaml").read_text())
    body["metadata"] = {"name": name, "namespace": namespace}
    body["spec"]["replicas"] = replicas
    return body


class DeploymentController(threading.Thread):
    """In the double: reports every Deployment available, as the real controller would."""

    def __init__(self, double: Any, namespace: str) -> None:
        super().__init__(daemon=True, name="deployment-controller")
        self.double, self.namespace, self.stop = double, namespace, threading.Event()

    def run(self) -> None:
        from kube_double import deployment_status
        store = self.double.store

        def sync() -> None:
            rtype = store.type_for("apps/v1", "Deployment")
            for dep in store.list(rtype, self.namespace):
                status = deployment_status(dep, int(dep["spec"].get("replicas", 1)))
                live = dep.get("status") or {}
                if any(live.get(k) != status[k] for k in ("observedGeneration", "replicas", "readyReplicas")):
                    store.set_status(rtype, self.namespace, dep["metadata"]["name"], status)
        while not self.stop.wait(0.5):
            self.double.call(sync)


async def converged(kube: Kube, namespace: str, n: int, want_healthy: bool) -> int:
    mds = await kube.list(*MD, namespace)
    deps = {d["metadata"]["ownerReferences"][0]["uid"] for d in await kube.list("apps/v1", "Deployment", namespace)
            if d["metadata"].get("ownerReferences")}
    done = 0
    for md in mds:
        status = md.get("status") or {}
        if status.get("observedGeneration") == md["metadata"].get("generation") and md["metadata"]["uid"] in deps \
                and (not want_healthy or status.get("phase") == "Healthy"):
            done += 1
    return done


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="ModelDeployments to create (default %(default)s)")
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG") or None,
                        help="a real API server (default: KUBECONFIG; neither: the HTTP double)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up converging after this many s")
    parser.add_argument("--steady", type=float, default=10.0, help="steady-state window in s (default %(default)s)")
    parser.add_argument("--replicas", type=int, default=None,
                        help="spec.replicas of each (default: 2 on the double; 0 on a real server, so that "
                             "no pods run: the operator's work is the same)")
    parser.add_argument("--quiet", type=float, default=None,
                        help="the operator has settled after this many s without a write (default: 3 on the "
                             "double; 15 on a real server, whose controllers keep updating child status longer)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)
    result = run(args.n, args.kubeconfig, args.timeout, args.steady, args.replicas, args.quiet)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:28s} {value}")
    return 0 if result["converged"] == args.n and not result["steady_writes"] else 1


def run(n: int, kubeconfig: str | None, timeout: float, steady: float,
        replicas: int | None = None, quiet: float | None = None) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    double = None
    if kubeconfig is None:
        from apiserver_double import ApiServerDouble
        double = ApiServerDouble()
        double.start()
        kubeconfig = str(double.write_kubeconfig(tmp / "kubeconfig"))
    namespace = f"modelship-bench-{uuid.uuid4().hex[:6]}"
    connection = Connection.from_kubeconfig(kubeconfig)
    replicas = (2 if double is not None else 0) if replicas is None else replicas

    async def client(fn: Any) -> Any:
        kube = Kube(connection, field_manager=BENCH)
        try:
            return await fn(kube)
        finally:
            await kube.close()

    async def setup(kube: Kube) -> None:
        if not await kube.served("modelship.dev", "v1alpha1", "modeldeployments"):  # else leave it as installed
            await kube.apply(yaml.safe_load((ROOT / "crds" / "modeldeployments.modelship.dev.yaml").read_text()))
        await kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        for _ in range(100):
            if await kube.get(*MD[:1], "ModelDeployment", namespace, "absent") is None:
                break
    asyncio.run(client(setup))
    controller = DeploymentController(double, namespace) if double is not None else None
    if controller is not None:
        controller.start()

    log_path = tmp / "operator.log"
    # Its own Lease in its own namespace: another operator on a shared cluster is not a rival.
    env = dict(os.environ, MODELSHIP_NAMESPACES=namespace, MODELSHIP_LOG_FORMAT="json",
               MODELSHIP_LEASE_NAME="modelship-bench", MODELSHIP_LEASE_NAMESPACE=namespace,
               MODELSHIP_RESYNC_SECONDS="30", MODELSHIP_SERVER_IMAGE="ghcr.io/modelship/server:bench")
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "modelship_operator", "--kubeconfig", kubeconfig,
                                 "--liveness", f"http://127.0.0.1:{free_port()}/healthz"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    result: dict[str, Any] = {"n": n, "server": "double" if double else connection.server}
    try:
        time.sleep(2)  # the operator starts (watch caches synced on an empty namespace)
        mark = len(double.request_log) if double else 0
        started = time.monotonic()

        async def create_all(kube: Kube) -> None:
            sem = asyncio.Semaphore(20)

            async def one(i: int) -> None:
                async with sem:
                    await kube.create(manifest(f"md-{i:04d}", namespace, replicas))
            await asyncio.gather(*(one(i) for i in range(n)))
        asyncio.run(client(create_all))
        created = time.monotonic() - started

        async def wait(kube: Kube) -> int:
            # Watched, not polled: a LIST of 1,000 ModelDeployments and 1,000 Deployments every
            # half second cost the API server (and this process) more CPU than the operator's own
            # requests, on the same cores.
            kube.cache = WatchCache(kube, namespaces=(namespace,))
            for kind in (MD, ("apps/v1", "Deployment")):
                kube.cache.start(*kind)
            done = 0
            try:
                await kube.cache.wait_synced()
                while time.monotonic() - started < timeout:
                    done = await converged(kube, namespace, n, want_healthy=double is not None)
                    if done == n:
                        break
                    await asyncio.sleep(0.25)
            finally:
                await kube.cache.stop()
            return done
        result["converged"] = asyncio.run(client(wait))
        result["converge_s"] = round(time.monotonic() - started, 2)
        result["create_s"] = round(created, 2)
        # Converged status comes before the last events and kopf's own annotation patch: wait
        # until the operator has written nothing for a while before the steady window.
        quiet = (3.0 if double is not None else 15.0) if quiet is None else quiet
        result["settled_s"] = round(_settle(double, log_path, started, timeout, quiet) - started, 2)
        if double is not None:
            result["requests_converging"] = _operator_verbs(double, mark)
            mark = len(double.request_log)
        window_start, versions = time.time(), asyncio.run(client(lambda k: _versions(k, namespace)))
        time.sleep(steady)
        if double is not None:
            steady_verbs = _operator_verbs(double, mark)
            result["requests_steady"] = steady_verbs
            result["steady_writes"] = sum(v for k, v in steady_verbs.items() if k in WRITES)
            if result["steady_writes"]:
                result["steady_write_requests"] = _operator_writes(double, mark)
        else:
            # A real server does not tell us who wrote: count what changed in the window (the
            # ModelDeployments carry our status and kopf's annotations; events are ours) and
            # the reconciles the operator logged as having written.
            after = asyncio.run(client(lambda k: _versions(k, namespace)))
            changed = sorted(k for k, v in after.items() if versions.get(k) != v)
            result["steady_changed_objects"] = changed[:10]
            result["steady_reconciles_that_wrote"] = _logged_writes(log_path, window_start)
            result["steady_writes"] = len(changed) + result["steady_reconciles_that_wrote"]
        result["peak_rss_mb"] = round(peak_rss_mb(proc.pid), 1)
        result["operator_cpu_s"] = cpu_seconds(proc.pid)  # whether the operator or the server is the limit
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if controller is not None:
            controller.stop.set()
        own = [json.loads(line) for line in log_path.read_text().splitlines()
               if line.startswith("{") and '"api requests' in line]
        if own:
            result["operator_client_requests"] = own[-1].get("requests")
        try:
            asyncio.run(client(lambda k: k.delete("v1", "Namespace", None, namespace)))
        except Exception:  # noqa: BLE001 - best effort
            pass
        if double is not None:
            try:
                double.stop()
            except Exception as exc:  # noqa: BLE001 - the numbers are in; a slow shutdown must not lose them
                print(f"the API server double did not stop cleanly: {exc!r}", file=sys.stderr)
    return result


def _operator_writes_since(double: Any, since: int) -> int:
    return sum(1 for r in list(double.request_log)[since:]
               if r.verb in WRITES and not r.user_agent.startswith((BENCH, LEASE_CLIENT)))


def _settle(double: Any, log_path: Path, started: float, timeout: float, quiet: float = 3.0) -> float:
    """When the operator stopped writing (no write for `quiet` seconds; on a real server, no
    reconcile logged as having written)."""
    last, mark = time.monotonic(), len(double.request_log) if double else 0
    lines = 0
    while time.monotonic() - last < quiet and time.monotonic() - started < timeout:
        time.sleep(0.25)
        if double is not None:
            if _operator_writes_since(double, mark):
                mark, last = len(double.request_log), time.monotonic()
        else:
            count = _logged_writes(log_path, 0.0)
            if count != lines:
                lines, last = count, time.monotonic()
    return last


async def _versions(kube: Kube, namespace: str) -> dict[str, str]:
    """resourceVersion of every ModelDeployment and Event in the namespace."""
    out = {}
    for api_version, kind in (MD, ("v1", "Event")):
        for obj in await kube.list(api_version, kind, namespace):
            out[f"{kind}/{obj['metadata']['name']}"] = obj["metadata"]["resourceVersion"]
    return out


def _logged_writes(log_path: Path, since_epoch: float) -> int:
    """Reconciles the operator logged at INFO or above (it logs a reconcile at INFO only when it
    wrote) after `since_epoch`; also kopf handler runs, which older operators logged (each
    patched kopf's annotation; the operator has no kopf resource handlers now)."""
    from datetime import datetime
    count = 0
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = str(entry.get("message", ""))
        if message.startswith("reconciled ") or (message.startswith("Handler ") and "succeeded" in message):
            at = datetime.fromisoformat(str(entry.get("time"))).timestamp()
            count += at >= since_epoch
    return count


def _operator_writes(double: Any, since: int, top: int = 8) -> dict[str, int]:
    """The most frequent writes (method and path, object names folded) since `since`."""
    counts: dict[str, int] = {}
    for record in list(double.request_log)[since:]:
        if record.verb in WRITES and not record.user_agent.startswith((BENCH, LEASE_CLIENT)):
            parts = record.path.split("?")[0].split("/")
            what = f"{record.method} {'/'.join(p if i < 6 or p in ('status', 'scale') else '*' for i, p in enumerate(parts))}"
            key = f"{what} ({record.user_agent.split('/')[0]})"
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:top])


def _operator_verbs(double: Any, since: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in list(double.request_log)[since:]:
        if record.user_agent.startswith((BENCH, LEASE_CLIENT)):
            continue
        counts[record.verb] = counts.get(record.verb, 0) + 1
    return dict(sorted(counts.items()))


if __name__ == "__main__":
    sys.exit(main())
