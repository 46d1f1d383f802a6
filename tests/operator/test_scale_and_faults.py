"""Short CI versions of benchmarks/bench_operator.py and benchmarks/fault_injection.py (the real
operator as a subprocess against the HTTP API server double), and the reconcile concurrency
cap that keeps a burst of objects from swamping the API server (issue 9 item 11 and Tests).
Behaviour is asserted, not timing: the numbers are the benchmarks' to print."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from modelship_operator.runtime.scheduler import Scheduler

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_reconciles_in_flight_are_capped_whatever_starts_them() -> None:
    in_flight, peak = 0, 0

    async def reconcile(namespace: str, name: str, trigger: str) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1

    async def go() -> list[bool]:
        scheduler = Scheduler(reconcile, lambda: [], concurrency=8)
        return await asyncio.gather(*(scheduler.run("ns", f"md-{i}", "change") for i in range(100)))

    assert asyncio.run(go()) == [True] * 100
    assert peak == 8


@pytest.mark.slow
def test_bench_operator_converges_and_is_quiet_after(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench_operator

    monkeypatch.delenv("KUBECONFIG", raising=False)
    result = bench_operator.run(n=12, kubeconfig=None, timeout=120.0, steady=3.0)
    assert result["converged"] == 12, result
    assert result["steady_writes"] == 0, result
    # reads come from the watch caches: a LIST per cached kind at start, not per reconcile
    assert result["requests_converging"].get("list", 0) <= 10, result
    assert result["requests_converging"].get("discovery", 0) <= 10, result


@pytest.mark.slow
def test_rollouts_converge_under_write_faults_and_operator_kills() -> None:
    import fault_injection

    summary = fault_injection.run(rollouts=5, parallel=5, rate=0.2, kill_every=(2.0, 6.0), timeout=90.0, seed=9)
    assert sum(summary["faults_injected"].values()) > 0 and summary["operator_kills"] > 0, summary
    assert summary["converged"] == 5, summary
    # every promote advanced exactly one gate (an action applied twice skips one), no orphans,
    # no duplicate children, history recording the old version once
    assert summary["promotes"] == summary["promotes_advancing_one_gate"] == 5 * fault_injection.GATES, summary
    assert summary["violations"] == [], summary
