"""Sliding windows: count-based ring buffer and time-based buckets."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recoverly._core.windows import CountWindow, TimeWindow


def test_count_window_totals_calls_failures_and_slow_calls():
    """Each record adds one call, and its failure and slowness flags."""
    w = CountWindow(5)
    w.record(failed=True, slow=False)
    w.record(failed=False, slow=True)
    w.record(failed=True, slow=True)
    assert w.totals() == (3, 2, 2)


def test_count_window_evicts_the_oldest_outcome_when_full():
    """A full window drops its oldest outcome for each new one."""
    w = CountWindow(3)
    for failed in (True, True, False):
        w.record(failed=failed, slow=False)
    w.record(failed=False, slow=False)  # evicts the first failure
    assert w.totals() == (3, 1, 0)
    w.record(failed=False, slow=False)  # evicts the second failure
    assert w.totals() == (3, 0, 0)


@given(st.lists(st.tuples(st.booleans(), st.booleans()), max_size=60), st.integers(1, 10))
def test_count_window_matches_the_last_n_outcomes(outcomes, size):
    """The running totals always equal a recount of the last `size` outcomes."""
    w = CountWindow(size)
    for failed, slow in outcomes:
        w.record(failed=failed, slow=slow)
    tail = outcomes[-size:] if outcomes else []
    assert w.totals() == (len(tail), sum(f for f, _ in tail), sum(s for _, s in tail))


def test_count_window_reset_forgets_everything():
    """reset() empties the window."""
    w = CountWindow(2)
    w.record(failed=True, slow=True)
    w.reset()
    assert w.totals() == (0, 0, 0)
    w.record(failed=False, slow=False)
    assert w.totals() == (1, 0, 0)


def test_time_window_forgets_outcomes_older_than_its_span():
    """Outcomes expire bucket by bucket as time moves on."""
    w = TimeWindow(10.0, buckets=10)
    w.record(failed=True, slow=False, now=0.5)
    w.record(failed=True, slow=True, now=5.5)
    assert w.totals(9.9) == (2, 2, 1)
    assert w.totals(10.5) == (1, 1, 1)  # the bucket of t=0.5 expired
    assert w.totals(15.5) == (0, 0, 0)


def test_time_window_jump_past_the_whole_span_empties_it():
    """A gap longer than the window clears every bucket at once."""
    w = TimeWindow(1.0, buckets=4)
    for t in (0.0, 0.3, 0.6, 0.9):
        w.record(failed=True, slow=False, now=t)
    assert w.totals(0.9) == (4, 4, 0)
    assert w.totals(100.0) == (0, 0, 0)
    w.record(failed=False, slow=False, now=100.1)
    assert w.totals(100.1) == (1, 0, 0)


def test_time_window_reading_from_the_past_lands_in_the_newest_bucket():
    """An older timestamp (another thread's reading) is counted, not lost."""
    w = TimeWindow(10.0, buckets=10)
    w.record(failed=False, slow=False, now=5.0)
    w.record(failed=True, slow=False, now=4.0)
    assert w.totals(5.0) == (2, 1, 0)


@given(st.lists(st.tuples(st.floats(0, 3), st.booleans()), max_size=40))
def test_time_window_matches_a_recount_of_live_buckets(steps):
    """Totals equal a recount of outcomes whose bucket is still inside the window."""
    w = TimeWindow(2.0, buckets=4)
    now, seen = 0.0, []
    for dt, failed in steps:
        now += dt
        w.record(failed=failed, slow=False, now=now)
        seen.append((now, failed))
    span = 0.5
    current = math.floor(now / span)
    live = [f for t, f in seen if current - math.floor(t / span) < 4]
    assert w.totals(now) == (len(live), sum(live), 0)


def test_windows_reject_bad_sizes():
    """Sizes below one, and non-positive or infinite spans, raise ValueError."""
    with pytest.raises(ValueError, match="size must be"):
        CountWindow(0)
    with pytest.raises(ValueError, match="seconds must be"):
        TimeWindow(0.0)
    with pytest.raises(ValueError, match="seconds must be"):
        TimeWindow(float("inf"))
    with pytest.raises(ValueError, match="buckets must be"):
        TimeWindow(1.0, buckets=0)


def test_windows_repr_shows_totals():
    """repr shows the shape and the current totals."""
    w = CountWindow(4)
    w.record(failed=True, slow=False)
    assert repr(w) == "<CountWindow size=4 calls=1 failures=1 slow=0>"
    t = TimeWindow(2.0, buckets=2)
    assert repr(t) == "<TimeWindow seconds=2 buckets=2 calls=0 failures=0 slow=0>"
