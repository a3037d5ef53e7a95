"""retry(): the decorator, its waits, filters, hooks, deadline and statistics."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import logging
import random
import threading
import warnings

import pytest

from recoverly import Retry, RetryBudget, RetryStrategy, events, retry
from recoverly.testing import FlakyCall, ManualClock


class Transient(Exception):
    """A retryable error for tests."""


class RateLimited(Exception):
    """An error carrying a Retry-After hint."""

    def __init__(self, retry_after: float | dt.timedelta) -> None:
        super().__init__("slow down")
        self.retry_after = retry_after


# ---------------------------------------------------------------- basics
def test_success_on_first_attempt_calls_once(recoverly_clock):
    """A call that succeeds is made once and never sleeps."""
    flaky = FlakyCall(failures=0, result=42)
    assert retry(max_attempts=3)(flaky)() == 42
    assert flaky.calls == 1
    assert recoverly_clock.sleeps == []


def test_seed_example_succeeds_after_failures():
    """The seeds' test: a function failing twice succeeds on the third attempt."""
    call_count = [0]

    @retry(max_attempts=3, delay=0.1)
    def flaky_function():
        call_count[0] += 1
        if call_count[0] < 3:
            raise ConnectionError("Transient failure")
        return "success"

    assert flaky_function() == "success"
    assert call_count[0] == 3


def test_exhaustion_reraises_the_original_exception_unchanged():
    """When attempts run out, the last exception itself is raised, not a wrapper."""
    errors = [Transient(f"failure {i}") for i in range(3)]
    calls = iter(errors)

    @retry(max_attempts=3, delay=0)
    def always_fails():
        raise next(calls)

    with pytest.raises(Transient) as info:
        always_fails()
    assert info.value is errors[-1]
    assert info.value.__context__ is None  # attempts are not chained onto each other


def test_arguments_are_passed_on_every_attempt():
    """Positional and keyword arguments reach each attempt."""
    seen = []

    @retry(max_attempts=2, delay=0)
    def add(a, b=0):
        seen.append((a, b))
        if len(seen) == 1:
            raise Transient
        return a + b

    assert add(2, b=3) == 5
    assert seen == [(2, 3), (2, 3)]


def test_bare_decorator_uses_defaults(recoverly_clock):
    """@retry without parentheses retries 3 times with the default 1 s exponential waits."""
    flaky = FlakyCall(failures=2, result="ok")
    wrapped = retry(flaky)
    assert wrapped() == "ok"
    assert recoverly_clock.sleeps == [1.0, 2.0]


def test_methods_are_decorated_like_functions():
    """Decorating a method binds self as usual."""

    class Client:
        def __init__(self) -> None:
            self.calls = 0

        @retry(max_attempts=2, delay=0)
        def fetch(self, key):
            self.calls += 1
            if self.calls == 1:
                raise Transient
            return key.upper()

    client = Client()
    assert client.fetch("a") == "A"
    assert client.calls == 2


def test_wrapper_keeps_name_doc_and_signature():
    """functools.wraps semantics: name, docstring and signature are the function's."""

    @retry(max_attempts=2)
    def lookup(user_id: int, *, verbose: bool = False) -> str:
        """Look a user up."""
        return f"{user_id}{verbose}"

    assert lookup.__name__ == "lookup"
    assert lookup.__doc__ == "Look a user up."
    assert str(inspect.signature(lookup)) == "(user_id: 'int', *, verbose: 'bool' = False) -> 'str'"


# ---------------------------------------------------------------- waits
@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (RetryStrategy.FIXED, [1.0, 1.0, 1.0, 1.0]),
        (RetryStrategy.LINEAR, [1.0, 2.0, 3.0, 4.0]),
        (RetryStrategy.EXPONENTIAL, [1.0, 2.0, 4.0, 8.0]),
        (RetryStrategy.FIBONACCI, [1.0, 1.0, 2.0, 3.0]),
        ("linear", [1.0, 2.0, 3.0, 4.0]),
    ],
)
def test_strategies_sleep_the_documented_waits(recoverly_clock, strategy, expected):
    """Each strategy sleeps its documented sequence between five attempts."""
    flaky = FlakyCall(failures=4, result="ok")
    assert retry(max_attempts=5, delay=1.0, backoff=2.0, strategy=strategy)(flaky)() == "ok"
    assert recoverly_clock.sleeps == expected


