"""RateLimiter: GCRA arithmetic, waiting, keys, validation, events and inspection."""

from __future__ import annotations

import datetime as dt
import inspect
import math

import pytest

import recoverly
from recoverly import RateLimiter, RateLimiterStatistics, RateLimitExceeded, events
from recoverly.stores import InMemoryLimiterStore, LimiterStore
from recoverly.testing import ManualClock


# ---------------------------------------------------------------- arithmetic
def test_a_full_bucket_admits_burst_then_refuses_with_the_exact_wait(clock):
    """With 2 per second and burst 2, two calls pass at once and the third must wait 0.5 s."""
    limiter = RateLimiter(2, per=1.0, clock=clock)
    assert [limiter.try_acquire() for _ in range(3)] == [True, True, False]
    with pytest.raises(RateLimitExceeded) as info:
        limiter.acquire(timeout=0)
    assert info.value.retry_after == pytest.approx(0.5)
    clock.advance(0.4999)
    assert not limiter.try_acquire()
    clock.advance(0.0001)
    assert limiter.try_acquire()
    assert not limiter.try_acquire()


def test_tokens_refill_at_rate_per_period_up_to_burst(clock):
    """After a long pause the bucket holds exactly `burst` tokens, never more."""
    limiter = RateLimiter(10, per=60.0, burst=3, clock=clock)
    assert limiter.available() == 3
    assert limiter.acquire(3) == 0.0
    assert limiter.available() == 0
    clock.advance(6.0)  # one token per 6 s
    assert limiter.available() == pytest.approx(1.0)
    clock.advance(3600)
    assert limiter.available() == 3
    assert limiter.try_acquire(3)
    assert not limiter.try_acquire()


def test_taking_several_tokens_reports_the_wait_for_all_of_them(clock):
    """An empty bucket of 4 per second needs 0.75 s to free three tokens."""
    limiter = RateLimiter(4, per=1.0, clock=clock)
    assert limiter.try_acquire(4)
    with pytest.raises(RateLimitExceeded) as info:
        limiter.acquire(3, timeout=0.5)
    assert info.value.retry_after == pytest.approx(0.75)
    assert info.value.state == "exhausted"
    assert limiter.available() == 0  # a refused request takes nothing


def test_default_burst_is_rate_rounded_down_and_at_least_one(clock):
    """burst=None means a whole period's worth of tokens (at least one)."""
    assert RateLimiter(10, clock=clock).burst == 10
    assert RateLimiter(2.9, clock=clock).burst == 2
    assert RateLimiter(0.5, per=dt.timedelta(minutes=1), clock=clock).burst == 1


def test_fractional_rates_space_calls_evenly(clock):
    """0.5 per second with burst 1 admits one call every two seconds."""
    limiter = RateLimiter(0.5, per=1.0, burst=1, clock=clock)
    admitted = []
    for step in range(12):
        if limiter.try_acquire():
            admitted.append(step * 0.5)
        clock.advance(0.5)
    assert admitted == [0.0, 2.0, 4.0]


# ---------------------------------------------------------------- waiting
def test_acquire_sleeps_through_the_clock_until_the_token_is_free(clock):
    """acquire() sleeps exactly the GCRA wait on the injected clock and returns it."""
    limiter = RateLimiter(5, per=1.0, burst=1, clock=clock)
    assert limiter.acquire() == 0.0
    assert limiter.acquire() == pytest.approx(0.2)
    assert limiter.acquire(timeout=None) == pytest.approx(0.2)
    assert clock.sleeps == [pytest.approx(0.2), pytest.approx(0.2)]
    assert clock.monotonic() == pytest.approx(0.4)
    assert limiter.statistics().delayed == 2


def test_acquire_refuses_at_once_when_the_wait_would_pass_the_timeout(clock):
    """A wait longer than the timeout raises without sleeping and takes nothing."""
    limiter = RateLimiter(1, per=10.0, clock=clock, name="slow-api")
    limiter.acquire()
    with pytest.raises(RateLimitExceeded) as info:
        limiter.acquire(timeout=9.0)
    assert clock.sleeps == []
    assert info.value.retry_after == pytest.approx(10.0)
    assert info.value.name == "slow-api"
    assert str(info.value) == "Rate limit exceeded for 'slow-api'; next token in 10.000 s"
    assert limiter.acquire(timeout=dt.timedelta(seconds=10)) == pytest.approx(10.0)


