"""A worker process for the multi-process Redis tests (run as a script, not collected).

Usage: ``python redis_worker.py <breaker|limiter> <json settings>``; it prints one JSON
line with what it observed. Times are wall-clock (``time.time()``): every worker runs
on this machine, so they share that clock with each other and with the Redis server.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import Any

import redis

from recoverly import CircuitBreaker, CircuitBreakerError, RateLimitExceeded
from recoverly._core.clock import SystemClock
from recoverly.redis import RedisBreakerStore, RedisRateLimiter


class Boom(Exception):
    """The failure of the failing worker's calls."""


def sleep_until(moment: float) -> None:
    """Sleep until the wall-clock time ``moment``."""
    time.sleep(max(0.0, moment - time.time()))


def breaker(cfg: dict[str, Any]) -> dict[str, Any]:
    """Share one breaker: see the opening, then take part in the HALF_OPEN probing."""
    store = RedisBreakerStore(
        cfg["url"], cfg["name"], prefix=cfg["prefix"], cache_ttl=cfg["cache_ttl"]
    )
    b = CircuitBreaker(
        failure_threshold=3,
        recovery_timeout=cfg["recovery"],
        half_open_max_calls=cfg["probes"],
        store=store,
        clock=SystemClock(),
    )
    counter = redis.Redis.from_url(cfg["url"])
    probes_key = cfg["prefix"] + "probe-runs"

    def probe() -> None:
        counter.incr(probes_key)  # counted in Redis, across all processes
        time.sleep(cfg["probe_seconds"])
        raise Boom

    out: dict[str, Any] = {"role": cfg["role"]}
    sleep_until(cfg["start"])
    if cfg["role"] == "failer":
        time.sleep(0.3)
        for _ in range(3):
            with contextlib.suppress(Boom):
                b.call(_raise)
        out["opened_at"] = time.time()
        out["state"] = b.state.name
    else:
        out["rejected_at"] = first_rejection(b, cfg["start"] + 5.0)
    # Phase 2: everyone hammers the breaker through OPEN -> HALF_OPEN -> OPEN again.
    out["probe_runs"], out["rejected"] = hammer(b, probe, cfg["start"] + cfg["phase2_end"])
    store.close()
    counter.close()
    return out


def first_rejection(b: CircuitBreaker, deadline: float) -> float | None:
    """Call through ``b`` every millisecond; return when the first call was rejected."""
    while time.time() < deadline:
        try:
            b.call(_nothing)
        except CircuitBreakerError:
            return time.time()
        time.sleep(0.001)
    return None


def hammer(b: CircuitBreaker, probe: Any, stop: float) -> tuple[int, int]:
    """Call ``probe`` through ``b`` every 2 ms until ``stop``; return (runs, rejections)."""
    runs = rejected = 0
    while time.time() < stop:
        try:
            b.call(probe)
        except Boom:
            runs += 1
        except CircuitBreakerError:
            rejected += 1
        time.sleep(0.002)
    return runs, rejected


def _nothing() -> None:
    return None


def _raise() -> None:
    raise Boom


def limiter(cfg: dict[str, Any]) -> dict[str, Any]:
    """Take tokens from the shared limit as fast as it allows until the window ends."""
    lim = RedisRateLimiter(
        cfg["url"],
        cfg["rate"],
        burst=cfg["burst"],
        name=cfg["name"],
        prefix=cfg["prefix"],
        clock=SystemClock(),
    )
    end = cfg["start"] + cfg["seconds"]
    admitted = late = 0
    sleep_until(cfg["start"])
    while True:
        left = end - time.time()
        if left <= 0:
            break
        try:
            lim.acquire(timeout=left)
        except RateLimitExceeded:
            break
        if time.time() < end:
            admitted += 1
        else:
            late += 1
    lim.close()
    return {"admitted": admitted, "late": late}


if __name__ == "__main__":
    mode, settings = sys.argv[1], json.loads(sys.argv[2])
    result = breaker(settings) if mode == "breaker" else limiter(settings)
    sys.stdout.write(json.dumps(result) + "\n")
