"""recoverly.service: the reference ML service (extra ``recoverly[service]``).

A FastAPI application that trains models in worker processes, serves
predictions from an external predictor behind a circuit breaker with the
locally trained model as fallback, and shows its health; ``recoverly demo``
runs it under injected faults and ``recoverly serve`` runs it alone.

The two names below are imported on first use, so that a worker process,
which imports only the training side of the package, starts without loading
FastAPI.

.. versionadded:: 0.2
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recoverly.service.app import create_app as create_app
    from recoverly.service.settings import Settings as Settings

__all__ = ["Settings", "create_app"]

_LAZY = {"Settings": "recoverly.service.settings", "create_app": "recoverly.service.app"}


def __getattr__(name: str) -> Any:
    """Import ``create_app`` and ``Settings`` on first use."""
    module = _LAZY.get(name)
    if module is None:
        msg = f"module 'recoverly.service' has no attribute {name!r}"
        raise AttributeError(msg)
    import importlib  # noqa: PLC0415 - only needed for the lazy names

    try:
        value = getattr(importlib.import_module(module), name)
    except ImportError as exc:  # pragma: no cover - exercised by the minimal install
        msg = f"recoverly.service needs its extra ({exc.name}): pip install 'recoverly[service]'"
        raise ImportError(msg) from exc
    globals()[name] = value
    return value
