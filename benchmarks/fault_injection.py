"""Rollouts under fire: API write failures and operator kills must not change what happens.

    python benchmarks/fault_injection.py                      # 50 rollouts, 10 at a time
    python benchmarks/fault_injection.py --rollouts 6 --json  # a short run (CI runs one)

Against the HTTP API server double, the real operator (`python -m modelship_operator`, a
subprocess) runs while
- a share of its write requests (kopf's and its own; default 20 %) is answered 409 Conflict,
  500 or 503 - half of the 5xx after the write was applied (the answer lost on its way);
- it is killed with SIGKILL at random moments (every 2-8 s by default) and started again.
Each rollout: a ModelDeployment at 1.0.0 with three gates (setWeight 50, whose analysis never
passes here, then two `pause: {}`) becomes Healthy;
the version changes to 2.0.0; a driver promotes gate by gate (`modelship.dev/promote:
step@<id>`, as the CLI does), waiting after each promote for the operator to consume it.

Checked, for every rollout: it converges (Healthy, 2.0.0 stable, no canary); every promote
advanced exactly one gate (an action applied twice skips a gate or promotes early); one
Deployment per ModelDeployment at the end and history recording 1.0.0 once; nowhere a child
whose controlling ModelDeployment is gone (orphans) or two children for one revision.
Prints the numbers (rollouts, faults injected by kind, kills, violations) and exits 1 on any.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "operator"))  # the API server double lives with the tests
sys.path.insert(0, str(ROOT / "benchmarks"))

from modelship_operator.kube import Connection, Kube, KubeError  # noqa: E402

MD = ("modelship.dev/v1alpha1", "ModelDeployment")
DRIVER = "modelship-fault-driver"  # the driver's user agent: never faulted
PROMOTE = "modelship.dev/promote"
GATES = 3
OPERATOR_AGENTS = ("modelship-operator", "kopf")


@dataclass
class Faults:
    """Decides which operator writes fail, and counts them."""

    rate: float
    rng: random.Random
    counts: Counter = field(default_factory=Counter)
    writes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, method: str, path: str, user_agent: str) -> Any:
        from apiserver_double import Injected
        from kube_double import ApiError
        if not user_agent.startswith(OPERATOR_AGENTS):
            return None
        with self.lock:
            self.writes += 1
            if self.rng.random() >= self.rate:
                return None
            kind = self.rng.choice(("409", "500", "503", "503-after"))
            self.counts[kind] += 1
        if kind == "409":
            return Injected(ApiError(409, "Conflict", "injected: the object has been modified"))
        status = int(kind[:3])
        return Injected(ApiError(status, "InternalError" if status == 500 else "ServiceUnavailable",
                                 f"injected {kind}"), after=kind.endswith("after"))


class Operator(threading.Thread):
    """Runs the operator and SIGKILLs it at random moments, starting it again at once."""

    def __init__(self, kubeconfig: Path, namespace: str, log_path: Path, kill_every: tuple[float, float],
                 rng: random.Random) -> None:
        super().__init__(daemon=True, name="operator-killer")
        self.kubeconfig, self.namespace, self.log_path = kubeconfig, namespace, log_path
        self.kill_every, self.rng = kill_every, rng
        self.stop, self.kills, self.proc = threading.Event(), 0, None

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ, MODELSHIP_NAMESPACES=self.namespace, MODELSHIP_LOG_FORMAT="json",
                   MODELSHIP_RESYNC_SECONDS="5", MODELSHIP_LEADER_ELECTION="false",
                   MODELSHIP_SERVER_IMAGE="ghcr.io/modelship/server:faults")
        env.pop("KUBECONFIG", None)
        with self.log_path.open("a") as log:
            return subprocess.Popen([sys.executable, "-m", "modelship_operator", "--kubeconfig", str(self.kubeconfig)],
                                    stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    def run(self) -> None:
        self.proc = self._start()
        while not self.stop.wait(self.rng.uniform(*self.kill_every)):
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.kills += 1
            self.proc = self._start()

    def shutdown(self) -> None:
        self.stop.set()
        self.join(15)
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def manifest(name: str, namespace: str, version: str) -> dict[str, Any]:
    body = yaml.safe_load((ROOT / "examples" / "quickstart-cpu.yaml").read_text())
    body["metadata"] = {"name": name, "namespace": namespace}
    body["spec"]["model"]["version"] = version
    # Every step is a gate: the pauses wait for a promote, and the weight step never passes its
    # analysis here (no pods, no metrics: inconclusive holds), so only a promote moves it on.
    body["spec"]["rollout"] = {"steps": [{"setWeight": 50}] + [{"pause": {}}] * (GATES - 1)}
    return body


@dataclass
class Rollout:
    name: str
    promotes: list[tuple[int, int]] = field(default_factory=list)  # (step before, step after)
    violations: list[str] = field(default_factory=list)
    converged: bool = False
    seconds: float = 0.0


async def _until(fn: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = await fn()
        except KubeError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.2)


async def drive(kube: Kube, namespace: str, name: str, timeout: float) -> Rollout:
    """One rollout: 1.0.0 Healthy, then 2.0.0 through three manual gates."""
    result, started = Rollout(name), time.monotonic()

    async def md() -> dict:
        return await kube.get(*MD, namespace, name) or {}

    async def healthy_at(version: str) -> dict | None:
        obj = await md()
        status = obj.get("status") or {}
        done = status.get("phase") == "Healthy" and (status.get("stable") or {}).get("version") == version \
            and not status.get("canary") and status.get("observedGeneration") == obj["metadata"].get("generation")
        return obj if done else None

    try:
        await kube.create(manifest(name, namespace, "1.0.0"))
        await _until(lambda: healthy_at("1.0.0"), timeout, f"{name}: 1.0.0 Healthy")
        await kube.patch(*MD, namespace, name, {"spec": {"model": {"version": "2.0.0"}}})
        for gate in range(GATES):
            async def at_gate(gate: int = gate) -> dict | None:
                obj = await md()
                canary = (obj.get("status") or {}).get("canary") or {}
                annotations = obj["metadata"].get("annotations") or {}
                return obj if canary.get("version") == "2.0.0" and PROMOTE not in annotations \
                    and (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"] \
                    and canary.get("step") is not None else None
            obj = await _until(at_gate, timeout, f"{name}: waiting at a gate before promote {gate + 1}")
            before = obj["status"]["canary"].get("step")
            if before != gate:
                result.violations.append(f"{name}: at gate {before} before promote {gate + 1} (expected {gate})")
            await kube.patch_metadata(*MD, namespace, name,
                                      annotations={PROMOTE: f"step@{uuid.uuid4().hex[:12]}"})

            async def consumed() -> dict | None:
                obj = await md()
                annotations = obj["metadata"].get("annotations") or {}
                status = obj.get("status") or {}
                canary = status.get("canary") or {}
                moved = canary.get("step") != before or (status.get("stable") or {}).get("version") == "2.0.0"
                return obj if PROMOTE not in annotations and moved else None
            obj = await _until(consumed, timeout, f"{name}: promote {gate + 1} consumed")
            await asyncio.sleep(1.0)  # a second application of the same promote would show by now
            obj = await md()
            status = obj.get("status") or {}
            after = (status.get("canary") or {}).get("step")
            promoted = (status.get("stable") or {}).get("version") == "2.0.0"
            result.promotes.append((before, -1 if promoted else after))
            if promoted and gate < GATES - 1:
                result.violations.append(f"{name}: promoted after {gate + 1} of {GATES} promotes (a gate skipped)")
                break
            if not promoted and after != before + 1:
                result.violations.append(f"{name}: promote {gate + 1} moved the canary from step {before} to {after}")
                break
        obj = await _until(lambda: healthy_at("2.0.0"), timeout, f"{name}: 2.0.0 Healthy")
        history = [h.get("version") for h in (obj["status"].get("history") or [])]
        if history != ["1.0.0"]:
            result.violations.append(f"{name}: history {history} (expected 1.0.0 once)")
        result.converged = True
    except TimeoutError as exc:
        result.violations.append(f"did not converge: {exc}")
    result.seconds = round(time.monotonic() - started, 1)
    return result


async def audit(kube: Kube, namespace: str) -> list[str]:
    """Orphans and duplicates among every child kind in the namespace."""
    problems = []
    mds = {md["metadata"]["uid"]: md for md in await kube.list(*MD, namespace)}
    for api_version, kind in (("apps/v1", "Deployment"), ("v1", "Service"), ("policy/v1", "PodDisruptionBudget"),
                              ("autoscaling/v2", "HorizontalPodAutoscaler")):
        per_revision: Counter = Counter()
        for child in await kube.list(api_version, kind, namespace):
            meta = child["metadata"]
            owner = next((r for r in meta.get("ownerReferences") or () if r.get("controller")), None)
            if owner is None or owner.get("uid") not in mds:
                problems.append(f"orphan {kind} {meta['name']}")
                continue
            per_revision[(owner["uid"], (meta.get("labels") or {}).get("modelship.dev/revision"), meta["name"])] += 1
        for uid, md in mds.items():
            if kind == "Deployment":
                mine = [k for k in per_revision if k[0] == uid]
                if len(mine) != 1:
                    problems.append(f"{md['metadata']['name']}: {len(mine)} Deployments at the end: "
                                    f"{sorted(k[2] for k in mine)}")
    return problems


def run(rollouts: int, parallel: int, rate: float, kill_every: tuple[float, float], timeout: float,
        seed: int | None = None) -> dict[str, Any]:
    from apiserver_double import ApiServerDouble
    from bench_operator import DeploymentController

    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="fault-injection-"))
    double = ApiServerDouble()
    double.start()
    kubeconfig = double.write_kubeconfig(tmp / "kubeconfig")
    namespace = f"faults-{uuid.uuid4().hex[:6]}"
    connection = Connection.from_kubeconfig(kubeconfig)
    faults = Faults(rate, random.Random(rng.random()))
    summary: dict[str, Any] = {"rollouts": rollouts, "parallel": parallel, "fault_rate": rate}

    async def main() -> tuple[list[Rollout], list[str]]:
        kube = Kube(connection, field_manager=DRIVER)
        try:
            await kube.apply(yaml.safe_load((ROOT / "crds" / "modeldeployments.modelship.dev.yaml").read_text()))
            await kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
            sem = asyncio.Semaphore(parallel)

            async def one(i: int) -> Rollout:
                async with sem:
                    return await drive(kube, namespace, f"model-{i:03d}", timeout)
            results = await asyncio.gather(*(one(i) for i in range(rollouts)))
            double.fault = None  # the audit is not faulted
            # An outgoing Deployment is deleted once drained, a moment after Healthy: the end
            # state must be reached within a few resyncs.
            deadline, problems = time.monotonic() + 30, await audit(kube, namespace)
            while problems and time.monotonic() < deadline:
                await asyncio.sleep(1)
                problems = await audit(kube, namespace)
            return list(results), problems
        finally:
            await kube.close()

    controller = DeploymentController(double, namespace)
    controller.start()
    operator = Operator(kubeconfig, namespace, tmp / "operator.log", kill_every, random.Random(rng.random()))
    started = time.monotonic()
    try:
        double.fault = faults
        operator.start()
        results, audit_problems = asyncio.run(main())
    finally:
        double.fault = None
        operator.shutdown()
        controller.stop.set()
        double.stop()
    violations = [v for r in results for v in r.violations] + audit_problems
    summary.update(
        converged=sum(r.converged for r in results),
        promotes=sum(len(r.promotes) for r in results),
        promotes_advancing_one_gate=sum(1 for r in results for b, a in r.promotes if a == b + 1 or a == -1),
        operator_writes=faults.writes, faults_injected=dict(sorted(faults.counts.items())),
        fault_share=round(sum(faults.counts.values()) / max(1, faults.writes), 3),
        operator_kills=operator.kills, seconds=round(time.monotonic() - started, 1),
        slowest_rollout_s=max((r.seconds for r in results), default=0.0),
        violations=violations, operator_log=str(tmp / "operator.log"))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollouts", type=int, default=50)
    parser.add_argument("--parallel", type=int, default=10, help="rollouts at a time (default %(default)s)")
    parser.add_argument("--fault-rate", type=float, default=0.2, help="share of operator writes failed")
    parser.add_argument("--kill-min", type=float, default=2.0)
    parser.add_argument("--kill-max", type=float, default=8.0)
    parser.add_argument("--timeout", type=float, default=120.0, help="per stage of a rollout, in s")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    summary = run(args.rollouts, args.parallel, args.fault_rate, (args.kill_min, args.kill_max), args.timeout,
                  args.seed)
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:28s} {value}")
    return 0 if summary["converged"] == args.rollouts and not summary["violations"] else 1


if __name__ == "__main__":
    sys.exit(main())
