"""Type-level checks of the public API (checked by mypy --strict, never executed).

Each ``assert_type`` line fails type checking if decoration loses a signature.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Coroutine
from typing import Any

from typing_extensions import assert_type

from recoverly import (
    Bulkhead,
    BulkheadStatistics,
    RateLimiter,
    RateLimiterStatistics,
    Retry,
    RetryBudget,
    RetryStrategy,
    Timeout,
    batch_with_retry,
    fallback,
    retry,
    retrying,
    safe_execute,
    timeout,
)


@retry(max_attempts=3, delay=1.0, backoff=2.0, jitter=True)
def fetch(url: str, *, timeout: float = 10.0) -> bytes:
    """Fetch bytes."""
    return url.encode() * int(timeout)


fetch(1)  # type: ignore[arg-type]  # an unused ignore would mean the signature was lost
fetch("x", retries=3)  # type: ignore[call-arg]
assert_type(fetch("x"), bytes)
assert_type(fetch("x", timeout=2.0), bytes)


@retry
def bare(n: int) -> int:
    """Bare decorator form."""
    return n


assert_type(bare(1), int)


@retry(exceptions=(ConnectionError, TimeoutError), strategy=RetryStrategy.FIBONACCI)
async def afetch(n: int) -> str:
    """Async stays async."""
    return str(n)


async def use_async() -> None:
    """Awaiting the wrapper gives the function's return type."""
    pending = assert_type(afetch(1), Coroutine[Any, Any, str])
    assert_type(await pending, str)
    assert_type(await afetch(1), str)
    async for attempt in retrying(max_attempts=2):
        with attempt:
            assert_type(attempt.number, int)


policy: Retry = retry(max_attempts=5, delay=dt.timedelta(seconds=1), budget=RetryBudget())
assert_type(policy.call(bare, 3), int)
assert_type(policy.statistics().retries, int)


@timeout(seconds=30)
@retry(max_attempts=2)
def slow(x: str) -> bytes:
    """Timeout over retry keeps the signature."""
    return x.encode()


assert_type(slow("x"), bytes)
slow(1)  # type: ignore[arg-type]


@timeout
def bare_timeout(n: int) -> int:
    """Bare @timeout."""
    return n


assert_type(bare_timeout(1), int)


@timeout(2.0)
async def atimed(n: int) -> int:
    """Async under timeout."""
    return n


pending_timed = assert_type(atimed(1), Coroutine[Any, Any, int])
pending_timed.close()


@fallback(lambda: b"")
def with_default() -> bytes:
    """Fallback keeps the return type."""
    return b"x"


assert_type(with_default(), bytes)


def blocks() -> None:
    """Context-manager forms give back their objects."""
    with timeout(1.0) as t:
        assert_type(t, Timeout)
    results, failed = batch_with_retry([1, 2], str, batch_size=10, max_retries=1)
    assert_type(results, list[str])
    assert_type(failed, list[tuple[int, Exception]])
    assert_type(safe_execute(int, "3", default=0), int)


bulkhead = Bulkhead(4, max_queue=10, queue_timeout=dt.timedelta(seconds=5), name="db")
limiter = RateLimiter(10, per=1.0, burst=5, key=lambda user, **_: user)


@bulkhead
@limiter
def guarded(user: str, *, page: int = 1) -> list[str]:
    """Bulkhead over rate limiter keeps the signature."""
    return [user] * page


assert_type(guarded("a", page=2), list[str])
guarded(1)  # type: ignore[arg-type]


@limiter
@bulkhead
async def aguarded(n: int) -> int:
    """Async stays async under both."""
    return n


pending_guarded = assert_type(aguarded(1), Coroutine[Any, Any, int])
pending_guarded.close()


def concurrency_blocks() -> None:
    """Bulkhead and rate limiter blocks, acquisitions and statistics are typed."""
    with bulkhead as b:
        assert_type(b, Bulkhead)
    with limiter as lim:
        assert_type(lim, RateLimiter)
    assert_type(limiter.try_acquire(2, key="alice"), bool)
    assert_type(limiter.acquire(timeout=None), float)
    assert_type(limiter.statistics(), RateLimiterStatistics)
    assert_type(bulkhead.statistics(), BulkheadStatistics)
    assert_type(bulkhead.statistics().active, int)


async def aconcurrency_blocks() -> None:
    """The async forms are typed too."""
    async with bulkhead as b:
        assert_type(b, Bulkhead)
    async with limiter as lim:
        assert_type(lim, RateLimiter)
    assert_type(await limiter.aacquire(key=3), float)
