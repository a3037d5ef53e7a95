"""AdaptiveThrottle: the SRE client-side throttling rule, on a manual clock."""

from __future__ import annotations

import asyncio
import pickle
import random
import threading

import pytest

from recoverly import (
    AdaptiveThrottle,
    Pipeline,
    RejectedError,
    RetryBudget,
    ThrottledError,
    events,
    retry,
)
from recoverly.testing import FlakyCall, ManualClock


def _refusing() -> None:
    raise ConnectionRefusedError("backend overloaded")


def _run(guarded: object, n: int) -> list[str]:
    return [_outcome(guarded) for _ in range(n)]


def _outcome(guarded: object) -> str:
    try:
        guarded()  # type: ignore[operator]
    except ThrottledError:
        return "throttled"
    except ConnectionError:
        return "refused"
    return "ok"


def test_a_healthy_backend_is_never_throttled(clock: ManualClock) -> None:
    """While every request is accepted the probability stays 0 (random is never asked)."""
    asked: list[int] = []

    def rand() -> float:
        asked.append(1)
        return 0.0

    throttle = AdaptiveThrottle(clock=clock, random=rand)
    guarded = throttle(lambda: "ok")
    assert [guarded() for _ in range(100)] == ["ok"] * 100
    assert asked == []
    stats = throttle.statistics()
    assert (stats.requests, stats.accepts, stats.throttled, stats.probability) == (100, 100, 0, 0)


def test_probability_follows_the_formula(clock: ManualClock) -> None:
    """p = max(0, (requests - k*accepts) / (requests + 1)) over the window."""
    throttle = AdaptiveThrottle(k=2.0, clock=clock, random=lambda: 0.999)
    ok = throttle(lambda: None)
    for _ in range(10):
        ok()
    bad = throttle(_refusing)
    assert _run(bad, 10) == ["refused"] * 10  # 20 requests, 10 accepts: still p = 0
    assert throttle.probability() == 0.0
    _run(bad, 1)
    assert throttle.probability() == pytest.approx((21 - 20) / 22)
    _run(bad, 9)
    assert throttle.probability() == pytest.approx((30 - 20) / 31)


def test_refusals_are_throttled_with_the_drawn_probability(clock: ManualClock) -> None:
    """With a fixed draw of 0.5, calls are refused locally once p exceeds 0.5."""
    throttle = AdaptiveThrottle(k=1.0, clock=clock, random=lambda: 0.5)
    guarded = throttle(_refusing)
    # p before each call: 0, 1/2, 2/3 (throttled), 3/4 (throttled), ...
    assert _run(guarded, 5) == ["refused", "refused", "throttled", "throttled", "throttled"]
    stats = throttle.statistics()
    assert (stats.requests, stats.accepts, stats.throttled) == (5, 0, 3)


def test_seeded_random_reproduces_the_same_run(clock: ManualClock) -> None:
    """Two throttles with equally seeded generators refuse exactly the same calls."""
    runs = []
    for _ in range(2):
        rng = random.Random(5)
        throttle = AdaptiveThrottle(clock=ManualClock(), random=rng.random)
        runs.append(_run(throttle(_refusing), 200))
    assert runs[0] == runs[1]
    # Against a dead backend almost every request ends up refused locally.
    assert runs[0][-100:].count("throttled") >= 90


def test_throttling_stops_once_the_window_forgets_the_refusals(clock: ManualClock) -> None:
    """After ``window`` seconds the refusals are forgotten and calls flow again."""
    throttle = AdaptiveThrottle(window=60, clock=clock, random=lambda: 0.0)
    _run(throttle(_refusing), 10)
    assert throttle.probability() > 0.8
    clock.advance(61)
    assert throttle.probability() == 0.0
    assert throttle(lambda: "back")() == "back"


def test_recovery_lowers_the_probability_as_accepts_arrive(clock: ManualClock) -> None:
    """Accepted requests pull the probability down while the window still holds refusals."""
    throttle = AdaptiveThrottle(clock=clock, random=lambda: 0.999)
    _run(throttle(_refusing), 20)
    before = throttle.probability()
    healthy = throttle(lambda: "ok")
    for _ in range(5):
        healthy()
    assert throttle.probability() < before
    for _ in range(20):
        healthy()
    assert throttle.probability() == 0.0


