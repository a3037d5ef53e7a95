"""The breaker under threads and tasks: exact counts, exact probes, no serialised calls."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

import anyio
import anyio.lowlevel
import pytest

from recoverly._core.registry import REGISTRY
from recoverly.circuit_breaker import CircuitBreaker
from recoverly.errors import CircuitBreakerError, CircuitState
from recoverly.testing import ManualClock

THREADS = 8
PER_THREAD = 500


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    """Keep names from leaking between tests."""
    REGISTRY.clear()
    yield
    REGISTRY.clear()


def run_threads(target, n: int = THREADS) -> None:
    threads = [threading.Thread(target=target) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)


def test_no_failure_is_lost_or_counted_twice_under_threads(clock):
    """Every counted failure from many threads is tallied exactly once."""
    breaker = CircuitBreaker(failure_threshold=10**9, clock=clock)

    @breaker
    def fail() -> None:
        raise ConnectionError

    def worker() -> None:
        for _ in range(PER_THREAD):
            with contextlib.suppress(ConnectionError):
                fail()

    run_threads(worker)
    stats = breaker.statistics()
    assert stats.failed_calls == THREADS * PER_THREAD
    assert stats.failure_count == THREADS * PER_THREAD


def test_mixed_outcomes_keep_window_totals_exact_under_threads(clock):
    """A count window sees exactly the calls made, and opens only on the rate rule."""
    breaker = CircuitBreaker(
        failure_threshold=None,
        failure_rate_threshold=0.9,
        sliding_window_size=THREADS * PER_THREAD,
        minimum_calls=THREADS * PER_THREAD,
        clock=clock,
    )

    @breaker
    def work(i: int) -> int:
        if i % 2:
            raise ConnectionError
        return i

    def worker() -> None:
        for i in range(PER_THREAD):
            with contextlib.suppress(ConnectionError):
                work(i)

    run_threads(worker)
    stats = breaker.statistics()
    assert stats.window_calls == THREADS * PER_THREAD
    assert stats.failure_rate == 0.5
    assert stats.state is CircuitState.CLOSED


def test_exactly_half_open_max_calls_probes_are_admitted_under_threads(clock):
    """With 3 probe slots and 12 threads racing, exactly 3 probes run; the rest are rejected."""
    breaker = CircuitBreaker(
        failure_threshold=1, recovery_timeout=1, half_open_max_calls=3, clock=clock
    )
    with pytest.raises(ConnectionError):
        breaker.call(_raise)
    clock.advance(1)
    release = threading.Event()
    lock = threading.Lock()
    admitted, rejected = [], []

    @breaker
    def probe() -> None:
        with lock:
            admitted.append(1)
        assert release.wait(5)

    def worker() -> None:
        try:
            probe()
        except CircuitBreakerError:
            with lock:
                rejected.append(1)
            if len(rejected) == 12 - 3:
                release.set()

    run_threads(worker, 12)
    assert (len(admitted), len(rejected)) == (3, 9)
    assert breaker.state is CircuitState.CLOSED


def _raise() -> None:
    raise ConnectionError


def test_protected_calls_run_concurrently_not_under_the_breakers_lock():
    """Two slow calls overlap: each waits for the other to start, which a held lock would forbid."""
    breaker = CircuitBreaker(failure_threshold=1, clock=ManualClock())
    both_inside = threading.Barrier(2, timeout=5)

    @breaker
    def slow() -> str:
        both_inside.wait()  # raises BrokenBarrierError if the other call cannot start
        return "done"

    results: list[str] = []
    run_threads(lambda: results.append(slow()), 2)
    assert results == ["done", "done"]


def test_slow_calls_overlap_on_the_counting_path_too():
    """Calls that must be recorded (a count of failures pending) also overlap."""
    breaker = CircuitBreaker(failure_threshold=5, clock=ManualClock())
    with pytest.raises(ConnectionError):
        breaker.call(_raise)  # count = 1: the next calls take the recorded path
    both_inside = threading.Barrier(2, timeout=5)

    def slow() -> None:
        both_inside.wait()

    run_threads(lambda: breaker.call(slow), 2)
    assert breaker.failure_count == 0


@pytest.mark.anyio
async def test_async_probes_are_limited_and_calls_overlap(clock):
    """In one event loop, exactly half_open_max_calls probe tasks run, concurrently."""
    breaker = CircuitBreaker(
        failure_threshold=1, recovery_timeout=1, half_open_max_calls=2, clock=clock
    )
    with pytest.raises(ConnectionError):
        breaker.call(_raise)
    clock.advance(1)
    inside = 0
    peak = 0
    gate = anyio.Event()
    outcomes: list[str] = []

    @breaker
    async def probe() -> None:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        await gate.wait()
        inside -= 1

    async def one() -> None:
        try:
            await probe()
            outcomes.append("ran")
        except CircuitBreakerError:
            outcomes.append("rejected")

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(one)
        while len(outcomes) < 4 or inside < 2:  # every task has reached the breaker
            await anyio.lowlevel.checkpoint()
        gate.set()
    assert sorted(outcomes) == ["ran", "ran"] + ["rejected"] * 4
    assert peak == 2


@pytest.mark.anyio
async def test_async_failures_from_many_tasks_are_all_counted(clock):
    """Counted failures from concurrent tasks are tallied exactly once each."""
    breaker = CircuitBreaker(failure_threshold=10**9, clock=clock)

    @breaker
    async def fail() -> None:
        await anyio.sleep(0)
        raise ConnectionError

    async def many() -> None:
        for _ in range(50):
            with contextlib.suppress(ConnectionError):
                await fail()

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(many)
    assert breaker.statistics().failed_calls == 1000


def test_cancelled_probe_tasks_release_their_slots(clock):
    """Cancelling every running probe frees all slots for the next probes."""
    breaker = CircuitBreaker(
        failure_threshold=1, recovery_timeout=1, half_open_max_calls=2, clock=clock
    )
    with pytest.raises(ConnectionError):
        breaker.call(_raise)
    clock.advance(1)

    @breaker
    async def hang() -> None:
        await asyncio.Event().wait()

    async def main() -> int:
        tasks = [asyncio.ensure_future(hang()) for _ in range(2)]
        await asyncio.sleep(0)
        busy = breaker.statistics().probes_in_flight
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return busy

    assert asyncio.run(main()) == 2
    assert breaker.statistics().probes_in_flight == 0
    assert breaker.call(lambda: "probe") == "probe"
    assert breaker.state is CircuitState.CLOSED
