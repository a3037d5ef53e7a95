"""Predictions: the external predictor behind the recovery stack, the local model as fallback.

The path of one ``/predict`` call, outermost first::

    fallback(local model)         answers when everything below failed, and says why
      retry(attempts, 50 ms)      another attempt after a timeout, a transport error or a 5xx
        CircuitBreaker            fails fast while the predictor keeps failing
          timeout(seconds)        cancels a call that runs too long
            httpx POST /predict   the external predictor

The answer records its ``source`` (``"external"`` or ``"local"``) and, for a
local answer, the ``reason``. Without a trained local model there is nothing to
fall back to: the original error propagates (an open breaker becomes a ``503``
with ``Retry-After``).

.. versionadded:: 0.2
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from threading import Lock
from typing import Any

import httpx
import numpy as np
from pydantic import BaseModel, ValidationError

from recoverly.circuit_breaker import CircuitBreaker
from recoverly.errors import RejectedError, TimeoutExceeded
from recoverly.fallback import fallback
from recoverly.retry import retry
from recoverly.service.jobs import load_model
from recoverly.service.model import SoftmaxModel
from recoverly.service.schemas import PredictResponse
from recoverly.stores import BreakerStore
from recoverly.timeout import timeout

__all__ = ["BREAKER_NAME", "NO_DELAY", "LocalModels", "Predictor", "UpstreamError"]

#: The name of the predictor's breaker (in ``/health`` and the metrics).
BREAKER_NAME = "external-predictor"
#: Socket options of the service's HTTP clients: send small writes at once.
NO_DELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


class UpstreamError(Exception):
    """The external predictor answered with an error status or an unusable body.

    .. versionadded:: 0.2
    """


class _ExternalAnswer(BaseModel):
    predictions: list[int]


class LocalModels:
    """Trained models loaded from their final checkpoints, cached by run id.

    Args:
        checkpoint_dir: Parent of the per-run checkpoint directories.

    .. versionadded:: 0.2
    """

    def __init__(self, checkpoint_dir: Path) -> None:
        self.checkpoint_dir = checkpoint_dir
        self._cache: dict[int, SoftmaxModel] = {}
        self._lock = Lock()

    def get(self, run_id: int) -> SoftmaxModel | None:
        """Return run ``run_id``'s model (it must have completed), or ``None``."""
        with self._lock:
            model = self._cache.get(run_id)
        if model is None:
            model = load_model(self.checkpoint_dir / f"run-{run_id}")
            if model is not None:
                with self._lock:
                    self._cache[run_id] = model
        return model


def _local_predict(model: SoftmaxModel, rows: Sequence[Sequence[float]]) -> list[int]:
    return model.predict(np.asarray(rows, dtype=np.float64))


class Predictor:
    """Answers predictions from the external predictor, or from the local model when it fails.

    Args:
        url: Base URL of the external predictor (``None``: local answers only).
        timeout_seconds: Time one call may take.
        attempts: Attempts per prediction.
        failure_threshold: Consecutive failed attempts that open the breaker.
        recovery_timeout: Seconds the breaker stays open before a probe.
        breaker_store: Where the breaker keeps its state (default: in memory).
        clock: Time source of the breaker and the retry waits.
        client: The HTTP client (default: a new ``httpx.AsyncClient``).

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        url: str | None,
        *,
        timeout_seconds: float = 0.5,
        attempts: int = 2,
        failure_threshold: int = 3,
        recovery_timeout: float = 5.0,
        breaker_store: BreakerStore | None = None,
        clock: Any = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url.rstrip("/") if url else None
        # TCP_NODELAY: httpx writes a request's headers and body separately, and Nagle's
        # algorithm would hold the body back until the headers are acknowledged (~40 ms).
        self.client = client or httpx.AsyncClient(
            timeout=max(1.0, 2 * timeout_seconds),
            transport=httpx.AsyncHTTPTransport(socket_options=NO_DELAY),
        )
        failures = (httpx.HTTPError, UpstreamError, TimeoutExceeded)
        self.breaker = CircuitBreaker(
            failure_threshold,
            recovery_timeout,
            expected_exception=failures,
            name=BREAKER_NAME,
            store=breaker_store,
            clock=clock,
        )
        guarded = self.breaker(timeout(timeout_seconds, name=BREAKER_NAME)(self._post))
        retried = retry(attempts, 0.05, exceptions=failures, name=BREAKER_NAME, clock=clock)
        self._external = retried(guarded)
        self.answer: Callable[..., Any] = fallback(
            self._local, exceptions=(RejectedError, *failures), name="predict"
        )(self._remote)

    async def _post(self, rows: list[list[float]], model_id: int | None) -> list[int]:
        response = await self.client.post(
            f"{self.url}/predict", json={"features": rows, "model_id": model_id}
        )
        if response.status_code != httpx.codes.OK:
            msg = f"external predictor answered {response.status_code}"
            raise UpstreamError(msg)
        try:
            body = _ExternalAnswer.model_validate_json(response.content)
        except ValidationError as exc:
            msg = "external predictor sent an unusable body"
            raise UpstreamError(msg) from exc
        if len(body.predictions) != len(rows):
            msg = (
                f"external predictor sent {len(body.predictions)} predictions for {len(rows)} rows"
            )
            raise UpstreamError(msg)
        return body.predictions

    async def _remote(
        self,
        rows: list[list[float]],
        model: SoftmaxModel | None,  # noqa: ARG002 - the fallback gets the same arguments
        model_id: int | None,
    ) -> PredictResponse:
        if self.url is None:
            msg = "no external predictor is configured"
            raise UpstreamError(msg)
        predictions = await self._external(rows, model_id)
        return PredictResponse(
            predictions=predictions,
            source="external",
            reason=None,
            model_id=model_id,
            breaker=self.breaker.state.name,
        )

    def _local(
        self,
        rows: list[list[float]],
        model: SoftmaxModel | None,
        model_id: int | None,
        *,
        exception: BaseException,
    ) -> PredictResponse:
        if model is None:
            raise exception
        return PredictResponse(
            predictions=_local_predict(model, rows),
            source="local",
            reason=f"{type(exception).__name__}: {exception}",
            model_id=model_id,
            breaker=self.breaker.state.name,
        )

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self.client.aclose()
