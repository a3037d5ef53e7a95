"""Run every benchmark in one process, print the table and the targets, update RESULTS.md.

Usage (from the repository root)::

    .venv/bin/python benchmarks/run.py            # full run, rewrites benchmarks/RESULTS.md
    .venv/bin/python benchmarks/run.py --quick    # short run, prints only
    .venv/bin/python benchmarks/run.py --no-write # full run, prints only

See benchmarks/README.md for the method and how to read the numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import stamina.instrumentation

import bench_bulkhead
import bench_circuit_breaker
import bench_rate_limit
import bench_retry
from _harness import Case, Result, base_cases, measure, overhead
from recoverly import events

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
#: Everything below this line in RESULTS.md is hand-written and kept on rewrite.
KEEP_MARKER = "<!-- hand-written notes below: kept when run.py rewrites this file -->"
LIBRARIES = (
    "recoverly",
    "tenacity",
    "backoff",
    "stamina",
    "pybreaker",
    "circuitbreaker",
    "pyrate-limiter",
    "limits",
)
#: The other rate limiters' cases, by path; a target compares recoverly with the fastest.
RATE_LIMIT_RIVALS = ("pyrate", "pyrate_gcra", "limits_moving", "limits_fixed")


# ---------------------------------------------------------------- targets
@dataclass
class Target:
    """One performance target of issue 2."""

    text: str
    measured: str
    ok: bool | None  # None: could not be measured


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def _fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def _ov(results: dict[str, Result], key: str) -> float:
    return overhead(results, key)


def _med(results: dict[str, Result], key: str) -> float:
    return results[key].median


def evaluate(results: dict[str, Result], checks: dict[str, float]) -> list[Target]:
    """Return every target with its measured value."""
    out: list[Target] = []

    def have(*keys: str) -> bool:
        return all(k in results for k in keys)

    def at_most(text: str, value: float | None, limit: float, unit: str = "x") -> None:
        shown = "n/a" if value is None else (f"{value:.0f} ns" if unit == "ns" else f"{value:.2f}x")
        out.append(Target(text, shown, None if value is None else value <= limit))

    def at_least(text: str, value: float | None, limit: float) -> None:
        out.append(Target(text, _fmt_ratio(value), None if value is None else value >= limit))

    def missing(text: str) -> None:
        out.append(Target(text, "not measured (recoverly breaker unavailable)", None))

    r = results
    at_most(
        "retry success overhead <= 1.5x the floor's",
        _ratio(_ov(r, "retry.ok.recoverly"), _ov(r, "retry.ok.floor")),
        1.5,
    )
    at_least(
        "retry success overhead >= 20x less than tenacity's",
        _ratio(_ov(r, "retry.ok.tenacity"), _ov(r, "retry.ok.recoverly")),
        20,
    )
    at_least(
        "retry one-failure path >= 10x faster than tenacity",
        _ratio(_med(r, "retry.fail.tenacity"), _med(r, "retry.fail.recoverly")),
        10,
    )
    if have("cb.ok.recoverly"):
        at_most(
            "CLOSED breaker overhead <= 2.5x the lock-free floor's",
            _ratio(_ov(r, "cb.ok.recoverly"), _ov(r, "cb.ok.floor")),
            2.5,
        )
        at_least(
            "CLOSED breaker overhead >= 5x less than pybreaker's",
            _ratio(_ov(r, "cb.ok.pybreaker"), _ov(r, "cb.ok.recoverly")),
            5,
        )
        at_most("OPEN rejection <= 1 us", _med(r, "cb.open.recoverly"), 1000, unit="ns")
        at_least(
            "OPEN rejection >= 5x faster than pybreaker's",
            _ratio(_med(r, "cb.open.pybreaker"), _med(r, "cb.open.recoverly")),
            5,
        )
    else:
        for text in (
            "CLOSED breaker overhead <= 2.5x the lock-free floor's",
            "CLOSED breaker overhead >= 5x less than pybreaker's",
            "OPEN rejection <= 1 us",
            "OPEN rejection >= 5x faster than pybreaker's",
        ):
            missing(text)
    at_most(
        "async retry success overhead <= 1.5x the async floor's",
        _ratio(_ov(r, "aretry.ok.recoverly"), _ov(r, "aretry.ok.floor")),
        1.5,
    )
    if have("acb.ok.recoverly"):
        at_most(
            "async CLOSED breaker overhead <= 1.5x the async floor's",
            _ratio(_ov(r, "acb.ok.recoverly"), _ov(r, "acb.ok.floor")),
            1.5,
        )
    else:
        missing("async CLOSED breaker overhead <= 1.5x the async floor's")
    for path, what in (("ok", "with tokens free"), ("reject", "on an empty bucket")):
        rivals = [k for k in (f"rl.{path}.{x}" for x in RATE_LIMIT_RIVALS) if k in r]
        key = f"rl.{path}.recoverly"
        best = min((_ov(r, k) for k in rivals), default=None)
        at_least(
            f"rate limiter decision {what} faster than pyrate-limiter's and limits' fastest",
            None if best is None or key not in r else _ratio(best, _ov(r, key)),
            1.0,
        )
    if have("bh.ok.recoverly", "bh.ok.floor"):
        at_most(
            "bulkhead free-slot overhead <= 1.5x a bare threading.Semaphore's",
            _ratio(_ov(r, "bh.ok.recoverly"), _ov(r, "bh.ok.floor")),
            1.5,
        )
    check_ns = max(_ov(r, "events.check"), 0.0)
    for key, what in (("retry.ok.recoverly", "retry"), ("cb.ok.recoverly", "CLOSED breaker")):
        if key not in r:
            missing(f"event checks on the {what} success path < 5 % of it")
            continue
        n = checks[key]
        share = n * check_ns / _med(r, key)
        out.append(
            Target(
                f"event checks on the {what} success path < 5 % of it",
                f"{share * 100:.1f} % ({n:g} check(s) x {check_ns:.0f} ns / {_med(r, key):.0f} ns)",
                share < 0.05,
            )
        )
    return out


# ---------------------------------------------------------------- formatting
def _versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # noqa: PERF203 - runs six times
            found[name] = "not installed"
    return found


def _rows(results: dict[str, Result]) -> list[tuple[str, list[str]]]:
    """Return (group, [label, ns/call, overhead, spread, vs floor, vs recoverly]) rows."""
    floors: dict[str, str] = {}
    recs: dict[str, str] = {}
    for key, res in results.items():
        if key.endswith(".floor"):
            floors[res.case.group] = key
        if key.endswith(".recoverly"):
            recs[res.case.group] = key
    rows = []
    for key, res in results.items():
        case = res.case
        ov = overhead(results, key) if case.baseline else None
        floor = floors.get(case.group)
        if floor and case.baseline:
            vs_floor = _fmt_ratio(_ratio(ov or 0.0, overhead(results, floor)))
        elif floor:
            vs_floor = _fmt_ratio(_ratio(res.median, results[floor].median))
        else:
            vs_floor = ""
        rec = recs.get(case.group)
        vs_rec = _fmt_ratio(_ratio(res.median, results[rec].median)) if rec else ""
        rows.append(
            (
                case.group,
                [
                    case.label,
                    f"{res.median:,.0f}",
                    "" if ov is None else f"{ov:,.0f}",
                    f"{res.spread * 100:.0f} %",
                    vs_floor,
                    vs_rec,
                ],
            )
        )
    return rows


HEADER = ["case", "ns/call", "overhead ns", "spread", "vs floor", "time vs recoverly"]


def text_table(results: dict[str, Result]) -> str:
    """The results as aligned plain text."""
    rows = _rows(results)
    widths = [max(len(HEADER[i]), *(len(r[1][i]) for r in rows)) for i in range(len(HEADER))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    out, group = [line(HEADER)], None
    for g, cells in rows:
        if g != group:
            out.append(f"-- {g}")
            group = g
        out.append(line(cells))
    return "\n".join(out)


def markdown_table(results: dict[str, Result]) -> str:
    """The results as a Markdown table, one section row per group."""
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" + "---:|" * (len(HEADER) - 1)]
    group = None
    for g, cells in _rows(results):
        if g != group:
            out.append(f"| **{g}** |" + " |" * (len(HEADER) - 1))
            group = g
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _target_lines(targets: list[Target]) -> list[str]:
    return [
        f"{'PASS' if t.ok else 'MISS' if t.ok is False else 'SKIP'}  {t.text}: {t.measured}"
        for t in targets
    ]


def write_results(
    results: dict[str, Result],
    targets: list[Target],
    notes: list[str],
    args: argparse.Namespace,
) -> None:
    """Rewrite RESULTS.md, keeping the hand-written part below :data:`KEEP_MARKER`."""
    kept = ""
    if RESULTS.exists():
        old = RESULTS.read_text(encoding="utf-8")
        if KEEP_MARKER in old:
            kept = old.split(KEEP_MARKER, 1)[1].strip("\n")
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    versions = _versions()
    lines = [
        "# Benchmark results",
        "",
        "Generated by `benchmarks/run.py` (`make bench`); see README.md in this folder for the",
        "method. Times are medians of interleaved repeats in one process; on a shared machine",
        "read the ratios, not the absolute nanoseconds.",
        "",
        f"- date: {now}",
        (
            f"- Python: {platform.python_implementation()} {platform.python_version()}"
            f" ({sys.platform}, {os.cpu_count()} CPUs)"
        ),
        f"- run: {args.repeats} repeats of ~{args.target_ms:g} ms per case"
        + (" (--quick)" if args.quick else ""),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
        "## Targets (issue 2)",
        "",
        *(f"- {line}" for line in _target_lines(targets)),
        "",
        "## Table",
        "",
        "`overhead` = ns/call minus the bare call (sync or async) of the same function;",
        "`vs floor` = overhead / the hand-written floor's overhead in the same section (for",
        "sections without a bare baseline, total time / the floor's); `time vs recoverly` =",
        "ns/call / recoverly's ns/call in the same section; `spread` = (max - min) / median.",
        "",
        markdown_table(results),
        "",
    ]
    if notes:
        lines += ["## Notes from this run", "", *(f"- {n}" for n in notes), ""]
    lines += [KEEP_MARKER, ""]
    if kept:
        lines += [kept, ""]
    RESULTS.write_text("\n".join(lines), encoding="utf-8")


# ---------------------------------------------------------------- main
def quiet_instrumentation() -> None:
    """Turn off logging side effects so every library runs its bare machinery."""
    logging.getLogger().addHandler(logging.NullHandler())  # no lastResort output
    events.unsubscribe(events.log_event)
    stamina.instrumentation.set_on_retry_hooks([])


def collect(notes: list[str]) -> list[Case]:
    """Return every case, noting the ones that had to be skipped."""
    cases = base_cases() + bench_retry.cases()
    why = bench_circuit_breaker.recoverly_breaker_missing()
    if why:
        notes.append(f"recoverly breaker cases skipped: {why}")
    cases += bench_circuit_breaker.cases()
    cases += bench_rate_limit.cases() + bench_bulkhead.cases()
    notes.append("pybreaker has no async case: its async support needs Tornado")
    notes.extend(f"{c.label}: {c.note}" for c in cases if c.note)
    return cases


def bus_checks(cases: list[Case]) -> dict[str, float]:
    """Count BUS.wants checks per call for recoverly's success-path cases (untimed)."""
    checks: dict[str, float] = {}
    for case in cases:
        if case.key in ("retry.ok.recoverly", "cb.ok.recoverly"):
            probe: Callable[[], object] = case.probe
            checks[case.key] = bench_retry.count_bus_checks(probe)
    return checks


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; return the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="3 short repeats; prints only")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per case (7)")
    parser.add_argument(
        "--target-ms", type=float, default=None, help="length of one repeat in ms (60)"
    )
    parser.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="update RESULTS.md (default: yes for a full run, no with --quick)",
    )
    parser.add_argument("--only", default="", help="run only cases whose key contains this")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.target_ms = args.target_ms or (10.0 if args.quick else 60.0)
    write = (not args.quick) if args.write is None else args.write

    quiet_instrumentation()
    notes: list[str] = []
    cases = collect(notes)
    if args.only:
        cases = [c for c in cases if args.only in c.key or c.group == "baseline"]
    checks = bus_checks(cases)
    results = measure(cases, repeats=args.repeats, target_ms=args.target_ms)
    print(text_table(results))
    print()
    for note in notes:
        print(f"note: {note}")
    targets = evaluate(results, checks) if not args.only else []
    print()
    for line in _target_lines(targets):
        print(line)
    if write:
        write_results(results, targets, notes, args)
        print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
