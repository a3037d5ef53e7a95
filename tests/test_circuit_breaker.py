"""CircuitBreaker: states, forms, filters, hooks, events, rate rules and configuration."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import logging
import pickle
import warnings
from collections.abc import Iterator

import pytest

from recoverly import events, registry
from recoverly._core.registry import REGISTRY
from recoverly.circuit_breaker import CircuitBreaker, CircuitBreakerStatistics
from recoverly.errors import CircuitBreakerError, CircuitState, RejectedError
from recoverly.retry import retry

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    """Each test starts and ends with an empty registry."""
    REGISTRY.clear()
    yield
    REGISTRY.clear()


class Down(Exception):
    """The dependency is down."""


def failing(breaker: CircuitBreaker, times: int, exc: BaseException | None = None) -> None:
    """Make `times` calls through `breaker` that raise `exc` (Down by default)."""

    @breaker
    def fail() -> None:
        raise exc if exc is not None else Down("down")

    for _ in range(times):
        with pytest.raises(type(exc) if exc is not None else Down):
            fail()


def ok(breaker: CircuitBreaker) -> str:
    return breaker.call(lambda: "ok")


# ---------------------------------------------------------------- seeds
def test_seed_breaker_opens_after_threshold_and_fails_fast():
    """The seeds' test: three failures open the breaker; the next call fails fast."""
    circuit = CircuitBreaker(failure_threshold=3)
    calls = []

    @circuit
    def failing_operation():
        calls.append(1)
        raise ValueError("Always fails")

    for _ in range(3):
        with pytest.raises(ValueError):
            failing_operation()
    assert circuit.state == CircuitState.OPEN
    with pytest.raises(Exception, match="Circuit breaker is OPEN"):
        failing_operation()
    assert len(calls) == 3


def test_seed_spellings_construct_breakers():
    """Positional and keyword spellings from the seeds are accepted."""
    a = CircuitBreaker(failure_threshold=5, recovery_timeout=60, expected_exception=ConnectionError)
    b = CircuitBreaker(5, 60, (ConnectionError, TimeoutError))
    assert a.config.failure_threshold == b.config.failure_threshold == 5
    assert a.config.recovery_timeout == 60.0
    assert a.state.name.lower() == "closed"


def test_seed_breaker_over_retry_inside_a_function_body(clock):
    """`@breaker` over `@retry` applied per call counts one failure per exhausted retry."""
    circuit = CircuitBreaker(failure_threshold=2, recovery_timeout=30, clock=clock)
    attempts = []

    def predict() -> str:
        @circuit
        @retry(max_attempts=2, delay=0.5, clock=clock)
        def _predict() -> str:
            attempts.append(1)
            raise ConnectionError("down")

        return _predict()

    for _ in range(2):
        with pytest.raises(ConnectionError):
            predict()
    assert len(attempts) == 4
    assert circuit.state.name.lower() == "open"
    circuit.reset()
    assert circuit.state == CircuitState.CLOSED


# ---------------------------------------------------------------- state machine
def test_a_success_resets_the_consecutive_failure_count(clock):
    """Failures must be consecutive: a success in between starts the count again."""
    breaker = CircuitBreaker(failure_threshold=3, clock=clock)
    failing(breaker, 2)
    assert breaker.failure_count == 2
    assert ok(breaker) == "ok"
    assert breaker.failure_count == 0
    failing(breaker, 2)
    assert breaker.state is CLOSED


def test_rejection_error_carries_name_state_and_retry_after(clock):
    """The error names the breaker and says when the next probe goes through."""
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=60, name="payments", clock=clock)
    failing(breaker, 1)
    clock.advance(47.7)
    with pytest.raises(CircuitBreakerError) as info:
        ok(breaker)
    err = info.value
    assert str(err) == "Circuit breaker is OPEN for 'payments'; next probe in 12.3 s"
    assert (err.name, err.state) == ("payments", OPEN)
    assert err.retry_after == pytest.approx(12.3)
    assert isinstance(err, RejectedError)


def test_rejection_error_matches_one_built_normally(clock):
    """The cheaply built error has the same type, args and attributes, and pickles."""
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=10, name="db", clock=clock)
    failing(breaker, 1)
    with pytest.raises(CircuitBreakerError) as info:
        ok(breaker)
    err = info.value
    normal = CircuitBreakerError(err.args[0], name="db", state=OPEN, retry_after=10.0)
    assert type(err) is type(normal)
    assert err.args == normal.args
    assert vars(err) == vars(normal)
    copy = pickle.loads(pickle.dumps(err))  # noqa: S301 - our own bytes, just made
    assert (str(copy), copy.name, copy.state, copy.retry_after) == (str(err), "db", OPEN, 10.0)