def test_the_limiter_timeout_is_the_default_wait(clock):
    """acquire() without timeout= uses the limiter's own timeout."""
    limiter = RateLimiter(1, per=5.0, timeout=4.0, clock=clock)
    limiter.acquire()
    with pytest.raises(RateLimitExceeded):
        limiter.acquire()
    never_waits = RateLimiter(1, per=5.0, timeout=0, clock=clock)
    never_waits.acquire()
    with pytest.raises(RateLimitExceeded):
        never_waits.acquire()
    assert clock.sleeps == []


@pytest.mark.anyio
async def test_aacquire_awaits_the_clock_and_refuses_past_the_timeout():
    """The async twin sleeps through clock.asleep and raises when the wait is too long."""
    clock = ManualClock()
    limiter = RateLimiter(2, per=1.0, burst=1, clock=clock)
    assert await limiter.aacquire() == 0.0
    assert await limiter.aacquire() == pytest.approx(0.5)
    assert clock.sleeps == [pytest.approx(0.5)]
    with pytest.raises(RateLimitExceeded) as info:
        await limiter.aacquire(timeout=0.1)
    assert info.value.retry_after == pytest.approx(0.5)


# ---------------------------------------------------------------- keys
def test_each_key_has_its_own_bucket(clock):
    """Exhausting one key leaves the other keys and the shared bucket untouched."""
    limiter = RateLimiter(1, per=1.0, clock=clock)
    assert limiter.try_acquire(key="alice")
    assert not limiter.try_acquire(key="alice")
    assert limiter.try_acquire(key="bob")
    assert limiter.try_acquire()
    assert limiter.available("alice") == 0
    assert limiter.available("carol") == 1


def test_the_decorator_picks_the_bucket_with_the_key_function(clock):
    """key=lambda user, ...: user limits each user separately."""
    limiter = RateLimiter(2, per=1.0, timeout=0, key=lambda user, **_: user, clock=clock)
    calls = []

    @limiter
    def fetch(user: str, *, page: int = 1) -> str:
        """Record a call."""
        calls.append((user, page))
        return f"{user}:{page}"

    assert fetch("a") == "a:1"
    assert fetch("a", page=2) == "a:2"
    with pytest.raises(RateLimitExceeded, match="key 'a'"):
        fetch("a", page=3)
    assert fetch("b", page=9) == "b:9"
    assert calls == [("a", 1), ("a", 2), ("b", 9)]


@pytest.mark.anyio
async def test_the_async_decorator_waits_then_calls_and_stays_a_coroutine_function():
    """An async def stays one, and each call waits for its token first."""
    clock = ManualClock()
    limiter = RateLimiter(1, per=2.0, clock=clock)

    @limiter
    async def ping(n: int) -> int:
        """Echo."""
        return n

    assert inspect.iscoroutinefunction(ping)
    assert ping.__name__ == "ping"
    assert [await ping(1), await ping(2)] == [1, 2]
    assert clock.sleeps == [pytest.approx(2.0)]


def test_with_blocks_take_one_token_each(clock):
    """`with limiter:` waits for and takes one token."""
    limiter = RateLimiter(1, per=1.0, clock=clock)
    with limiter:
        pass
    with limiter:
        pass
    assert clock.sleeps == [pytest.approx(1.0)]
    assert limiter.statistics().admitted == 2


@pytest.mark.anyio
async def test_async_with_blocks_take_one_token_each():
    """`async with limiter:` waits for and takes one token."""
    clock = ManualClock()
    limiter = RateLimiter(4, per=1.0, burst=1, clock=clock)
    async with limiter:
        pass
    async with limiter:
        pass
    assert clock.sleeps == [pytest.approx(0.25)]


def test_generator_functions_are_refused():
    """A generator function cannot be rate limited by decoration."""

    def gen():
        yield 1

    with pytest.raises(TypeError, match="generator"):
        RateLimiter(1)(gen)


