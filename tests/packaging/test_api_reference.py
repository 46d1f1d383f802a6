"""docs/api-reference.md is generated from the CRD and must not go stale."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_api_reference.py"
CRD = ROOT / "crds" / "modeldeployments.modelship.dev.yaml"
DOC = ROOT / "docs" / "api-reference.md"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_committed_api_reference_is_up_to_date() -> None:
    proc = _run("--check")
    assert proc.returncode == 0, proc.stderr + " (run `make api-docs` and commit docs/api-reference.md)"


def test_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "api.md"
    stale.write_text(DOC.read_text().replace("spec.model.uri", "spec.model.url", 1))
    proc = _run("--check", "--out", str(stale))
    assert proc.returncode == 1 and "stale" in proc.stderr


def _paths(node: dict, path: str) -> list[tuple[str, dict]]:
    out = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        out += _paths(sub, f"{path}.{name}")
    items = node.get("items")
    if isinstance(items, dict) and (items.get("properties") or items.get("items")):
        out += _paths(items, f"{path}[]")
    return out


def test_every_field_is_documented_with_its_default_enum_and_description(tmp_path: Path) -> None:
    out = tmp_path / "api.md"
    assert _run("--out", str(out)).returncode == 0
    rows = {line.split("|")[1].strip().strip("`"): line for line in out.read_text().splitlines()
            if line.startswith("| `spec") or line.startswith("| `status")}
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    fields = _paths(schema["properties"]["spec"], "spec") + _paths(schema["properties"]["status"], "status")
    assert len(fields) > 50
    for path, node in fields:
        assert path in rows, f"{path} missing from the API reference"
        row = rows[path]
        if node.get("description"):
            assert " ".join(node["description"].split())[:40].replace("|", "\\|") in row, path
        for value in node.get("enum", []):
            assert f"`{value}`" in row, (path, value)
        if "default" in node and not isinstance(node["default"], (dict, list)):
            assert str(node["default"]).lower() in row.lower(), (path, node["default"])
        for rule in node.get("x-kubernetes-validations", []):
            assert rule["message"].split(":")[0][:30] in row, (path, rule["message"])
