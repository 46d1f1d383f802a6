"""Fixtures of the server suite: the example model, its direct forward, a served app."""
from __future__ import annotations

import functools
import http.server
import threading
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

from modelship_server.app import create_app
from server_harness import ServerThread, settings_for


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def http_base(model_dir: Path) -> Iterator[str]:
    """The example model directory over real HTTP on loopback (a model store for http:// URIs)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(model_dir)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="session")
def model_dir(example_model_dir: Path) -> Path:
    return example_model_dir


@pytest.fixture(scope="session")
def heldout(model_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(model_dir / "heldout.npz")
    return data["X"], data["y"]


@pytest.fixture(scope="session")
def reference(model_dir: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The model's logits from a direct forward pass in this process (no server)."""
    import torch

    with warnings.catch_warnings():  # torch.jit is deprecated but is what the example ships
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(model_dir / "model.pt")).eval()

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    return forward


@pytest.fixture(scope="module")
def served(model_dir: Path) -> Iterator[ServerThread]:
    """One server per test module with the example TorchScript model, batching on."""
    app = create_app(settings_for(model_dir, max_batch_size=32, max_delay_ms=5, max_batch_rows=64, model_version="1.4.0"))
    with ServerThread(app) as srv:
        srv.wait_ready()
        yield srv
