"""timeout(): SIGALRM in the main thread, worker threads elsewhere, asyncio and Trio."""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import inspect
import logging
import math
import re
import signal
import sys
import threading
import time
import traceback
import types

import anyio
import pytest

from recoverly import TimeoutExceeded, retry
from recoverly._core import deadlines
from recoverly.events import TimedOut
from recoverly.testing import ManualClock
from recoverly.timeout import _OPEN, Timeout, TimeoutStatistics, timeout

pytestmark = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="Unix only")

realtime = pytest.mark.realtime


@pytest.fixture(autouse=True)
def _alarm_untouched():
    """Every test leaves SIGALRM's handler (pytest-timeout's) as it found it."""
    handler = signal.getsignal(signal.SIGALRM)
    delay = signal.getitimer(signal.ITIMER_REAL)[0]
    yield
    # After a failed test pytest-timeout resets its handler itself (to SIG_DFL).
    assert signal.getsignal(signal.SIGALRM) in (handler, signal.SIG_DFL)
    if delay == 0:
        assert signal.getitimer(signal.ITIMER_REAL)[0] == 0


@pytest.fixture
def own_alarm():
    """Install a recording SIGALRM handler; restore the previous handler and timer after."""
    fired: list[float] = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(time.monotonic()))
    old_timer = signal.setitimer(signal.ITIMER_REAL, 0)
    yield fired
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)
    if old_timer[0] > 0:
        signal.setitimer(signal.ITIMER_REAL, *old_timer)


def in_thread(fn, *args):
    """Run ``fn(*args)`` in a new thread; return what it returned or raised."""
    out: list[object] = []

    def run():
        try:
            out.append(fn(*args))
        except BaseException as exc:
            out.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(5)
    return out[0]


def sleeper(seconds=5.0):
    time.sleep(seconds)
    return "woke"


# ---------------------------------------------------------------- sync, main thread
@realtime
def test_signal_interrupts_sleep_with_a_timeout_error():
    """In the main thread a 5 s sleep is interrupted after 0.05 s with TimeoutError."""
    started = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        timeout(0.05)(sleeper)()
    assert time.monotonic() - started < 1.0
    err = info.value
    assert isinstance(err, TimeoutExceeded)
    assert err.seconds == 0.05
    assert err.name.endswith("sleeper")
    assert str(err).endswith("sleeper timed out after 0.05s")
    # The traceback shows where the call was when it was interrupted.
    assert "sleeper" in [frame.name for frame in traceback.extract_tb(err.__traceback__)]


@realtime
def test_signal_interrupts_a_busy_loop():
    """A pure-Python busy loop is interrupted too."""
    spins = [0]

    @timeout(seconds=0.05)
    def spin():
        while True:
            spins[0] += 1

    with pytest.raises(TimeoutExceeded):
        spin()
    assert spins[0] > 0


def test_result_passes_through_in_time():
    """A call that finishes in time returns its result and leaves no timer behind."""

    @timeout(seconds=30)
    def add(a: int, b: int = 1) -> int:
        return a + b

    assert add(1, b=2) == 3
    assert inspect.signature(add) == inspect.signature(add.__wrapped__)
    assert add.__name__ == "add"


def test_exceptions_from_the_call_pass_through_unchanged():
    """An exception raised by the call propagates unchanged and counts no timeout."""
    policy = timeout(30)

    @policy
    def broken():
        raise KeyError("k")

    with pytest.raises(KeyError):
        broken()
    assert policy.statistics() == TimeoutStatistics(timed_out=0, abandoned=0)


@realtime
def test_previous_handler_and_timer_are_restored_and_still_fire(own_alarm):
    """After a timeout, the previous SIGALRM handler is back and its timer still fires."""
    handler = signal.getsignal(signal.SIGALRM)
    signal.setitimer(signal.ITIMER_REAL, 0.15)
    with pytest.raises(TimeoutExceeded):
        timeout(0.05)(sleeper)()
    assert signal.getsignal(signal.SIGALRM) is handler
    left = signal.getitimer(signal.ITIMER_REAL)[0]
    assert 0.0 < left <= 0.11  # 0.15 minus the 0.05 spent inside
    assert own_alarm == []
    time.sleep(0.2)
    assert len(own_alarm) == 1


@realtime
def test_outer_timer_due_first_reaches_its_own_handler(own_alarm):
    """A previous timer due before our deadline still calls its own handler in time."""
    signal.setitimer(signal.ITIMER_REAL, 0.03)
    started = time.monotonic()
    assert timeout(1.0)(sleeper)(0.2) == "woke"
    assert len(own_alarm) == 1
    assert own_alarm[0] - started < 0.15  # during the call, not when it ended
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0  # one-shot: not re-armed


