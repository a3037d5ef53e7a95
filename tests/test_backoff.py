"""Pure delay functions: strategies, cap, jitter and overflow safety."""

from __future__ import annotations

import math
import random

from hypothesis import example, given
from hypothesis import strategies as st

from recoverly._core.clock import MAX_SLEEP
from recoverly.backoff import RetryStrategy, base_delay, compute_delay


def _compute(strategy, n, **kw):
    defaults = {
        "delay": 1.0,
        "backoff": 2.0,
        "max_delay": None,
        "jitter": 0.0,
        "previous": 0.0,
        "rand": lambda: 0.5,
    }
    defaults.update(kw)
    return compute_delay(strategy, n, **defaults)


def test_fibonacci_sequence():
    """FIBONACCI waits are delay x 1, 1, 2, 3, 5, 8."""
    waits = [_compute(RetryStrategy.FIBONACCI, n, delay=2.0) for n in range(1, 7)]
    assert waits == [2.0, 2.0, 4.0, 6.0, 10.0, 16.0]


def test_huge_exponent_saturates_instead_of_overflowing():
    """Retry 10_000 with backoff 10 gives MAX_SLEEP, not OverflowError or inf."""
    assert _compute(RetryStrategy.EXPONENTIAL, 10_000, backoff=10.0) == MAX_SLEEP
    assert _compute(RetryStrategy.FIBONACCI, 10_000) == MAX_SLEEP
    assert _compute(RetryStrategy.LINEAR, 10**18, delay=1e6) == MAX_SLEEP


def test_zero_delay_stays_zero():
    """A zero base delay gives zero waits for every strategy."""
    for strategy in RetryStrategy:
        if strategy is not RetryStrategy.DECORRELATED_JITTER:
            assert _compute(strategy, 7, delay=0.0) == 0.0


def test_decorrelated_jitter_grows_from_previous():
    """Decorrelated jitter draws from [delay, 3 x previous]."""
    assert base_delay(RetryStrategy.DECORRELATED_JITTER, 3, 1.0, 2.0, 4.0, lambda: 1.0) == 12.0
    assert base_delay(RetryStrategy.DECORRELATED_JITTER, 3, 1.0, 2.0, 4.0, lambda: 0.0) == 1.0


@given(
    strategy=st.sampled_from(list(RetryStrategy)),
    n=st.integers(min_value=1, max_value=5000),
    delay=st.floats(min_value=0, max_value=1e6),
    backoff=st.floats(min_value=1, max_value=100),
    max_delay=st.none() | st.floats(min_value=0, max_value=1e7),
    jitter=st.floats(min_value=0, max_value=1),
    seed=st.integers(min_value=0, max_value=2**32),
)
# a subnormal delay whose backoff ** (n - 1) alone overflows a float
@example(RetryStrategy.EXPONENTIAL, 170, 5e-324, 67.0, None, 0.0, 0)
def test_every_delay_is_finite_non_negative_and_capped(
    strategy, n, delay, backoff, max_delay, jitter, seed
):
    """For any settings, a delay is finite, >= 0, <= max_delay and <= MAX_SLEEP."""
    rng = random.Random(seed)
    wait = _compute(
        strategy,
        n,
        delay=delay,
        backoff=backoff,
        max_delay=max_delay,
        jitter=jitter,
        previous=delay * 2,
        rand=rng.random,
    )
    assert math.isfinite(wait)
    assert 0.0 <= wait <= MAX_SLEEP
    if max_delay is not None:
        assert wait <= max_delay
