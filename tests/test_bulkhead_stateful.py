"""BulkheadCore against a reference model: Hypothesis drives enters, leaves, timeouts and cancels.

The model is a plain list-based queue. After every step the core must agree
with it on who holds a slot, who waits (in order) and every counter, and the
invariants must hold: never more than ``max_concurrent`` active, never more than
``max_queue`` waiting, and nobody waits while a slot is free.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from recoverly._bulkhead_core import FULL, BulkheadCore, Waiter


class Recorded(Waiter):
    """A waiter that records the order in which waiters were woken."""

    __slots__ = ("log", "number")

    def __init__(self, number: int, log: list[int]) -> None:
        super().__init__()
        self.number = number
        self.log = log

    def wake(self) -> None:
        self.log.append(self.number)


class BulkheadModel(RuleBasedStateMachine):
    """Random operations on one core, checked step by step against a simple model."""

    def __init__(self) -> None:
        super().__init__()
        self.core = BulkheadCore(1, 0)
        self.limit = 1
        self.queue_limit: int | None = 0
        self.woken: list[int] = []
        self.expected_woken: list[int] = []
        self.active = 0
        self.waiting: list[Recorded] = []
        self.admitted = self.rejected = self.timed_out = 0
        self.made = 0

    @initialize(limit=st.integers(1, 4), queue_limit=st.none() | st.integers(0, 4))
    def configure(self, limit: int, queue_limit: int | None) -> None:
        self.core = BulkheadCore(limit, queue_limit)
        self.limit, self.queue_limit = limit, queue_limit

    def _make(self) -> Recorded:
        self.made += 1
        return Recorded(self.made, self.woken)

    @rule()
    def enter(self) -> None:
        got = self.core.enter(self._make)
        if self.active < self.limit:
            assert got is None
            self.active += 1
            self.admitted += 1
        elif self.queue_limit is not None and len(self.waiting) >= self.queue_limit:
            assert got is FULL
            self.rejected += 1
        else:
            assert isinstance(got, Recorded)
            self.waiting.append(got)

    @precondition(lambda self: self.active > 0)
    @rule()
    def leave(self) -> None:
        self.core.leave()
        if self.waiting:
            first = self.waiting.pop(0)
            self.expected_woken.append(first.number)
            self.admitted += 1
        else:
            self.active -= 1

    @precondition(lambda self: bool(self.waiting))
    @rule(data=st.data(), cancelled=st.booleans())
    def stop_waiting(self, data: st.DataObject, cancelled: bool) -> None:
        waiter = data.draw(st.sampled_from(self.waiting))
        kept = self.core.abandon(waiter) if cancelled else self.core.time_out(waiter)
        assert not kept  # a waiter still in the queue was not granted anything
        self.waiting.remove(waiter)
        if not cancelled:
            self.rejected += 1
            self.timed_out += 1

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert self.core.snapshot() == (
            self.active,
            len(self.waiting),
            self.admitted,
            self.rejected,
            self.timed_out,
        )
        assert list(self.core.queue) == self.waiting
        assert self.woken == self.expected_woken

    @invariant()
    def limits_hold(self) -> None:
        active, queued, *_ = self.core.snapshot()
        assert active <= self.limit
        assert self.queue_limit is None or queued <= self.queue_limit
        assert queued == 0 or active == self.limit


BulkheadModel.TestCase.settings = settings(max_examples=60, stateful_step_count=40)
test_bulkhead_core_matches_the_reference_model = BulkheadModel.TestCase