@realtime
def test_nested_inner_longer_than_outer_does_not_extend_it():
    """An inner timeout longer than the outer one does not extend the outer."""
    started = time.monotonic()
    with pytest.raises(TimeoutExceeded) as info, timeout(0.05, name="outer"):
        timeout(5.0, name="inner")(sleeper)()
    assert info.value.name == "outer"
    assert time.monotonic() - started < 0.25


@realtime
def test_nested_outer_continues_after_inner_expires():
    """After an inner timeout fires, the outer one keeps only its remaining time."""
    started = time.monotonic()
    seen = []
    with pytest.raises(TimeoutExceeded) as info, timeout(0.15, name="outer"):
        with pytest.raises(TimeoutExceeded, match="inner"), timeout(0.05, name="inner"):
            sleeper()
        seen.append((time.monotonic() - started, signal.getitimer(signal.ITIMER_REAL)[0]))
        sleeper()
    elapsed, left = seen[0]
    assert info.value.name == "outer"
    assert abs(elapsed + left - 0.15) < 0.02  # re-armed for the rest, not restarted
    assert 0.14 < time.monotonic() - started < 1.0


@realtime
def test_except_exception_in_the_call_cannot_swallow_the_interruption():
    """`except Exception` inside the call does not catch the interruption."""
    caught = []

    @timeout(0.05)
    def careless():
        try:
            time.sleep(5)
        except Exception as exc:  # pragma: no cover - must not happen
            caught.append(exc)

    with pytest.raises(TimeoutExceeded):
        careless()
    assert caught == []


@realtime
def test_retry_inside_timeout_is_bounded_by_it():
    """`@timeout` over `@retry`: the interruption is not retried (seed stacking)."""
    attempts = []

    @timeout(seconds=0.05)
    @retry(max_attempts=3, delay=1.0)
    def call_service():
        attempts.append(1)
        time.sleep(5)

    with pytest.raises(TimeoutExceeded):
        call_service()
    assert attempts == [1]


@realtime
def test_swallowed_interruption_is_still_reported():
    """A call that catches even BaseException and returns still times out."""

    @timeout(0.05)
    def stubborn():
        try:
            time.sleep(5)
        except BaseException:
            return "swallowed"
        return "slept"  # pragma: no cover

    with pytest.raises(TimeoutExceeded):
        stubborn()
    swallowed = []
    with pytest.raises(TimeoutExceeded), timeout(0.05):
        try:
            sleeper()
        except BaseException as exc:
            swallowed.append(exc)
    assert len(swallowed) == 1


@realtime
def test_with_block_in_main_thread_is_interrupted():
    """`with timeout(...)` in the main thread interrupts the block."""
    reached = []
    policy = timeout(0.05, name="block")
    with pytest.raises(TimeoutExceeded, match=r"block timed out after 0\.05s"), policy as entered:
        assert entered is policy
        sleeper()
        reached.append(1)  # pragma: no cover
    assert reached == []


def test_with_block_in_time_leaves_no_timer(own_alarm):
    """A block finishing in time disarms its timer and restores the handler."""
    handler = signal.getsignal(signal.SIGALRM)
    with timeout(5):
        pass
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0
    assert signal.getsignal(signal.SIGALRM) is handler


def _fake_frame(code, **local_vars):
    return types.SimpleNamespace(f_code=code, f_locals=local_vars, f_back=None)


def _open_scope(policy):
    policy.__enter__()
    return _OPEN.get()[-1][1]


def test_deadline_landing_in_the_blocks_own_exit_is_reported_not_leaked():
    """A deadline that fires as `__exit__` starts is noted and reported as a timeout."""
    policy = timeout(5, name="edge")
    scope = _open_scope(policy)
    scope._on_alarm(signal.SIGALRM, _fake_frame(Timeout.__exit__.__code__, self=policy))
    assert scope.fired
    with pytest.raises(TimeoutExceeded, match="edge"):
        policy.__exit__(None, None, None)


def test_deadline_in_another_blocks_exit_still_interrupts():
    """In code other than this block's exit, the deadline interrupts as usual."""
    policy = timeout(5, name="mine")
    scope = _open_scope(policy)
    elsewhere = _fake_frame(Timeout.__exit__.__code__, scope=_SignalScopeStub())
    with pytest.raises(BaseException) as info:
        scope._on_alarm(signal.SIGALRM, elsewhere)
    assert not isinstance(info.value, Exception)  # `except Exception` cannot catch it
    with pytest.raises(TimeoutExceeded, match="mine"):
        policy.__exit__(type(info.value), info.value, info.value.__traceback__)


class _SignalScopeStub:
    """Stands for a different scope found in an exiting frame."""


