"""Shared timing code for the benchmarks: cases, interleaved repeats, medians.

A :class:`Case` is one way of calling the same trivial function ``f(x) = x + 1``
(bare, under a hand-written floor, or under a library). Every case owns a
``run(n)`` that makes ``n`` calls in a tight loop; async cases own a coroutine
function instead, awaited inside one shared event loop.

:func:`measure` calibrates ``n`` per case so one repeat lasts about
``target_ms``, then runs the repeats round-robin (every case once per round, the
starting case rotating) so that drift on a shared, noisy machine hits all cases
alike. The garbage collector is off while a repeat is timed. The result per case
is the median ns per call over the repeats, plus the spread (max - min) / median.

Timing uses ``time.perf_counter_ns`` directly: the clock rule of the library
(only ``_core/clock.py`` touches ``time``) does not apply to benchmarks.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

__all__ = [
    "REJECTED",
    "Case",
    "Result",
    "afn",
    "async_probe",
    "async_runner",
    "base_cases",
    "fn",
    "measure",
    "overhead",
    "probe_case",
    "rejecting_async_probe",
    "rejecting_async_runner",
    "rejecting_probe",
    "rejecting_runner",
    "sync_probe",
    "sync_runner",
]

#: What a rejection probe returns instead of a value.
REJECTED = "rejected"


@dataclass
class Case:
    """One benchmark case.

    Attributes:
        key: Short unique identifier used by the targets (``"retry.ok.recoverly"``).
        group: Table section the case belongs to.
        label: Human-readable name shown in the table.
        run: ``run(n)`` makes ``n`` calls (sync), or a coroutine function doing so (async).
        probe: Makes one call and returns what it gave (a value, or :data:`REJECTED`);
            for async cases a coroutine function.
        expected: What :attr:`probe` must return.
        baseline: Key of the case whose time is subtracted to get the overhead.
        is_async: Whether :attr:`run` and :attr:`probe` are coroutine functions.
        setup: Called (untimed) before each repeat of this case.
        teardown: Called (untimed) after each repeat of this case.
        note: Shown under the table.
    """

    key: str
    group: str
    label: str
    run: Callable[[int], Any]
    probe: Callable[[], Any]
    expected: object = 2
    baseline: str | None = None
    is_async: bool = False
    setup: Callable[[], None] | None = None
    teardown: Callable[[], None] | None = None
    note: str = ""


@dataclass
class Result:
    """The timings of one case."""

    case: Case
    n: int
    samples: list[float] = field(default_factory=list)  # ns per call, one per repeat

    @property
    def median(self) -> float:
        """Median ns per call over the repeats."""
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """(max - min) / median of the repeats, as a fraction."""
        m = self.median
        return (max(self.samples) - min(self.samples)) / m if m else 0.0


# ---------------------------------------------------------------- runners
# Every loop has the same shape so that the loop's own cost is the same in every
# case and cancels out when the bare call is subtracted.
def sync_runner(fn: Callable[[int], Any]) -> Callable[[int], None]:
    """Return ``run(n)`` calling ``fn(1)`` ``n`` times."""

    def run(n: int) -> None:
        for _ in repeat(None, n):
            fn(1)

    return run


def rejecting_runner(fn: Callable[[int], Any], exc: type[BaseException]) -> Callable[[int], None]:
    """Return ``run(n)`` calling ``fn(1)`` ``n`` times and swallowing ``exc``."""

    def run(n: int) -> None:
        for _ in repeat(None, n):
            try:  # noqa: SIM105 - suppress() would be timed too
                fn(1)
            except exc:  # noqa: PERF203 - the caught rejection is what is measured
                pass

    return run


def async_runner(fn: Callable[[int], Awaitable[Any]]) -> Callable[[int], Awaitable[None]]:
    """Return ``async run(n)`` awaiting ``fn(1)`` ``n`` times."""

    async def run(n: int) -> None:
        for _ in repeat(None, n):
            await fn(1)

    return run


def rejecting_async_runner(
    fn: Callable[[int], Awaitable[Any]], exc: type[BaseException]
) -> Callable[[int], Awaitable[None]]:
    """Return ``async run(n)`` awaiting ``fn(1)`` ``n`` times and swallowing ``exc``."""

    async def run(n: int) -> None:
        for _ in repeat(None, n):
            try:  # noqa: SIM105 - suppress() would be timed too
                await fn(1)
            except exc:  # noqa: PERF203 - the caught rejection is what is measured
                pass

    return run


def sync_probe(fn: Callable[[int], Any]) -> Callable[[], Any]:
    """Return a probe calling ``fn(1)`` once."""
    return lambda: fn(1)


def rejecting_probe(fn: Callable[[int], Any], exc: type[BaseException]) -> Callable[[], Any]:
    """Return a probe that reports :data:`REJECTED` when ``fn(1)`` raises ``exc``."""

    def probe() -> Any:
        try:
            return fn(1)
        except exc:
            return REJECTED

    return probe


def async_probe(fn: Callable[[int], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
    """Return an async probe awaiting ``fn(1)`` once."""

    async def probe() -> Any:
        return await fn(1)

    return probe


def rejecting_async_probe(
    fn: Callable[[int], Awaitable[Any]], exc: type[BaseException]
) -> Callable[[], Awaitable[Any]]:
    """Return an async probe that reports :data:`REJECTED` when ``fn(1)`` raises ``exc``."""

    async def probe() -> Any:
        try:
            return await fn(1)
        except exc:
            return REJECTED

    return probe


# ---------------------------------------------------------------- base cases
def fn(x: int) -> int:
    """The trivial function every case wraps."""
    return x + 1


async def afn(x: int) -> int:
    """The trivial coroutine function every async case wraps."""
    return x + 1


def _empty_loop(n: int) -> None:
    for _ in repeat(None, n):
        pass


def base_cases() -> list[Case]:
    """The empty loop and the bare calls that overheads are measured against."""
    return [
        Case("loop", "baseline", "empty loop (per iteration)", _empty_loop, lambda: None, None),
        Case("bare", "baseline", "bare call f(x)", sync_runner(fn), sync_probe(fn)),
        Case(
            "bare.async",
            "baseline",
            "bare await af(x)",
            async_runner(afn),
            async_probe(afn),
            is_async=True,
        ),
    ]


# ---------------------------------------------------------------- timing
def probe_case(case: Case, loop: asyncio.AbstractEventLoop) -> object:
    """Run one call of ``case`` (with its setup/teardown) and return what it gave."""
    if case.setup:
        case.setup()
    try:
        if case.is_async:
            return loop.run_until_complete(case.probe())
        return case.probe()
    finally:
        if case.teardown:
            case.teardown()


def _time_once(case: Case, n: int, loop: asyncio.AbstractEventLoop) -> int:
    """Return the ns taken by ``n`` calls of ``case``, with gc off."""
    if case.setup:
        case.setup()
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        if case.is_async:
            coro = case.run(n)
            t0 = time.perf_counter_ns()
            loop.run_until_complete(coro)
            t1 = time.perf_counter_ns()
        else:
            run = case.run
            t0 = time.perf_counter_ns()
            run(n)
            t1 = time.perf_counter_ns()
    finally:
        if gc_was_on:
            gc.enable()
        if case.teardown:
            case.teardown()
    return t1 - t0


def _calibrate(case: Case, target_ns: int, loop: asyncio.AbstractEventLoop) -> int:
    """Return the number of calls that takes about ``target_ns``."""
    n = 16
    while True:
        elapsed = _time_once(case, n, loop)
        if elapsed >= target_ns // 8 or n >= 1 << 26:
            break
        n *= 4
    per_call = max(elapsed / n, 1.0)
    return max(16, int(target_ns / per_call))


def measure(
    cases: Iterable[Case],
    *,
    repeats: int = 7,
    target_ms: float = 60.0,
    log: Callable[[str], object] = lambda s: print(s, file=sys.stderr, flush=True),
) -> dict[str, Result]:
    """Time every case; return results by key.

    Each case is first probed (one call must give its expected value), then
    calibrated; then ``repeats`` rounds run every case once each, round-robin.
    """
    cases = list(cases)
    loop = asyncio.new_event_loop()
    try:
        results: dict[str, Result] = {}
        for case in cases:
            got = probe_case(case, loop)
            if got != case.expected:
                msg = f"{case.key}: one call gave {got!r}, expected {case.expected!r}"
                raise AssertionError(msg)
        target_ns = int(target_ms * 1e6)
        log(f"calibrating {len(cases)} cases (~{target_ms:g} ms per repeat)...")
        for case in cases:
            _time_once(case, 64, loop)  # warm-up
            results[case.key] = Result(case, _calibrate(case, target_ns, loop))
        for r in range(repeats):
            log(f"round {r + 1}/{repeats}")
            gc.collect()
            start = r % len(cases)
            for case in cases[start:] + cases[:start]:
                res = results[case.key]
                res.samples.append(_time_once(case, res.n, loop) / res.n)
        return results
    finally:
        loop.close()


def overhead(results: dict[str, Result], key: str) -> float:
    """Median ns per call of ``key`` minus that of its baseline (0 if none)."""
    res = results[key]
    base = res.case.baseline
    return res.median - (results[base].median if base else 0.0)


def write_section(results: Path, name: str, section: str) -> None:
    """Replace the ``<!-- name -->`` ... ``<!-- /name -->`` block of ``results`` (append if absent).

    Everything else in the file is kept, so each benchmark owns one section.
    """
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = results.read_text(encoding="utf-8")
    block = f"{start}\n{section.rstrip(chr(10))}\n{end}"
    if start in text and end in text:
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    results.write_text(text, encoding="utf-8")