# ---------------------------------------------------------------- store
def test_the_in_memory_store_forgets_the_least_recent_key_beyond_its_bound(clock):
    """At most max_keys buckets are kept; forgetting a refilled bucket is not counted."""
    store = InMemoryLimiterStore(max_keys=2)
    limiter = RateLimiter(1, per=1.0, store=store, clock=clock)
    assert limiter.try_acquire(key="a")
    clock.advance(5)  # a's bucket refilled: forgetting it changes nothing
    assert limiter.try_acquire(key="b")
    assert limiter.try_acquire(key="c")
    assert len(store) == 2
    assert store.evicted == 0
    assert limiter.try_acquire(key="d")  # b is still refilling: an exact eviction
    assert store.evicted == 1
    assert repr(store) == "<InMemoryLimiterStore keys=2/2>"


def test_any_limiter_store_can_hold_the_buckets(clock):
    """A custom store receives key, tokens, time, interval and burst."""
    seen = []

    class Recording(InMemoryLimiterStore):
        def take(self, key, tokens, now, interval, burst):
            seen.append((key, tokens, now, interval, burst))
            return super().take(key, tokens, now, interval, burst)

    store = Recording()
    assert isinstance(store, LimiterStore)
    limiter = RateLimiter(4, per=2.0, burst=3, store=store, clock=clock)
    limiter.try_acquire(2, key=7)
    assert seen == [(7, 2, 0.0, 0.5, 3)]
    assert limiter.store is store


# ---------------------------------------------------------------- validation
def test_every_bad_setting_is_reported_in_one_value_error():
    """rate, per, burst and timeout problems are all listed with their values."""
    with pytest.raises(ValueError) as info:
        RateLimiter(0, per=-1, burst=0, timeout=-2)
    text = str(info.value)
    assert "rate must be a finite number > 0, got 0" in text
    assert "per must be a finite number of seconds > 0, got -1" in text
    assert "burst must be an integer >= 1, got 0" in text
    assert "timeout must be a finite number of seconds >= 0, got -2" in text


@pytest.mark.parametrize("rate", [math.nan, math.inf, -1.0])
def test_non_finite_or_negative_rates_are_refused(rate):
    """NaN, infinity and negative rates fail with the value in the message."""
    with pytest.raises(ValueError, match=f"rate must be a finite number > 0, got {rate!r}"):
        RateLimiter(rate)


def test_wrong_kinds_raise_type_error():
    """A string rate, a float burst, a non-callable key and a bad clock are type errors."""
    with pytest.raises(TypeError) as info:
        RateLimiter("10", burst=2.5, key=3, clock=object(), store=object())  # type: ignore[arg-type]
    text = str(info.value)
    assert "rate must be a number > 0, got '10'" in text
    assert "burst must be an integer >= 1, got 2.5" in text
    assert "key must be callable or None, got 3" in text
    assert "clock must be a Clock or None" in text
    assert "store must be a LimiterStore or None" in text


def test_an_interval_that_overflows_is_refused():
    """A rate so small that per / rate is infinite fails at construction."""
    with pytest.raises(ValueError, match="per / rate must be a finite interval > 0"):
        RateLimiter(1e-320, per=1e10)


