"""Overload benchmark: what retries do to a backend in an outage, and how fast it recovers.

A closed-loop, discrete-time simulation, in one process and on simulated time
(nothing sleeps for real, and a run is reproducible to the last request):

* **The backend** serves ``capacity`` requests per second from a bounded FIFO
  queue (``queue`` places). A request that finds the queue full is refused at
  once. During the outage its capacity drops to ``outage_capacity`` of normal,
  then comes back. A request whose caller has given up (timed out) is still
  served when its turn comes: that work is wasted, as on a real server.
* **The clients**: ``clients`` callers on ``hosts`` client hosts, each in a
  closed loop: send a request, wait for the answer (at most ``timeout`` per
  attempt), think for a random time (mean ``think``), repeat.
* **The strategies**, each run separately on the same seeds:

  - *no retries*: the backend alone with one attempt per request;
  - *(a) tenacity*: ``@tenacity.retry(stop=stop_after_attempt(3),
    wait=wait_exponential(multiplier=0.05))``;
  - *(b) recoverly retry + budget*: ``retry(max_attempts=3, delay=0.05,
    budget=RetryBudget(ratio=0.1, min_per_second=1))``, one budget per host;
  - *(c) budget + throttle*: ``Pipeline(AdaptiveThrottle(k=2, window=1), <the retry
    of b>)``, one throttle per host, outside the retry (its release window is the
    default ``window / 8``; a second table shows the book's single window).

The real libraries run, driven by a simulated clock: an asyncio event loop in
which every sleep and every backend answer is a future that the simulation
resolves tick by tick (tenacity is given the simulated sleep through its
``sleep=`` argument, recoverly through ``clock=``).

Measured per strategy: **load amplification** during the outage (attempts that
reached the backend / requests the callers made in that time), **goodput**
(requests answered in time, per second), and **time to recover** after the
backend's capacity returns (until goodput over the last 0.5 s is back to
>= 90 % of its pre-outage level). Targets: (b) and (c) keep amplification
<= 1.2x where (a) reaches about 3x; (c) recovers at least as fast as the backend
alone.

Run: ``python benchmarks/bench_overload.py [--quick] [--write]``; ``--write``
updates the ``overload`` section of RESULTS.md and saves
``docs/images/overload.png`` (needs matplotlib).
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import random
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tenacity

from _harness import write_section
from recoverly import AdaptiveThrottle, Pipeline, RetryBudget, ThrottledError, events, retry

__all__ = [
    "STRATEGIES",
    "AttemptTimeoutError",
    "Backend",
    "OverloadedError",
    "Run",
    "Scenario",
    "SimClock",
    "main",
    "plot",
    "run",
    "run_all",
    "run_seeds",
    "run_windows",
    "section",
    "seeds_line",
]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
IMAGE = ROOT / "docs" / "images" / "overload.png"

#: Strategy keys, in the order they are run, tabled and plotted.
STRATEGIES = ("alone", "tenacity", "budget", "throttle")
LABELS = {
    "alone": "no retries (backend alone)",
    "tenacity": "(a) tenacity, 3 attempts",
    "budget": "(b) recoverly retry + budget",
    "throttle": "(c) budget + adaptive throttle",
}


class OverloadedError(Exception):
    """The backend's queue was full: the request was refused at once."""


class AttemptTimeoutError(Exception):
    """The caller stopped waiting for an attempt (the backend may still serve it)."""


@dataclass(frozen=True)
class Scenario:
    """The settings of one simulation (times in simulated seconds)."""

    clients: int = 150
    hosts: int = 5
    think: float = 0.8
    capacity: float = 250.0
    outage_capacity: float = 0.05
    queue: int = 250
    timeout: float = 0.5
    outage_start: float = 10.0
    outage: float = 10.0
    after: float = 15.0
    tick: float = 0.01
    throttle_window: float = 1.0
    release_window: float | None = None
    seed: int = 1

    @property
    def outage_end(self) -> float:
        """When the backend's capacity comes back."""
        return self.outage_start + self.outage

    @property
    def end(self) -> float:
        """When the simulation stops."""
        return self.outage_end + self.after


QUICK = Scenario(after=6.0)

#: Other throttle windows tried for (c), shown in a second table.
WINDOWS = (0.5, 2.0, 5.0)

#: Seeds of the robustness check: (c) against the backend alone on each.
SEEDS = tuple(range(1, 9))


