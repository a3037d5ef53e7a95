"""Pipeline benchmarks: what composing strategies costs on the success path.

A :class:`recoverly.Pipeline` composes its parts once per function, so a call
should cost the sum of its parts and nothing more. The cases:

* each part alone around ``f(x) = x + 1``: ``fallback``, ``retry`` (3 attempts,
  no wait), ``CircuitBreaker`` (CLOSED);
* ``Pipeline(fallback, retry, breaker)`` and the same three decorators stacked
  by hand, sync and async;
* ``Pipeline(retry, breaker)`` against tenacity's ``@retry`` stacked on a
  pybreaker ``CircuitBreaker``, the pair a Python user would otherwise pick.

Targets: the pipeline's overhead is at most 1.1x the sum of its parts' overheads
measured alone, and at least 15x less than tenacity + pybreaker stacked.

Run alone (``python benchmarks/bench_pipeline.py``) or through ``run.py``; both
print the targets and, unless ``--no-write``, rewrite the ``pipeline`` section of
RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pybreaker
import tenacity

import recoverly
from _harness import (
    Case,
    Result,
    afn,
    async_probe,
    async_runner,
    base_cases,
    fn,
    measure,
    overhead,
    sync_probe,
    sync_runner,
    write_section,
)

__all__ = ["cases", "main", "section", "targets"]

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
ATTEMPTS = 3
THRESHOLD = 5
GROUP = "pipeline, success path (sync)"
AGROUP = "pipeline, success path (async)"
VS_GROUP = "pipeline vs tenacity + pybreaker, success path (sync)"


def _fallback() -> Any:
    return recoverly.fallback(0)


def _retry() -> Any:
    return recoverly.retry(max_attempts=ATTEMPTS, delay=0)


def _breaker() -> Any:
    return recoverly.CircuitBreaker(failure_threshold=THRESHOLD, recovery_timeout=60)


PARTS: dict[str, Callable[[], Any]] = {
    "fallback": _fallback,
    "retry": _retry,
    "breaker": _breaker,
}


def _stack(makers: list[Callable[[], Any]], f: Callable[..., Any]) -> Any:
    """Stack decorators by hand, innermost last in ``makers`` (as ``@`` lines read)."""
    for make in reversed(makers):
        f = make()(f)
    return f


def cases() -> list[Case]:
    """Every pipeline case (parts alone, pipeline, hand stack, other libraries)."""
    out: list[Case] = []
    makers = list(PARTS.values())
    for async_, group, base in ((False, GROUP, "bare"), (True, AGROUP, "bare.async")):
        prefix = "apipe" if async_ else "pipe"
        target = afn if async_ else fn
        runner: Callable[[Any], Any] = async_runner if async_ else sync_runner
        probe: Callable[[Any], Any] = async_probe if async_ else sync_probe
        wrapped: dict[str, Any] = {name: make()(target) for name, make in PARTS.items()}
        wrapped["recoverly"] = recoverly.Pipeline(*(m() for m in makers))(target)
        wrapped["stacked"] = _stack(makers, target)
        labels = {
            "fallback": "fallback(0) alone",
            "retry": "retry(max_attempts=3) alone",
            "breaker": "CircuitBreaker alone (CLOSED)",
            "recoverly": "Pipeline(fallback, retry, breaker)",
            "stacked": "the same three decorators stacked by hand",
        }
        out.extend(
            Case(
                f"{prefix}.{key}",
                group,
                labels[key],
                runner(w),
                probe(w),
                baseline=base,
                is_async=async_,
            )
            for key, w in wrapped.items()
        )
    pair = recoverly.Pipeline(_retry(), _breaker())(fn)
    theirs = tenacity.retry(stop=tenacity.stop_after_attempt(ATTEMPTS), wait=tenacity.wait_none())(
        pybreaker.CircuitBreaker(fail_max=THRESHOLD, reset_timeout=60)(fn)
    )
    out += [
        Case(
            "pipe2.recoverly",
            VS_GROUP,
            "Pipeline(retry, breaker)",
            sync_runner(pair),
            sync_probe(pair),
            baseline="bare",
        ),
        Case(
            "pipe2.tenacity+pybreaker",
            VS_GROUP,
            "tenacity @retry over pybreaker",
            sync_runner(theirs),
            sync_probe(theirs),
            baseline="bare",
        ),
    ]
    return out


def _sum_parts(results: dict[str, Result], prefix: str) -> float:
    return sum(overhead(results, f"{prefix}.{name}") for name in PARTS)


def targets(results: dict[str, Result]) -> list[tuple[str, str, bool | None]]:
    """Return ``(target, measured, met)`` for each pipeline target found in ``results``."""
    out: list[tuple[str, str, bool | None]] = []
    for prefix, kind in (("pipe", "sync"), ("apipe", "async")):
        if f"{prefix}.recoverly" not in results:
            continue
        parts = _sum_parts(results, prefix)
        mine = overhead(results, f"{prefix}.recoverly")
        ratio = mine / parts if parts > 0 else None
        shown = "n/a" if ratio is None else f"{ratio:.2f}x ({mine:.0f} ns vs {parts:.0f} ns)"
        out.append(
            (
                f"{kind} pipeline overhead <= 1.1x the sum of its parts alone",
                shown,
                None if ratio is None else ratio <= 1.1,
            )
        )
    if "pipe2.recoverly" in results:
        mine = overhead(results, "pipe2.recoverly")
        theirs = overhead(results, "pipe2.tenacity+pybreaker")
        ratio = theirs / mine if mine > 0 else None
        shown = "n/a" if ratio is None else f"{ratio:.1f}x ({theirs:.0f} ns vs {mine:.0f} ns)"
        out.append(
            (
                "Pipeline(retry, breaker) overhead >= 15x less than tenacity + pybreaker",
                shown,
                None if ratio is None else ratio >= 15,
            )
        )
    return out


def target_lines(results: dict[str, Result]) -> list[str]:
    """The targets as ``PASS/MISS/SKIP  text: measured`` lines."""
    return [
        f"{'PASS' if ok else 'MISS' if ok is False else 'SKIP'}  {text}: {measured}"
        for text, measured, ok in targets(results)
    ]


def section(results: dict[str, Result], repeats: int, target_ms: float) -> str:
    """The ``pipeline`` section of RESULTS.md."""
    lines = [
        "## Pipeline (`benchmarks/bench_pipeline.py`)",
        "",
        f"{repeats} interleaved repeats of ~{target_ms:g} ms per case; overhead = ns/call minus",
        "the bare call. Parts: `fallback(0)`, `retry(max_attempts=3, delay=0)`,",
        "`CircuitBreaker(failure_threshold=5)` (CLOSED), all on the success path.",
        "",
        *(f"- {line}" for line in target_lines(results)),
        "",
        "| case | ns/call | overhead ns | spread |",
        "|---|---:|---:|---:|",
    ]
    group = None
    for key, res in results.items():
        if not key.startswith(("pipe", "apipe")):
            continue
        if res.case.group != group:
            group = res.case.group
            lines.append(f"| **{group}** | | | |")
        lines.append(
            f"| {res.case.label} | {res.median:,.0f} | {overhead(results, key):,.0f} | "
            f"{res.spread * 100:.0f} % |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure the pipeline cases, print the targets, write the RESULTS.md section."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="3 short repeats, no write")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--target-ms", type=float, default=None)
    parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=None)
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    target_ms = args.target_ms or (10.0 if args.quick else 60.0)
    write = (not args.quick) if args.write is None else args.write
    recoverly.events.unsubscribe(recoverly.events.log_event)
    results = measure(base_cases() + cases(), repeats=repeats, target_ms=target_ms)
    for line in target_lines(results):
        print(line)
    if write:
        write_section(RESULTS, "pipeline", section(results, repeats, target_ms))
        print(f"wrote the pipeline section of {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
