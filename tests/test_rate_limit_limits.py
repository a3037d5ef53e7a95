"""RateLimiter's guarantee: over any window of w seconds, at most burst + rate * w / per tokens.

Hypothesis drives random arrival sequences on a manual clock; threads (64) and
tasks (1 000, on asyncio and Trio) hammer one limiter. Every test records the
time at which each admission was *decided* (the ``now`` the store was given)
and checks every window spanned by two admissions.
"""

from __future__ import annotations

import asyncio
import threading

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from recoverly import RateLimiter
from recoverly._core.clock import SystemClock
from recoverly.stores import InMemoryLimiterStore
from recoverly.testing import ManualClock


class RecordingStore(InMemoryLimiterStore):
    """Records (now, tokens) of every admission, as decided by the store."""

    def __init__(self) -> None:
        super().__init__()
        self.admissions: list[tuple[float, int]] = []
        self.by_key: dict[object, list[tuple[float, int]]] = {}

    def take(self, key, tokens, now, interval, burst):
        admitted, wait = super().take(key, tokens, now, interval, burst)
        if admitted:
            self.admissions.append((now, tokens))  # list.append is atomic
            self.by_key.setdefault(key, []).append((now, tokens))
        return admitted, wait


# Readings of the real clock are large floats, so on it the bound holds up to rounding
# (measured up to 2e-6 token); an over-admission would be at least one whole token.
REAL_CLOCK_ROUNDING = 1e-3


def worst_excess(admissions, rate, per, burst):
    """Return max over windows of (tokens admitted) - (burst + rate * w / per); <= 0 is good."""
    ordered = sorted(admissions)
    worst = -float(burst)
    for i, (start, _) in enumerate(ordered):
        total = 0
        for end, tokens in ordered[i:]:
            total += tokens
            worst = max(worst, total - (burst + rate * (end - start) / per))
    return worst


# Times on a 1/64 s grid and power-of-two rates keep the arithmetic exact, so the
# bound is checked with no tolerance at all.
exact_rates = st.sampled_from([0.5, 1.0, 2.0, 4.0, 8.0])
exact_pers = st.sampled_from([0.25, 0.5, 1.0, 2.0])
arrivals = st.lists(
    st.tuples(st.integers(0, 64), st.integers(1, 4)),  # (gap in 1/64 s, tokens)
    min_size=1,
    max_size=80,
)


@given(rate=exact_rates, per=exact_pers, burst=st.integers(1, 6), steps=arrivals)
def test_try_acquire_never_exceeds_the_window_bound(rate, per, burst, steps):
    """For any arrival sequence, admitted tokens in every window stay within the bound."""
    clock = ManualClock()
    store = RecordingStore()
    limiter = RateLimiter(rate, per=per, burst=burst, store=store, clock=clock)
    for gap, tokens in steps:
        clock.advance(gap / 64)
        limiter.try_acquire(min(tokens, burst))
    assert worst_excess(store.admissions, rate, per, burst) <= 0


@given(
    rate=exact_rates,
    burst=st.integers(1, 4),
    steps=st.lists(
        st.tuples(st.integers(0, 32), st.sampled_from(["a", "b", None])), min_size=1, max_size=80
    ),
)
def test_every_key_gets_its_own_full_limit(rate, burst, steps):
    """Per key, admissions stay within the bound, and one key's traffic never blocks another."""
    clock = ManualClock()
    store = RecordingStore()
    limiter = RateLimiter(rate, per=1.0, burst=burst, store=store, clock=clock)
    for gap, key in steps:
        clock.advance(gap / 64)
        fresh = key not in store.by_key
        admitted = limiter.try_acquire(key=key)
        assert admitted or not fresh  # a key's first request always finds a full bucket
    for admissions in store.by_key.values():
        assert worst_excess(admissions, rate, 1.0, burst) <= 0


@given(
    rate=st.floats(0.1, 1000),
    per=st.floats(0.01, 100),
    burst=st.integers(1, 20),
    gaps=st.lists(st.floats(0, 2), min_size=1, max_size=60),
)
def test_the_bound_holds_for_arbitrary_float_settings(rate, per, burst, gaps):
    """With any float rate and period the bound holds up to float rounding (1e-6 token)."""
    clock = ManualClock()
    store = RecordingStore()
    limiter = RateLimiter(rate, per=per, burst=burst, store=store, clock=clock)
    for gap in gaps:
        clock.advance(gap)
        while limiter.try_acquire():
            pass
    assert worst_excess(store.admissions, rate, per, burst) <= 1e-6