class SimClock:
    """Simulated time for the asyncio tasks of one run.

    ``asleep`` parks the task on a future that :meth:`fire` resolves once the
    simulated time has come; ``blocked`` counts the tasks parked on a simulated
    future (a sleep or a backend answer), so the driver knows when every task
    has run as far as it can within one tick.
    """

    def __init__(self) -> None:
        """Start at time 0 with nothing scheduled."""
        self.now = 0.0
        self.blocked = 0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def monotonic(self) -> float:
        """Return the simulated time."""
        return self.now

    def wall(self) -> float:
        """Return a wall-clock reading that follows the simulated time."""
        return 1_700_000_000.0 + self.now

    def sleep(self, seconds: float) -> None:
        """Refuse: the simulation only has async callers."""
        msg = f"the overload simulation is async; sleep({seconds}) was called"
        raise RuntimeError(msg)

    async def asleep(self, seconds: float) -> None:
        """Suspend the task until ``seconds`` of simulated time have passed."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._timers, (self.now + max(0.0, seconds), self._seq, fut))
        self.blocked += 1
        await fut

    def fire(self) -> None:
        """Wake every sleeper whose time has come."""
        while self._timers and self._timers[0][0] <= self.now + 1e-9:
            _, _, fut = heapq.heappop(self._timers)
            self.blocked -= 1
            if not fut.done():
                fut.set_result(None)


@dataclass
class Series:
    """Per-tick counters of one run."""

    ticks: int
    requests: list[int] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    good: list[int] = field(default_factory=list)
    wasted: list[int] = field(default_factory=list)
    throttled: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Size every counter to the number of ticks."""
        for name in ("requests", "attempts", "good", "wasted", "throttled"):
            setattr(self, name, [0] * (self.ticks + 1))


class Backend:
    """A FIFO queue served at a fixed rate that drops during the outage."""

    def __init__(self, scenario: Scenario, clock: SimClock, series: Series) -> None:
        """Create an empty queue for ``scenario``."""
        self.s = scenario
        self.clock = clock
        self.series = series
        self._queue: deque[asyncio.Future[None]] = deque()
        self._waiting: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._credit = 0.0

    def _tick_index(self) -> int:
        return min(self.series.ticks, int(self.clock.now / self.s.tick + 1e-6))

    async def attempt(self) -> str:
        """Send one attempt; return ``"ok"`` or raise when refused or timed out.

        Raises:
            OverloadedError: The queue was full.
            AttemptTimeoutError: No answer within the scenario's timeout.
        """
        self.series.attempts[self._tick_index()] += 1
        if len(self._queue) >= self.s.queue:
            raise OverloadedError
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(fut)
        self._waiting.append((self.clock.now + self.s.timeout, fut))
        self.clock.blocked += 1
        await fut
        return "ok"

    def serve(self) -> None:
        """Serve this tick's share of the queue, then time out late callers."""
        s, now = self.s, self.clock.now
        down = s.outage_start <= now < s.outage_end
        self._credit += s.capacity * (s.outage_capacity if down else 1.0) * s.tick
        i = self._tick_index()
        while self._credit >= 1.0 and self._queue:
            self._credit -= 1.0
            fut = self._queue.popleft()
            if fut.done():  # its caller timed out: wasted work
                self.series.wasted[i] += 1
            else:
                self.clock.blocked -= 1
                fut.set_result(None)
        if not self._queue:
            self._credit = min(self._credit, 1.0)
        while self._waiting and self._waiting[0][0] <= now + 1e-9:
            _, fut = self._waiting.popleft()
            if not fut.done():
                self.clock.blocked -= 1
                fut.set_exception(AttemptTimeoutError())


REFUSALS = (OverloadedError, AttemptTimeoutError)


