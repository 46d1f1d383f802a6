"""The Kubernetes version the project says it needs agrees with what the rendered pods use
(issue 9 item 10): `lifecycle.preStop.sleep` exists from Kubernetes 1.30 on."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import yaml

from modelship_operator.planning import Observed, plan
from modelship_operator.render import render
from modelship_operator.settings import Settings
from modelship_operator.spec import ModelDeployment

ROOT = Path(__file__).resolve().parents[2]
FLOOR = (1, 30)  # the sleep action of lifecycle hooks (PodLifecycleSleepAction, GA path from 1.30)


def test_the_pods_use_a_sleep_pre_stop_hook() -> None:
    md = ModelDeployment.from_body({"metadata": {"name": "m", "namespace": "ml", "uid": "u"},
                                    "spec": {"model": {"uri": "file:///m/model.pt", "version": "1"}}})
    (dep,) = [m for m in render(plan(md, Observed(), Settings(), datetime.now(timezone.utc)))
              if m["kind"] == "Deployment"]
    assert "sleep" in dep["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]


def test_chart_and_docs_state_the_same_floor() -> None:
    chart = yaml.safe_load((ROOT / "charts" / "modelship" / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={FLOOR[0]}.{FLOOR[1]}.0-0"
    for doc in ("README.md", "docs/operations.md"):
        stated = {tuple(map(int, v)) for v in re.findall(r"Kubernetes (\d+)\.(\d+) or newer", (ROOT / doc).read_text())}
        assert stated == {FLOOR}, doc
