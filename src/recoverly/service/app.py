"""The FastAPI application: train, inspect, predict, check health.

``create_app(settings)`` builds the app and its :class:`~recoverly.service.runtime.Service`
(reachable as ``app.state.service``); the worker starts with the app's lifespan.

Errors are JSON ``{"error": ..., "detail": ...}``: ``422`` for a body that does
not validate (nothing is written), ``404`` for an unknown run, ``401`` for a
missing or wrong token on a write endpoint, ``503`` with ``Retry-After`` when a
breaker (or any recoverly rejection) refused the call, ``502``/``504`` when the
external predictor failed and no local model could answer. Request bodies are
JSON parsed by pydantic: nothing a client sends is ever unpickled.

.. versionadded:: 0.2
"""

from __future__ import annotations

import math
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from recoverly.errors import RejectedError, TimeoutExceeded
from recoverly.prometheus import install as install_metrics
from recoverly.registry import breakers
from recoverly.service.dashboard import dashboard_router, metrics_router
from recoverly.service.faults import FaultInjector
from recoverly.service.jobs import total_steps
from recoverly.service.predictor import UpstreamError
from recoverly.service.runtime import Service
from recoverly.service.schemas import (
    CheckpointView,
    ErrorBody,
    ModelList,
    ModelView,
    PredictRequest,
    PredictResponse,
    ProgressView,
    TrainConfig,
    TrainResponse,
)
from recoverly.service.settings import Settings
from recoverly.service.store import RunRecord
from recoverly.training import CheckpointManager

__all__ = ["create_app"]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (401, "Missing or wrong API token"),
        (404, "Unknown model id"),
        (422, "Invalid request body"),
        (503, "A breaker is open or the database is unavailable (see Retry-After)"),
    )
}
_bearer = HTTPBearer(auto_error=False)


