"""Hedging benchmark: tail latency of a service with rare slow calls, hedged or not.

The simulated service answers in 5 ms, except 2 % of attempts that take 500 ms
(which attempts are slow is drawn from a seeded generator, attempt by attempt,
so a hedge of a slow attempt is usually fast). Clients make ``calls`` calls
through asyncio, ``concurrency`` at a time, loopback only (the service is an
``asyncio.sleep``), once unhedged and once through ``hedge(delay=0.02)``; then
the same with threads (``time.sleep``, sync hedge).

Reported: p50 / p99 / p99.9 latency of each run, the p99 ratio, and the extra
attempts hedging started (as a share of the calls). Target: p99 at least 10x
lower with at most 5 % extra attempts.

Run: ``python benchmarks/bench_hedge.py [--calls N] [--write]``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from _harness import write_section
from recoverly import events, hedge

__all__ = ["Run", "Service", "SyncService", "main", "run", "run_threads", "section"]

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


@dataclass
class Service:
    """A backend whose attempts are fast, except a seeded share that are slow."""

    fast: float = 0.005
    slow: float = 0.5
    slow_share: float = 0.02
    seed: int = 1
    attempts: int = 0

    def __post_init__(self) -> None:
        """Create the seeded generator that decides which attempts are slow."""
        self._rng = random.Random(self.seed)

    async def __call__(self) -> str:
        """Answer after the fast or the slow latency."""
        self.attempts += 1
        slow = self._rng.random() < self.slow_share
        await asyncio.sleep(self.slow if slow else self.fast)
        return "ok"


@dataclass
class SyncService:
    """The thread twin of :class:`Service` (``time.sleep`` instead of ``asyncio.sleep``)."""

    fast: float = 0.005
    slow: float = 0.5
    slow_share: float = 0.02
    seed: int = 1
    attempts: int = 0

    def __post_init__(self) -> None:
        """Create the seeded generator and the lock that guards it."""
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    def __call__(self) -> str:
        """Answer after the fast or the slow latency."""
        with self._lock:
            self.attempts += 1
            slow = self._rng.random() < self.slow_share
        time.sleep(self.slow if slow else self.fast)
        return "ok"


@dataclass
class Run:
    """The latencies of one run (seconds, one per call) and the attempts it made."""

    label: str
    latencies: list[float]
    attempts: int

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of the latencies (nearest rank)."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def extra(self) -> float:
        """Attempts beyond one per call, as a share of the calls."""
        return self.attempts / len(self.latencies) - 1


async def _drive(call: Callable[[], Awaitable[str]], calls: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    left = iter(range(calls))

    async def client() -> None:
        for _ in left:
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies


def _drive_threads(call: Callable[[], str], calls: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    left = iter(range(calls))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if next(left, None) is None:
                    return
            started = time.perf_counter()
            call()
            took = time.perf_counter() - started
            with lock:
                latencies.append(took)

    clients = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    return latencies


def run_threads(
    *,
    calls: int = 5000,
    concurrency: int = 50,
    delay: float = 0.02,
    fast: float = 0.005,
    slow: float = 0.5,
    slow_share: float = 0.02,
) -> tuple[Run, Run]:
    """The thread twin of :func:`run`: sync clients, sync service, sync hedge."""
    plain = SyncService(fast, slow, slow_share)
    bare = Run("unhedged (threads)", _drive_threads(plain, calls, concurrency), 0)
    bare.attempts = plain.attempts
    service = SyncService(fast, slow, slow_share)
    call = hedge(delay=delay, max_hedged=1)(service)
    hedged = Run(f"hedge(delay={delay:g}) (threads)", _drive_threads(call, calls, concurrency), 0)
    hedged.attempts = service.attempts
    return bare, hedged


def run(
    *,
    calls: int = 5000,
    concurrency: int = 50,
    delay: float = 0.02,
    fast: float = 0.005,
    slow: float = 0.5,
    slow_share: float = 0.02,
) -> tuple[Run, Run]:
    """Run the unhedged and the hedged clients; return both runs."""
    plain = Service(fast, slow, slow_share)
    bare = Run("unhedged", asyncio.run(_drive(plain, calls, concurrency)), 0)
    bare.attempts = plain.attempts
    service = Service(fast, slow, slow_share)
    hedged_call = hedge(delay=delay, max_hedged=1)(service)
    hedged = Run(f"hedge(delay={delay:g})", asyncio.run(_drive(hedged_call, calls, concurrency)), 0)
    hedged.attempts = service.attempts
    return bare, hedged


def section(*pairs: tuple[Run, Run], calls: int, concurrency: int) -> str:
    """The ``hedge`` section of RESULTS.md: one target line and two table rows per pair."""
    lines = [
        "## Hedging (`benchmarks/bench_hedge.py`)",
        "",
        f"{calls} calls, {concurrency} concurrent clients (asyncio tasks, then threads);",
        "attempts take 5 ms, 2 % take 500 ms (seeded); hedged at 20 ms, one extra attempt at most.",
        "",
    ]
    for bare, hedged in pairs:
        ratio = bare.quantile(0.99) / hedged.quantile(0.99)
        ok = ratio >= 10 and hedged.extra <= 0.05
        lines.append(
            f"- {'PASS' if ok else 'MISS'}  {hedged.label}: p99 >= 10x lower with <= 5 % extra "
            f"attempts: p99 {ratio:.1f}x lower, {hedged.extra * 100:.2f} % extra attempts"
        )
    lines += [
        "",
        "| run | p50 ms | p99 ms | p99.9 ms | mean ms | attempts per call |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in (run_ for pair in pairs for run_ in pair):
        per_call = r.attempts / len(r.latencies)
        lines.append(
            f"| {r.label} | {r.quantile(0.5) * 1e3:.1f} | {r.quantile(0.99) * 1e3:.1f} | "
            f"{r.quantile(0.999) * 1e3:.1f} | {statistics.fmean(r.latencies) * 1e3:.1f} | "
            f"{per_call:.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the section, optionally write it into RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--write", action="store_true", help="update RESULTS.md")
    args = parser.parse_args(argv)
    events.unsubscribe(events.log_event)
    tasks = run(calls=args.calls, concurrency=args.concurrency)
    threads = run_threads(calls=args.calls, concurrency=args.concurrency)
    text = section(tasks, threads, calls=args.calls, concurrency=args.concurrency)
    print(text)
    if args.write:
        write_section(RESULTS, "hedge", text)
        print(f"wrote the hedge section of {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