# ---------------------------------------------------------------- sync, elsewhere
@realtime
def test_worker_thread_path_stops_waiting_and_counts_abandoned_call():
    """Outside the main thread the caller stops waiting; the call keeps running."""
    release = threading.Event()
    finished = threading.Event()
    policy = timeout(0.05)

    @policy
    def blocked():
        release.wait(5)
        finished.set()
        return "late"

    started = time.monotonic()
    err = in_thread(blocked)
    assert isinstance(err, TimeoutExceeded)
    assert time.monotonic() - started < 1.0
    assert policy.statistics() == TimeoutStatistics(timed_out=1, abandoned=1)
    assert not finished.is_set()  # abandoned, still running
    release.set()
    assert finished.wait(1)
    for _ in range(100):
        if policy.statistics().abandoned == 0:
            break
        time.sleep(0.001)
    assert policy.statistics() == TimeoutStatistics(timed_out=1, abandoned=0)


def test_worker_thread_path_returns_results_and_errors_and_context():
    """In a worker thread, results, exceptions and context variables pass through."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    policy = timeout(5)

    def read(prefix):
        return f"{prefix}{var.get()}"

    def setup_and_call():
        var.set("caller's")
        return policy.call(read, ">")

    assert in_thread(setup_and_call) == ">caller's"
    err = in_thread(policy.call, _raise_key_error)
    assert isinstance(err, KeyError)


def _raise_key_error():
    raise KeyError("inner")


@realtime
def test_without_sigalrm_the_main_thread_uses_a_worker(monkeypatch):
    """Where SIGALRM cannot be used (Windows), the main thread uses a worker too."""
    # By module object: the dotted path "recoverly.timeout" names the function.
    monkeypatch.setattr(sys.modules["recoverly.timeout"], "can_signal", lambda: False)
    ran_in = []

    def where():
        ran_in.append(threading.current_thread())
        time.sleep(5)

    with pytest.raises(TimeoutExceeded):
        timeout(0.05).call(where)
    assert ran_in[0] is not threading.main_thread()
    assert ran_in[0].daemon


def test_with_block_outside_main_thread_warns_and_raises_after_overrun():
    """Off the main thread a `with` block is measured on the clock, not interrupted."""
    clock = ManualClock()
    policy = timeout(2.0, name="batch", clock=clock)

    def overrun():
        with policy:
            clock.advance(2.5)
        return "not reached"  # pragma: no cover

    with pytest.warns(UserWarning, match="cannot interrupt the block"):
        err = in_thread(overrun)
    assert isinstance(err, TimeoutExceeded)
    assert err.name == "batch"
    assert policy.statistics().timed_out == 1


def test_with_block_outside_main_thread_in_time_or_failing_is_untouched():
    """A measured block within time returns; one that raises keeps its own error."""
    clock = ManualClock()
    policy = timeout(2.0, clock=clock)

    def in_time():
        with policy:
            clock.advance(1.0)
        return "done"

    def failing():
        with policy:
            clock.advance(5.0)
            raise KeyError("own")

    with pytest.warns(UserWarning, match="cannot interrupt the block"):
        assert in_thread(in_time) == "done"
    with pytest.warns(UserWarning, match="cannot interrupt the block"):
        assert isinstance(in_thread(failing), KeyError)
    assert policy.statistics().timed_out == 0


# ---------------------------------------------------------------- async
@realtime
@pytest.mark.anyio
async def test_async_call_is_cancelled_at_the_deadline(anyio_backend):
    """An async call is cancelled after 0.05 s and raises TimeoutExceeded."""

    @timeout(seconds=0.05)
    async def slow(x: int) -> int:
        await anyio.sleep(5)
        return x  # pragma: no cover

    assert inspect.iscoroutinefunction(slow)
    started = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        await slow(1)
    assert isinstance(info.value, TimeoutExceeded)
    assert info.value.name.endswith("slow")
    assert time.monotonic() - started < 1.0


@realtime
@pytest.mark.anyio
async def test_async_timeout_over_retry_bounds_the_whole_call(anyio_backend):
    """The seeds' FastAPI stacking: `@timeout` over `@retry` over `async def`."""
    attempts = []

    @timeout(seconds=0.05)
    @retry(max_attempts=3, delay=1.0, backoff=2.0)
    async def fetch_external_data():
        attempts.append(1)
        await anyio.sleep(5)

    with pytest.raises(TimeoutExceeded):
        await fetch_external_data()
    assert attempts == [1]  # the cancellation is never retried


@pytest.mark.anyio
async def test_async_result_passes_through(anyio_backend):
    """An async call that finishes in time returns its result."""

    async def quick(x):
        await anyio.sleep(0)
        return x * 2

    assert await timeout(5).acall(quick, 21) == 42


@realtime
@pytest.mark.anyio
async def test_async_with_block_times_out(anyio_backend):
    """`async with timeout(...)` turns the backend's cancellation into TimeoutExceeded."""
    policy = timeout(0.05, name="block")
    with pytest.raises(TimeoutExceeded, match="block"):
        async with policy as entered:
            assert entered is policy
            await anyio.sleep(5)
    assert policy.statistics().timed_out == 1