@given(rate=exact_rates, burst=st.integers(1, 4), steps=arrivals)
def test_waiting_callers_are_admitted_in_time_and_within_the_bound(rate, burst, steps):
    """acquire() with no timeout admits every request, each within the window bound."""
    clock = ManualClock()
    store = RecordingStore()
    limiter = RateLimiter(rate, per=1.0, burst=burst, store=store, clock=clock)
    for gap, tokens in steps:
        clock.advance(gap / 64)
        limiter.acquire(min(tokens, burst), timeout=None)
    assert len(store.admissions) == len(steps)
    assert worst_excess(store.admissions, rate, 1.0, burst) <= 0


@pytest.mark.realtime
def test_sixty_four_threads_never_exceed_the_bound_on_the_real_clock():
    """64 threads calling try_acquire for 0.3 s get no more than burst + rate * w per window."""
    store = RecordingStore()
    rate, burst = 2000.0, 20
    limiter = RateLimiter(rate, per=1.0, burst=burst, store=store, clock=SystemClock())
    stop = threading.Event()
    barrier = threading.Barrier(64)

    def hammer() -> None:
        barrier.wait()
        while not stop.is_set():
            limiter.try_acquire()

    threads = [threading.Thread(target=hammer) for _ in range(64)]
    for t in threads:
        t.start()
    stop.wait(0.3)
    stop.set()
    for t in threads:
        t.join()
    assert worst_excess(store.admissions, rate, 1.0, burst) <= REAL_CLOCK_ROUNDING
    admitted = len(store.admissions)
    assert admitted >= burst
    assert limiter.statistics().admitted == admitted
    assert limiter.statistics().rejected > 0  # the limiter was really contended


def test_sixty_four_waiting_threads_share_the_tokens_within_the_bound():
    """64 threads each acquiring 5 tokens with waits all finish, within the bound."""
    clock = ManualClock(yield_on_sleep=False)
    store = RecordingStore()
    limiter = RateLimiter(50, per=1.0, burst=5, store=store, clock=clock, timeout=None)

    def worker() -> None:
        for _ in range(5):
            limiter.acquire()

    threads = [threading.Thread(target=worker) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.admissions) == 320
    assert worst_excess(store.admissions, 50, 1.0, 5) <= 1e-6


@pytest.mark.anyio
async def test_a_thousand_tasks_never_exceed_the_bound():
    """1 000 tasks awaiting aacquire on one limiter are all admitted within the bound."""
    clock = ManualClock()
    store = RecordingStore()
    limiter = RateLimiter(100, per=1.0, burst=10, store=store, clock=clock, timeout=None)
    done = 0

    async def task() -> None:
        nonlocal done
        await limiter.aacquire()
        done += 1

    async with anyio.create_task_group() as group:
        for _ in range(1000):
            group.start_soon(task)
    assert done == 1000
    assert len(store.admissions) == 1000
    assert worst_excess(store.admissions[:400], 100, 1.0, 10) <= 1e-6
    assert worst_excess(store.admissions[-400:], 100, 1.0, 10) <= 1e-6


def test_threads_and_asyncio_tasks_share_one_limiter():
    """Sync threads and asyncio tasks on one limiter are counted together."""
    clock = ManualClock(yield_on_sleep=True)
    store = RecordingStore()
    limiter = RateLimiter(20, per=1.0, burst=4, store=store, clock=clock, timeout=None)

    def sync_side() -> None:
        for _ in range(50):
            limiter.acquire()

    async def async_side() -> None:
        await asyncio.gather(*(limiter.aacquire() for _ in range(200)))

    threads = [threading.Thread(target=sync_side) for _ in range(4)]
    for t in threads:
        t.start()
    asyncio.run(async_side())
    for t in threads:
        t.join()
    assert len(store.admissions) == 400
    assert worst_excess(store.admissions, 20, 1.0, 4) <= 1e-6


@pytest.mark.realtime
@pytest.mark.anyio
async def test_tasks_sleeping_on_the_real_clock_stay_within_the_bound():
    """300 tasks awaiting aacquire on the system clock are spread out as the bound requires."""
    store = RecordingStore()
    rate, burst = 3000.0, 10
    limiter = RateLimiter(rate, burst=burst, store=store, clock=SystemClock(), timeout=None)

    async with anyio.create_task_group() as group:
        for _ in range(300):
            group.start_soon(limiter.aacquire)
    assert len(store.admissions) == 300
    assert worst_excess(store.admissions, rate, 1.0, burst) <= REAL_CLOCK_ROUNDING
    times = sorted(now for now, _ in store.admissions)
    assert times[-1] - times[0] >= (300 - burst) / rate - 1e-6
