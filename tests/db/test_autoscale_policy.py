"""The autoscaler's decision rule on numbers and a manual clock: when it grows, shrinks, waits."""

from __future__ import annotations

import pytest

pytest.importorskip("sqlalchemy")

from recoverly.db._autoscale_policy import (
    AutoscaleConfig,
    AutoscalePolicy,
    Decision,
    PeakWindow,
)
from recoverly.testing import ManualClock


def _policy(**overrides: float) -> AutoscalePolicy:
    settings: dict[str, float] = {
        "min_size": 5,
        "max_size": 30,
        "grow_at": 0.9,
        "shrink_at": 0.4,
        "grow_after": 2.0,
        "shrink_after": 60.0,
        "cooldown": 10.0,
    }
    settings.update(overrides)
    return AutoscalePolicy(AutoscaleConfig(**settings))  # type: ignore[arg-type]


def test_target_is_midway_between_the_thresholds():
    """A resize aims for the utilisation halfway between shrink_at and grow_at."""
    assert _policy().config.target == pytest.approx(0.65)


def test_grows_only_after_the_pool_stays_busy_for_grow_after():
    """5 of 5 out plus 3 waiting: nothing at 1.9 s, growth to fit 8 at 65% (13) at 2 s."""
    clock = ManualClock()
    policy = _policy()
    assert policy.observe(clock.monotonic(), 5, 5, 3) is None
    clock.advance(1.9)
    assert policy.observe(clock.monotonic(), 5, 5, 3) is None
    assert policy.spell(clock.monotonic()) == ("busy", pytest.approx(1.9))
    clock.advance(0.1)
    decision = policy.observe(clock.monotonic(), 5, 5, 3)
    assert decision == Decision(13, "busy", pytest.approx(8 / 5))
    assert policy.spell(clock.monotonic()) == ("steady", 0.0)


def test_growth_fits_the_busiest_moment_of_the_spell():
    """The peak demand seen during the spell, not the last sample, sets the new size."""
    clock = ManualClock()
    policy = _policy()
    policy.observe(clock.monotonic(), 10, 10, 10)  # 20 wanted at the start
    clock.advance(1)
    policy.observe(clock.monotonic(), 10, 10, 0)  # still 100% busy, nobody waiting
    clock.advance(1)
    decision = policy.observe(clock.monotonic(), 10, 10, 0)
    assert decision is not None
    assert decision.new == 31 - 1  # ceil(20 / 0.65) = 31, capped at max_size 30


def test_growth_fits_demand_beyond_the_threshold_of_a_small_pool():
    """2 of 2 out and nobody waiting still grows (to ceil(2 / 0.65) = 4)."""
    clock = ManualClock()
    policy = _policy(min_size=1)
    policy.observe(clock.monotonic(), 2, 2, 0)
    clock.advance(2)
    assert policy.observe(clock.monotonic(), 2, 2, 0) == Decision(4, "busy", 1.0)


def test_a_break_in_the_busy_spell_starts_it_again():
    """One observation below grow_at resets the spell; grow_after counts from the next one."""
    clock = ManualClock()
    policy = _policy()
    policy.observe(clock.monotonic(), 10, 10, 0)
    clock.advance(1.5)
    policy.observe(clock.monotonic(), 10, 7, 0)  # 70%: steady
    clock.advance(0.5)
    assert policy.observe(clock.monotonic(), 10, 10, 0) is None  # spell restarts here
    clock.advance(1.9)
    assert policy.observe(clock.monotonic(), 10, 10, 0) is None
    clock.advance(0.1)
    assert policy.observe(clock.monotonic(), 10, 10, 0) is not None


def test_cooldown_holds_the_next_resize():
    """After a growth, a still-busy pool waits for the cooldown, then grows again."""
    clock = ManualClock()
    policy = _policy(cooldown=10.0)
    policy.observe(clock.monotonic(), 5, 5, 5)
    clock.advance(2)
    first = policy.observe(clock.monotonic(), 5, 5, 5)
    assert first is not None
    assert first.new == 16
    for _ in range(9):  # busy for 9 s more, past grow_after but inside the cooldown
        clock.advance(1)
        assert policy.observe(clock.monotonic(), 16, 16, 10) is None
    clock.advance(1)  # cooldown over; busy for longer than grow_after already
    second = policy.observe(clock.monotonic(), 16, 16, 10)
    assert second == Decision(30, "busy", pytest.approx(26 / 16))  # ceil(26/.65)=40 -> 30