def test_reading_state_half_opens_after_the_recovery_timeout(clock):
    """OPEN turns HALF_OPEN when read once recovery_timeout has passed (timedelta accepted)."""
    breaker = CircuitBreaker(
        failure_threshold=1, recovery_timeout=dt.timedelta(seconds=30), clock=clock
    )
    failing(breaker, 1)
    clock.advance(29.9)
    assert breaker.state is OPEN
    clock.advance(0.1)
    assert breaker.state is HALF_OPEN


def test_probe_success_closes_the_breaker(clock):
    """A successful probe closes the breaker and clears the count."""
    breaker = CircuitBreaker(failure_threshold=2, recovery_timeout=5, clock=clock)
    failing(breaker, 2)
    clock.advance(5)
    assert ok(breaker) == "ok"
    assert breaker.state is CLOSED
    assert breaker.failure_count == 0


def test_probe_failure_reopens_and_restarts_the_timeout(clock):
    """A failed probe re-opens the breaker for a full recovery_timeout from now."""
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=5, clock=clock)
    failing(breaker, 1)
    clock.advance(5)
    failing(breaker, 1)
    assert breaker.state is OPEN
    clock.advance(4.9)
    assert breaker.state is OPEN
    clock.advance(0.1)
    assert breaker.state is HALF_OPEN


def test_half_open_admits_only_max_calls_probes_at_a_time(clock):
    """With half_open_max_calls=2, a third concurrent probe is rejected."""
    breaker = CircuitBreaker(
        failure_threshold=1, recovery_timeout=1, half_open_max_calls=2, clock=clock
    )
    failing(breaker, 1)
    clock.advance(1)
    with breaker, breaker:
        with pytest.raises(CircuitBreakerError, match="HALF_OPEN") as info:
            ok(breaker)
        assert info.value.state is HALF_OPEN
        assert info.value.retry_after is None
    assert breaker.state is CLOSED


def test_exceptions_outside_expected_exception_propagate_without_counting(clock):
    """A non-matching exception neither counts nor resets the count."""
    breaker = CircuitBreaker(failure_threshold=2, expected_exception=Down, clock=clock)
    failing(breaker, 1)
    failing(breaker, 3, KeyError("not a health signal"))
    assert breaker.failure_count == 1
    failing(breaker, 1)
    assert breaker.state is OPEN


def test_expected_exception_accepts_a_tuple_and_a_predicate(clock):
    """Tuples match any listed type; predicates decide per exception."""
    by_tuple = CircuitBreaker(failure_threshold=1, expected_exception=(KeyError, Down), clock=clock)
    failing(by_tuple, 1, KeyError("k"))
    assert by_tuple.state is OPEN
    by_pred = CircuitBreaker(
        failure_threshold=1, expected_exception=lambda e: "fatal" in str(e), clock=clock
    )
    failing(by_pred, 1, Down("mild"))
    assert by_pred.state is CLOSED
    failing(by_pred, 1, Down("fatal"))
    assert by_pred.state is OPEN


def test_interrupts_never_count_as_failures(clock):
    """KeyboardInterrupt and SystemExit pass through without counting."""
    breaker = CircuitBreaker(failure_threshold=1, expected_exception=BaseException, clock=clock)
    failing(breaker, 1, KeyboardInterrupt())
    failing(breaker, 1, SystemExit(1))
    assert breaker.state is CLOSED
    assert breaker.statistics().failed_calls == 0


def test_a_cancelled_probe_gives_its_slot_back(clock):
    """A probe cancelled by asyncio releases its slot for the next probe."""
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=1, clock=clock)
    failing(breaker, 1)
    clock.advance(1)

    @breaker
    async def hang() -> None:
        await asyncio.sleep(10)

    async def main() -> str:
        task = asyncio.ensure_future(hang())
        await asyncio.sleep(0)
        assert breaker.statistics().probes_in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return ok(breaker)

    assert asyncio.run(main()) == "ok"
    assert breaker.state is CLOSED