def test_max_delay_caps_every_wait(recoverly_clock):
    """Exponential waits stop growing at max_delay."""
    flaky = FlakyCall(failures=6, result="ok")
    retry(max_attempts=7, delay=1.0, backoff=3.0, max_delay=5.0)(flaky)()
    assert recoverly_clock.sleeps == [1.0, 3.0, 5.0, 5.0, 5.0, 5.0]


def test_jitter_survives_the_cap_and_stays_below_it(recoverly_clock):
    """With jitter, saturated waits still differ from each other and never exceed max_delay."""
    flaky = FlakyCall(failures=9, result="ok")
    retry(max_attempts=10, delay=1.0, backoff=10.0, max_delay=4.0, jitter=True)(flaky)()
    saturated = recoverly_clock.sleeps[2:]
    assert len(set(saturated)) == len(saturated)
    assert all(2.0 <= s <= 4.0 for s in saturated)


def test_jitter_fraction_uses_injected_random(recoverly_clock):
    """jitter=0.25 with random()=1.0 shortens each wait by 25 %."""
    flaky = FlakyCall(failures=2, result="ok")
    retry(max_attempts=3, delay=2.0, jitter=0.25, random=lambda: 1.0)(flaky)()
    assert recoverly_clock.sleeps == [1.5, 3.0]


def test_decorrelated_jitter_stays_between_delay_and_cap(recoverly_clock):
    """Decorrelated jitter waits lie in [delay, max_delay] and vary."""
    flaky = FlakyCall(failures=19, result="ok")
    rng = random.Random(1234)  # seeded: an unlucky draw could repeat the cap too often
    policy = retry(
        max_attempts=20,
        delay=0.5,
        max_delay=10.0,
        strategy=RetryStrategy.DECORRELATED_JITTER,
        random=rng.random,
    )
    policy(flaky)()
    assert all(0.5 <= s <= 10.0 for s in recoverly_clock.sleeps)
    assert len(set(recoverly_clock.sleeps)) > 10


def test_timedelta_is_accepted_for_durations(recoverly_clock):
    """delay and max_delay accept timedelta."""
    flaky = FlakyCall(failures=2, result="ok")
    retry(
        max_attempts=3,
        delay=dt.timedelta(milliseconds=500),
        max_delay=dt.timedelta(seconds=0.75),
    )(flaky)()
    assert recoverly_clock.sleeps == [0.5, 0.75]


def test_explicit_clock_is_used_instead_of_default(recoverly_clock, clock):
    """A policy built with clock= sleeps on that clock only."""
    flaky = FlakyCall(failures=1, result="ok")
    retry(max_attempts=2, delay=3.0, clock=clock)(flaky)()
    assert clock.sleeps == [3.0]
    assert recoverly_clock.sleeps == []


def test_retry_after_hint_lengthens_the_wait(recoverly_clock):
    """An exception's retry_after (seconds or timedelta) is honoured when longer."""
    errors = iter([RateLimited(7.5), RateLimited(dt.timedelta(seconds=0.1))])

    @retry(max_attempts=3, delay=1.0)
    def call():
        err = next(errors, None)
        if err is not None:
            raise err
        return "ok"

    assert call() == "ok"
    assert recoverly_clock.sleeps == [7.5, 2.0]


# ---------------------------------------------------------------- filters
def test_only_listed_exceptions_are_retried():
    """An exception outside `exceptions` propagates at once."""
    flaky = FlakyCall(failures=5, exception=ValueError("bad input"))
    with pytest.raises(ValueError, match="bad input"):
        retry(max_attempts=5, delay=0, exceptions=(ConnectionError, TimeoutError))(flaky)()
    assert flaky.calls == 1


def test_exceptions_accepts_a_single_class_and_a_predicate():
    """exceptions= may be one class or a predicate on the exception."""
    flaky = FlakyCall(failures=1, exception=OSError(11, "again"), result="ok")
    assert retry(max_attempts=2, delay=0, exceptions=OSError)(flaky)() == "ok"

    flaky = FlakyCall(failures=3, exception=OSError(2, "gone"))
    only_eagain = retry(max_attempts=3, delay=0, exceptions=lambda e: getattr(e, "errno", 0) == 11)
    with pytest.raises(OSError, match="gone"):
        only_eagain(flaky)()
    assert flaky.calls == 1