def test_stays_at_max_size_however_busy():
    """At max_size there is nothing to decide: no event, no flapping."""
    clock = ManualClock()
    policy = _policy()
    for _ in range(100):
        assert policy.observe(clock.monotonic(), 30, 30, 50) is None
        clock.advance(5)


def test_shrinks_after_a_quiet_spell_to_fit_its_busiest_moment():
    """At most 4 of 30 out for 60 s: shrink to ceil(4 / 0.65) = 7."""
    clock = ManualClock()
    policy = _policy()
    policy.observe(clock.monotonic(), 30, 2, 0)
    clock.advance(30)
    policy.observe(clock.monotonic(), 30, 4, 0)
    clock.advance(29.9)
    assert policy.observe(clock.monotonic(), 30, 1, 0) is None
    assert policy.spell(clock.monotonic())[0] == "idle"
    clock.advance(0.1)
    assert policy.observe(clock.monotonic(), 30, 1, 0) == Decision(7, "idle", pytest.approx(1 / 30))


def test_shrinks_no_lower_than_min_size_and_not_below_checked_out():
    """An empty pool shrinks to min_size; the checked-out count is a floor too."""
    clock = ManualClock()
    policy = _policy(cooldown=0.0)
    policy.observe(clock.monotonic(), 30, 0, 0)
    clock.advance(60)
    assert policy.observe(clock.monotonic(), 30, 0, 0) == Decision(5, "idle", 0.0)
    low = _policy(min_size=1, shrink_at=0.8, grow_at=0.9)  # target 0.85
    low.observe(clock.monotonic(), 30, 20, 0)
    clock.advance(60)
    decision = low.observe(clock.monotonic(), 30, 20, 0)
    assert decision is not None
    assert decision.new >= 20  # ceil(20 / 0.85) = 24: never below the 20 out


def test_a_steady_load_in_between_never_resizes():
    """Utilisation between the thresholds for an hour: no decision at all."""
    clock = ManualClock()
    policy = _policy()
    for out in [4, 5, 6, 7, 8] * 720:  # 40% < u < 90% of 10
        assert policy.observe(clock.monotonic(), 10, out, 0) is None
        clock.advance(1)


def test_after_growing_a_constant_load_does_not_flap():
    """A constant 20 busy: one growth to 31 (capped 30), then an hour without a change."""
    clock = ManualClock()
    policy = _policy()
    capacity, changes = 10, []
    for _ in range(3600):
        out = min(20, capacity)
        decision = policy.observe(clock.monotonic(), capacity, out, 20 - out)
        if decision is not None:
            changes.append(decision.new)
            capacity = decision.new
        clock.advance(1)
    assert changes == [30]


def test_a_burst_pattern_grows_once_and_shrinks_once():
    """10 s bursts of 20 every 5 minutes: grows on the first, keeps the size between bursts."""
    clock = ManualClock()
    policy = _policy(shrink_after=600.0)
    capacity, changes = 5, []
    for second in range(3600):
        demand = 20 if second % 300 < 10 else 1
        out = min(demand, capacity)
        decision = policy.observe(clock.monotonic(), capacity, out, demand - out)
        if decision is not None:
            changes.append((second, decision.new, decision.reason))
            capacity = decision.new
        clock.advance(1)
    # one growth in the first burst; the quiet gaps (290 s) are shorter than shrink_after
    assert changes == [(2, 30, "busy")]


def test_peak_window_counts_a_value_still_current_when_the_window_began():
    """Demand is a step function: 9 on [0, 10) counts in [9.9, 19.9], not in [10, 20]."""
    window = PeakWindow(10.0)
    window.add(0.0, 9)
    window.add(10.0, 2)
    assert window.peak(15.0) == 9
    assert window.peak(19.9) == 9  # 9 was still current at t=9.9
    assert window.peak(20.0) == 2
    window.add(21.0, 3)
    assert window.peak(21.0) == 3
    empty = PeakWindow(1.0)
    assert empty.peak(5.0) == 0


def test_peak_window_keeps_one_entry_per_distinct_value_at_most():
    """100 000 observations of values 0..19 keep at most 20 entries."""
    window = PeakWindow(60.0)
    clock = ManualClock()
    for i in range(100_000):
        window.add(clock.monotonic(), (i * 7) % 20)
        clock.advance(0.001)
        assert len(window._entries) <= 20
    assert window.peak(clock.monotonic()) == 19