def test_a_stale_failure_does_not_reopen_a_recovered_breaker(clock):
    """A slow call admitted before the breaker opened cannot re-open it later."""
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=1, clock=clock)
    with pytest.raises(Down), breaker:
        failing(breaker, 1)  # opens while the outer call is still running
        clock.advance(1)
        assert ok(breaker) == "ok"  # probe closes
        raise Down("the slow call fails late")
    assert breaker.state is CLOSED


# ---------------------------------------------------------------- forms
def test_decorator_keeps_name_signature_and_kind():
    """The wrapper has the function's metadata; async stays a coroutine function."""
    breaker = CircuitBreaker()

    def fetch_plain(x: int, *, y: str = "a") -> str:
        """Fetch."""
        return f"{x}{y}"

    fetch = breaker(fetch_plain)

    @breaker
    async def afetch(x: int) -> int:
        return x

    assert fetch.__name__ == "fetch_plain"
    assert fetch.__doc__ == "Fetch."
    assert inspect.signature(fetch) == inspect.signature(fetch_plain)
    assert fetch.__wrapped__ is fetch_plain  # type: ignore[attr-defined]
    assert inspect.iscoroutinefunction(afetch)
    assert not inspect.iscoroutinefunction(fetch)
    assert fetch(1, y="b") == "1b"
    assert asyncio.run(afetch(3)) == 3


def test_decorating_a_generator_function_is_refused():
    """Generators are rejected at decoration time with TypeError."""
    breaker = CircuitBreaker()

    def gen():
        yield 1

    with pytest.raises(TypeError, match="generator"):
        breaker(gen)


def test_call_and_acall_run_the_function_through_the_breaker(clock):
    """call() and acall() pass arguments and count failures like the decorator."""
    breaker = CircuitBreaker(failure_threshold=2, clock=clock)
    assert breaker.call(lambda a, b=0: a + b, 1, b=2) == 3

    async def boom(msg: str) -> None:
        raise Down(msg)

    with pytest.raises(Down, match="x"):
        asyncio.run(breaker.acall(boom, "x"))
    assert breaker.failure_count == 1
    with pytest.raises(Down):
        breaker.call(failing_sync, "y")
    assert breaker.state is OPEN
    with pytest.raises(CircuitBreakerError):
        asyncio.run(breaker.acall(boom, "z"))


def failing_sync(msg: str) -> None:
    raise Down(msg)


@pytest.mark.anyio
async def test_async_with_counts_failures_and_rejects_when_open(clock):
    """`async with breaker:` records outcomes and rejects while OPEN (asyncio and Trio)."""
    breaker = CircuitBreaker(failure_threshold=2, recovery_timeout=10, clock=clock)
    for _ in range(2):
        with pytest.raises(Down):
            async with breaker:
                raise Down
    assert breaker.state is OPEN
    with pytest.raises(CircuitBreakerError):
        async with breaker:
            pytest.fail("must not run")
    clock.advance(10)
    async with breaker as entered:
        assert entered is breaker
    assert breaker.state is CLOSED


@pytest.mark.anyio
async def test_async_decorator_counts_failures_on_both_backends(clock):
    """The async wrapper opens the breaker and rejects on asyncio and Trio."""
    breaker = CircuitBreaker(failure_threshold=1, clock=clock)

    @breaker
    async def fail() -> None:
        raise Down

    with pytest.raises(Down):
        await fail()
    with pytest.raises(CircuitBreakerError):
        await fail()


def test_with_block_records_success_and_failure(clock):
    """`with breaker:` counts an exception leaving the block and clears on success."""
    breaker = CircuitBreaker(failure_threshold=2, clock=clock)
    with pytest.raises(Down), breaker:
        raise Down
    assert breaker.failure_count == 1
    with breaker:
        pass
    assert breaker.failure_count == 0


def test_exit_without_enter_is_an_error():
    """__exit__ with no matching __enter__ raises RuntimeError."""
    breaker = CircuitBreaker()
    with pytest.raises(RuntimeError, match="without a matching __enter__"):
        breaker.__exit__(None, None, None)


# ---------------------------------------------------------------- hooks, events, logs
def test_hooks_receive_the_breaker_on_each_transition(clock):
    """on_open, on_half_open and on_close are called with the breaker, in order."""
    seen = []
    breaker = CircuitBreaker(
        failure_threshold=1,
        recovery_timeout=1,
        on_open=lambda b: seen.append(("open", b)),
        on_half_open=lambda b: seen.append(("half_open", b)),
        on_close=lambda b: seen.append(("close", b)),
        clock=clock,
    )
    failing(breaker, 1)
    clock.advance(1)
    ok(breaker)
    assert seen == [("open", breaker), ("half_open", breaker), ("close", breaker)]


