"""Bulkhead benchmarks: the cost of taking and giving back a slot, next to a bare semaphore.

* ``ok``: a slot is free; the call takes it, runs ``f(x)`` and gives it back;
* ``full``: every slot is taken and there is no queue; the call is rejected;
* async ``ok``: the same with ``async def`` and an ``asyncio.Semaphore`` floor.

The floors are what a hand-written limit would use: ``threading.Semaphore`` (a
``with`` block around the call; a non-blocking ``acquire`` that raises when it
fails) and ``asyncio.Semaphore``. recoverly's bulkhead does more (one count
shared by threads and tasks, a FIFO queue, statistics), so the floors are the
bound to stay near, not to beat.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from _harness import (
    REJECTED,
    Case,
    Result,
    afn,
    async_probe,
    async_runner,
    fn,
    overhead,
    rejecting_probe,
    rejecting_runner,
    sync_probe,
    sync_runner,
)
from recoverly import Bulkhead, BulkheadFullError

__all__ = ["FloorFull", "cases", "section_lines"]

OK_GROUP = "bulkhead, free slot (sync)"
FULL_GROUP = "bulkhead, every slot taken (sync)"
AOK_GROUP = "bulkhead, free slot (async)"


class FloorFull(Exception):
    """Raised by the semaphore floor when no slot is free."""


def semaphore_floor(f: Callable[..., Any], slots: int = 10) -> Callable[..., Any]:
    """Wrap ``f`` in a ``threading.Semaphore`` ``with`` block."""
    sem = threading.Semaphore(slots)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with sem:
            return f(*args, **kwargs)

    return wrapper


def rejecting_semaphore_floor(f: Callable[..., Any]) -> Callable[..., Any]:
    """A semaphore whose only slot is taken: every call fails a non-blocking acquire."""
    sem = threading.Semaphore(1)
    sem.acquire()

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not sem.acquire(blocking=False):
            raise FloorFull
        try:  # pragma: no cover - never reached: the slot stays taken
            return f(*args, **kwargs)
        finally:
            sem.release()

    return wrapper


def asemaphore_floor(f: Callable[..., Awaitable[Any]], slots: int = 10) -> Callable[..., Any]:
    """Wrap ``f`` in an ``asyncio.Semaphore`` ``async with`` block."""
    sem = asyncio.Semaphore(slots)

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        async with sem:
            return await f(*args, **kwargs)

    return wrapper


def _full_bulkhead() -> Bulkhead:
    bulkhead = Bulkhead(1, max_queue=0)
    bulkhead.__enter__()  # the only slot stays taken
    return bulkhead


def cases() -> list[Case]:
    """Every bulkhead case (the baselines come from ``_harness.base_cases``)."""
    floor, ours = semaphore_floor(fn), Bulkhead(10)(fn)
    full_floor, full_ours = rejecting_semaphore_floor(fn), _full_bulkhead()(fn)
    afloor, aours = asemaphore_floor(afn), Bulkhead(10)(afn)
    return [
        Case(
            "bh.ok.floor",
            OK_GROUP,
            "threading.Semaphore floor",
            sync_runner(floor),
            sync_probe(floor),
            baseline="bare",
        ),
        Case(
            "bh.ok.recoverly",
            OK_GROUP,
            "recoverly @Bulkhead(10)",
            sync_runner(ours),
            sync_probe(ours),
            baseline="bare",
        ),
        Case(
            "bh.full.floor",
            FULL_GROUP,
            "Semaphore.acquire(blocking=False) floor",
            rejecting_runner(full_floor, FloorFull),
            rejecting_probe(full_floor, FloorFull),
            REJECTED,
            baseline="loop",
        ),
        Case(
            "bh.full.recoverly",
            FULL_GROUP,
            "recoverly BulkheadFullError",
            rejecting_runner(full_ours, BulkheadFullError),
            rejecting_probe(full_ours, BulkheadFullError),
            REJECTED,
            baseline="loop",
        ),
        Case(
            "abh.ok.floor",
            AOK_GROUP,
            "asyncio.Semaphore floor",
            async_runner(afloor),
            async_probe(afloor),
            baseline="bare.async",
            is_async=True,
        ),
        Case(
            "abh.ok.recoverly",
            AOK_GROUP,
            "recoverly @Bulkhead(10)",
            async_runner(aours),
            async_probe(aours),
            baseline="bare.async",
            is_async=True,
        ),
    ]


def section_lines(results: dict[str, Result]) -> list[str]:
    """Markdown lines comparing the bulkhead's overhead with its semaphore floors."""
    lines = [
        "Bulkhead: overhead per call (ns/call minus the bare call, or minus the empty loop for",
        "rejections) next to a bare semaphore.",
        "",
        "| path | semaphore floor ns | recoverly ns | recoverly / floor |",
        "|---|---:|---:|---:|",
    ]
    for path, label in (
        ("bh.ok", "free slot, sync"),
        ("bh.full", "every slot taken, sync"),
        ("abh.ok", "free slot, async"),
    ):
        floor = overhead(results, f"{path}.floor")
        ours = overhead(results, f"{path}.recoverly")
        ratio = f"{ours / floor:.2f}x" if floor > 0 else "n/a"
        lines.append(f"| {label} | {floor:,.0f} | {ours:,.0f} | {ratio} |")
    return lines
