"""The clock seam: the system clock and the manual clock."""

from __future__ import annotations

import pytest

from recoverly._core.clock import MAX_SLEEP, SystemClock, default_clock, resolve, set_default_clock
from recoverly.testing import ManualClock, instant


def test_system_clock_is_monotonic_and_sleeps_zero_at_once():
    """monotonic() never decreases; sleep(0) and negative sleeps return."""
    clock = SystemClock()
    a = clock.monotonic()
    clock.sleep(0)
    clock.sleep(-1)
    assert clock.monotonic() >= a
    assert clock.wall() > 1_600_000_000
    assert repr(clock) == "SystemClock()"


@pytest.mark.anyio
async def test_system_clock_asleep_works_on_both_backends():
    """asleep(0) returns under asyncio and under Trio."""
    clock = SystemClock()
    await clock.asleep(0)
    await clock.asleep(-5)


def test_manual_clock_advances_and_records_sleeps():
    """sleep() advances the reading and is recorded; advance() moves time."""
    clock = ManualClock(start=10.0, wall=1000.0)
    clock.sleep(2.5)
    clock.advance(0.5)
    assert clock.monotonic() == 13.0
    assert clock.wall() == 1003.0
    assert clock.sleeps == [2.5]
    assert clock.slept == 2.5
    assert repr(clock) == "<ManualClock now=13 sleeps=1>"


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_manual_clock_never_goes_backwards(bad):
    """advance() refuses negative and non-finite steps."""
    clock = ManualClock()
    with pytest.raises(ValueError, match="seconds must be a finite number of seconds >= 0"):
        clock.advance(bad)
    assert clock.monotonic() == 0.0


@pytest.mark.anyio
async def test_manual_clock_asleep_records_without_waiting():
    """asleep() on a manual clock advances it at once."""
    clock = ManualClock()
    await clock.asleep(30)
    assert clock.monotonic() == 30


def test_instant_swaps_and_restores_the_default():
    """instant() installs a manual default clock and puts the old one back."""
    before = default_clock()
    mine = ManualClock()
    with instant(mine) as clock:
        assert clock is mine
        assert resolve(None) is mine
    assert default_clock() is before
    explicit = ManualClock()
    assert resolve(explicit) is explicit


def test_set_default_clock_returns_previous():
    """set_default_clock returns what it replaced."""
    mine = ManualClock()
    previous = set_default_clock(mine)
    try:
        assert default_clock() is mine
    finally:
        assert set_default_clock(previous) is mine
    assert MAX_SLEEP > 1e6