def test_a_failing_hook_is_logged_and_never_breaks_the_call(clock, caplog):
    """An exception in on_open is logged; the caller still sees its own error."""

    def bad_hook(breaker: CircuitBreaker) -> None:
        raise RuntimeError("hook bug")

    breaker = CircuitBreaker(failure_threshold=1, on_open=bad_hook, clock=clock)
    with caplog.at_level(logging.ERROR, logger="recoverly"):
        failing(breaker, 1)
    assert breaker.state is OPEN
    assert any("hook" in r.getMessage() and r.exc_info for r in caplog.records)


def test_transitions_emit_typed_events(clock, events):
    """Opening, half-opening and closing emit CircuitOpened/HalfOpened/Closed."""
    breaker = CircuitBreaker(failure_threshold=2, recovery_timeout=7, name="api", clock=clock)
    failing(breaker, 2)
    clock.advance(7)
    ok(breaker)
    kinds = [e for e in events if isinstance(e, events_module.CircuitStateChanged)]
    assert [type(e) for e in kinds] == [
        events_module.CircuitOpened,
        events_module.CircuitHalfOpened,
        events_module.CircuitClosed,
    ]
    opened = kinds[0]
    assert (opened.name, opened.failures, opened.retry_after) == ("api", 2, 7.0)
    assert (opened.previous, opened.state) == (CLOSED, OPEN)


events_module = events


def test_manual_state_changes_emit_state_changed_events(clock, events):
    """force_open and disable emit CircuitStateChanged; reset emits CircuitClosed."""
    breaker = CircuitBreaker(name="manual", clock=clock)
    breaker.force_open()
    breaker.disable()
    breaker.reset()
    assert [(type(e).__name__, e.state) for e in events] == [
        ("CircuitStateChanged", CircuitState.FORCED_OPEN),
        ("CircuitStateChanged", CircuitState.DISABLED),
        ("CircuitClosed", CLOSED),
    ]


def test_per_call_events_are_emitted_only_when_subscribed(clock):
    """CallSucceeded, CallFailed and CallRejected arrive with durations when subscribed."""
    seen = []
    events.subscribe(seen.append, (events.CallSucceeded, events.CallFailed, events.CallRejected))
    breaker = CircuitBreaker(failure_threshold=1, name="metered", clock=clock)

    @breaker
    def work(fail: bool) -> None:
        clock.advance(0.25)
        if fail:
            raise Down

    work(False)
    with pytest.raises(Down):
        work(True)
    with pytest.raises(CircuitBreakerError):
        work(False)
    assert [type(e).__name__ for e in seen] == ["CallSucceeded", "CallFailed", "CallRejected"]
    assert seen[0].duration == pytest.approx(0.25)
    assert seen[1].counted is True
    assert seen[2].state is OPEN
    events.unsubscribe(seen.append)
    breaker.reset()
    work(False)
    assert len(seen) == 3


def test_log_lines_use_the_seed_wording(clock, caplog):
    """The default subscriber logs OPENED / HALF_OPEN / CLOSED in the seeds' words."""
    breaker = CircuitBreaker(
        failure_threshold=5, recovery_timeout=60, name="external_api", clock=clock
    )
    with caplog.at_level(logging.INFO, logger="recoverly"):
        failing(breaker, 5)
        clock.advance(60)
        ok(breaker)
    text = caplog.text
    assert "Circuit breaker OPENED for external_api after 5 failures" in text
    assert "Circuit breaker HALF_OPEN, attempting recovery" in text
    assert "Circuit breaker CLOSED, service recovered" in text


# ---------------------------------------------------------------- manual control and inspection
def test_force_open_rejects_until_reset(clock):
    """FORCED_OPEN rejects regardless of time; reset() closes."""
    breaker = CircuitBreaker(recovery_timeout=1, name="f", clock=clock)
    breaker.force_open()
    clock.advance(1000)
    with pytest.raises(CircuitBreakerError, match="forced open") as info:
        ok(breaker)
    assert info.value.state is CircuitState.FORCED_OPEN
    assert info.value.retry_after is None
    breaker.reset()
    assert ok(breaker) == "ok"


