"""hedge: a second attempt after a delay, first success wins, losers cancelled or abandoned."""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import itertools
import os
import threading
import time
import warnings
from collections.abc import Callable

import pytest

from recoverly import Pipeline, RetryBudget, TimeoutExceeded, hedge, retry, timeout
from recoverly import events as ev
from recoverly._core.clock import SystemClock
from recoverly.testing import ManualClock

hedge_module = importlib.import_module("recoverly.hedge")


def _empty_budget(clock: ManualClock) -> RetryBudget:
    return RetryBudget(ratio=0, min_per_second=0, clock=clock)


# ---------------------------------------------------------------- async, on the manual clock
def test_async_slow_first_attempt_is_hedged_and_cancelled(clock: ManualClock) -> None:
    """The first attempt hangs; after the delay a hedge answers and the first is cancelled."""
    cancelled: list[int] = []
    counter = itertools.count()

    async def lookup(key: str) -> str:
        n = next(counter)
        if n == 0:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(n)
                raise
        return f"{key}@{n}"

    policy = hedge(delay=0.02, clock=clock)
    assert asyncio.run(policy(lookup)("k")) == "k@1"
    assert cancelled == [0]
    assert clock.sleeps == [0.02]
    s = policy.statistics()
    assert (s.calls, s.hedges, s.hedge_wins, s.cancelled, s.abandoned) == (1, 1, 1, 1, 0)


def test_async_fast_answer_starts_no_hedge(clock: ManualClock) -> None:
    """An attempt answering before the delay is the only one."""
    calls: list[int] = []

    async def lookup() -> str:
        calls.append(1)
        return "fast"

    policy = hedge(delay=0.05, clock=clock)
    assert asyncio.run(policy(lookup)()) == "fast"
    assert calls == [1]
    s = policy.statistics()
    assert (s.hedges, s.hedge_wins, s.cancelled) == (0, 0, 0)


def test_async_delay_zero_races_every_attempt(clock: ManualClock) -> None:
    """delay=0 starts 1 + max_hedged attempts at once; the first to answer wins."""
    started: list[int] = []
    counter = itertools.count()

    async def lookup() -> int:
        n = next(counter)
        started.append(n)
        if n != 2:
            await asyncio.Event().wait()
        return n

    policy = hedge(delay=0, max_hedged=2, clock=clock)
    assert asyncio.run(policy(lookup)()) == 2
    assert started == [0, 1, 2]
    s = policy.statistics()
    assert (s.hedges, s.hedge_wins, s.cancelled) == (2, 1, 2)


def test_async_no_hedge_when_the_budget_is_empty(clock: ManualClock) -> None:
    """An empty retry budget stops the hedge: the call waits for its first attempt."""
    budget = _empty_budget(clock)
    calls: list[int] = []

    async def lookup() -> str:
        calls.append(1)
        for _ in range(10):
            await asyncio.sleep(0)
        return "first"

    policy = hedge(delay=0, budget=budget, clock=clock)
    assert asyncio.run(policy(lookup)()) == "first"
    assert calls == [1]
    assert policy.statistics().denied == 1
    assert policy.statistics().hedges == 0
    assert budget.statistics().calls == 1
    assert budget.statistics().rejected == 1


def test_async_budget_with_room_pays_for_each_hedge(clock: ManualClock) -> None:
    """A budget with room grants the hedge and records it as a retry."""
    budget = RetryBudget(ratio=0, min_per_second=1, window=1, clock=clock)

    async def lookup() -> str:
        await asyncio.Event().wait()
        return "never"

    async def race() -> str:
        counter = itertools.count()

        async def second_wins() -> str:
            if next(counter) == 0:
                return await lookup()
            return "hedged"

        return await hedge(delay=0, budget=budget, clock=clock)(second_wins)()

    assert asyncio.run(race()) == "hedged"
    assert budget.statistics().retries == 1


