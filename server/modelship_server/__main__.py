"""`python -m modelship_server` / `modelship-server`: settings from env, overridden by flags."""
from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from dataclasses import fields
from types import FrameType
from typing import Sequence

import uvicorn

from .app import create_app
from .service import Service
from .settings import Settings, SettingsError

log = logging.getLogger("modelship_server")


def parse_args(argv: Sequence[str] | None, env: dict[str, str]) -> Settings:
    env_names = Settings.env_names()
    p = argparse.ArgumentParser(
        prog="modelship-server",
        description="modelship inference server. Every flag also reads its MODELSHIP_* environment variable.",
    )
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        p.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=f"env {env_names[f.name]} (default: {f.default!r})")
    args = p.parse_args(argv)
    try:
        settings = Settings.from_env(env).override({k: v for k, v in vars(args).items() if v is not None})
        settings.shadow_config  # noqa: B018 - settings that only make sense together
        return settings
    except SettingsError as e:
        p.error(str(e))
        raise  # unreachable: p.error exits


def freeze_heap() -> None:
    """Move everything alive once the model is loaded out of the cyclic GC's reach.

    torch, numpy and FastAPI leave ~200k long-lived objects; a full (gen 2) collection walks
    them all and stalls the event loop for 50-100 ms, which is the p99 under load.
    """
    gc.collect()
    gc.freeze()


class _Server(uvicorn.Server):
    """uvicorn's graceful shutdown, plus: readiness false and admission closed at SIGTERM."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service
        self.exit_code = 0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.service.begin_shutdown()
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal after its graceful shutdown (exit 143); a drained server
        # has done its job, so exit 0.
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list) and sig == signal.SIGTERM:
            captured.clear()


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv, dict(os.environ))
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    server: _Server | None = None

    def on_load_failure(e: BaseException) -> None:
        if server is not None:
            server.exit_code = 1
            server.should_exit = True

    app = create_app(settings, on_load_failure=on_load_failure, on_ready=freeze_heap)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=settings.log_level,
        # Admitted requests get their queue + compute time before the server gives up on them.
        timeout_graceful_shutdown=int(settings.timeout_ms / 1000) + 5,
        timeout_keep_alive=30,
        server_header=False,
    )
    server = _Server(config, app.state.service)
    if settings.admin_port:
        # One server, one event loop, two listening sockets: the app tells the ports apart
        # (asgi.py) and serves /metrics, /feedback, /drift only on the admin one.
        admin = uvicorn.Config(app, host=settings.host, port=settings.admin_port, log_level=settings.log_level)
        server.run(sockets=[config.bind_socket(), admin.bind_socket()])
    else:
        server.run()
    return server.exit_code


if __name__ == "__main__":
    sys.exit(main())
