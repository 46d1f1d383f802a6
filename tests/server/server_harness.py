"""Test harness: a real uvicorn server on a loopback port, in a thread or a process."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import uvicorn

from modelship_server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll `condition` until true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class ServerThread:
    """create_app(...) served by uvicorn (httptools) on 127.0.0.1:<free port> in a thread."""

    def __init__(self, app: Any, sock: socket.socket | None = None) -> None:
        self.app = app
        self.sock = sock or bound_socket()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, http="httptools", loop="uvloop", lifespan="on", access_log=False, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_for(lambda: self.server.started, 20, "server start")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()
        assert not self.thread.is_alive(), "server thread did not stop"

    @property
    def service(self) -> Any:
        return self.app.state.service

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            try:
                return httpx.get(self.url + "/v2/health/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout, "readiness")


def bound_socket() -> socket.socket:
    """A socket bound to 127.0.0.1:<free port>; pass it to ServerThread (servers that must
    know each other's ports before their apps are built)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_process(model_uri: str, port: int, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m modelship_server` as a child process (its own signals, its own exit code)."""
    return subprocess.Popen(
        [sys.executable, "-m", "modelship_server", "--model-uri", model_uri,
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *args],  # fmt: skip
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )




def settings_for(model_dir: Path, **overrides: Any) -> Settings:
    base = dict(model_uri=(model_dir / "model.pt").as_uri(), torch_threads=1, model_dir=str(model_dir / "downloads"))
    base.update(overrides)
    return Settings(**base)
