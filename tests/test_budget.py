"""RetryBudget: a sliding window of calls and retries."""

from __future__ import annotations

import threading

import pytest

from recoverly import RetryBudget


def test_floor_allows_retries_without_traffic(clock):
    """min_per_second x window retries are available with no calls at all."""
    budget = RetryBudget(ratio=0.0, min_per_second=0.5, window=10.0, clock=clock)
    granted = sum(budget.try_withdraw() for _ in range(10))
    assert granted == 5
    assert budget.statistics().rejected == 5


def test_ratio_of_calls_is_granted(clock):
    """With 100 calls and ratio 0.2, twenty retries are granted."""
    budget = RetryBudget(ratio=0.2, min_per_second=0, clock=clock)
    for _ in range(100):
        budget.deposit()
    assert sum(budget.try_withdraw() for _ in range(30)) == 20
    assert budget.statistics().available == 0


def test_old_calls_leave_the_window(clock):
    """Calls older than the window no longer fund retries."""
    budget = RetryBudget(ratio=1.0, min_per_second=0, window=10.0, clock=clock)
    for _ in range(5):
        budget.deposit()
    clock.advance(5.0)
    assert budget.statistics().calls == 5
    clock.advance(5.0)
    assert budget.statistics().calls == 0
    assert budget.try_withdraw() is False


def test_window_slides_bucket_by_bucket(clock):
    """Half of the window later, only the newer half of the calls remain."""
    budget = RetryBudget(ratio=1.0, min_per_second=0, window=10.0, buckets=10, clock=clock)
    for _ in range(4):
        budget.deposit()
    clock.advance(6.0)
    for _ in range(3):
        budget.deposit()
    clock.advance(5.0)
    assert budget.statistics().calls == 3


def test_concurrent_withdrawals_never_exceed_the_allowance(clock):
    """Sixteen threads racing for 50 retries get exactly 50."""
    budget = RetryBudget(ratio=0.5, min_per_second=0, clock=clock)
    for _ in range(100):
        budget.deposit()
    granted = []
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def grab():
        barrier.wait()
        got = sum(budget.try_withdraw() for _ in range(10))
        with lock:
            granted.append(got)

    threads = [threading.Thread(target=grab) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 50


def test_validation_reports_all_problems():
    """Bad settings are reported together."""
    with pytest.raises(ValueError) as info:
        RetryBudget(ratio=-1, window=0, buckets=0)
    text = str(info.value)
    assert "ratio must be a finite number >= 0, got -1" in text
    assert "window must be a finite number of seconds > 0, got 0" in text
    assert "buckets must be an integer >= 1, got 0" in text


def test_repr_shows_settings_and_state(clock):
    """repr shows ratio, floor, window and the counters."""
    budget = RetryBudget(clock=clock)
    budget.deposit()
    assert repr(budget) == (
        "<RetryBudget ratio=0.2 min_per_second=10 window=10s calls=1 retries=0 available=100>"
    )