def test_disable_lets_everything_through_and_counts_nothing(clock):
    """DISABLED passes every call and records no failure."""
    breaker = CircuitBreaker(failure_threshold=1, clock=clock)
    breaker.disable()
    failing(breaker, 3)
    assert breaker.state is CircuitState.DISABLED
    assert breaker.statistics().failed_calls == 0


def test_reset_closes_an_open_breaker_and_fires_on_close(clock):
    """reset() from OPEN closes, clears the count and calls on_close."""
    closed = []
    breaker = CircuitBreaker(failure_threshold=1, on_close=closed.append, clock=clock)
    failing(breaker, 1)
    breaker.reset()
    assert (breaker.state, breaker.failure_count, closed) == (CLOSED, 0, [breaker])


def test_repr_shows_name_state_and_failures(clock):
    """repr reads like <CircuitBreaker 'db' CLOSED failures=0/5 ...>."""
    breaker = CircuitBreaker(name="db", clock=clock)
    assert repr(breaker).startswith("<CircuitBreaker 'db' CLOSED failures=0/5 ")
    failing(breaker, 2)
    assert "failures=2/5" in repr(breaker)
    rated = CircuitBreaker(failure_threshold=None, failure_rate_threshold=0.5, clock=clock)
    assert "window=0 failure_rate=-" in repr(rated)


def test_unnamed_breaker_takes_the_first_decorated_functions_name():
    """Without name=, logs and errors use the first decorated function's name."""
    breaker = CircuitBreaker()

    @breaker
    def call_external_service() -> None: ...

    assert breaker.name is None
    assert "call_external_service" in repr(breaker)


def test_statistics_is_a_frozen_snapshot(clock):
    """statistics() counts failures and rejections and reports time to the probe."""
    breaker = CircuitBreaker(failure_threshold=2, recovery_timeout=10, name="s", clock=clock)
    failing(breaker, 2)
    for _ in range(3):
        with pytest.raises(CircuitBreakerError):
            ok(breaker)
    clock.advance(4)
    s = breaker.statistics()
    assert isinstance(s, CircuitBreakerStatistics)
    assert (s.name, s.state, s.failed_calls, s.rejected_calls) == ("s", OPEN, 2, 3)
    assert (s.failure_count, s.failure_threshold, s.consecutive_trips) == (2, 2, 1)
    assert s.retry_after == pytest.approx(6.0)
    with pytest.raises(AttributeError):
        s.state = CLOSED  # type: ignore[misc]


# ---------------------------------------------------------------- resilience4j parity
def test_failure_rate_opens_once_minimum_calls_are_seen(clock):
    """Rate mode opens when failures reach the rate over at least minimum_calls calls."""
    breaker = CircuitBreaker(
        failure_threshold=None,
        failure_rate_threshold=0.5,
        sliding_window_size=10,
        minimum_calls=4,
        clock=clock,
    )
    failing(breaker, 3)
    assert breaker.state is CLOSED  # only 3 calls so far
    ok(breaker)
    assert breaker.state is OPEN  # 3 of 4 failed
    assert breaker.statistics().failure_rate == 0.75


def test_failure_rate_below_threshold_stays_closed(clock):
    """A failure rate under the threshold never opens the breaker."""
    breaker = CircuitBreaker(
        failure_threshold=None,
        failure_rate_threshold=0.5,
        sliding_window_size=4,
        minimum_calls=4,
        clock=clock,
    )
    for _ in range(5):
        failing(breaker, 1)
        for _ in range(3):
            ok(breaker)
    assert breaker.state is CLOSED
    assert breaker.statistics().failure_rate == 0.25


def test_time_window_forgets_old_failures(clock):
    """With a time window, failures older than the window no longer count."""
    breaker = CircuitBreaker(
        failure_threshold=None,
        failure_rate_threshold=1.0,
        sliding_window="time",
        sliding_window_size=10,
        minimum_calls=3,
        clock=clock,
    )
    failing(breaker, 2)
    clock.advance(30)
    failing(breaker, 2)
    assert breaker.state is CLOSED
    failing(breaker, 1)
    assert breaker.state is OPEN