def _callers(
    key: str, scenario: Scenario, clock: SimClock, backend: Backend
) -> list[Callable[[], Awaitable[str]]]:
    """One call per host, wrapped the way strategy ``key`` says."""
    calls: list[Callable[[], Awaitable[str]]] = []
    for host in range(scenario.hosts):
        if key == "alone":
            calls.append(backend.attempt)
        elif key == "tenacity":
            calls.append(
                tenacity.retry(
                    stop=tenacity.stop_after_attempt(3),
                    wait=tenacity.wait_exponential(multiplier=0.05),
                    retry=tenacity.retry_if_exception_type(REFUSALS),
                    reraise=True,
                    sleep=clock.asleep,
                )(backend.attempt)
            )
        else:
            budget = RetryBudget(ratio=0.1, min_per_second=1.0, clock=clock)
            policy = retry(
                max_attempts=3, delay=0.05, exceptions=REFUSALS, budget=budget, clock=clock
            )
            if key == "budget":
                calls.append(policy(backend.attempt))
            else:
                throttle = AdaptiveThrottle(
                    k=2.0,
                    window=scenario.throttle_window,
                    release_window=scenario.release_window,
                    exceptions=REFUSALS,
                    clock=clock,
                    random=random.Random(scenario.seed * 7919 + host).random,
                )
                calls.append(Pipeline(throttle, policy)(backend.attempt))
    return calls


@dataclass
class Run:
    """The outcome of one strategy on one scenario."""

    key: str
    scenario: Scenario
    series: Series

    @property
    def label(self) -> str:
        """The strategy's name in tables and plots."""
        if self.key == "throttle":
            s = self.scenario
            if s.release_window is None:
                return f"{LABELS[self.key]} (window {s.throttle_window:g} s)"
            if s.release_window >= s.throttle_window:
                return f"{LABELS[self.key]} (single window {s.throttle_window:g} s, as in the book)"
            return (
                f"{LABELS[self.key]} (window {s.throttle_window:g} s, "
                f"release window {s.release_window:g} s)"
            )
        return LABELS[self.key]

    def _span(self, start: float, end: float) -> slice:
        t = self.scenario.tick
        return slice(int(start / t + 1e-6), int(end / t + 1e-6))

    def _rate(self, counts: list[int], start: float, end: float) -> float:
        return sum(counts[self._span(start, end)]) / (end - start)

    @property
    def amplification(self) -> float:
        """Backend attempts / client requests during the outage."""
        s = self.scenario
        span = self._span(s.outage_start, s.outage_end)
        return sum(self.series.attempts[span]) / max(1, sum(self.series.requests[span]))

    @property
    def goodput_before(self) -> float:
        """Requests answered in time per second, before the outage (first 2 s left out)."""
        return self._rate(self.series.good, 2.0, self.scenario.outage_start)

    @property
    def goodput_outage(self) -> float:
        """Requests answered in time per second during the outage."""
        s = self.scenario
        return self._rate(self.series.good, s.outage_start, s.outage_end)

    @property
    def load_outage(self) -> float:
        """Attempts per second reaching the backend during the outage."""
        s = self.scenario
        return self._rate(self.series.attempts, s.outage_start, s.outage_end)

    @property
    def wasted_after(self) -> int:
        """Requests the backend served for callers that had given up, after the outage."""
        s = self.scenario
        return sum(self.series.wasted[self._span(s.outage_end, s.end)])

    def recovery(self, level: float, window: float = 0.5) -> float | None:
        """Seconds after the outage until goodput over ``window`` reaches ``level`` per second."""
        s = self.scenario
        width = round(window / s.tick)
        first = round(s.outage_end / s.tick)
        good = self.series.good
        total = sum(good[first - width : first])
        for i in range(first, len(good) - 1):
            total += good[i] - good[i - width]
            if total / window >= level:
                return (i + 1) * s.tick - s.outage_end
        return None

    @property
    def recovery_time(self) -> float | None:
        """Seconds until goodput is back to 90 % of this run's pre-outage goodput."""
        return self.recovery(0.9 * self.goodput_before)


async def _simulate(key: str, scenario: Scenario) -> Series:
    s = scenario
    ticks = round(s.end / s.tick)
    series = Series(ticks)
    clock = SimClock()
    backend = Backend(s, clock, series)
    calls = _callers(key, s, clock, backend)

    def index() -> int:
        return min(ticks, int(clock.now / s.tick + 1e-6))

    async def client(n: int) -> None:
        rng = random.Random(s.seed * 100_003 + n)
        call = calls[n % s.hosts]
        await clock.asleep(rng.uniform(0.0, s.think))
        while True:
            series.requests[index()] += 1
            try:
                await call()
            except ThrottledError:
                series.throttled[index()] += 1
            except REFUSALS:
                pass
            else:
                series.good[index()] += 1
            await clock.asleep(rng.expovariate(1.0 / s.think))

    tasks = [asyncio.ensure_future(client(n)) for n in range(s.clients)]
    try:
        for tick in range(ticks + 1):
            clock.now = tick * s.tick
            backend.serve()
            clock.fire()
            spins = 0
            while clock.blocked < s.clients:  # let every woken task run to its next wait
                await asyncio.sleep(0)
                spins += 1
                if spins > 10_000:  # pragma: no cover - a task waits on something else
                    msg = f"simulation stalled at t={clock.now:.2f}s ({key})"
                    raise RuntimeError(msg)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return series


