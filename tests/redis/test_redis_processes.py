"""Four worker processes share one Redis-backed breaker and one Redis rate limit."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

redis = pytest.importorskip("redis")

from recoverly.redis._scripts import GCRA_EPOCH  # noqa: E402

WORKER = Path(__file__).with_name("redis_worker.py")
#: Seconds between the moment all workers are ready and the start they are given.
LEAD = 0.5


def run_workers(
    mode: str,
    settings: list[dict[str, Any]],
    client: Any,
    prefix: str,
    before_start: Callable[[float], object] = lambda _: None,
) -> list[dict[str, Any]]:
    """Start one worker per settings dict; once all are ready, give them one start time.

    ``before_start(start)`` runs after the start time is chosen, before the workers see it.

    Returns:
        The workers' reports.
    """
    procs = [
        subprocess.Popen(  # noqa: S603 - our own interpreter and worker script
            [sys.executable, str(WORKER), mode, json.dumps(s)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for s in settings
    ]
    deadline = time.time() + 60
    while int(client.get(prefix + "ready") or 0) < len(procs):
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            break
        time.sleep(0.01)
    start = time.time() + LEAD
    before_start(start)
    client.set(prefix + "start", repr(start))
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=45)
        assert proc.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


@pytest.mark.realtime
def test_four_processes_share_one_breaker(redis_url: str, redis_prefix: str) -> None:
    """One process opens the breaker for all four within the bound; then exactly 2 probes run.

    The bound is the documented staleness: ``cache_ttl`` plus one socket timeout.
    """
    cache_ttl, probes, recovery = 2.0, 2, 1.0
    base = {
        "url": redis_url,
        "prefix": redis_prefix,
        "name": "shared",
        "cache_ttl": cache_ttl,
        "recovery": recovery,
        "probes": probes,
        # A probe holds its slot for 0.3 s, then fails and opens the breaker again.
        "probe_seconds": 0.3,
    }
    client = redis.Redis.from_url(redis_url)
    try:
        reports = run_workers(
            "breaker",
            [{**base, "role": "failer"}] + [{**base, "role": "watcher"}] * 3,
            client,
            redis_prefix,
        )
        runs = int(client.get(redis_prefix + "probe-runs") or 0)
        state = client.hget(f"{redis_prefix}breaker:{{shared}}", "s")
    finally:
        client.close()
    failer, watchers = reports[0], reports[1:]
    assert failer["state"] == "OPEN"
    bound = cache_ttl + 0.25  # documented: cache_ttl plus one socket timeout
    delays = [w["rejected_at"] - failer["opened_at"] for w in watchers]
    assert all(w["rejected_at"] is not None for w in watchers)
    assert max(delays) <= bound, delays
    assert runs == probes
    assert sum(r["probe_runs"] for r in reports) == probes
    assert sum(r["rejected"] for r in reports) > 0
    assert state == b"open"


@pytest.mark.realtime
def test_four_processes_share_one_rate_limit(redis_url: str, redis_prefix: str) -> None:
    """200/s shared by four processes for 10 s admits 2000 +- 1 %, never above 2000 + burst.

    The bucket is set to be empty at the start, so the 10 s window may hold at most
    2000 tokens; the burst of 200 lets the workers fall up to 1 s behind (a loaded
    machine) without losing tokens, since GCRA forgets unused time only once the bucket
    is full.
    """
    rate, seconds, burst = 200, 10.0, 200
    settings = {
        "url": redis_url,
        "prefix": redis_prefix,
        "name": "shared",
        "rate": rate,
        "burst": burst,
        "seconds": seconds,
    }
    client = redis.Redis.from_url(redis_url)

    def empty_bucket_at(start: float) -> None:
        # The theoretical arrival time (server clock, GCRA epoch) that leaves no token at start.
        tat = start - GCRA_EPOCH + burst / rate
        client.set(f"{redis_prefix}rate:{{shared}}", repr(tat), px=60_000)

    try:
        reports = run_workers("limiter", [settings] * 4, client, redis_prefix, empty_bucket_at)
    finally:
        client.close()
    admitted = sum(r["admitted"] for r in reports)
    expected = rate * seconds
    assert abs(admitted - expected) <= 0.01 * expected, admitted
    assert admitted <= expected + burst
    assert all(r["admitted"] > 0 for r in reports)
