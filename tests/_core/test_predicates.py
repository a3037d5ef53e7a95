"""Exception filters never match control-flow exceptions."""

from __future__ import annotations

import asyncio

import pytest

from recoverly._core.predicates import compile_filter, describe_filter, is_control_flow


def test_type_and_tuple_filters_match_subclasses():
    """A class or tuple matches instances of subclasses."""
    match = compile_filter("exceptions", (ConnectionError, ValueError))
    assert match(ConnectionResetError())
    assert match(ValueError())
    assert not match(KeyError())


@pytest.mark.parametrize(
    "exc", [KeyboardInterrupt(), SystemExit(1), asyncio.CancelledError(), GeneratorExit()]
)
def test_control_flow_is_never_matched(exc):
    """Even BaseException or an always-true predicate skips interrupts and cancellation."""
    assert not compile_filter("e", BaseException)(exc)
    assert not compile_filter("e", lambda e: True)(exc)
    assert is_control_flow(exc)


def test_trio_cancelled_is_control_flow():
    """Trio's Cancelled is recognised without importing trio in the core."""
    trio = pytest.importorskip("trio")

    async def main():
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                await trio.sleep(1)
            except trio.Cancelled as exc:
                assert is_control_flow(exc)
                raise

    trio.run(main)


def test_empty_tuple_matches_nothing_and_bad_values_are_refused():
    """() matches nothing; a string is a TypeError naming the parameter."""
    assert not compile_filter("x", ())(ValueError())
    with pytest.raises(TypeError, match="expected_exception must be an exception class"):
        compile_filter("expected_exception", "ValueError")


def test_describe_filter():
    """Filters are described readably for repr."""
    assert describe_filter((ValueError, KeyError)) == "(ValueError, KeyError)"
    assert describe_filter(OSError) == "OSError"
    assert "is_control_flow" in describe_filter(is_control_flow)