def test_errors_outside_exceptions_count_as_accepted(clock: ManualClock) -> None:
    """A caller's own error (not in ``exceptions``) means the backend answered."""
    throttle = AdaptiveThrottle(exceptions=ConnectionError, clock=clock, random=lambda: 0.0)

    def not_found() -> None:
        raise KeyError("no such order")

    guarded = throttle(not_found)
    for _ in range(10):
        with pytest.raises(KeyError):
            guarded()
    stats = throttle.statistics()
    assert (stats.requests, stats.accepts, stats.probability) == (10, 10, 0.0)


def test_outside_retry_one_call_is_one_request(clock: ManualClock) -> None:
    """throttle > retry: three attempts are one request; a refused call is not retried."""
    throttle = AdaptiveThrottle(k=1.0, clock=clock, random=lambda: 0.5)
    flaky = FlakyCall(failures=100, exception=ConnectionRefusedError("busy"))
    guarded = Pipeline(throttle, retry(max_attempts=3, delay=1, clock=clock))(flaky)
    assert _run(guarded, 4) == ["refused", "refused", "throttled", "throttled"]
    assert flaky.calls == 6  # two calls reached the backend, three attempts each
    assert throttle.statistics().requests == 4
    assert len(clock.sleeps) == 4


def test_error_event_and_describe(clock: ManualClock) -> None:
    """A refusal raises ThrottledError (a RejectedError) and emits CallRejected."""
    seen: list[object] = []
    events.subscribe(seen.append)
    throttle = AdaptiveThrottle(k=1.0, name="search", clock=clock, random=lambda: 0.0)
    guarded = throttle(_refusing)
    _outcome(guarded)
    with pytest.raises(ThrottledError) as info:
        guarded()
    exc = info.value
    assert isinstance(exc, RejectedError)
    assert (exc.name, exc.state, exc.retry_after, exc.probability) == (
        "search",
        "throttled",
        None,
        0.5,
    )
    assert (
        str(exc)
        == "Adaptive throttle 'search' rejected the call locally (rejection probability 50%)"
    )
    again = pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own object
    assert again.probability == 0.5
    rejected = [e for e in seen if isinstance(e, events.CallRejected)]
    assert rejected == [events.CallRejected("search", "adaptive_throttle", "throttled", None)]
    assert Pipeline(throttle).describe() == (
        "adaptive_throttle 'search' k=1 window=120 release_window=15",
    )
    assert "throttled=1" in repr(throttle)


def test_async_functions_and_acall(clock: ManualClock) -> None:
    """Async functions are throttled the same way; ``acall`` and ``call`` work."""
    throttle = AdaptiveThrottle(k=1.0, clock=clock, random=lambda: 0.5)

    async def refuse() -> None:
        raise ConnectionRefusedError

    async def once() -> str:
        try:
            await throttle.acall(refuse)
        except ThrottledError:
            return "throttled"
        except ConnectionError:
            return "refused"
        return "ok"

    async def go() -> list[str]:
        return [await once() for _ in range(3)]

    assert asyncio.run(go()) == ["refused", "refused", "throttled"]
    throttle.reset()
    assert throttle.call(lambda: 4) == 4
    assert throttle.statistics().throttled == 1


def test_reset_forgets_the_window(clock: ManualClock) -> None:
    """``reset()`` empties the window but keeps the throttled count."""
    throttle = AdaptiveThrottle(k=1.0, clock=clock, random=lambda: 0.0)
    _run(throttle(_refusing), 3)
    throttle.reset()
    stats = throttle.statistics()
    assert (stats.requests, stats.accepts, stats.throttled, stats.probability) == (0, 0, 2, 0.0)


def test_bad_settings_are_all_listed() -> None:
    """k, window, buckets and random problems come in one error naming each."""
    with pytest.raises(ValueError) as info:
        AdaptiveThrottle(k=0.5, window=0, buckets=0)
    text = str(info.value)
    for piece in ("k must be a finite number >= 1", "window must be", "buckets must be"):
        assert piece in text
    with pytest.raises(TypeError, match="random must be callable"):
        AdaptiveThrottle(random=3)  # type: ignore[arg-type]


