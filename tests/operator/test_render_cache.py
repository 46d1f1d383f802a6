"""Rendering keeps recently parsed manifests (by the digest of the template's text): a repeat
render returns equal, independent manifests, and the cache stays bounded."""
from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import yaml

from modelship_operator import render as render_module
from modelship_operator.planning import Observed, plan
from modelship_operator.render import APPLIED_HASH, applied_hash, render
from modelship_operator.settings import Settings
from modelship_operator.spec import ModelDeployment

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _plan(name: str):
    body = yaml.safe_load((ROOT / "examples" / "quickstart-cpu.yaml").read_text())
    body["metadata"] = {"name": name, "namespace": "ml", "uid": f"uid-{name}", "generation": 1}
    return plan(ModelDeployment.from_body(body), Observed(), Settings(), NOW)


def test_a_repeat_render_returns_equal_independent_manifests() -> None:
    first = render(_plan("a"))
    again = render(_plan("a"))
    assert again == first
    for manifest in first:  # stamped as before: the hash of the manifest without its own stamp
        assert manifest["metadata"]["annotations"][APPLIED_HASH] == applied_hash(manifest)
    snapshot = json.dumps(again)
    first[0]["spec"]["replicas"] = 99  # a caller changing what it got ...
    first[0]["metadata"]["labels"]["x"] = "y"
    assert json.dumps(render(_plan("a"))) == snapshot  # ... changes no later render
    assert render(_plan("b")) != again  # another object: other manifests


def test_the_cache_is_bounded_and_keeps_the_most_recent() -> None:
    recent = render_module._Recent(3)
    for i in range(5):
        recent.put(bytes([i]), str(i))
    assert recent.get(bytes([0])) is None and recent.get(bytes([1])) is None
    assert recent.get(bytes([2])) == "2"  # now the most recent
    recent.put(bytes([9]), "9")
    assert recent.get(bytes([3])) is None and recent.get(bytes([2])) == "2" and len(recent.items) == 3
