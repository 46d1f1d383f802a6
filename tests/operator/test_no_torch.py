"""The operator image installs `.[operator]` only: importing the operator must not need torch."""
from __future__ import annotations

import subprocess
import sys


def test_operator_entry_points_import_neither_torch_nor_the_server() -> None:
    code = (
        "import sys, modelship_operator.__main__, modelship_operator.cli, modelship_operator.runtime\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'modelship_server')))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"operator imports pulled in: {proc.stdout}{proc.stderr}"
