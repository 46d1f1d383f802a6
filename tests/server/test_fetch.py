"""The init container's downloader: `python -m modelship_server.fetch URI DIR`, torch-free."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_fetch_downloads_the_model_and_its_companions(http_base: str, example_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "models"
    proc = subprocess.run(
        [sys.executable, "-m", "modelship_server.fetch", f"{http_base}/model.pt", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out / "model.pt")
    for name in ("model.pt", "signature.json", "reference_profile.json"):
        assert (out / name).read_bytes() == (example_model_dir / name).read_bytes(), name


def test_fetch_reports_a_missing_model(http_base: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "modelship_server.fetch", f"{http_base}/nope.pt", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1 and "HTTP 404" in proc.stderr


def test_the_downloader_does_not_import_torch() -> None:
    code = "import sys, modelship_server.fetch; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