def test_async_every_attempt_failing_raises_the_last_error(clock: ManualClock) -> None:
    """When all started attempts fail, the call raises the error of the last one."""
    counter = itertools.count()

    async def lookup() -> None:
        n = next(counter)
        await asyncio.sleep(0)
        if n == 0:
            for _ in range(10):  # the first attempt fails last
                await asyncio.sleep(0)
        raise ValueError(n)

    policy = hedge(delay=0, clock=clock)
    with pytest.raises(ValueError, match=r"^0$"):
        asyncio.run(policy(lookup)())
    assert policy.statistics().hedges == 1


def test_async_failure_before_the_delay_is_not_hedged(clock: ManualClock) -> None:
    """A quick failure is raised as is: hedging is for slowness, retry is for errors."""
    calls: list[int] = []

    async def lookup() -> None:
        calls.append(1)
        raise KeyError("gone")

    policy = hedge(delay=1, clock=clock)
    with pytest.raises(KeyError):
        asyncio.run(policy.acall(lookup))
    assert calls == [1]
    assert policy.statistics().hedges == 0


def test_async_caller_cancellation_cancels_every_attempt(clock: ManualClock) -> None:
    """Cancelling the hedged call cancels the attempts it started."""
    cancelled: list[int] = []
    counter = itertools.count()

    async def lookup() -> None:
        n = next(counter)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(n)
            raise

    policy = hedge(delay=0, clock=clock)

    async def main() -> None:
        task = asyncio.ensure_future(policy(lookup)())
        for _ in range(5):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert sorted(cancelled) == [0, 1]
    assert policy.statistics().cancelled == 2


def test_async_hedge_under_trio_says_it_needs_asyncio() -> None:
    """Under Trio the hedge refuses with a clear error instead of misbehaving."""
    trio = pytest.importorskip("trio")

    async def lookup() -> int:
        return 1

    with pytest.raises(RuntimeError, match="asyncio only"):
        trio.run(hedge(delay=0)(lookup))


# ---------------------------------------------------------------- sync, threads (real time)
@pytest.mark.realtime
def test_sync_slow_first_attempt_is_hedged_and_abandoned() -> None:
    """The first thread hangs; the hedge answers, the first is abandoned and counted."""
    release = threading.Event()
    counter = itertools.count()
    finished: list[int] = []

    def lookup() -> int:
        n = next(counter)
        if n == 0:
            release.wait(5)
        finished.append(n)
        return n

    policy = hedge(delay=0.01)
    try:
        assert policy(lookup)() == 1
        s = policy.statistics()
        assert (s.calls, s.hedges, s.hedge_wins, s.abandoned, s.cancelled) == (1, 1, 1, 1, 0)
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while finished != [1, 0] and time.monotonic() < deadline:
        time.sleep(0.005)
    assert finished == [1, 0]  # the abandoned attempt ran to its end


@pytest.mark.realtime
def test_sync_fast_answer_starts_no_hedge() -> None:
    """A call answering before the delay runs once."""
    calls: list[int] = []
    policy = hedge(delay=1.0)
    assert policy.call(lambda: calls.append(1) or "fast") == "fast"
    assert calls == [1]
    assert policy.statistics().hedges == 0


@pytest.mark.realtime
def test_sync_delay_zero_races_every_attempt() -> None:
    """delay=0 starts all attempts at once; the one that answers first wins."""
    release = threading.Event()
    counter = itertools.count()
    lock = threading.Lock()

    def lookup() -> int:
        with lock:
            n = next(counter)
        if n != 2:
            release.wait(5)
        return n

    policy = hedge(delay=0, max_hedged=2)
    try:
        assert policy(lookup)() == 2
    finally:
        release.set()
    s = policy.statistics()
    assert (s.hedges, s.hedge_wins, s.abandoned) == (2, 1, 2)


@pytest.mark.realtime
def test_sync_no_hedge_when_the_budget_is_empty(clock: ManualClock) -> None:
    """An empty budget: the slow first attempt is awaited alone."""
    calls: list[int] = []

    def lookup() -> str:
        calls.append(1)
        time.sleep(0.03)
        return "first"

    policy = hedge(delay=0.005, budget=_empty_budget(clock))
    assert policy(lookup)() == "first"
    assert calls == [1]
    assert (policy.statistics().hedges, policy.statistics().denied) == (0, 1)