def test_giveup_predicate_stops_retrying():
    """giveup(exc) returning True re-raises without another attempt."""
    flaky = FlakyCall(failures=5, exception=Transient("fatal"))
    with pytest.raises(Transient):
        retry(max_attempts=5, delay=0, giveup=lambda e: "fatal" in str(e))(flaky)()
    assert flaky.calls == 1


def test_keyboard_interrupt_is_never_retried():
    """KeyboardInterrupt propagates even when exceptions=BaseException."""
    flaky = FlakyCall(failures=5, exception=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        retry(max_attempts=5, delay=0, exceptions=BaseException)(flaky)()
    assert flaky.calls == 1


def test_retry_on_result_retries_and_returns_the_last_result(recoverly_clock):
    """A rejected result is retried; when attempts run out the last result comes back."""
    results = iter([None, None, "late"])
    policy = retry(max_attempts=3, delay=1.0, retry_on_result=lambda r: r is None)
    assert policy(lambda: next(results))() == "late"

    nones = FlakyCall(failures=0, result=None)
    assert policy(nones)() is None
    assert nones.calls == 3
    assert recoverly_clock.sleeps == [1.0, 2.0, 1.0, 2.0]


# ---------------------------------------------------------------- hooks and events
def test_on_retry_gets_attempt_exception_and_delay():
    """on_retry(attempt, exception, delay) runs before each wait."""
    calls = []
    err = Transient("boom")
    flaky = FlakyCall(failures=2, exception=err, result="ok")
    retry(max_attempts=3, delay=1.0, on_retry=lambda *a: calls.append(a))(flaky)()
    assert calls == [(1, err, 1.0), (2, err, 2.0)]


def test_two_argument_on_retry_is_accepted():
    """The older on_retry(attempt, exception) form keeps working."""
    calls = []
    flaky = FlakyCall(failures=1, result="ok")
    retry(max_attempts=2, delay=0, on_retry=lambda n, e: calls.append((n, type(e))))(flaky)()
    assert calls == [(1, ConnectionError)]


def test_failing_on_retry_hook_does_not_break_the_call(caplog):
    """An exception in on_retry is logged and the retry goes on."""

    def hook(n, exc, delay):
        raise RuntimeError("hook bug")

    flaky = FlakyCall(failures=1, result="ok")
    assert retry(max_attempts=2, delay=0, on_retry=hook)(flaky)() == "ok"
    assert "on_retry hook" in caplog.text


def test_events_and_log_lines_follow_the_seed_wording(caplog, events):
    """Failures, the recovery and giving up are logged like the seeds show."""
    caplog.set_level(logging.INFO, logger="recoverly")
    flaky = FlakyCall(failures=2, exception=ConnectionError("Connection timeout"), result="ok")
    retry(max_attempts=3, delay=0, name="fetch")(flaky)()
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("Retry attempt 1 failed: ConnectionError - Connection timeout")
    assert messages[1].startswith("Retry attempt 2 failed: ConnectionError - Connection timeout")
    assert messages[2].startswith("Retry successful on attempt 3")
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["RetryScheduled", "RetryScheduled", "RetrySucceeded"]
    assert events[0].name == "fetch"


def test_gave_up_event_names_the_reason(events):
    """Exhaustion emits RetryGaveUp with reason 'attempts' and the last exception."""
    flaky = FlakyCall(failures=9)
    with pytest.raises(ConnectionError):
        retry(max_attempts=2, delay=0)(flaky)()
    gave_up = [e for e in events if isinstance(e, events_module.RetryGaveUp)]
    assert len(gave_up) == 1
    assert gave_up[0].reason == "attempts"
    assert gave_up[0].attempts == 2


events_module = events


# ---------------------------------------------------------------- deadline and budget
def test_deadline_stops_before_a_wait_that_would_pass_it(recoverly_clock):
    """With deadline=5, waits of 1, 2 happen; the next one (4) would end past 5 s."""
    flaky = FlakyCall(failures=10)
    with pytest.raises(ConnectionError):
        retry(max_attempts=10, delay=1.0, deadline=5.0)(flaky)()
    assert recoverly_clock.sleeps == [1.0, 2.0]
    assert flaky.calls == 3


def test_deadline_counts_time_spent_in_the_calls(recoverly_clock):
    """Time spent inside attempts uses up the deadline too."""

    def slow_failure():
        recoverly_clock.advance(3.0)
        raise Transient

    with pytest.raises(Transient):
        retry(max_attempts=None, delay=1.0, strategy="fixed", deadline=10.0)(slow_failure)()
    # attempts run over t=0-3, 4-7 and 8-11; after the third, no time is left for a wait
    assert recoverly_clock.sleeps == [1.0, 1.0]


def test_budget_caps_retries_across_functions(recoverly_clock):
    """A shared budget with no floor allows ratio x calls retries, then refuses."""
    budget = RetryBudget(ratio=0.5, min_per_second=0)
    policy = retry(max_attempts=3, delay=0, budget=budget)
    always = FlakyCall(failures=10**6)
    ok = policy(lambda: "ok")
    for _ in range(8):
        ok()
    for _ in range(6):
        with pytest.raises(ConnectionError):
            policy(always)()
    stats = budget.statistics()
    assert stats.calls == 14
    assert stats.retries == 7  # int(0.5 * 14)
    assert always.calls == 6 + 7
    assert policy.statistics().gave_up == 6


# ---------------------------------------------------------------- validation
def test_bad_configuration_lists_every_problem():
    """All bad arguments are reported in one ValueError naming each value."""
    with pytest.raises(ValueError) as info:
        retry(max_attempts=0, delay=-1, backoff=0.5)
    text = str(info.value)
    assert "max_attempts must be an integer >= 1, got 0" in text
    assert "delay must be a finite number of seconds >= 0, got -1" in text
    assert "backoff must be a finite number >= 1, got 0.5" in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delay": float("nan")}, "delay must be a finite number of seconds >= 0, got nan"),
        ({"max_delay": float("inf")}, "max_delay must be a finite number of seconds >= 0"),
        ({"jitter": 1.5}, "jitter must be a number in [0, 1], got 1.5"),
        ({"deadline": 0}, "deadline must be a finite number of seconds > 0, got 0"),
    ],
)
def test_out_of_range_values_raise_value_error(kwargs, message):
    """Each out-of-range setting raises ValueError with its name and value."""
    with pytest.raises(ValueError) as info:
        retry(**kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": "3"}, "max_attempts must be an integer >= 1, got '3'"),
        ({"max_attempts": True}, "max_attempts must be an integer >= 1, got True"),
        ({"exceptions": "ValueError"}, "exceptions must be an exception class"),
        ({"strategy": "quadratic"}, "strategy must be a RetryStrategy"),
        ({"on_retry": 5}, "on_retry must be callable or None, got 5"),
        ({"budget": 0.2}, "budget must be a RetryBudget or None, got 0.2"),
    ],
)
def test_wrong_kinds_raise_type_error(kwargs, message):
    """A setting of the wrong type raises TypeError naming it."""
    with pytest.raises(TypeError) as info:
        retry(**kwargs)
    assert message in str(info.value)