def _error(status: int, error: str, detail: Any = None, **headers: str) -> JSONResponse:
    return JSONResponse(
        ErrorBody(error=error, detail=detail).model_dump(), status_code=status, headers=headers
    )


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        return _error(422, "invalid_request", errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        error = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        return _error(exc.status_code, error, exc.detail, **headers)

    @app.exception_handler(RejectedError)
    async def rejected(_request: Request, exc: RejectedError) -> JSONResponse:
        if isinstance(exc, TimeoutExceeded):
            return _error(504, "upstream_timeout", str(exc))
        wait = exc.retry_after
        retry_after = str(max(1, math.ceil(wait))) if wait is not None else "1"
        return _error(503, "circuit_open", str(exc), **{"Retry-After": retry_after})

    @app.exception_handler(UpstreamError)
    async def upstream(_request: Request, exc: UpstreamError) -> JSONResponse:
        return _error(502, "upstream_error", str(exc))

    @app.exception_handler(httpx.HTTPError)
    async def transport(_request: Request, exc: httpx.HTTPError) -> JSONResponse:
        return _error(502, "upstream_unreachable", f"{type(exc).__name__}: {exc}")

    @app.exception_handler(SQLAlchemyError)
    async def database(_request: Request, exc: SQLAlchemyError) -> JSONResponse:
        return _error(503, "database_unavailable", type(exc).__name__, **{"Retry-After": "1"})


def _run_view(service: Service, record: RunRecord) -> ModelView:
    progress = record["progress"]
    total = record["total_steps"]
    directory = service.job.checkpoints_of(record["id"])
    checkpoints: list[CheckpointView] = []
    if directory.exists():
        with CheckpointManager(directory) as manager:
            checkpoints = [CheckpointView(step=i.step, metrics=i.metrics) for i in manager.list()]
    metrics = {k: float(record[k]) for k in ("accuracy", "final_loss") if record[k] is not None}
    return ModelView(
        id=record["id"],
        name=record["name"],
        status=record["status"],
        config=record["config"],
        progress=None if progress is None else ProgressView(total_steps=total, **progress),
        metrics=metrics,
        checkpoints=checkpoints,
        resumes=record["resumes"],
        weights_sha256=record["weights_sha256"],
        error=record["error"],
    )


def create_app(
    settings: Settings | None = None,
    *,
    clock: Any = None,
    faults: FaultInjector | None = None,
) -> FastAPI:
    """Build the service's FastAPI app.

    Args:
        settings: The configuration (default: from the environment and ``.env``).
        clock: Time source of the predictor's breaker and retries (for tests).
        faults: Fault hooks to install (the demo's); ``None``: none.

    Returns:
        The app; ``app.state.service`` holds its :class:`~recoverly.service.runtime.Service`.

    .. versionadded:: 0.2
    """
    settings = settings or Settings()
    service = Service(settings, clock=clock, faults=faults)
    registry = CollectorRegistry()
    exporter = install_metrics(registry)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        """Start the worker; at shutdown stop it and close everything."""
        service.start()
        yield
        await service.aclose()
        exporter.uninstall()

    app = FastAPI(
        title="recoverly reference ML service",
        version="0.2",
        description="Train, predict and watch the recovery patterns at work.",
        lifespan=lifespan,
        responses=_ERRORS,
    )
    app.state.service = service
    _install_error_handlers(app)

    views = _training_routes(app, service, settings)
    _serving_routes(app, service)
    app.include_router(dashboard_router(lambda: [v.model_dump() for v in views()]))
    app.include_router(metrics_router(registry))
    return app


def _training_routes(
    app: FastAPI, service: Service, settings: Settings
) -> Callable[[], list[ModelView]]:
    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        expected = settings.api_token
        if expected is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not secrets.compare_digest(given.encode(), expected.get_secret_value().encode()):
            raise HTTPException(
                401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"}
            )

    @app.post("/train", status_code=202, dependencies=[Depends(require_token)])
    def train(config: TrainConfig) -> TrainResponse:
        """Queue a training run; returns its id at once."""
        data = config.model_dump()
        run_id = service.store.create_run(config.name, data, total_steps(config))
        service.worker.submit(run_id)
        return TrainResponse(id=run_id, status="queued")

    def views() -> list[ModelView]:
        return [_run_view(service, r) for r in service.store.list_runs()]

    @app.get("/models")
    def list_models() -> ModelList:
        """List the training runs, newest first."""
        return ModelList(models=views())

    @app.get("/models/{model_id}")
    def get_model(model_id: int) -> ModelView:
        """Return one run: status, progress, metrics and checkpoints."""
        record = service.store.get_run(model_id) if 0 < model_id < 2**31 else None
        if record is None:
            raise HTTPException(404, f"no model with id {model_id}")
        return _run_view(service, record)

    return views


def _serving_routes(app: FastAPI, service: Service) -> None:
    @app.post("/predict", response_model=PredictResponse)
    async def predict(request: PredictRequest) -> PredictResponse | JSONResponse:
        """Predict with the external predictor; the local model answers when it fails."""
        model_id = request.model_id
        if model_id is None:
            model_id = await run_in_threadpool(service.newest_model_id)
        model = await run_in_threadpool(service.models.get, model_id) if model_id else None
        if request.model_id is not None and model is None:
            raise HTTPException(404, f"no completed model with id {request.model_id}")
        if model is None and service.predictor.url is None:
            return _error(503, "no_model", "no model is trained yet and no predictor is configured")
        width = len(request.features[0])
        if model is not None and width != model.n_features:
            raise RequestValidationError(
                [
                    {
                        "loc": ("body", "features"),
                        "msg": f"rows must have {model.n_features} values",
                        "type": "value_error",
                    }
                ]
            )
        answer: PredictResponse = await service.predictor.answer(request.features, model, model_id)
        return answer

    @app.get("/health")
    def health() -> JSONResponse:
        """Database, worker, breakers and connection pool; ``503`` when the database is down."""
        try:
            service.store.ping()
            database: dict[str, Any] = {"ok": True}
        except SQLAlchemyError as exc:
            database = {"ok": False, "error": type(exc).__name__}
        worker = service.worker.status()
        circuits = {
            name: {"state": b.state.name, "failures": b.failure_count}
            for name, b in breakers().items()
        }
        body = {
            "status": "ok" if database["ok"] and worker["ok"] else "degraded",
            "database": database,
            "broker": worker,
            "breakers": circuits,
            "pool": service.pool.status(),
        }
        return JSONResponse(body, status_code=200 if database["ok"] else 503)