@pytest.mark.realtime
def test_sync_every_attempt_failing_raises_and_context_reaches_threads() -> None:
    """Each thread sees the caller's context variables; all failing raises the last error."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("tenant")
    var.set("acme")
    seen: list[str] = []
    lock = threading.Lock()

    def lookup() -> None:
        with lock:
            seen.append(var.get())
        raise ConnectionError("down")

    with pytest.raises(ConnectionError, match="down"):
        hedge(delay=0)(lookup)()
    assert seen == ["acme", "acme"]


# ---------------------------------------------------------------- API
def test_in_a_pipeline_each_retry_attempt_is_hedged(clock: ManualClock) -> None:
    """retry > hedge: each attempt is a hedged call; describe shows both."""
    counter = itertools.count()

    async def lookup() -> int:
        n = next(counter)
        if n == 0:
            raise ConnectionError
        return n

    h = hedge(delay=0.5, clock=clock)
    pipeline = Pipeline(retry(max_attempts=2, delay=1, clock=clock), h)
    assert asyncio.run(pipeline(lookup)()) == 1
    assert h.statistics().calls == 2
    assert pipeline.describe()[1] == "hedge delay=0.5 max_hedged=1"
    assert repr(h).startswith("<hedge delay=0.5 max_hedged=1 calls=2")


def test_bad_settings_are_all_listed(clock: ManualClock) -> None:
    """delay, max_hedged and budget problems come in one error."""
    with pytest.raises(TypeError) as info:
        hedge(delay=-1, max_hedged=0, budget="b")  # type: ignore[arg-type]
    text = str(info.value)
    for piece in ("delay must be", "max_hedged must be an integer >= 1", "budget must be"):
        assert piece in text


def test_generators_are_refused() -> None:
    """A generator function cannot be hedged."""

    def gen() -> Callable[[], None]:
        yield  # type: ignore[misc]

    with pytest.raises(TypeError, match="hedge cannot wrap"):
        hedge()(gen)


def test_each_hedge_is_reported_as_an_event(clock: ManualClock, events: list[object]) -> None:
    """A started hedge emits HedgeStarted with its attempt number and the delay."""
    counter = itertools.count()

    async def lookup() -> int:
        if next(counter) == 0:
            await asyncio.Event().wait()
        return 1

    asyncio.run(hedge(delay=0.3, name="cache", clock=clock)(lookup)())
    assert [e for e in events if isinstance(e, ev.HedgeStarted)] == [
        ev.HedgeStarted("cache", 1, 0.3)
    ]


@pytest.mark.realtime
def test_sync_outer_timeout_leaves_the_attempts_abandoned_and_counted() -> None:
    """timeout > hedge: the timeout interrupts the wait; running attempts count as abandoned."""
    release = threading.Event()
    policy = hedge(delay=0)
    guarded = Pipeline(timeout(0.05), policy)(lambda: release.wait(5))
    try:
        with pytest.raises(TimeoutExceeded):
            guarded()
    finally:
        release.set()
    s = policy.statistics()
    assert (s.calls, s.hedges, s.abandoned, s.hedge_wins) == (1, 1, 2, 0)


@pytest.mark.realtime
def test_async_on_the_process_clock_hedges_after_the_real_delay() -> None:
    """On the system clock the timer is a loop timer: the hedge starts after ~delay."""
    counter = itertools.count()
    started_at: list[float] = []

    async def lookup() -> int:
        n = next(counter)
        started_at.append(time.monotonic())
        if n == 0:
            await asyncio.sleep(5)
        return n

    policy = hedge(delay=0.03, clock=SystemClock())
    begun = time.monotonic()
    assert asyncio.run(policy(lookup)()) == 1
    assert started_at[1] - started_at[0] >= 0.025
    assert time.monotonic() - begun < 2
    fast = hedge(delay=0.5, clock=SystemClock())
    assert asyncio.run(fast(lambda_async_one)()) == 1
    assert fast.statistics().hedges == 0
    assert policy.statistics().cancelled == 1


async def lambda_async_one() -> int:
    """Answer at once."""
    return 1


@pytest.mark.realtime
def test_sync_attempts_reuse_idle_worker_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sequential hedged calls reuse idle workers instead of starting a thread each."""
    monkeypatch.setattr(hedge_module, "_WORKERS", hedge_module._Workers())  # a fresh pool
    names: list[int] = []
    guarded = hedge(delay=1)(lambda: names.append(threading.get_ident()))
    for _ in range(50):
        guarded()
    # A worker still handing back its answer is not idle yet, so a few may start.
    assert len(set(names)) < 10


