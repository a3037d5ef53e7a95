"""retrying(): the block form of retry, sync and async."""

from __future__ import annotations

import pytest

from recoverly import Retry, retrying


class Transient(Exception):
    """A retryable error for tests."""


def test_block_is_retried_until_it_succeeds(recoverly_clock):
    """A failing block runs again after each wait and the loop ends on success."""
    numbers = []
    for attempt in retrying(max_attempts=5, delay=1.0):
        with attempt:
            numbers.append(attempt.number)
            if attempt.number < 3:
                raise Transient
    assert numbers == [1, 2, 3]
    assert recoverly_clock.sleeps == [1.0, 2.0]


def test_last_failure_propagates_out_of_the_loop():
    """When attempts run out the last exception leaves the for loop unchanged."""
    errors = []
    with pytest.raises(Transient) as info:
        for attempt in retrying(max_attempts=3, delay=0):
            with attempt:
                errors.append(Transient(attempt.number))
                raise errors[-1]
    assert info.value is errors[-1]
    assert len(errors) == 3


def test_non_matching_exception_propagates_at_once():
    """An exception outside `exceptions` ends the loop on the first attempt."""
    runs = 0
    with pytest.raises(KeyError):
        for attempt in retrying(max_attempts=3, delay=0, exceptions=Transient):
            with attempt:
                runs += 1
                raise KeyError("x")
    assert runs == 1


def test_first_success_runs_once(recoverly_clock):
    """A block that succeeds runs once and never sleeps."""
    runs = 0
    for attempt in retrying(max_attempts=3):
        with attempt:
            runs += 1
    assert runs == 1
    assert recoverly_clock.sleeps == []


def test_a_ready_policy_can_drive_the_loop():
    """retrying(policy) reuses a Retry object and feeds its statistics."""
    policy = Retry(max_attempts=2, delay=0, name="block")
    for attempt in retrying(policy):
        with attempt:
            if attempt.number == 1:
                raise Transient
    assert policy.statistics().recovered == 1
    assert "Attempt 2" in repr(attempt)


def test_loop_without_entering_the_attempt_stops():
    """An attempt that is never entered ends the loop instead of spinning."""
    seen = [a.number for a in retrying(max_attempts=3)]
    assert seen == [1]


@pytest.mark.anyio
async def test_async_for_waits_on_the_async_clock(recoverly_clock):
    """async for sleeps through the clock's asleep and retries the block."""
    numbers = []
    async for attempt in retrying(max_attempts=4, delay=0.5, strategy="fixed"):
        with attempt:
            numbers.append(attempt.number)
            if attempt.number < 4:
                raise Transient
    assert numbers == [1, 2, 3, 4]
    assert recoverly_clock.sleeps == [0.5, 0.5, 0.5]
