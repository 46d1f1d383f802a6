"""The non-inference routes (health, metadata, metrics) as FastAPI routes; thin."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from .errors import ServerError
from .metrics import CONTENT_TYPE
from .protocols import v2
from .service import Service


def _error(e: ServerError) -> JSONResponse:
    return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)


def _not_ready(service: Service, body: dict) -> JSONResponse:
    reason = "shutting down" if service.shutting_down else (service.load_error or "model is loading")
    return JSONResponse({**body, "error": f"not ready: {reason}"}, status_code=503, headers={"retry-after": "1"})


def add_routes(app: FastAPI, service: Service) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = "not found" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": f"bad request: {exc.errors()}"}, status_code=400)

    @app.exception_handler(ServerError)
    async def server_error(request: Request, exc: ServerError) -> JSONResponse:
        return _error(exc)

    # -- tutorial-style -------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Response:
        if not service.ready:
            return _not_ready(service, {"ready": False})
        return JSONResponse({"ready": True, "model": service.name, "version": service.version})

    # -- Open Inference Protocol ----------------------------------------------------------
    @app.get("/v2")
    async def server_metadata() -> dict:
        return v2.server_metadata()

    @app.get("/v2/health/live")
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def v2_ready() -> Response:
        if not service.ready:
            return _not_ready(service, {"ready": False})
        return JSONResponse({"ready": True})

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str) -> dict:
        return v2.model_metadata(service, name, None)

    @app.get("/v2/models/{name}/versions/{version}")
    async def model_version_metadata(name: str, version: str) -> dict:
        return v2.model_metadata(service, name, version)

    async def _model_ready(name: str, version: str | None) -> Response:
        try:
            service.check_model(name, version)
        except ServerError as e:
            if e.status == 404:
                return _error(e)
        if not service.ready:
            return _not_ready(service, {"name": name, "ready": False})
        return JSONResponse({"name": service.name, "ready": True})

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str) -> Response:
        return await _model_ready(name, None)

    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_version_ready(name: str, version: str) -> Response:
        return await _model_ready(name, version)

    # -- KServe V1 ------------------------------------------------------------------------
    @app.get("/v1/models/{name}")
    async def v1_model(name: str) -> Response:
        return await _model_ready(name, None)

    # -- Prometheus -----------------------------------------------------------------------
    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)
