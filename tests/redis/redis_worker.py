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


def wait_for_start(url: str, prefix: str) -> float:
    """Report ready (INCR ``<prefix>ready``), wait for the test to set ``<prefix>start``.

    Returns:
        The start time the test chose; this function returns at that moment.
    """
    client = redis.Redis.from_url(url)
    try:
        client.incr(prefix + "ready")
        deadline = time.time() + 60
        while (value := client.get(prefix + "start")) is None:
            if time.time() > deadline:
                msg = "the test never set the start time"
                raise RuntimeError(msg)
            time.sleep(0.005)
    finally:
        client.close()
    start = float(value)
    time.sleep(max(0.0, start - time.time()))
    return start


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
    opened: float | None = None
    start = wait_for_start(cfg["url"], cfg["prefix"])
    if cfg["role"] == "failer":
        time.sleep(0.3)
        for i in range(3):
            if i == 2:
                # Taken before the opening call: the delays measured from here are
                # upper bounds of the propagation time.
                out["opened_at"] = opened = time.time()
            with contextlib.suppress(Boom):
                b.call(_raise)
        out["state"] = b.state.name
    else:
        out["rejected_at"] = opened = first_rejection(b, start + 10.0)
    # Phase 2: everyone hammers the breaker through OPEN -> HALF_OPEN -> OPEN again,
    # stopping inside the second OPEN period (which ends at open + 2 x recovery + probe).
    if opened is None:  # never saw the opening: the test will say so
        opened = time.time()
    stop = opened + cfg["recovery"] + cfg["probe_seconds"] + cfg["recovery"] / 2
    out["probe_runs"], out["rejected"] = hammer(b, probe, stop)
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
    admitted = late = 0
    start = wait_for_start(cfg["url"], cfg["prefix"])
    end = start + cfg["seconds"]
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