@pytest.mark.realtime
def test_sync_hung_attempt_never_blocks_new_attempts() -> None:
    """While one worker is stuck in a hung attempt, later calls still get a thread."""
    release = threading.Event()
    counter = itertools.count()
    lock = threading.Lock()

    def lookup() -> int:
        with lock:
            n = next(counter)
        if n == 0:
            release.wait(5)
        return n

    guarded = hedge(delay=0.01)(lookup)
    try:
        assert guarded() == 1  # the first attempt hangs; its hedge answers
        assert [guarded() for _ in range(3)] == [2, 3, 4]
    finally:
        release.set()


@pytest.mark.realtime
def test_idle_workers_exit_after_the_idle_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker idle longer than IDLE_SECONDS exits; the next call starts a fresh one."""
    monkeypatch.setattr(hedge_module, "IDLE_SECONDS", 0.02)
    workers = hedge_module._Workers()
    done = threading.Event()
    workers.submit(done.set)
    assert done.wait(2)
    deadline = time.monotonic() + 2
    while workers.idle() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert workers.idle() == 0
    again = threading.Event()
    workers.submit(again.set)
    assert again.wait(2)


def test_async_hedges_are_spaced_by_the_delay(clock: ManualClock) -> None:
    """With max_hedged=2, each extra attempt starts one delay after the previous one."""
    counter = itertools.count()

    async def lookup() -> int:
        n = next(counter)
        if n < 2:
            await asyncio.Event().wait()
        return n

    policy = hedge(delay=0.1, max_hedged=2, clock=clock)
    assert asyncio.run(policy(lookup)()) == 2
    assert clock.sleeps == [0.1, 0.1]
    s = policy.statistics()
    assert (s.hedges, s.hedge_wins, s.cancelled) == (2, 1, 2)


def test_async_no_more_hedges_than_max_hedged(clock: ManualClock) -> None:
    """Once max_hedged extra attempts run, the call waits for one of them."""
    counter = itertools.count()
    gate = asyncio.Event

    async def main() -> int:
        opened = gate()

        async def lookup() -> int:
            n = next(counter)
            if n == 0:
                for _ in range(20):  # answers after the loop has run for a while
                    await asyncio.sleep(0)
                opened.set()
                return n
            await opened.wait()
            await asyncio.Event().wait()
            return n

        return await hedge(delay=0.01, max_hedged=1, clock=clock)(lookup)()

    assert asyncio.run(main()) == 0
    assert next(counter) == 2  # attempts 0 and 1 only
    assert clock.sleeps == [0.01]


@pytest.mark.realtime
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_wait_on_its_parents_workers() -> None:
    """After fork, the child starts its own workers instead of queueing for the parent's."""
    guarded = hedge(delay=30)(lambda: "ok")  # no hedge could rescue a lost attempt
    assert guarded() == "ok"  # leaves an idle worker in this process
    deadline = time.monotonic() + 2
    while not hedge_module._WORKERS.idle() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert hedge_module._WORKERS.idle() >= 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads running
        pid = os.fork()
    if pid == 0:  # the child: answer through the exit code, never return into pytest
        code = 1
        try:
            done = threading.Event()
            threading.Thread(target=lambda: done.set() if guarded() == "ok" else None).start()
            code = 0 if done.wait(3) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status)
    assert os.WEXITSTATUS(status) == 0