def test_generator_functions_are_refused():
    """Retrying a generator function is ambiguous and refused at decoration."""

    def gen():
        yield 1

    with pytest.raises(TypeError, match="retry cannot wrap the generator function"):
        retry(max_attempts=2)(gen)


def test_unbounded_retry_warns_at_the_callers_line():
    """max_attempts=None without a deadline warns, pointing at the user's line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        retry(max_attempts=None)
        line = inspect.currentframe().f_lineno - 1  # type: ignore[union-attr]
    assert len(caught) == 1
    assert caught[0].category is UserWarning
    assert caught[0].filename == __file__
    assert caught[0].lineno == line


def test_max_delay_below_delay_warns():
    """A cap shorter than the base delay is legal but surprising: it warns."""
    with pytest.warns(UserWarning, match="max_delay=0.5 is shorter than delay=1"):
        retry(delay=1.0, max_delay=0.5)


# ---------------------------------------------------------------- statistics, repr, call
def test_statistics_count_retries_recoveries_and_give_ups():
    """statistics() counts waits, recovered calls and calls that gave up."""
    policy = retry(max_attempts=2, delay=0)
    policy(FlakyCall(failures=1, result=1))()
    with pytest.raises(ConnectionError):
        policy(FlakyCall(failures=5))()
    stats = policy.statistics()
    assert (stats.retries, stats.recovered, stats.gave_up) == (2, 1, 1)


def test_repr_shows_configuration_and_counters():
    """repr names the policy, its settings and counters."""
    policy = retry(max_attempts=4, delay=0.5, name="db")
    text = repr(policy)
    assert text.startswith("<Retry 'db' max_attempts=4 strategy=EXPONENTIAL delay=0.5")
    assert "retries=0 recovered=0 gave_up=0>" in text


def test_call_runs_a_function_under_the_policy():
    """Retry.call(fn, *args) applies the policy without decorating."""
    flaky = FlakyCall(failures=1, result=lambda x: x * 2)
    assert Retry(max_attempts=2, delay=0).call(flaky, 21) == 42
    assert flaky.calls == 2


# ---------------------------------------------------------------- concurrency
def test_attempt_numbers_do_not_leak_between_threads():
    """Concurrent calls each see their own attempt numbers; totals add up."""
    seen: dict[str, list[int]] = {}
    lock = threading.Lock()

    def hook(n, exc, delay):
        with lock:
            seen.setdefault(threading.current_thread().name, []).append(n)

    policy = retry(max_attempts=4, delay=0, on_retry=hook)
    barrier = threading.Barrier(8)

    def work():
        flaky = FlakyCall(failures=3, result="ok")
        barrier.wait()
        assert policy(flaky)() == "ok"

    threads = [threading.Thread(target=work, name=f"t{i}") for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(v == [1, 2, 3] for v in seen.values())
    assert len(seen) == 8
    assert policy.statistics().retries == 24
    assert policy.statistics().recovered == 8


# ---------------------------------------------------------------- async
@pytest.mark.anyio
async def test_async_function_is_retried_and_stays_a_coroutine_function(recoverly_clock):
    """An async def keeps its kind and is awaited again after each failure."""
    calls = []

    @retry(max_attempts=3, delay=1.0)
    async def fetch(x):
        calls.append(x)
        if len(calls) < 3:
            raise Transient
        return x * 2

    assert inspect.iscoroutinefunction(fetch)
    assert await fetch(5) == 10
    assert calls == [5, 5, 5]
    assert recoverly_clock.sleeps == [1.0, 2.0]


@pytest.mark.anyio
async def test_async_exhaustion_reraises_original():
    """The async driver re-raises the last exception unchanged."""
    err = Transient("last")

    @retry(max_attempts=2, delay=0)
    async def fails():
        raise err

    with pytest.raises(Transient) as info:
        await fails()
    assert info.value is err


@pytest.mark.anyio
async def test_async_deadline_and_result_predicate(recoverly_clock):
    """The slow async path (deadline, retry_on_result) behaves like the sync one."""
    results = iter([0, 0, 1])

    @retry(max_attempts=5, delay=1.0, deadline=100.0, retry_on_result=lambda r: r == 0)
    async def poll():
        return next(results)

    assert await poll() == 1
    assert recoverly_clock.sleeps == [1.0, 2.0]


@pytest.mark.anyio
async def test_async_acall():
    """Retry.acall awaits a coroutine function under the policy."""
    calls = []

    async def f(x):
        calls.append(x)
        if len(calls) == 1:
            raise Transient
        return x

    assert await Retry(max_attempts=2, delay=0).acall(f, 3) == 3
    assert calls == [3, 3]


def test_concurrent_asyncio_tasks_keep_their_own_attempts():
    """Many tasks retrying at once each recover; the counters add up."""
    policy = retry(max_attempts=3, delay=0.5)

    async def main():
        async def one(i):
            flaky = FlakyCall(failures=2, result=i)
            return await policy(_as_async(flaky))()

        return await asyncio.gather(*(one(i) for i in range(50)))

    with_clock = ManualClock()
    from recoverly.testing import instant

    with instant(with_clock):
        assert asyncio.run(main()) == list(range(50))
    assert policy.statistics().retries == 100
    assert policy.statistics().recovered == 50


def _as_async(fn):
    async def wrapper(*a, **k):
        await asyncio.sleep(0)
        return fn(*a, **k)

    return wrapper