def test_throttle_and_budget_cut_the_load_on_a_dead_backend(clock: ManualClock) -> None:
    """Against a backend refusing everything, attempts per call fall from 3 to below 1."""

    def attempts_per_call(*parts: object) -> float:
        backend = FlakyCall(failures=10**9, exception=ConnectionRefusedError("overloaded"))
        guarded = Pipeline(*parts)(backend)  # type: ignore[arg-type]
        for _ in range(200):
            clock.advance(0.05)  # 20 calls per second
            _outcome(guarded)
        return backend.calls / 200

    plain = attempts_per_call(retry(max_attempts=3, delay=0, clock=clock))
    budget = RetryBudget(ratio=0.1, min_per_second=0, clock=clock)
    budgeted = attempts_per_call(retry(max_attempts=3, delay=0, budget=budget, clock=clock))
    throttle = AdaptiveThrottle(clock=clock, random=random.Random(9).random)
    budget2 = RetryBudget(ratio=0.1, min_per_second=0, clock=clock)
    both = attempts_per_call(throttle, retry(max_attempts=3, delay=0, budget=budget2, clock=clock))
    assert plain == 3.0
    assert 1.0 <= budgeted <= 1.2
    assert both < 0.2  # most calls never leave the client


@pytest.mark.anyio
async def test_throttle_on_asyncio_and_trio(clock: ManualClock) -> None:
    """The throttle refuses async calls the same way on both async backends."""
    throttle = AdaptiveThrottle(k=1.0, clock=clock, random=lambda: 0.5)

    async def refuse() -> None:
        raise ConnectionRefusedError

    guarded = throttle(refuse)
    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            await guarded()
    with pytest.raises(ThrottledError):
        await guarded()


def test_counts_stay_exact_under_concurrent_callers(clock: ManualClock) -> None:
    """Eight threads calling at once: every call is one request, every success one accept."""
    throttle = AdaptiveThrottle(clock=clock, random=lambda: 0.999)
    guarded = throttle(lambda: None)

    def caller() -> None:
        for _ in range(500):
            guarded()

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = throttle.statistics()
    assert (stats.requests, stats.accepts, stats.throttled) == (4000, 4000, 0)


def test_recent_accepts_release_the_throttle_before_the_long_window_forgets(
    clock: ManualClock,
) -> None:
    """An outage fills the window with refusals; once it is over, recent accepts let go."""
    two = AdaptiveThrottle(window=120, clock=clock, random=lambda: 0.999)
    book = AdaptiveThrottle(window=120, release_window=120, clock=clock, random=lambda: 0.999)
    for throttle in (two, book):
        _run(throttle(_refusing), 100)
    assert two.probability() == book.probability() == pytest.approx(100 / 101)
    clock.advance(20)  # past the release window (120 / 8 = 15 s), well inside the window
    for throttle in (two, book):
        healthy = throttle(lambda: "ok")
        assert [healthy() for _ in range(3)] == ["ok"] * 3
    assert two.probability() == 0.0  # the last 15 s: 3 requests, 3 accepts
    assert book.probability() == pytest.approx((103 - 2 * 3) / 104)
    stats = two.statistics()
    assert (stats.requests, stats.accepts, stats.recent_requests, stats.recent_accepts) == (
        103,
        3,
        3,
        3,
    )


def test_never_refuses_more_than_the_single_window_rule(clock: ManualClock) -> None:
    """Whatever the sequence of outcomes, the two-horizon probability is <= the book's."""
    rng = random.Random(3)
    two = AdaptiveThrottle(window=10, clock=clock, random=lambda: 0.999)
    book = AdaptiveThrottle(window=10, release_window=10, clock=clock, random=lambda: 0.999)
    ok_two, bad_two = two(lambda: None), two(_refusing)
    ok_book, bad_book = book(lambda: None), book(_refusing)
    seen_lower = False
    for step in range(2000):
        clock.advance(rng.choice((0.0, 0.01, 0.1, 0.5)))
        refusing = (step // 300) % 2 == 1  # outages of 300 calls between healthy spells
        for guarded in (bad_two, bad_book) if refusing else (ok_two, ok_book):
            _outcome(guarded)
        p_two, p_book = two.probability(), book.probability()
        assert p_two <= p_book
        seen_lower = seen_lower or p_two < p_book
    assert seen_lower  # the recent horizon did release earlier at some point


def test_release_window_is_checked() -> None:
    """release_window must be a positive duration no longer than the window."""
    with pytest.raises(ValueError, match=r"release_window must be at most window \(60\), got 90"):
        AdaptiveThrottle(window=60, release_window=90)
    with pytest.raises(ValueError, match="release_window must be a finite number of seconds > 0"):
        AdaptiveThrottle(release_window=0)
    assert AdaptiveThrottle(window=80).release_window == 10.0
    assert AdaptiveThrottle(window=80, release_window=80).release_window == 80.0
