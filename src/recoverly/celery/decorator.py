"""@resilient_task and configure_app: registering resilient tasks on a Celery app.

.. versionadded:: 0.2
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from celery import Celery  # type: ignore[import-untyped]
from recoverly._core.validate import Duration, Problems
from recoverly.celery._options import validate_options
from recoverly.celery.store import RedisTaskStore
from recoverly.celery.task import ResilientTask
from recoverly.retry import Retry

__all__ = ["configure_app", "resilient_task"]


def configure_app(app: Celery, *, visibility_timeout: Duration | None = None) -> None:
    """Set the worker settings long resilient tasks need on ``app``.

    - ``worker_prefetch_multiplier = 1``: a worker reserves one message per
      process, so a worker that dies takes no waiting messages down with it
      (they would only come back after the visibility timeout or reconnect).
    - ``task_acks_late = True`` and ``task_reject_on_worker_lost = True`` for
      every task of the app (``ResilientTask`` sets them on itself anyway).

    Args:
        app: The Celery application.
        visibility_timeout: For the Redis and SQS brokers: seconds after which an
            unacknowledged message is delivered again. Make it longer than your
            longest task unless its copies are guarded by a ``task_store``.

    .. versionadded:: 0.2
    """
    p = Problems()
    seconds = p.optional_duration("visibility_timeout", visibility_timeout, positive=True)
    p.raise_if_any()
    app.conf.worker_prefetch_multiplier = 1
    app.conf.task_acks_late = True
    app.conf.task_reject_on_worker_lost = True
    if seconds is not None:
        options = dict(app.conf.broker_transport_options or {})
        options["visibility_timeout"] = seconds
        app.conf.broker_transport_options = options


def resilient_task(
    app: Celery,
    retry: Retry | Mapping[str, Any] | None = None,
    *,
    store: RedisTaskStore | None = None,
    lease_seconds: Duration = 30.0,
    max_redeliveries: int | None = 3,
    checkpoint_root: str | os.PathLike[str] | None = None,
    key: Callable[..., str] | None = None,
    bind: bool = True,
    **options: Any,
) -> Callable[[Callable[..., Any]], Any]:
    """Register a function as a :class:`ResilientTask` of ``app``.

    Args:
        app: The Celery application.
        retry: A :class:`~recoverly.Retry` (``retry(max_attempts=4, delay=2)``) or
            a mapping of ``retry()`` arguments. ``None``: no retries.
        store: A :class:`~recoverly.celery.RedisTaskStore` for idempotent results,
            leases and the redelivery cap. ``None``: none of those.
        lease_seconds: The lease's time to live (renewed while the task runs).
        max_redeliveries: Runs allowed after a lost worker; ``None``: no cap.
        checkpoint_root: Parent directory of each task's ``checkpoint_dir``.
        key: ``(*args, **kwargs) -> str`` giving the idempotency key.
        bind: Pass the task as the first argument (``self``), as Celery's
            ``bind=True`` does.
        **options: Other ``app.task`` options (``name=``, ``queue=``, ...).

    Returns:
        A decorator that returns the registered task.

    Raises:
        TypeError, ValueError: An option is invalid (all problems in one message).

    .. versionadded:: 0.2
    """
    validated = validate_options(
        retry, store, lease_seconds, max_redeliveries, checkpoint_root, key
    )
    key_from = validated.pop("idempotency_key_from")
    if key_from is not None:
        validated["idempotency_key_from"] = staticmethod(key_from)

    def decorate(fn: Callable[..., Any]) -> Any:
        return app.task(base=ResilientTask, bind=bind, **validated, **options)(fn)

    return decorate


configure_app.__module__ = "recoverly.celery"
resilient_task.__module__ = "recoverly.celery"
