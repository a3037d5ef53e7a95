"""Validation of the resilience options, shared by the decorator and the base class."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recoverly._core.validate import Problems
from recoverly.celery.store import RedisTaskStore
from recoverly.retry import Retry

__all__ = ["validate_options"]


def validate_options(
    retry_policy: object,
    task_store: object,
    lease_seconds: object,
    max_redeliveries: object,
    checkpoint_root: object,
    idempotency_key_from: object,
) -> dict[str, Any]:
    """Validate the resilience options; return them normalised (all problems at once)."""
    p = Problems()
    if isinstance(retry_policy, Mapping):
        try:
            retry_policy = Retry(**retry_policy, _stacklevel=4)
        except (TypeError, ValueError) as exc:
            p._bad(f"retry: {exc}", kind=isinstance(exc, TypeError))
            retry_policy = None
    options: dict[str, Any] = {
        "retry_policy": p.optional_instance("retry", retry_policy, Retry),
        "task_store": p.optional_instance("store", task_store, RedisTaskStore),
        "lease_seconds": p.duration("lease_seconds", lease_seconds, positive=True),
        "max_redeliveries": p.optional_int_at_least("max_redeliveries", max_redeliveries, 0),
        "idempotency_key_from": p.optional_callable("key", idempotency_key_from),
        "checkpoint_root": None,
    }
    if checkpoint_root is not None:
        if isinstance(checkpoint_root, (str, os.PathLike)):
            options["checkpoint_root"] = Path(checkpoint_root)
        else:
            p._bad(f"checkpoint_root must be a path or None, got {checkpoint_root!r}", kind=True)
    p.raise_if_any()
    return options
