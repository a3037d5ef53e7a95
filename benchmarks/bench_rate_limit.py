"""Rate limiter benchmarks: one local decision, recoverly against pyrate-limiter and limits.

Two paths, each a tight loop of non-blocking decisions on one key:

* ``ok``: the bucket has plenty of tokens, every call is admitted;
* ``reject``: the bucket is empty (1 per hour, already spent), every call is refused.

Contenders, each in its non-blocking, in-memory form:

* a hand-written GCRA with no lock (the floor: the arithmetic alone);
* recoverly ``RateLimiter.try_acquire()`` (GCRA, locked, bounded per-key store);
* pyrate-limiter ``Limiter(InMemoryBucket([Rate(...)])).try_acquire(name, blocking=False)``
  (its classic sliding-log bucket) and ``StateBucket(..., algorithm=GCRA())`` (v4's
  constant-state bucket);
* limits ``MovingWindowRateLimiter`` and ``FixedWindowRateLimiter`` on ``MemoryStorage``
  (``hit(item, key)``).

"Plenty of tokens" limits are sized so that nobody refuses during a repeat while
the logs the sliding-window contenders keep stay small: pyrate's log spans 10 ms,
limits' moving window needs a whole second (its finest unit) and is capped at
200 000 entries.

Usage::

    .venv/bin/python benchmarks/bench_rate_limit.py           # prints the table
    .venv/bin/python benchmarks/bench_rate_limit.py --write   # and updates RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata
from itertools import repeat
from pathlib import Path
from typing import Any

from limits import RateLimitItemPerHour, RateLimitItemPerSecond, storage, strategies
from pyrate_limiter import GCRA, InMemoryBucket, Limiter, Rate, StateBucket

import bench_bulkhead
from _harness import Case, Result, base_cases, measure, overhead, write_section
from recoverly import RateLimiter, events

__all__ = ["FloorGCRA", "cases", "main", "section"]

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
OK_GROUP = "rate limit, tokens free (one decision)"
REJECT_GROUP = "rate limit, bucket empty (one decision)"
VERSIONED = ("recoverly", "pyrate-limiter", "limits")


class FloorGCRA:
    """The least a GCRA does: one float per bucket, no lock, no validation, no keys."""

    def __init__(self, rate: float, per: float, burst: int) -> None:
        self.interval = per / rate
        self.tolerance = burst * self.interval + 1e-9  # float rounding, as recoverly's
        self.tat = 0.0

    def try_acquire(self) -> bool:
        now = time.monotonic()
        tat = max(self.tat, now)
        new_tat = tat + self.interval
        if new_tat - self.tolerance > now:
            return False
        self.tat = new_tat
        return True


def _loop(decide: Callable[[], Any]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in repeat(None, n):
            decide()

    return run


def _admits(key: str, label: str, decide: Callable[[], Any]) -> Case:
    return Case(
        f"rl.ok.{key}", OK_GROUP, label, _loop(decide), decide, expected=True, baseline="loop"
    )


def _refuses(key: str, label: str, decide: Callable[[], Any]) -> Case:
    decide = _spent(decide)
    return Case(
        f"rl.reject.{key}",
        REJECT_GROUP,
        label,
        _loop(decide),
        decide,
        expected=False,
        baseline="loop",
    )


@functools.cache
def _pyrate_limiter(limit: int, interval_ms: int, *, gcra: bool) -> Limiter:
    # Each pyrate Limiter starts a leaker thread that runs until the Limiter is
    # collected; collecting one while its thread iterates the buckets can raise
    # in that thread. One Limiter per setting for the whole process avoids both
    # the churn and the race (an empty-bucket Limiter stays empty for an hour).
    rate = Rate(limit, interval_ms)
    bucket = StateBucket([rate], algorithm=GCRA()) if gcra else InMemoryBucket([rate])
    return Limiter(bucket)


def _pyrate(limit: int, interval_ms: int, *, gcra: bool = False) -> Callable[[], Any]:
    limiter = _pyrate_limiter(limit, interval_ms, gcra=gcra)
    return lambda: limiter.try_acquire("k", blocking=False)


@functools.cache
def _limits_limiter(*, moving: bool) -> Any:
    # MemoryStorage runs an expiry timer thread: one storage per strategy for the
    # whole process (the cases use different items, so they never share a counter).
    cls = strategies.MovingWindowRateLimiter if moving else strategies.FixedWindowRateLimiter
    return cls(storage.MemoryStorage())


def _limits(item: Any, *, moving: bool) -> Callable[[], Any]:
    limiter = _limits_limiter(moving=moving)
    return lambda: limiter.hit(item, "k")


def _ok_cases() -> list[Case]:
    plenty = 10**12
    floor = FloorGCRA(plenty, 1.0, 10**6)
    ours = RateLimiter(plenty, per=1.0, burst=10**6)
    per_10ms = (10**6, 10)  # a million per 10 ms
    return [
        _admits("floor", "hand-written GCRA (no lock)", floor.try_acquire),
        _admits("recoverly", "recoverly try_acquire()", ours.try_acquire),
        _admits("pyrate", "pyrate-limiter InMemoryBucket", _pyrate(*per_10ms)),
        _admits("pyrate_gcra", "pyrate-limiter StateBucket GCRA", _pyrate(*per_10ms, gcra=True)),
        _admits(
            "limits_moving",
            "limits MovingWindow",
            _limits(RateLimitItemPerSecond(200_000), moving=True),
        ),
        _admits(
            "limits_fixed",
            "limits FixedWindow",
            _limits(RateLimitItemPerSecond(10**9), moving=False),
        ),
    ]


def _spent(decide: Callable[[], Any]) -> Callable[[], Any]:
    """Spend the bucket (one token per hour; already spent if the limiter is shared)."""
    for _ in range(3):
        if not decide():
            return decide
    msg = "an empty-bucket case still admits after three decisions"
    raise AssertionError(msg)


def _reject_cases() -> list[Case]:
    hourly = (1, 3_600_000)  # one per hour (ms)
    return [
        _refuses("floor", "hand-written GCRA (no lock)", FloorGCRA(1, 3600.0, 1).try_acquire),
        _refuses("recoverly", "recoverly try_acquire()", RateLimiter(1, per=3600.0).try_acquire),
        _refuses("pyrate", "pyrate-limiter InMemoryBucket", _pyrate(*hourly)),
        _refuses("pyrate_gcra", "pyrate-limiter StateBucket GCRA", _pyrate(*hourly, gcra=True)),
        _refuses(
            "limits_moving", "limits MovingWindow", _limits(RateLimitItemPerHour(1), moving=True)
        ),
        _refuses(
            "limits_fixed", "limits FixedWindow", _limits(RateLimitItemPerHour(1), moving=False)
        ),
    ]


def cases() -> list[Case]:
    """Every rate limiter case (the baselines come from ``_harness.base_cases``)."""
    return _ok_cases() + _reject_cases()


# ---------------------------------------------------------------- report
def _ratio_line(results: dict[str, Result], path: str, other: str, label: str) -> str:
    ours = overhead(results, f"rl.{path}.recoverly")
    theirs = overhead(results, f"rl.{path}.{other}")
    return f"{label}: {theirs / ours:.2f}x recoverly's time" if ours > 0 else f"{label}: n/a"


def section(results: dict[str, Result]) -> str:
    """The Markdown section for RESULTS.md: a table per path and the ratios."""
    repeats = len(next(iter(results.values())).samples)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "## Rate limiter and bulkhead (`benchmarks/bench_rate_limit.py`)",
        "",
        "One decision per call, in-memory, one key, non-blocking; ns per decision = the loop's",
        "time minus the empty loop. Ratios are the other library's time over recoverly's",
        "(higher = recoverly faster).",
        "",
        (
            f"- run: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, Python"
            f" {platform.python_version()}, {repeats} interleaved repeats,"
            f" {os.cpu_count()} CPUs, load average {load} (read the ratios, not the ns)"
        ),
        "- versions: " + ", ".join(f"{name} {metadata.version(name)}" for name in VERSIONED),
        "",
        "| case | ns/decision | spread | vs recoverly |",
        "|---|---:|---:|---:|",
    ]
    for group, path in ((OK_GROUP, "ok"), (REJECT_GROUP, "reject")):
        lines.append(f"| **{group}** | | | |")
        ours = overhead(results, f"rl.{path}.recoverly")
        for key, res in results.items():
            if res.case.group != group:
                continue
            ns = overhead(results, key)
            ratio = f"{ns / ours:.2f}x" if ours > 0 else "n/a"
            lines.append(f"| {res.case.label} | {ns:,.0f} | {res.spread * 100:.0f} % | {ratio} |")
    lines += [
        "",
        "pyrate-limiter's InMemoryBucket and limits' MovingWindow keep one log entry per",
        "admitted call; their limits here are sized to keep those logs short (10 ms of calls;",
        "at most 200 000 entries). recoverly and the floor keep one float per key.",
        "",
        *bench_bulkhead.section_lines(results),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the rate limiter and bulkhead cases; print; optionally write RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats")
    parser.add_argument("--target-ms", type=float, default=60.0, help="length of one repeat")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    logging.getLogger().addHandler(logging.NullHandler())
    events.unsubscribe(events.log_event)
    all_cases = base_cases() + cases() + bench_bulkhead.cases()
    results = measure(all_cases, repeats=args.repeats, target_ms=args.target_ms)
    text = section(results)
    print(text)
    for path in ("ok", "reject"):
        for other in ("pyrate", "pyrate_gcra", "limits_moving", "limits_fixed"):
            print(_ratio_line(results, path, other, f"{path} {other}"))
    if args.write:
        write_section(RESULTS, "rate-limit", text)
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
