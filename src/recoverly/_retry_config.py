"""Turning ``retry()`` arguments into the policy's working parts."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from recoverly._core.predicates import Predicate
from recoverly._core.validate import Problems, to_seconds
from recoverly.backoff import RetryStrategy

__all__ = ["adapt_hook", "coerce_strategy", "combine", "retry_after_hint"]


def coerce_strategy(p: Problems, value: object) -> RetryStrategy:
    """Return a RetryStrategy for a member or its value string; record a problem otherwise."""
    if isinstance(value, RetryStrategy):
        return value
    if isinstance(value, str):
        try:
            return RetryStrategy(value.lower())
        except ValueError:
            pass
    names = ", ".join(s.name for s in RetryStrategy)
    p._bad(f"strategy must be a RetryStrategy ({names}), got {value!r}", kind=True)
    return RetryStrategy.EXPONENTIAL


def combine(matches: Predicate, giveup: Callable[[BaseException], bool] | None) -> Predicate:
    """Combine the exception filter with the ``giveup`` predicate into one test."""
    if giveup is None:
        return matches

    def retryable(exc: BaseException) -> bool:
        return matches(exc) and not giveup(exc)

    return retryable


def adapt_hook(hook: Callable[..., object] | None) -> Callable[..., object] | None:
    """Accept ``on_retry(attempt, exc, delay)`` and the older ``on_retry(attempt, exc)``."""
    if hook is None:
        return None
    try:
        params = inspect.signature(hook).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return hook
    positional = [q for q in params if q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD)]
    takes_varargs = any(q.kind is q.VAR_POSITIONAL for q in params)
    if takes_varargs or len(positional) >= 3:  # noqa: PLR2004 - attempt, exc, delay
        return hook

    def two_args(n: int, exc: BaseException | None, wait: float) -> object:
        del wait
        return hook(n, exc)

    return two_args


def retry_after_hint(exc: BaseException | None) -> float | None:
    """Return the ``retry_after`` hint carried by ``exc`` in seconds, if any."""
    hint = getattr(exc, "retry_after", None)
    if hint is None or isinstance(hint, bool):
        return None
    try:
        seconds = to_seconds(hint)
    except (TypeError, ValueError):
        return None
    return seconds if seconds >= 0 and seconds == seconds else None  # noqa: PLR0124 - NaN check