@pytest.mark.anyio
async def test_outer_cancellation_stays_a_cancellation(anyio_backend):
    """Cancelling from outside propagates as cancellation, not TimeoutExceeded."""
    policy = timeout(5)
    with anyio.CancelScope() as scope:
        scope.cancel()
        async with policy:
            await anyio.sleep(5)
    assert scope.cancelled_caught
    assert policy.statistics().timed_out == 0


@realtime
@pytest.mark.anyio
async def test_shorter_outer_deadline_wins_over_inner_timeout(anyio_backend):
    """An outer deadline that fires first is not reported as the inner timeout."""
    inner = timeout(5)
    with anyio.move_on_after(0.05) as scope:
        await inner.acall(anyio.sleep, 5)
    assert scope.cancelled_caught
    assert inner.statistics().timed_out == 0


@realtime
def test_legacy_asyncio_path_times_out_and_respects_outer_cancel(monkeypatch):
    """The Python 3.10 path (call_later + cancel) times out and lets outer cancels through."""
    monkeypatch.setattr(deadlines, "_HAS_ASYNCIO_TIMEOUT", False)
    policy = timeout(0.05)

    async def expire():
        with pytest.raises(TimeoutExceeded):
            await policy.acall(asyncio.sleep, 5)
        return asyncio.current_task().cancelling()

    async def cancelled_from_outside():
        task = asyncio.create_task(policy.acall(asyncio.sleep, 5))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert asyncio.run(expire()) == 0
    asyncio.run(cancelled_from_outside())
    assert policy.statistics().timed_out == 1


def test_async_timeout_without_event_loop_is_a_runtime_error():
    """Driving an async timeout outside asyncio and Trio raises RuntimeError."""
    coro = timeout(1).acall(anyio.sleep, 0)
    with pytest.raises(RuntimeError, match="running asyncio or Trio event loop"):
        coro.send(None)
    coro.close()


# ---------------------------------------------------------------- events and logs
@realtime
def test_timed_out_event_and_warning_log(events, caplog):
    """A timeout emits TimedOut(name, seconds) and logs a WARNING."""
    with caplog.at_level(logging.WARNING, logger="recoverly"), pytest.raises(TimeoutExceeded):
        timeout(0.05, name="model-load")(sleeper)()
    assert [e for e in events if isinstance(e, TimedOut)] == [TimedOut("model-load", 0.05)]
    assert "model-load timed out after 0.05s" in caplog.text


# ---------------------------------------------------------------- config
def test_timedelta_and_bare_decorator_are_accepted():
    """Seconds may be a timedelta; bare `@timeout` means 30 seconds."""
    assert timeout(dt.timedelta(milliseconds=250)).seconds == 0.25

    @timeout
    def f():
        return "ok"

    assert f() == "ok"
    assert Timeout().seconds == 30.0


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, dt.timedelta(0)])
def test_seconds_must_be_finite_and_positive(bad):
    """seconds <= 0, NaN or infinite is a ValueError naming the parameter and value."""
    expected = f"seconds must be a finite number of seconds > 0, got {bad!r}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        timeout(bad)


@pytest.mark.parametrize("bad", ["5", True, None])
def test_seconds_of_the_wrong_type_is_a_type_error(bad):
    """A string, bool or None for seconds is a TypeError naming the parameter."""
    expected = f"seconds must be a number of seconds or a timedelta, got {bad!r}"
    with pytest.raises(TypeError, match=re.escape(expected)):
        timeout(bad)


def test_every_bad_argument_is_reported_together():
    """Bad name and clock are reported in one TypeError with their values."""
    with pytest.raises(TypeError) as info:
        timeout(1, name=7, clock="wall")
    text = str(info.value)
    assert "name must be a string or None, got 7" in text
    assert "clock must be a Clock or None, got 'wall'" in text


def test_generator_functions_are_rejected():
    """Generator functions cannot be wrapped."""

    def gen():
        yield 1

    with pytest.raises(TypeError, match="generator function"):
        timeout(1)(gen)


def test_repr_slots_and_public_module():
    """repr shows name, seconds and counters; the class has slots and a public module."""
    policy = timeout(1.5, name="api")
    assert repr(policy) == "<Timeout 'api' seconds=1.5 timed_out=0 abandoned=0>"
    assert not hasattr(policy, "__dict__")
    assert Timeout.__module__ == TimeoutStatistics.__module__ == timeout.__module__ == "recoverly"


def test_exiting_a_block_never_entered_is_a_runtime_error():
    """Calling __exit__ without __enter__ is a clear RuntimeError."""
    with pytest.raises(RuntimeError, match="without having been entered"):
        timeout(1).__exit__(None, None, None)
