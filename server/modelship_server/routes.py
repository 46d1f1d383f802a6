"""The non-inference routes (health, metadata, metrics) as FastAPI routes; thin."""
from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from .errors import ServerError
from .metrics import CONTENT_TYPE
from .feedback import feedback_denied
from .peers import FORWARDED_HEADER, answer_feedback_with_peers
from .protocols import v2
from .service import Service
from .shadow import ShadowConfig, ShadowConfigError, parse_update

log = logging.getLogger(__name__)


def _error(e: ServerError) -> JSONResponse:
    return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)


def _not_ready(service: Service, body: dict) -> JSONResponse:
    reason = "shutting down" if service.shutting_down else (
        service.health_problem() or service.load_error or "model is loading")  # fmt: skip
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

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)

    def _live(ok: dict, failing: dict) -> Response:
        problem = service.health_problem()
        if problem is not None:
            return JSONResponse({**failing, "error": f"not live: {problem}"}, status_code=503)
        return JSONResponse(ok)

    # -- tutorial-style -------------------------------------------------------------------
    @app.get("/health")
    async def health() -> Response:
        return _live({"status": "ok"}, {"status": "unhealthy"})

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
    async def live() -> Response:
        return _live({"live": True}, {"live": False})

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

    # -- monitoring (docs/monitoring.md) ---------------------------------------------------
    async def _feedback(request: Request) -> Response:
        denied = feedback_denied(service.settings.feedback_token, request.headers.get("authorization"))
        if denied is not None:  # MODELSHIP_FEEDBACK_TOKEN is set and the request lacks it
            return JSONResponse(denied[1], status_code=denied[0], headers=denied[2])
        monitoring = service.monitoring
        if monitoring is None:
            return _not_ready(service, {})
        if monitoring.feedback is None:
            return JSONResponse({"error": "feedback is off on this server (MODELSHIP_FEEDBACK_MAX_ENTRIES=0)"}, status_code=404)
        forwarded = request.headers.get(FORWARDED_HEADER) == "1"
        raw = await request.body()  # limited (413) by the ASGI layer
        try:
            status, body = await answer_feedback_with_peers(monitoring.feedback, raw, service.peers, forwarded,
                                                            token=service.settings.feedback_token)
        except RecursionError:  # the stdlib JSON parser on deeply nested input
            return JSONResponse({"error": "feedback body is nested too deeply"}, status_code=400)
        return JSONResponse(body, status_code=status)

    @app.post("/feedback")
    async def feedback(request: Request) -> Response:
        return await _feedback(request)

    @app.post("/v2/models/{name}/feedback")
    async def model_feedback(name: str, request: Request) -> Response:
        service.check_model(name)
        return await _feedback(request)

    @app.get("/v2/models/{name}/drift")
    async def model_drift(name: str) -> Response:
        """A drift computation now (the exported gauges keep their interval)."""
        service.check_model(name)
        monitoring = service.monitoring
        if monitoring is None or monitoring.drift is None:
            state = monitoring.drift_state if monitoring is not None else "not loaded"
            return JSONResponse({"error": f"drift monitoring is off ({state})"}, status_code=404)
        report = await asyncio.to_thread(monitoring.drift.compute)
        return JSONResponse({"input": monitoring.drift_input, **report.to_dict()})

    # -- shadow mirroring (the operator pushes the canary here; README "Shadow comparison") --
    @app.get("/shadow")
    async def shadow_state() -> Response:
        return JSONResponse(service.shadow.state())

    @app.put("/shadow")
    async def shadow_update(request: Request) -> Response:
        try:
            config = parse_update(await request.body())
        except ShadowConfigError as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        service.shadow.configure(config)
        return JSONResponse(service.shadow.state())

    @app.delete("/shadow")
    async def shadow_off() -> Response:
        service.shadow.configure(ShadowConfig())
        return JSONResponse(service.shadow.state())

    # -- Prometheus -----------------------------------------------------------------------
    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)
