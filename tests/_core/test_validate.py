"""Argument validation messages."""

from __future__ import annotations

import datetime as dt

import pytest

from recoverly._core.validate import Problems, to_seconds


def test_problems_collects_and_raises_value_error():
    """Range problems are joined into one ValueError."""
    p = Problems()
    p.int_at_least("a", 0, 1)
    p.number_at_least("b", float("inf"), 0)
    with pytest.raises(ValueError) as info:
        p.raise_if_any()
    assert str(info.value) == (
        "a must be an integer >= 1, got 0; b must be a finite number >= 0, got inf"
    )


def test_any_kind_problem_makes_it_a_type_error():
    """One wrong type turns the combined exception into TypeError."""
    p = Problems()
    p.int_at_least("a", 0, 1)
    p.duration("d", "soon")
    with pytest.raises(TypeError, match="d must be a number of seconds or a timedelta"):
        p.raise_if_any()


def test_durations_accept_timedelta_and_reject_zero_when_positive():
    """timedelta converts to seconds; positive=True refuses 0."""
    p = Problems()
    assert p.duration("d", dt.timedelta(milliseconds=250)) == 0.25
    p.duration("e", 0, positive=True)
    assert p.messages == ["e must be a finite number of seconds > 0, got 0"]
    assert to_seconds(dt.timedelta(minutes=1)) == 60.0


def test_fractions_names_and_callables():
    """fraction, optional_name and optional_callable validate their kinds."""
    p = Problems()
    assert p.fraction("f", 0.5) == 0.5
    p.fraction("g", 0, low_open=True)
    p.optional_name("n", "")
    p.optional_name("m", 3)
    p.optional_callable("c", "x")
    assert p.messages == [
        "g must be a number in (0, 1], got 0",
        "n must not be empty, got ''",
        "m must be a string or None, got 3",
        "c must be callable or None, got 'x'",
    ]
    p2 = Problems()
    assert p2.optional_duration("x", None) is None
    assert p2.optional_int_at_least("y", None, 1) is None
    p2.raise_if_any()
