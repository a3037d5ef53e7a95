"""The retry loops: sync and async twins that differ only in ``await``.

Each ``call_*`` runs the first attempt and hands a retryable failure to its
``retry_*`` loop, which asks the policy (sans-I/O) for the next wait, reports,
sleeps through the clock and tries again. The decorator's fast wrappers run the
first attempt inline and enter ``retry_*`` directly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from recoverly._core.clock import resolve

if TYPE_CHECKING:
    from recoverly.retry import Retry

__all__ = ["call_async", "call_sync", "retry_async", "retry_sync"]

T = TypeVar("T")


def call_sync(policy: Retry, label: str, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
    """Run ``fn`` under ``policy``: first attempt, then the retry loop on a retryable failure."""
    started = policy._started()
    rejected: Any = None
    try:
        result = fn(*args, **kwargs)
    except BaseException as e:
        if not policy._retryable(e):
            raise
        failure: BaseException | None = e
    else:
        if not policy._bad_result(result):
            return result
        failure, rejected = None, result
    return retry_sync(policy, label, fn, args, kwargs, started, failure, rejected)


def retry_sync(
    policy: Retry,
    label: str,
    fn: Callable[..., T],
    args: Any,
    kwargs: Any,
    started: float | None,
    exc: BaseException | None,
    result: Any,
) -> T:
    """Retry after a failed first attempt (``exc``, or a rejected ``result``) until done."""
    n, previous = 1, 0.0
    while True:
        decision = policy._next_delay(n, exc, started, previous)
        if isinstance(decision, str):
            return cast("T", give_up(policy, label, n, exc, decision, result))
        policy._scheduled(label, n, exc, decision)
        resolve(policy._clock).sleep(decision)
        n, previous = n + 1, decision
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:
            if not policy._retryable(e):
                raise
            exc = e
            continue
        if not policy._bad_result(result):
            policy._finished(label, n, None, None)
            return cast("T", result)
        exc = None


async def call_async(
    policy: Retry, label: str, fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any
) -> T:
    """Async twin of :func:`call_sync`."""
    started = policy._started()
    rejected: Any = None
    try:
        result = await fn(*args, **kwargs)
    except BaseException as e:
        if not policy._retryable(e):
            raise
        failure: BaseException | None = e
    else:
        if not policy._bad_result(result):
            return result
        failure, rejected = None, result
    return await retry_async(policy, label, fn, args, kwargs, started, failure, rejected)


async def retry_async(
    policy: Retry,
    label: str,
    fn: Callable[..., Awaitable[T]],
    args: Any,
    kwargs: Any,
    started: float | None,
    exc: BaseException | None,
    result: Any,
) -> T:
    """Async twin of :func:`retry_sync`."""
    n, previous = 1, 0.0
    while True:
        decision = policy._next_delay(n, exc, started, previous)
        if isinstance(decision, str):
            return cast("T", give_up(policy, label, n, exc, decision, result))
        policy._scheduled(label, n, exc, decision)
        await resolve(policy._clock).asleep(decision)
        n, previous = n + 1, decision
        try:
            result = await fn(*args, **kwargs)
        except BaseException as e:
            if not policy._retryable(e):
                raise
            exc = e
            continue
        if not policy._bad_result(result):
            policy._finished(label, n, None, None)
            return cast("T", result)
        exc = None


def give_up(
    policy: Retry, label: str, n: int, exc: BaseException | None, reason: str, result: Any
) -> Any:
    """Report giving up; raise the last exception or return the last rejected result."""
    if n > 1 or reason != "attempts":
        policy._finished(label, n, exc, reason)
    if exc is not None:
        raise exc
    return result  # retry_on_result kept rejecting: hand back the last result
