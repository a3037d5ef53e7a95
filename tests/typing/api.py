"""Type-level checks of the public API (checked by mypy --strict, never executed).

Each ``assert_type`` line fails type checking if decoration loses a signature.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Coroutine
from typing import Any

from typing_extensions import assert_type

import recoverly
from recoverly import (
    AdaptiveThrottle,
    Bulkhead,
    BulkheadStatistics,
    CircuitBreaker,
    Pipeline,
    RateLimiter,
    RateLimiterStatistics,
    Retry,
    RetryBudget,
    RetryStrategy,
    Timeout,
    batch_with_retry,
    chaos,
    fallback,
    hedge,
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


# ---------------------------------------------------------------- Pipeline
_pipeline = Pipeline(fallback(b""), retry(max_attempts=3), timeout(2.0), name="fetch")


@_pipeline
def piped(url: str, *, retries: int = 1) -> bytes:
    """A pipeline keeps the signature."""
    return url.encode() * retries


assert_type(piped("x"), bytes)
assert_type(piped("x", retries=2), bytes)
piped(1)  # type: ignore[arg-type]
piped("x", tries=2)  # type: ignore[call-arg]


@_pipeline
async def apiped(n: int) -> str:
    """Async stays async under a pipeline."""
    return str(n)


pending_piped = assert_type(apiped(1), Coroutine[Any, Any, str])
pending_piped.close()
assert_type(_pipeline.call(piped, "x", retries=3), bytes)
_pipeline.call(piped, 1)  # type: ignore[arg-type]
assert_type(_pipeline.describe(), tuple[str, ...])


async def use_pipeline() -> None:
    """``acall`` gives the awaited return type and checks the arguments."""
    assert_type(await _pipeline.acall(apiped, 1), str)
    await _pipeline.acall(apiped, "1")  # type: ignore[arg-type]


# ---------------------------------------------------------------- hedge, throttle, chaos
@hedge(delay=0.02)
async def hedged_lookup(key: str) -> bytes:
    """A hedged coroutine function keeps its signature."""
    return key.encode()


pending_hedged = assert_type(hedged_lookup("k"), Coroutine[Any, Any, bytes])
pending_hedged.close()
hedged_lookup(1).close()  # type: ignore[arg-type]


@AdaptiveThrottle(k=2.0)
def throttled(n: int) -> int:
    """A throttled function keeps its signature."""
    return n


assert_type(throttled(1), int)
throttled("1")  # type: ignore[arg-type]


@chaos.fault(0.1, ConnectionError)
@chaos.latency(0.1, 1.0)
@chaos.outcome(0.1, 0)
def chaotic(n: int) -> int:
    """Chaos parts keep the signature."""
    return n


assert_type(chaotic(1), int)
assert_type(Pipeline(chaos.fault(0.5, ValueError), hedge(), AdaptiveThrottle())(chaotic)(2), int)

scheduled = chaos.fault(0.0, ConnectionError, at=(3, 7), max_injections=2, enabled=False)
assert_type(scheduled.at, tuple[int, ...])
assert_type(scheduled.max_injections, int | None)
assert_type(scheduled.enabled, bool | None)
scheduled.enabled = True
scheduled.enabled = "yes"  # type: ignore[assignment]
chaos.latency(0.1, 1.0, at=range(1, 4), max_injections=None)
chaos.outcome(0.1, 0, at=[2], max_injections=1)
chaos.fault(0.1, ValueError, at=3)  # type: ignore[arg-type]


# ---------------------------------------------------------------- named configuration
recoverly.configure({"retries": {"a": {"max_attempts": 2}}}, env_prefix="APP")
recoverly.configure("resilience.toml")
recoverly.configure(env_prefix="APP", clock=None)
assert_type(recoverly.breaker("a"), CircuitBreaker)
assert_type(recoverly.retry_policy("a"), Retry)
assert_type(recoverly.timeout_policy("a"), Timeout)
assert_type(recoverly.bulkhead_policy("a"), Bulkhead)
assert_type(recoverly.rate_limiter("a"), RateLimiter)
assert_type(recoverly.retry_budget("a"), RetryBudget)
assert_type(recoverly.hedge_policy("a"), recoverly.Hedge)
assert_type(recoverly.throttle_policy("a"), AdaptiveThrottle)
assert_type(recoverly.chaos_policy("a"), chaos.Fault | chaos.Latency | chaos.Outcome)
assert_type(recoverly.chaos_policy("a").statistics(), chaos.ChaosStatistics)
assert_type(recoverly.pipeline("a"), recoverly.config.NamedPipeline)
assert_type(recoverly.pipeline("a").describe(), tuple[str, ...])
assert_type(recoverly.pipeline("a").current, Pipeline)
recoverly.configure({}, "APP")  # type: ignore[call-arg]


@recoverly.pipeline("a")
def named(url: str, *, retries: int = 1) -> bytes:
    """A named pipeline keeps the signature."""
    return url.encode() * retries


assert_type(named("x", retries=2), bytes)
named(1)  # type: ignore[arg-type]


@recoverly.pipeline("a")
async def anamed(n: int) -> str:
    """Async stays async under a named pipeline."""
    return str(n)


pending_named = assert_type(anamed(1), Coroutine[Any, Any, str])
pending_named.close()
assert_type(recoverly.pipeline("a").call(named, "x"), bytes)
recoverly.pipeline("a").call(named, 1)  # type: ignore[arg-type]
