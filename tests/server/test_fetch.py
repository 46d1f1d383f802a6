"""The init container's downloader: `python -m modelship_server.fetch URI DIR`, torch-free."""
from __future__ import annotations

import functools
import http.server
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest


@pytest.fixture()
def model_server(example_model_dir: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(example_model_dir))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_fetch_downloads_the_model_and_its_companions(model_server: str, example_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "models"
    proc = subprocess.run(
        [sys.executable, "-m", "modelship_server.fetch", f"{model_server}/model.pt", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out / "model.pt")
    for name in ("model.pt", "signature.json", "reference_profile.json"):
        assert (out / name).read_bytes() == (example_model_dir / name).read_bytes(), name


def test_fetch_reports_a_missing_model(model_server: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "modelship_server.fetch", f"{model_server}/nope.pt", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1 and "HTTP 404" in proc.stderr


def test_the_downloader_does_not_import_torch() -> None:
    code = "import sys, modelship_server.fetch; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
