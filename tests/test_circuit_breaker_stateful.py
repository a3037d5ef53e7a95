"""A Hypothesis state machine drives a breaker and a tiny reference model side by side."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from recoverly._core.registry import REGISTRY
from recoverly.circuit_breaker import CircuitBreaker
from recoverly.errors import CircuitBreakerError, CircuitState
from recoverly.testing import ManualClock

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
FORCED_OPEN, DISABLED = CircuitState.FORCED_OPEN, CircuitState.DISABLED


class Counted(Exception):
    """Counts as a failure."""


class Ignored(Exception):
    """Propagates without counting."""


class Model:
    """The breaker's rules, written as plainly as possible."""

    def __init__(self, threshold: int, timeout: float, backoff: float, cap: float) -> None:
        self.threshold, self.timeout, self.backoff, self.cap = threshold, timeout, backoff, cap
        self.state = CLOSED
        self.failures = 0
        self.trips = 0
        self.open_until = 0.0

    def due(self, now: float) -> None:
        if self.state is OPEN and now >= self.open_until:
            self.state = HALF_OPEN

    def trip(self, now: float) -> None:
        self.trips += 1
        self.open_until = now + min(self.timeout * self.backoff ** (self.trips - 1), self.cap)
        self.state = OPEN

    def call(self, outcome: str, now: float) -> str:
        """Return "rejected" or the outcome, updating the model."""
        self.due(now)
        if self.state in (OPEN, FORCED_OPEN):
            return "rejected"
        if self.state is DISABLED or outcome == "ignored":
            return outcome
        if outcome == "ok":
            self.failures = 0
            if self.state is HALF_OPEN:
                self.state, self.trips = CLOSED, 0
            return outcome
        self.failures += 1
        if self.state is HALF_OPEN or self.failures >= self.threshold:
            self.trip(now)
        return outcome

    def reset(self) -> None:
        self.state, self.failures, self.trips = CLOSED, 0, 0


class BreakerMachine(RuleBasedStateMachine):
    """Random calls, clock moves and manual controls; breaker and model must agree."""

    @initialize(
        threshold=st.integers(1, 3),
        timeout=st.sampled_from([1.0, 2.0, 5.0]),
        backoff=st.sampled_from([1.0, 2.0]),
    )
    def build(self, threshold: int, timeout: float, backoff: float) -> None:
        self.clock = ManualClock()
        cap = timeout * 4
        self.model = Model(threshold, timeout, backoff, cap)
        self.breaker = CircuitBreaker(
            failure_threshold=threshold,
            recovery_timeout=timeout,
            expected_exception=Counted,
            recovery_backoff=backoff,
            max_recovery_timeout=cap,
            clock=self.clock,
        )

        @self.breaker
        def work(outcome: str) -> str:
            if outcome == "counted":
                raise Counted
            if outcome == "ignored":
                raise Ignored
            return outcome

        self.work = work

    @rule(outcome=st.sampled_from(["ok", "counted", "ignored"]))
    def call(self, outcome: str) -> None:
        expected = self.model.call(outcome, self.clock.monotonic())
        try:
            actual = self.work(outcome)
        except CircuitBreakerError:
            actual = "rejected"
        except Counted:
            actual = "counted"
        except Ignored:
            actual = "ignored"
        assert actual == expected

    @rule(seconds=st.sampled_from([0.5, 2.0, 20.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def read_state(self) -> None:
        self.model.due(self.clock.monotonic())
        assert self.breaker.state is self.model.state

    @rule()
    def reset(self) -> None:
        self.breaker.reset()
        self.model.reset()

    @rule()
    def force_open(self) -> None:
        self.breaker.force_open()
        self.model.state = FORCED_OPEN

    @rule()
    def disable(self) -> None:
        self.breaker.disable()
        self.model.state = DISABLED

    @invariant()
    def agrees_with_the_model(self) -> None:
        stats = self.breaker.statistics()  # reads without moving OPEN to HALF_OPEN
        assert stats.state is self.model.state
        if self.model.state in (CLOSED, HALF_OPEN, OPEN):
            assert stats.failure_count == self.model.failures
        if self.model.state is OPEN:
            left = self.model.open_until - self.clock.monotonic()
            assert stats.retry_after == pytest.approx(max(0.0, left))

    def teardown(self) -> None:
        REGISTRY.clear()


BreakerMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_breaker_matches_the_reference_model = BreakerMachine.TestCase
