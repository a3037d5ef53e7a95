"""recoverly.celery: Celery tasks that retry with backoff and survive lost workers.

Install with ``pip install 'recoverly[celery]'`` (Celery 5; the task store
uses redis-py, which Celery's Redis transport installs too).

.. versionadded:: 0.2
"""

from __future__ import annotations

from importlib.util import find_spec

if find_spec("celery") is None or find_spec("redis") is None:  # pragma: no cover - minimal install
    msg = "recoverly.celery needs Celery 5 and redis-py: pip install 'recoverly[celery]'"
    raise ImportError(msg)

from recoverly.celery._lease import Lease as Lease
from recoverly.celery.decorator import configure_app as configure_app
from recoverly.celery.decorator import resilient_task as resilient_task
from recoverly.celery.errors import LeaseHeld as LeaseHeld
from recoverly.celery.errors import LeaseLost as LeaseLost
from recoverly.celery.errors import TaskDeadLettered as TaskDeadLettered
from recoverly.celery.store import Begin as Begin
from recoverly.celery.store import RedisTaskStore as RedisTaskStore
from recoverly.celery.task import KEY_ARGUMENT as KEY_ARGUMENT
from recoverly.celery.task import ResilientTask as ResilientTask

__all__ = [
    "KEY_ARGUMENT",
    "Begin",
    "Lease",
    "LeaseHeld",
    "LeaseLost",
    "RedisTaskStore",
    "ResilientTask",
    "TaskDeadLettered",
    "configure_app",
    "resilient_task",
]
