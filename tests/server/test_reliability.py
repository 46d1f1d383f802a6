"""The fast parts of benchmarks/bench_reliability.py: real server processes on loopback with
the example model, short durations. Overload is shed as 503 + Retry-After with no other 5xx
and bounded memory, a flood of unmatched feedback ids leaves the store as it was, and
SIGTERM under load loses no admitted request."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from server_harness import ROOT


def test_reliability_suite_short(example_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "reliability.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_reliability.py"), "--model-dir", str(example_model_dir),
         "--duration", "3", "--overload", "3", "--max-queue", "64", "--rows", "8", "--sigterm-after", "1.5",
         "--flood-ids", "20000", "--json", str(out)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    res = json.loads(out.read_text())
    assert [c["pass"] for c in res["checks"]] == [True] * 9, res["checks"]
    o, f, s = res["overload"], res["flood"], res["sigterm"]
    assert o["connections"] == 24 and o["answers"]["200"] > 0 and o["answers"]["503"] > 0
    assert set(o["answers"]) <= {"200", "503"} and o["missing_retry_after"] == 0
    assert f["answers"]["unknown"] == 20000 and f["feedback_store_bytes"][1] == f["feedback_store_bytes"][0] > 0
    assert s["exit_code"] == 0 and s["lost"] == 0 and s["audited_200"] == s["client_200"] > 0
    assert s["unanswered_but_handled"] == 0
    assert set(s["answers"]) <= {"200", "503"}
    assert "PASS  SIGTERM under load: 0 admitted requests lost" in proc.stdout