def test_slow_calls_open_the_breaker_even_when_they_succeed(clock):
    """A share of slow calls at the threshold opens the breaker."""
    breaker = CircuitBreaker(
        failure_threshold=None,
        slow_call_duration=1.0,
        slow_call_rate_threshold=0.5,
        sliding_window_size=4,
        minimum_calls=4,
        clock=clock,
    )

    @breaker
    def work(seconds: float) -> str:
        clock.advance(seconds)
        return "done"

    work(0.1)
    work(2.0)
    work(0.1)
    assert breaker.state is CLOSED
    work(1.5)
    assert breaker.state is OPEN
    assert breaker.statistics().consecutive_trips == 1


def test_recovery_timeout_grows_on_repeated_trips_and_resets_on_recovery(clock):
    """recovery_backoff multiplies the open time per failed probe, capped; recovery resets it."""
    breaker = CircuitBreaker(
        failure_threshold=1,
        recovery_timeout=10,
        recovery_backoff=2.0,
        max_recovery_timeout=25,
        clock=clock,
    )
    failing(breaker, 1)
    waits = []
    for _ in range(3):
        waits.append(breaker.statistics().retry_after)
        clock.advance(waits[-1])
        failing(breaker, 1)  # the probe fails
    assert waits == [10.0, 20.0, 25.0]
    clock.advance(25)
    ok(breaker)
    failing(breaker, 1)
    assert breaker.statistics().retry_after == 10.0


# ---------------------------------------------------------------- configuration
def test_every_bad_setting_is_reported_at_once():
    """Several out-of-range settings are listed together in one ValueError."""
    with pytest.raises(ValueError) as info:
        CircuitBreaker(
            failure_threshold=0,
            recovery_timeout=-1,
            half_open_max_calls=0,
            failure_rate_threshold=1.5,
            recovery_backoff=0.5,
        )
    text = str(info.value)
    for name in (
        "failure_threshold",
        "recovery_timeout",
        "half_open_max_calls",
        "failure_rate_threshold",
        "recovery_backoff",
    ):
        assert name in text


def test_wrong_kinds_raise_type_error():
    """Non-callable hooks, bad filters and unknown window kinds raise TypeError."""
    with pytest.raises(TypeError, match="on_open"):
        CircuitBreaker(on_open=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected_exception"):
        CircuitBreaker(expected_exception="ValueError")
    with pytest.raises(TypeError, match="sliding_window"):
        CircuitBreaker(sliding_window="bucket")
    with pytest.raises(TypeError, match="name"):
        CircuitBreaker(name=5)  # type: ignore[arg-type]


def test_inconsistent_settings_are_rejected():
    """No opening rule, a minimum above the window, or a cap below the timeout is a ValueError."""
    with pytest.raises(ValueError, match="failure_threshold must be an integer >= 1 when"):
        CircuitBreaker(failure_threshold=None)
    with pytest.raises(ValueError, match="minimum_calls must be <= sliding_window_size"):
        CircuitBreaker(failure_rate_threshold=0.5, sliding_window_size=5, minimum_calls=6)
    with pytest.raises(ValueError, match="max_recovery_timeout must be >= recovery_timeout"):
        CircuitBreaker(recovery_timeout=60, max_recovery_timeout=30)


def test_unbounded_backoff_warns_at_the_callers_line():
    """recovery_backoff > 1 without a cap warns, pointing at the constructor call."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        CircuitBreaker(recovery_backoff=2.0)
    assert len(caught) == 1
    assert "grow without limit" in str(caught[0].message)
    assert caught[0].filename == __file__


def test_a_name_held_by_a_live_breaker_warns_and_is_taken_over():
    """A second live breaker with the same name warns; the registry lists the newer one."""
    first = CircuitBreaker(name="dup")
    with pytest.warns(UserWarning, match="another live CircuitBreaker is named 'dup'") as rec:
        second = CircuitBreaker(name="dup")
    assert rec[0].filename == __file__
    assert registry.breakers() == {"dup": second}
    assert first.name == "dup"


def test_a_success_finishing_after_a_concurrent_failure_clears_the_count(clock):
    """A lock-free CLOSED call that sees a failure recorded meanwhile reports its success."""
    breaker = CircuitBreaker(failure_threshold=3, clock=clock)

    @breaker
    def inner() -> None:
        raise Down

    @breaker
    def outer() -> str:
        with pytest.raises(Down):
            inner()
        assert breaker.failure_count == 1
        return "ok"

    @breaker
    async def aouter() -> str:
        with pytest.raises(Down):
            inner()
        return "ok"

    assert outer() == "ok"
    assert breaker.failure_count == 0
    assert asyncio.run(aouter()) == "ok"
    assert breaker.failure_count == 0
