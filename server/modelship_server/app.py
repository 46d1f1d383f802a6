"""The app factory: FastAPI routes behind the ASGI hot path, model loaded in the background."""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI

from . import __version__
from .asgi import ModelshipASGI
from .routes import add_routes
from .monitoring import build_monitoring
from .openapi import complete as complete_openapi
from .service import Model, Service, model_path
from .settings import Settings

log = logging.getLogger(__name__)

Loader = Callable[[Settings], Model]


def default_loader(settings: Settings) -> Model:
    from .model import load_model  # torch is imported here, on the worker thread, after startup

    return load_model(settings)


def create_app(
    settings: Settings,
    model: Model | None = None,
    *,
    loader: Loader | None = None,
    on_load_failure: Callable[[BaseException], None] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> FastAPI:
    """An app serving `model`, or the model `loader(settings)` loads once the socket is up.

    Liveness is true at once; readiness only after the model is loaded and warmed.
    `on_load_failure` lets the process runner exit when the model cannot be loaded;
    `on_ready` runs (on the event loop) just before readiness turns true.
    """
    service = Service(settings)
    load = loader or default_loader

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = None
        if model is not None:
            if on_ready is not None:
                on_ready()
            service.attach(model)
        else:
            task = asyncio.get_running_loop().create_task(_load(service, load, on_load_failure, on_ready))
        try:
            yield
        finally:
            if task is not None and not task.done():
                task.cancel()
            await service.drain()

    app = ModelshipApp(
        title="modelship inference server",
        version=__version__,
        lifespan=lifespan,
        # No OpenTelemetry per request: metrics are Prometheus, and the hot path stays thin.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.service = service
    add_routes(app, service)
    framework_openapi = app.openapi
    app.openapi = lambda: complete_openapi(  # type: ignore[method-assign]
        framework_openapi(), service.signature, settings.max_batch_rows)
    app.modelship = ModelshipASGI(partial(FastAPI.__call__, app), service)
    return app


class ModelshipApp(FastAPI):
    """FastAPI whose inference POSTs skip the middleware and routing stack (see asgi.py)."""

    modelship: ModelshipASGI

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.modelship(scope, receive, send)


async def _load(
    service: Service,
    load: Loader,
    on_failure: Callable[[BaseException], None] | None,
    on_ready: Callable[[], None] | None,
) -> None:
    loop = asyncio.get_running_loop()
    try:
        model = await loop.run_in_executor(service.executor, load, service.settings)
        # The reference profile may be read or downloaded: off the event loop too.
        monitoring = await loop.run_in_executor(
            service.executor, build_monitoring, service.settings, model.signature, model_path(model)
        )
    except Exception as e:
        service.load_error = f"model failed to load: {e}"
        log.error("%s", service.load_error, exc_info=e)
        if on_failure is not None:
            on_failure(e)
        return
    if service.shutting_down:
        return
    if on_ready is not None:
        on_ready()
    service.attach(model, monitoring)
