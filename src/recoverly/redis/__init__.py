"""Shared state in Redis: circuit breakers and rate limits common to many processes.

Needs the ``redis`` extra (redis-py with hiredis)::

    pip install 'recoverly[redis]'

:class:`RedisBreakerStore` is a store for :class:`~recoverly.CircuitBreaker`;
:class:`RedisRateLimiter` is a :class:`~recoverly.RateLimiter` over a
:class:`RedisLimiterStore`. Both keep working, on local state, while Redis is
unreachable.

.. versionadded:: 0.2
"""

from __future__ import annotations

try:
    import redis as _redis
except ImportError as exc:  # pragma: no cover - exercised by the minimal suite
    msg = "recoverly.redis needs redis-py: pip install 'recoverly[redis]'"
    raise ImportError(msg) from exc

from recoverly.redis.breaker_store import RedisBreakerStore as RedisBreakerStore
from recoverly.redis.rate_limit import RedisLimiterStore as RedisLimiterStore
from recoverly.redis.rate_limit import RedisRateLimiter as RedisRateLimiter

del _redis

__all__ = ["RedisBreakerStore", "RedisLimiterStore", "RedisRateLimiter"]
