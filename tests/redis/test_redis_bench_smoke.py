"""benchmarks/bench_redis.py still runs: every case gives the right value (no timing)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

pytest.importorskip("redis")
pytest.importorskip("pybreaker")
pytest.importorskip("limits")

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_every_case_runs_and_round_trips_are_counted(redis_url: str) -> None:
    """Each case's probe returns its expected value; the counted round trips are as documented."""
    sys.path.insert(0, str(BENCH))
    try:
        bench = importlib.import_module("bench_redis")
    finally:
        sys.path.remove(str(BENCH))
    bench.REDIS_URL = redis_url
    cases, trips, cleanup = bench.build()
    try:
        for case in cases:
            assert case.probe() == case.expected, case.key
            case.run(3)
    finally:
        for step in cleanup:
            step()
    assert trips["breaker.redis"] == 0
    assert trips["limiter.redis"] == 1
    assert trips["breaker.pybreaker"] >= 1
