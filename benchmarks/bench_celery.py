"""Resilient Celery tasks: what one delivery costs on top of a plain Celery task.

Usage::

    .venv/bin/python benchmarks/bench_celery.py            # prints the Markdown section
    .venv/bin/python benchmarks/bench_celery.py --write    # and replaces it in RESULTS.md
    .venv/bin/python benchmarks/bench_celery.py --repeats 3 --target-ms 30   # quicker

Every case runs ``f(x) = x + 1`` as a Celery task through ``task.apply()`` (eager: the
worker's tracing path without a broker), so the figures are the per-delivery cost of
each layer, not the broker's:

* ``celery``: ``@app.task``, the floor;
* ``celery, seed style``: ``@app.task(bind=True, max_retries=3)`` with the usage document's
  hand-written ``try/except self.retry(...)``;
* ``resilient_task, no store``: recoverly's retry policy mapped onto Celery's retry;
* ``resilient_task + RedisTaskStore, first delivery``: a new idempotency key per call:
  lease with a fencing token, heartbeat thread, history, result stored under the fence;
* ``resilient_task + RedisTaskStore, redelivery``: the same key again: the stored result
  is returned without running.

Redis round trips per delivery are counted, not guessed (a pipeline counts once). Redis is
the local test server (``RECOVERLY_TEST_REDIS_URL``, database 1), under a key prefix of its
own deleted afterwards. The harness interleaves repeats and reports medians.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import uuid
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import redis

from celery import Celery

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Case, Result, measure, sync_probe, sync_runner, write_section
from recoverly import retry
from recoverly.celery import RedisTaskStore, resilient_task

REDIS_URL = os.environ.get("RECOVERLY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RESULTS = Path(__file__).with_name("RESULTS.md")
PREFIX = f"recoverly-bench-celery-{uuid.uuid4().hex[:8]}"


def db1(url: str) -> str:
    head, _, tail = url.split("?", maxsplit=1)[0].rpartition("/")
    return f"{head}/1" if tail.isdigit() and head.count("/") >= 2 else f"{url.rstrip('/')}/1"


class Counted(redis.Redis):
    """A client that counts round trips: each command, and each pipeline once."""

    trips = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        Counted.trips += 1
        return super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        original = pipe.execute

        def execute(raise_on_error: bool = True) -> Any:
            Counted.trips += 1
            return original(raise_on_error)

        pipe.execute = execute
        return pipe


def build(client: Counted) -> tuple[list[Case], dict[str, Callable[[int], Any]]]:
    app = Celery("bench", broker="memory://", backend="cache+memory://")
    app.conf.task_always_eager = True
    app.conf.task_store_eager_result = False
    store = RedisTaskStore(client, prefix=PREFIX)
    policy = retry(max_attempts=3, delay=1.0, exceptions=ConnectionError)

    @app.task
    def plain(x: int) -> int:
        return x + 1

    @app.task(bind=True, max_retries=3)
    def seed_style(self: Any, x: int) -> int:
        try:
            return x + 1
        except Exception as exc:
            if self.request.retries < self.max_retries:
                raise self.retry(exc=exc, countdown=60) from exc
            raise

    @resilient_task(app, retry=policy, bind=False)
    def no_store(x: int) -> int:
        return x + 1

    fresh = itertools.count()

    @resilient_task(app, retry=policy, store=store, key=lambda _: f"k{next(fresh)}", bind=False)
    def first(x: int) -> int:
        return x + 1

    @resilient_task(app, retry=policy, store=store, key=lambda _: "same", bind=False)
    def again(x: int) -> int:
        return x + 1

    def call(task: Any) -> Callable[[int], Any]:
        return lambda x: task.apply(args=(x,)).get()

    calls = {
        "celery.plain": call(plain),
        "celery.seed": call(seed_style),
        "celery.resilient": call(no_store),
        "celery.store.first": call(first),
        "celery.store.again": call(again),
    }
    labels = {
        "celery.plain": "`celery` (`@app.task`)",
        "celery.seed": "`celery`, seed style (`try/except self.retry`)",
        "celery.resilient": "`resilient_task`, no store",
        "celery.store.first": "`resilient_task` + `RedisTaskStore`, first delivery",
        "celery.store.again": "`resilient_task` + `RedisTaskStore`, redelivery (stored result)",
    }
    cases = [
        Case(
            key,
            "celery",
            labels[key],
            sync_runner(fn),
            sync_probe(fn),
            baseline=None if key == "celery.plain" else "celery.plain",
        )
        for key, fn in calls.items()
    ]
    return cases, calls


def round_trips(calls: dict[str, Callable[[int], Any]], n: int = 50) -> dict[str, float]:
    trips = {}
    for key, fn in calls.items():
        before = Counted.trips
        for _ in range(n):
            fn(1)
        trips[key] = (Counted.trips - before) / n
    return trips


def render(results: dict[str, Result], trips: dict[str, float]) -> str:
    floor = results["celery.plain"].median
    lines = [
        "## Celery tasks (`bench_celery.py`)",
        "",
        (
            f"Celery {version('celery')}, redis-py {version('redis')}, Redis on loopback. "
            "One delivery through `task.apply()` (eager: the worker's tracing path, no broker)."
        ),
        "",
        "| case | µs per delivery | ratio to plain Celery | Redis round trips | spread |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, res in results.items():
        lines.append(
            f"| {res.case.label} | {res.median / 1000:.1f} | {res.median / floor:.2f} | "
            f"{trips[key]:g} | {res.spread:.0%} |"
        )
    lines += [
        "",
        (
            "A first delivery costs two round trips: one script takes the lease with a new "
            "fencing token and records the start, one stores the result under the fence and "
            "records the success. The lease is renewed by one heartbeat thread per process "
            "(no thread per delivery). A redelivery of finished work costs one round trip "
            "and does not run the task. Ratios move with the machine's load; the round "
            "trips do not."
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Measure, print the section, optionally write it into RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the section in RESULTS.md")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--target-ms", type=float, default=60.0)
    args = parser.parse_args()
    logging.getLogger("celery").setLevel(logging.WARNING)
    client = Counted.from_url(db1(REDIS_URL))
    try:
        client.ping()
    except redis.RedisError as exc:
        sys.exit(f"Redis at {db1(REDIS_URL)} is not reachable ({exc}); see ../shared/services.sh")
    try:
        cases, calls = build(client)
        trips = round_trips(calls)
        results = measure(cases, repeats=args.repeats, target_ms=args.target_ms)
        section = render(results, trips)
        print(section)
        if args.write:
            write_section(RESULTS, "celery", section)
    finally:
        keys = list(client.scan_iter(match=f"{PREFIX}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


if __name__ == "__main__":
    main()