def test_token_counts_are_checked_against_burst(clock):
    """More tokens than the bucket holds could never be granted: ValueError names burst."""
    limiter = RateLimiter(5, burst=3, clock=clock)
    with pytest.raises(ValueError, match=r"tokens must be an integer in \[1, burst=3\], got 4"):
        limiter.try_acquire(4)
    with pytest.raises(ValueError, match=r"got 0"):
        limiter.acquire(0)
    with pytest.raises(TypeError, match=r"tokens must be an integer >= 1, got 1\.0"):
        limiter.try_acquire(1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout must be a finite number of seconds >= 0"):
        limiter.acquire(timeout=math.nan)
    assert limiter.statistics().admitted == 0


# ---------------------------------------------------------------- events and inspection
def test_refusals_and_waits_are_reported_as_events(clock, events):
    """try_acquire refusals emit CallRejected; waits emit RateLimitDelayed first."""
    limiter = RateLimiter(1, per=2.0, name="feed", clock=clock)
    limiter.try_acquire()
    limiter.try_acquire()
    limiter.acquire(key=None)
    with pytest.raises(RateLimitExceeded):
        limiter.acquire(timeout=1.0)
    assert events == [
        recoverly.events.CallRejected("feed", "rate_limit", "exhausted", pytest.approx(2.0)),
        recoverly.events.RateLimitDelayed("feed", None, 1, pytest.approx(2.0)),
        recoverly.events.CallRejected("feed", "rate_limit", "exhausted", pytest.approx(2.0)),
    ]


def test_statistics_and_repr_show_settings_and_counts(clock):
    """statistics() is a frozen snapshot; repr shows rate, burst and counts."""
    limiter = RateLimiter(3, per=1.5, name="search", clock=clock)
    limiter.try_acquire(2)
    limiter.try_acquire(2)
    stats = limiter.statistics()
    assert stats == RateLimiterStatistics(
        name="search",
        rate=3.0,
        per=1.5,
        burst=3,
        available=pytest.approx(1.0),
        admitted=1,
        rejected=1,
        delayed=0,
    )
    with pytest.raises(AttributeError):
        stats.admitted = 5  # type: ignore[misc]
    assert repr(limiter) == (
        "<RateLimiter 'search' 3/1.5s burst=3 available=1 admitted=1 rejected=1>"
    )


def test_unnamed_limiters_take_the_decorated_function_name(clock):
    """The label of an unnamed limiter is the first decorated function's name."""
    limiter = RateLimiter(1, clock=clock)

    @limiter
    def upload() -> None:
        """Nothing."""

    assert limiter.statistics().name.endswith("upload")


def test_named_limiters_are_listed_and_reset_by_the_registry(clock):
    """registry.limiters() lists named limiters; registry.reset() refills them."""
    limiter = RateLimiter(1, per=60, name="uploads", clock=clock)
    assert recoverly.limiters()["uploads"] is limiter
    limiter.try_acquire()
    assert limiter.available() == 0
    recoverly.registry.reset()
    assert limiter.available() == 1
    with pytest.warns(UserWarning, match="another live RateLimiter is named 'uploads'") as rec:
        other = RateLimiter(1, name="uploads")
    assert rec[0].filename == __file__
    assert recoverly.limiters()["uploads"] is other


def test_subscribers_see_only_what_they_asked_for(clock):
    """A subscriber to RateLimitDelayed gets no CallRejected events."""
    seen: list[object] = []
    events.subscribe(seen.append, events.RateLimitDelayed)
    limiter = RateLimiter(1, clock=clock)
    limiter.try_acquire()
    limiter.try_acquire()
    limiter.acquire()
    assert [type(e) for e in seen] == [events.RateLimitDelayed]


def test_rate_limit_waits_are_logged_at_debug_level(caplog):
    """The default log subscriber words RateLimitDelayed when it is passed one."""
    caplog.set_level("DEBUG", logger="recoverly")
    events.log_event(events.RateLimitDelayed("api", "alice", 2, 0.5))
    assert caplog.messages == ["api: waiting 0.5s for 2 token(s)"]


@pytest.mark.realtime
def test_acquire_really_sleeps_on_the_system_clock():
    """On the real clock, three acquisitions at 20 per second with burst 1 take >= 0.1 s."""
    from recoverly._core.clock import SystemClock

    clock = SystemClock()
    limiter = RateLimiter(20, per=1.0, burst=1, clock=clock)
    started = clock.monotonic()
    waited = sum(limiter.acquire() for _ in range(3))
    elapsed = clock.monotonic() - started
    assert waited == pytest.approx(0.1, abs=0.01)
    assert elapsed >= 0.095


@pytest.mark.anyio
async def test_a_cancelled_waiter_takes_nothing():
    """Cancelling a task while it sleeps for tokens leaves the bucket as it was."""
    import anyio

    clock = ManualClock()
    store = InMemoryLimiterStore()
    limiter = RateLimiter(1, per=10.0, store=store, clock=clock)
    limiter.acquire()
    before = dict(store._tats)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await limiter.aacquire()
    assert scope.cancelled_caught
    assert store._tats == before
    stats = limiter.statistics()
    assert (stats.admitted, stats.delayed) == (1, 1)


def test_settings_are_read_only(clock):
    """rate, per, burst, key and timeout cannot be changed after construction."""
    limiter = RateLimiter(4, per=2.0, clock=clock)
    assert (limiter.rate, limiter.per, limiter.burst, limiter.key, limiter.timeout) == (
        4.0,
        2.0,
        4,
        None,
        30.0,
    )
    for attribute in ("rate", "per", "burst", "key", "timeout"):
        with pytest.raises(AttributeError):
            setattr(limiter, attribute, 1)
