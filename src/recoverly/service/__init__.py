"""recoverly.service: the reference ML service (extra ``recoverly[service]``).

A FastAPI application that trains models on a worker, serves predictions from
an external predictor behind a circuit breaker with the locally trained model
as fallback, and shows its health; ``recoverly demo`` runs it under injected
faults and ``recoverly serve`` runs it alone.

.. versionadded:: 0.2
"""

from __future__ import annotations

try:
    from recoverly.service.app import create_app as create_app
    from recoverly.service.settings import Settings as Settings
except ImportError as exc:  # pragma: no cover - exercised by the minimal install
    msg = f"recoverly.service needs its extra ({exc.name}): pip install 'recoverly[service]'"
    raise ImportError(msg) from exc

__all__ = ["Settings", "create_app"]