def run(key: str, scenario: Scenario) -> Run:
    """Simulate strategy ``key`` (one of :data:`STRATEGIES`) on ``scenario``."""
    if key not in STRATEGIES:
        msg = f"strategy must be one of {', '.join(STRATEGIES)}, got {key!r}"
        raise ValueError(msg)
    return Run(key, scenario, asyncio.run(_simulate(key, scenario)))


def run_all(scenario: Scenario) -> dict[str, Run]:
    """Simulate every strategy on ``scenario``."""
    return {key: run(key, scenario) for key in STRATEGIES}


def run_windows(scenario: Scenario, windows: Sequence[float] = WINDOWS) -> list[Run]:
    """Simulate (c) with each of ``windows``, then with the book's single window."""
    runs = [run("throttle", replace(scenario, throttle_window=w)) for w in windows]
    single = replace(scenario, release_window=scenario.throttle_window)
    return [*runs, run("throttle", single)]


def run_seeds(scenario: Scenario, seeds: Sequence[int] = SEEDS) -> list[tuple[int, Run, Run]]:
    """Simulate the backend alone and (c) on each of ``seeds``: ``(seed, alone, c)``."""
    return [
        (
            seed,
            run("alone", replace(scenario, seed=seed)),
            run("throttle", replace(scenario, seed=seed)),
        )
        for seed in seeds
    ]


def seeds_line(results: Sequence[tuple[int, Run, Run]]) -> str:
    """One sentence: how (c)'s recovery compares with the backend alone over several seeds."""
    faster = sum(
        1
        for _, alone, c in results
        if c.recovery_time is not None
        and (alone.recovery_time is None or c.recovery_time <= alone.recovery_time)
    )
    times = "; ".join(
        f"{seed}: {_fmt_seconds(c.recovery_time)} vs {_fmt_seconds(alone.recovery_time)}"
        for seed, alone, c in results
    )
    amp = max(c.amplification for _, _, c in results)
    return (
        f"Over seeds {results[0][0]}-{results[-1][0]}, (c) recovered at least as fast as the "
        f"backend alone in {faster} of {len(results)} runs (seed: (c) vs alone, back to 90 %: "
        f"{times}); its largest amplification was {amp:.2f}x."
    )


def _fmt_seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def targets(runs: dict[str, Run]) -> list[tuple[str, str, bool]]:
    """(text, measured, met) for each target."""
    a, b, c = runs["tenacity"].amplification, runs["budget"].amplification, runs["throttle"]
    alone, rec_c = runs["alone"].recovery_time, c.recovery_time
    return [
        (
            "(b) and (c) keep load amplification <= 1.2x during the outage",
            f"(b) {b:.2f}x, (c) {c.amplification:.2f}x",
            b <= 1.2 and c.amplification <= 1.2,
        ),
        ("(a) tenacity reaches about 3x", f"{a:.2f}x", a >= 2.5),
        (
            "(c) recovers at least as fast as the backend alone",
            f"(c) {_fmt_seconds(rec_c)}, alone {_fmt_seconds(alone)}",
            rec_c is not None and (alone is None or rec_c <= alone),
        ),
    ]


def table(runs: dict[str, Run]) -> list[str]:
    """The results as Markdown table lines."""
    header = (
        "| strategy | amplification in outage | backend load in outage /s "
        "| goodput before /s | goodput in outage /s | back to 50 % | back to 90 % "
        "| wasted after outage |"
    )
    return [
        header,
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r.label} | {r.amplification:.2f}x | {r.load_outage:.0f} | "
            f"{r.goodput_before:.0f} | {r.goodput_outage:.1f} | "
            f"{_fmt_seconds(r.recovery(0.5 * r.goodput_before))} | "
            f"{_fmt_seconds(r.recovery_time)} | {r.wasted_after} |"
            for r in runs.values()
        ),
    ]


