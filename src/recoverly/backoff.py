"""Backoff strategies: how long to wait before retry number *n*.

All functions here are pure. The order of operations is fixed and documented:

1. the strategy's base delay for retry ``n`` (``n`` = 1 before the second attempt);
2. the cap, ``max_delay`` (and an absolute ceiling, so huge exponents never overflow);
3. the jitter, applied *after* the cap, so delays keep their spread even once
   they reach ``max_delay`` and never exceed it.

==========================  =========================================  ================
strategy                    base delay before retry ``n``               ``n`` = 1, 2, 3, 4, 5
==========================  =========================================  ================
``FIXED``                   ``delay``                                  1, 1, 1, 1, 1
``LINEAR``                  ``delay * n``                              1, 2, 3, 4, 5
``EXPONENTIAL``             ``delay * backoff ** (n - 1)``             1, 2, 4, 8, 16
``FIBONACCI``               ``delay * fib(n)``                         1, 1, 2, 3, 5
``DECORRELATED_JITTER``     ``uniform(delay, 3 * previous)``           random, grows
==========================  =========================================  ================

(The last column is for ``delay=1, backoff=2``.)

.. versionadded:: 0.1
"""

from __future__ import annotations

import enum
import math
import sys
from collections.abc import Callable

from recoverly._core.clock import MAX_SLEEP

__all__ = ["RetryStrategy", "apply_jitter", "base_delay", "compute_delay"]


class RetryStrategy(enum.Enum):
    """How the wait between attempts grows.

    .. versionadded:: 0.1
    """

    FIXED = "fixed"
    """Always ``delay``."""
    LINEAR = "linear"
    """``delay * n``."""
    EXPONENTIAL = "exponential"
    """``delay * backoff ** (n - 1)``."""
    FIBONACCI = "fibonacci"
    """``delay * fib(n)`` with fib = 1, 1, 2, 3, 5, ..."""
    DECORRELATED_JITTER = "decorrelated_jitter"
    """AWS "decorrelated jitter": ``uniform(delay, 3 * previous delay)``, capped."""


RetryStrategy.__module__ = "recoverly"

_FIBS: list[float] = [1.0, 1.0]


def _fib(n: int) -> float:
    while len(_FIBS) < n and _FIBS[-1] < MAX_SLEEP:
        _FIBS.append(_FIBS[-1] + _FIBS[-2])
    return _FIBS[min(n, len(_FIBS)) - 1]


_LOG_FLOAT_MAX = math.log(sys.float_info.max) - 1.0


def base_delay(
    strategy: RetryStrategy,
    n: int,
    delay: float,
    backoff: float,
    previous: float,
    rand: Callable[[], float],
) -> float:
    """Return the uncapped delay before retry ``n`` (``n >= 1``), at most ``MAX_SLEEP``.

    Args:
        strategy: The backoff strategy.
        n: The retry number: 1 before the second attempt.
        delay: The base delay in seconds.
        backoff: The growth factor for ``EXPONENTIAL``.
        previous: The previous delay (``DECORRELATED_JITTER`` only).
        rand: A source of floats in ``[0, 1)``.

    Returns:
        Seconds, finite and within ``[0, MAX_SLEEP]``.
    """
    if strategy is RetryStrategy.EXPONENTIAL:
        return _exponential(n, delay, backoff)
    if strategy is RetryStrategy.FIXED:
        return delay
    if strategy is RetryStrategy.LINEAR:
        return min(delay * n, MAX_SLEEP)
    if strategy is RetryStrategy.FIBONACCI:
        return min(delay * _fib(n), MAX_SLEEP)
    # DECORRELATED_JITTER
    high = min(max(previous, delay) * 3.0, MAX_SLEEP)
    return delay + (high - delay) * rand()


def _exponential(n: int, delay: float, backoff: float) -> float:
    if delay == 0:
        return 0.0
    growth = (n - 1) * math.log(backoff)
    exponent = growth + math.log(delay)
    if exponent >= math.log(MAX_SLEEP):
        return MAX_SLEEP
    # A tiny delay can keep the product small while backoff ** (n - 1) alone
    # overflows a float: then compute it through logarithms.
    return delay * backoff ** (n - 1) if growth < _LOG_FLOAT_MAX else math.exp(exponent)


def apply_jitter(seconds: float, jitter: float, rand: Callable[[], float]) -> float:
    """Spread ``seconds`` down by up to the fraction ``jitter``: ``s * (1 - jitter * r)``."""
    return seconds * (1.0 - jitter * rand())


def compute_delay(
    strategy: RetryStrategy,
    n: int,
    *,
    delay: float,
    backoff: float,
    max_delay: float | None,
    jitter: float,
    previous: float,
    rand: Callable[[], float],
) -> float:
    """Return the wait before retry ``n``: base delay, then cap, then jitter.

    ``DECORRELATED_JITTER`` is random by construction, so ``jitter`` is not
    applied on top of it.

    Returns:
        Seconds in ``[0, max_delay]`` (or ``[0, MAX_SLEEP]`` without a cap).
    """
    seconds = base_delay(strategy, n, delay, backoff, previous, rand)
    if max_delay is not None and seconds > max_delay:
        seconds = max_delay
    if jitter and strategy is not RetryStrategy.DECORRELATED_JITTER:
        seconds = apply_jitter(seconds, jitter, rand)
    return seconds
