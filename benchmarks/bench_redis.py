"""Redis-shared breaker and rate limiter: per-call cost against the libraries users would pick.

Usage::

    .venv/bin/python benchmarks/bench_redis.py            # prints the Markdown section
    .venv/bin/python benchmarks/bench_redis.py --write    # and replaces it in RESULTS.md
    .venv/bin/python benchmarks/bench_redis.py --repeats 3 --target-ms 30   # quicker

Circuit breaker, CLOSED success path (``f(x) = x + 1`` decorated):

* ``recoverly + RedisBreakerStore``: the shared breaker; its CLOSED success path reads a
  locally cached generation and sends nothing to Redis;
* ``recoverly in-memory``: the default store (the floor for the shared one);
* ``pybreaker + CircuitRedisStorage``: pybreaker's shared state, against the same Redis.

Rate limiter, one decision (``try_acquire``) on a limit never reached:

* ``RedisRateLimiter``: GCRA in one ``EVALSHA``;
* ``limits`` ``MovingWindowRateLimiter`` and ``FixedWindowRateLimiter`` on its
  ``RedisStorage``, the same server.

Round trips are counted, not guessed: every client is wrapped so that each command it
sends is counted (a pipeline counts once). Redis is the local test server
(``RECOVERLY_TEST_REDIS_URL``), under a key prefix of its own deleted afterwards. The
harness interleaves repeats and reports medians; timing uses ``time.perf_counter_ns``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import uuid
from collections.abc import Callable
from importlib.metadata import version
from itertools import repeat
from pathlib import Path
from typing import Any

import pybreaker
import redis
from limits import RateLimitItemPerSecond, strategies
from limits.storage import RedisStorage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Case, Result, base_cases, fn, measure, sync_probe, sync_runner, write_section
from recoverly import CircuitBreaker
from recoverly.redis import RedisBreakerStore, RedisRateLimiter

REDIS_URL = os.environ.get("RECOVERLY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RESULTS = Path(__file__).with_name("RESULTS.md")
PREFIX = f"recoverly-bench-{uuid.uuid4().hex[:8]}:"
RATE = 1_000_000  # per second: never reached, every decision admits


class Counted:
    """Counts the commands a redis-py client sends, by wrapping its ``execute_command``."""

    def __init__(self, client: Any) -> None:
        self.calls = 0
        inner = client.execute_command

        def execute_command(*args: Any, **options: Any) -> Any:
            self.calls += 1
            return inner(*args, **options)

        client.execute_command = execute_command


def round_trips(counter: Counted, action: Callable[[], object], n: int = 200) -> float:
    """Commands sent per call of ``action``, over ``n`` calls, in the steady state.

    One call comes first, uncounted: the first call on a server that has not seen a
    script yet also loads it (NOSCRIPT, SCRIPT LOAD, EVALSHA again), once per server.
    """
    action()
    before = counter.calls
    for _ in range(n):
        action()
    return (counter.calls - before) / n


def decision_runner(decide: Callable[[], object]) -> Callable[[int], None]:
    """Return ``run(n)`` making ``n`` decisions."""

    def run(n: int) -> None:
        for _ in repeat(None, n):
            decide()

    return run


def build() -> tuple[list[Case], dict[str, float], list[Callable[[], None]]]:
    """Create the cases, count their round trips, and return the clean-up steps."""
    cleanup: list[Callable[[], None]] = []
    trips: dict[str, float] = {}

    shared_client = redis.Redis.from_url(REDIS_URL, socket_timeout=0.25)
    shared = Counted(shared_client)
    store = RedisBreakerStore(shared_client, "bench", prefix=PREFIX)
    cleanup.append(store.close)
    shared_f = CircuitBreaker(failure_threshold=5, store=store)(fn)
    memory_f = CircuitBreaker(failure_threshold=5)(fn)

    pb_client = redis.Redis.from_url(REDIS_URL, socket_timeout=0.25)
    pb_counted = Counted(pb_client)
    pb_storage = pybreaker.CircuitRedisStorage(
        pybreaker.STATE_CLOSED, pb_client, namespace=PREFIX + "pybreaker"
    )
    pb_f = pybreaker.CircuitBreaker(fail_max=5, state_storage=pb_storage)(fn)

    lim_client = redis.Redis.from_url(REDIS_URL, socket_timeout=0.25)
    lim_counted = Counted(lim_client)
    limiter = RedisRateLimiter(lim_client, RATE, name="bench", prefix=PREFIX)
    limits_storage = RedisStorage(REDIS_URL)
    limits_counted = Counted(limits_storage.storage)
    item = RateLimitItemPerSecond(RATE)
    moving = strategies.MovingWindowRateLimiter(limits_storage)
    fixed = strategies.FixedWindowRateLimiter(limits_storage)

    def moving_hit() -> bool:
        return moving.hit(item, PREFIX + "limits-moving")

    def fixed_hit() -> bool:
        return fixed.hit(item, PREFIX + "limits-fixed")

    trips["breaker.redis"] = round_trips(shared, lambda: shared_f(1))
    trips["breaker.pybreaker"] = round_trips(pb_counted, lambda: pb_f(1))
    trips["limiter.redis"] = round_trips(lim_counted, limiter.try_acquire)
    trips["limiter.limits.moving"] = round_trips(limits_counted, moving_hit)
    trips["limiter.limits.fixed"] = round_trips(limits_counted, fixed_hit)

    def drop_keys() -> None:
        keys = list(lim_client.scan_iter(match=PREFIX + "*"))
        keys += list(lim_client.scan_iter(match="LIMITS:" + PREFIX + "*"))
        keys += list(lim_client.scan_iter(match="*" + PREFIX + "*"))
        if keys:
            lim_client.delete(*set(keys))
        for c in (shared_client, pb_client, lim_client):
            c.close()

    cleanup.append(drop_keys)
    group_b, group_l = "Circuit breaker, CLOSED success path", "Rate limiter decision"
    cases = [
        *base_cases()[:2],
        Case(
            "breaker.redis",
            group_b,
            "recoverly + RedisBreakerStore",
            sync_runner(shared_f),
            sync_probe(shared_f),
            baseline="bare",
        ),
        Case(
            "breaker.memory",
            group_b,
            "recoverly in-memory",
            sync_runner(memory_f),
            sync_probe(memory_f),
            baseline="bare",
        ),
        Case(
            "breaker.pybreaker",
            group_b,
            "pybreaker + CircuitRedisStorage",
            sync_runner(pb_f),
            sync_probe(pb_f),
            baseline="bare",
        ),
        Case(
            "limiter.redis",
            group_l,
            "RedisRateLimiter.try_acquire",
            decision_runner(limiter.try_acquire),
            limiter.try_acquire,
            expected=True,
        ),
        Case(
            "limiter.limits.moving",
            group_l,
            "limits MovingWindow (Redis)",
            decision_runner(moving_hit),
            moving_hit,
            expected=True,
        ),
        Case(
            "limiter.limits.fixed",
            group_l,
            "limits FixedWindow (Redis)",
            decision_runner(fixed_hit),
            fixed_hit,
            expected=True,
        ),
    ]
    return cases, trips, cleanup


def report(results: dict[str, Result], trips: dict[str, float]) -> str:
    """Format the results as the Markdown section."""

    def ns(key: str) -> float:
        return results[key].median

    lines = [
        "## Redis: shared breaker and rate limiter",
        "",
        (
            f"Python {sys.version.split()[0]}, redis-py {redis.__version__}, "
            f"pybreaker {version('pybreaker')}, limits {version('limits')}, one process, "
            "Redis on loopback; medians of interleaved repeats."
        ),
        "",
        "| case | ns/call | calls/s | round trips/call | spread |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, res in results.items():
        if key == "loop":
            continue
        rt = trips.get(key)
        lines.append(
            f"| {res.case.label} | {res.median:,.0f} | {1e9 / res.median:,.0f} | "
            f"{'' if rt is None else f'{rt:g}'} | {res.spread:.0%} |"
        )
    lines += [
        "",
        "Ratios (median time per call or decision):",
        "",
        (
            f"- RedisBreakerStore vs pybreaker + CircuitRedisStorage: "
            f"**{ns('breaker.pybreaker') / ns('breaker.redis'):.1f}x** faster (target >= 10x)"
        ),
        (
            f"- RedisBreakerStore vs in-memory store: "
            f"**{ns('breaker.redis') / ns('breaker.memory'):.2f}x** the time (target <= 1.5x)"
        ),
        (
            f"- RedisRateLimiter vs limits MovingWindow: "
            f"**{ns('limiter.limits.moving') / ns('limiter.redis'):.2f}x** the decisions/s; "
            f"vs FixedWindow: **{ns('limiter.limits.fixed') / ns('limiter.redis'):.2f}x**"
        ),
    ]
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark and print (or write) the section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--target-ms", type=float, default=60.0)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping()
    except redis.RedisError as exc:
        sys.exit(f"Redis at {REDIS_URL} is not reachable ({exc}); start ../shared/services.sh")
    cases, trips, cleanup = build()
    try:
        results = measure(cases, repeats=args.repeats, target_ms=args.target_ms)
    finally:
        for step in cleanup:
            step()
    section = report(results, trips)
    print(section)
    if args.write:
        write_section(RESULTS, "redis", section)


if __name__ == "__main__":
    main()