def section(
    runs: dict[str, Run], others: Sequence[Run] = (), seeds: Sequence[tuple[int, Run, Run]] = ()
) -> str:
    """The ``overload`` section of RESULTS.md (``others``: (c) with other windows)."""
    s = next(iter(runs.values())).scenario
    setup = (
        f"Closed-loop simulation on simulated time: {s.clients} callers on {s.hosts} hosts "
        f"(think time {s.think:g} s on average, attempt timeout {s.timeout:g} s); a backend "
        f"serving {s.capacity:g} requests/s from a {s.queue}-place queue drops to "
        f"{s.outage_capacity:.0%} of that from t={s.outage_start:g} s to t={s.outage_end:g} s. "
        f"Throttle window {s.throttle_window:g} s, release window "
        f"{s.throttle_window / 8 if s.release_window is None else s.release_window:g} s, k=2; "
        "budget ratio 0.1, 1 retry/s floor, "
        "per host. *Back to 50 % / 90 %*: seconds after the capacity returns until goodput "
        "over the last 0.5 s is back to that share of its pre-outage level (the target uses "
        "90 %). *Wasted*: requests served after the outage for callers that had given up. "
        "Plot: `docs/images/overload.png`."
    )
    lines = [
        "## Overload: retries, budgets and throttling (`benchmarks/bench_overload.py`)",
        "",
        setup,
        "",
        *(
            f"- {'PASS' if ok else 'MISS'}  {text}: {measured}"
            for text, measured, ok in targets(runs)
        ),
        "",
        *table(runs),
    ]
    if seeds:
        lines += ["", seeds_line(seeds)]
    if others:
        lines += [
            "",
            (
                "(c) with other throttle windows (release window: window / 8), and with the "
                "book's single window (the rule over the whole window only, "
                "`release_window=window`):"
            ),
            "",
            *table({r.label: r for r in others}),
        ]
    return "\n".join(lines)


def _binned(counts: Sequence[int], tick: float, width: float) -> tuple[list[float], list[float]]:
    step = max(1, round(width / tick))
    times, rates = [], []
    for start in range(0, len(counts) - step + 1, step):
        times.append((start + step / 2) * tick)
        rates.append(sum(counts[start : start + step]) / (step * tick))
    return times, rates


def plot(runs: dict[str, Run], path: Path = IMAGE) -> Path:
    """Save backend load and goodput over time, one line per strategy, as a PNG."""
    import matplotlib as mpl  # noqa: PLC0415 - only the plot needs it

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    s = next(iter(runs.values())).scenario
    colors = {"alone": "#555555", "tenacity": "#d62728", "budget": "#1f77b4", "throttle": "#2ca02c"}
    fig, (load_ax, good_ax) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for key, r in runs.items():
        style: dict[str, Any] = {"color": colors[key], "linewidth": 1.8, "label": r.label}
        if key == "alone":
            style.update(linestyle="--", linewidth=1.4)
        load_ax.plot(*_binned(r.series.attempts, s.tick, 0.5), **style)
        good_ax.plot(*_binned(r.series.good, s.tick, 0.5), **style)
    for ax in (load_ax, good_ax):
        ax.axvspan(s.outage_start, s.outage_end, color="#f4b6b6", alpha=0.35, label="outage")
        ax.grid(visible=True, alpha=0.3)
    load_ax.axhline(s.capacity, color="black", linewidth=0.8, linestyle=":")
    load_ax.text(0.3, s.capacity * 1.03, "backend capacity", fontsize=9)
    load_ax.set_ylabel("backend load (attempts/s)")
    load_ax.set_title("Backend load and goodput during an outage (simulated, 0.5 s bins)")
    good_ax.set_ylabel("goodput (requests answered/s)")
    good_ax.set_xlabel("time (s)")
    handles, labels = good_ax.get_legend_handles_labels()
    good_ax.legend(handles, labels, loc="lower right", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Run the simulation, print the table, optionally write RESULTS.md and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="stop 6 s after the outage; no sweeps")
    parser.add_argument("--write", action="store_true", help="update RESULTS.md and the plot")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    events.unsubscribe(events.log_event)
    scenario = replace(QUICK if args.quick else Scenario(), seed=args.seed)
    runs = run_all(scenario)
    if args.quick:
        text = section(runs)
    else:
        text = section(runs, run_windows(scenario), run_seeds(scenario))
    print(text)
    if args.write:
        write_section(RESULTS, "overload", text)
        print(f"wrote the overload section of {RESULTS}")
        print(f"wrote {plot(runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
