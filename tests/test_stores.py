"""BreakerStore: the interface, the in-memory store and the state core it wraps."""

from __future__ import annotations

import math

import pytest

from recoverly._breaker_state import BreakerConfig, BreakerCore
from recoverly._core.clock import MAX_SLEEP
from recoverly.circuit_breaker import CircuitBreaker
from recoverly.errors import CircuitState
from recoverly.stores import (
    NOT_OPEN,
    REJECTED,
    BreakerStore,
    InMemoryBreakerStore,
    Transition,
)
from recoverly.testing import ManualClock

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


def bound(clock: ManualClock, **settings) -> InMemoryBreakerStore:
    store = InMemoryBreakerStore()
    store.bind(BreakerConfig(**settings), clock)
    return store


def test_in_memory_store_satisfies_the_protocol():
    """InMemoryBreakerStore is a BreakerStore (runtime-checkable protocol)."""
    assert isinstance(InMemoryBreakerStore(), BreakerStore)


def test_unbound_store_refuses_operations_and_binds_only_once(clock):
    """Operations before bind() and a second bind() raise RuntimeError."""
    store = InMemoryBreakerStore()
    assert repr(store) == "<InMemoryBreakerStore unbound>"
    with pytest.raises(RuntimeError, match="not bound"):
        store.acquire()
    store.bind(BreakerConfig(), clock)
    with pytest.raises(RuntimeError, match="already belongs"):
        store.bind(BreakerConfig(), clock)
    assert repr(store) == "<InMemoryBreakerStore CLOSED generation=0>"


def test_failures_open_the_store_with_one_transition(clock):
    """The threshold-th failure returns a CLOSED -> OPEN transition carrying the timeout."""
    store = bound(clock, failure_threshold=2, recovery_timeout=30.0)
    permit, state, _, _ = store.acquire()
    assert (permit, state) == (0, CLOSED)
    assert store.on_failure(permit, 0.0) == ()
    assert store.on_failure(permit, 0.0) == (Transition(CLOSED, OPEN, 2, 30.0),)
    assert store.acquire() == (REJECTED, OPEN, 30.0, ())


def test_fast_hint_is_the_generation_only_while_closed_and_clean(clock):
    """`fast` is published while CLOSED with no failure, and -1 otherwise."""
    store = bound(clock, failure_threshold=3)
    assert store.fast == 0
    store.on_failure(0, 0.0)
    assert store.fast == -1
    store.on_success(0, 0.0)
    assert store.fast == 0


def test_reject_until_hint_follows_open_and_forced_open(clock):
    """`reject_until` is the end of OPEN, inf while FORCED_OPEN, NOT_OPEN otherwise."""
    store = bound(clock, failure_threshold=1, recovery_timeout=5.0)
    assert store.reject_until == NOT_OPEN
    store.on_failure(0, 0.0)
    assert store.reject_until == 5.0
    store.force(CircuitState.FORCED_OPEN)
    assert store.reject_until == math.inf
    store.force(CLOSED)
    assert store.reject_until == NOT_OPEN


def test_open_store_moves_to_half_open_and_hands_out_one_probe(clock):
    """After the timeout, acquire() half-opens, admits one probe and rejects the next."""
    store = bound(clock, failure_threshold=1, recovery_timeout=5.0)
    store.on_failure(0, 0.0)
    clock.advance(5.0)
    permit, state, _, changes = store.acquire()
    assert (state, changes) == (HALF_OPEN, (Transition(OPEN, HALF_OPEN),))
    assert store.acquire()[:2] == (REJECTED, HALF_OPEN)
    store.release(permit)
    assert store.acquire()[:2] == (permit, HALF_OPEN)


def test_stale_permits_do_not_move_the_store(clock):
    """An outcome from an earlier generation is ignored (but a failure is still tallied)."""
    store = bound(clock, failure_threshold=1, recovery_timeout=5.0)
    old = store.acquire()[0]
    store.on_failure(old, 0.0)  # opens: generation 1
    clock.advance(5.0)
    probe = store.acquire()[0]  # half-open: generation 2
    assert store.on_failure(old, 0.0) == ()
    assert store.on_success(old, 0.0) == ()
    assert store.snapshot().state is HALF_OPEN
    assert store.snapshot().failed_calls == 2
    assert store.on_success(probe, 0.0) == (Transition(HALF_OPEN, CLOSED),)


def test_release_outside_half_open_changes_nothing(clock):
    """release() of a CLOSED permit is a no-op."""
    store = bound(clock)
    store.release(0)
    assert store.snapshot().probes_in_flight == 0
    assert store.snapshot().generation == 0


def test_poll_half_opens_when_due_and_is_lock_free_while_closed(clock):
    """poll() reports CLOSED as is, and turns a due OPEN into HALF_OPEN."""
    store = bound(clock, failure_threshold=1, recovery_timeout=2.0)
    assert store.poll() == (CLOSED, ())
    store.on_failure(0, 0.0)
    assert store.poll() == (OPEN, ())
    clock.advance(2.0)
    assert store.poll() == (HALF_OPEN, (Transition(OPEN, HALF_OPEN),))


def test_force_to_the_same_state_reports_no_transition(clock):
    """Forcing the state it already has returns no transition."""
    store = bound(clock)
    assert store.force(CLOSED) == ()
    assert store.force(CircuitState.DISABLED) == (Transition(CLOSED, CircuitState.DISABLED),)
    assert store.force(CircuitState.DISABLED) == ()


def test_snapshot_reports_window_totals_and_time_to_probe(clock):
    """snapshot() includes the window's totals and retry_after while OPEN."""
    store = bound(
        clock,
        failure_threshold=None,
        failure_rate_threshold=0.5,
        minimum_calls=4,
        window_size=4,
        recovery_timeout=10.0,
    )
    store.on_success(0, 0.0)
    store.on_failure(0, 0.0)
    snap = store.snapshot()
    assert (snap.window_calls, snap.window_failures, snap.retry_after) == (2, 1, None)
    store.on_failure(0, 0.0)
    store.on_success(0, 0.0)  # 2 of 4 failed: opens
    clock.advance(4.0)
    snap = store.snapshot()
    assert snap.state is OPEN
    assert snap.retry_after == pytest.approx(6.0)


def test_time_window_store_reads_the_clock_for_each_outcome(clock):
    """A time window forgets outcomes older than its span."""
    store = bound(
        clock,
        failure_threshold=None,
        failure_rate_threshold=1.0,
        minimum_calls=3,
        window_type="time",
        window_size=10.0,
    )
    store.on_failure(0, 0.0)
    store.on_failure(0, 0.0)
    clock.advance(20.0)
    store.on_failure(0, 0.0)
    assert store.snapshot().state is CLOSED
    assert store.snapshot().window_calls == 1


def test_core_open_duration_grows_and_is_capped():
    """open_duration multiplies by recovery_backoff per trip, up to the cap, without overflow."""
    config = BreakerConfig(recovery_timeout=1.0, recovery_backoff=2.0, max_recovery_timeout=5.0)
    assert [config.open_duration(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    unbounded = BreakerConfig(recovery_timeout=1.0, recovery_backoff=10.0)
    assert unbounded.open_duration(10_000) == MAX_SLEEP


def test_core_is_usable_without_a_store():
    """BreakerCore decides on its own with an injected time source (sans-I/O)."""
    now = [0.0]
    core = BreakerCore(BreakerConfig(failure_threshold=1, recovery_timeout=1.0), lambda: now[0])
    core.failure(0, 0.0)
    assert core.acquire()[0] == REJECTED
    now[0] = 1.0
    assert core.poll()[0] is HALF_OPEN


class RecordingStore(InMemoryBreakerStore):
    """An in-memory store that logs which operations the breaker asks for."""

    __slots__ = ("ops",)

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def acquire(self):
        self.ops.append("acquire")
        return super().acquire()

    def on_success(self, permit, duration):
        self.ops.append("on_success")
        return super().on_success(permit, duration)

    def on_failure(self, permit, duration):
        self.ops.append("on_failure")
        return super().on_failure(permit, duration)


def test_breaker_uses_an_injected_store_and_skips_it_on_the_fast_path(clock):
    """A custom store sees failures; a CLOSED success after a clean state is not reported."""
    store = RecordingStore()
    breaker = CircuitBreaker(failure_threshold=3, store=store, clock=clock)

    @breaker
    def work(fail: bool) -> str:
        if fail:
            raise ConnectionError("down")
        return "ok"

    assert work(False) == "ok"
    assert store.ops == []  # the CLOSED success path does not touch the store
    with pytest.raises(ConnectionError):
        work(True)
    assert work(False) == "ok"  # clears the count: this one is reported
    assert store.ops == ["on_failure", "acquire", "on_success"]
    assert breaker.store is store


def test_breaker_rejects_a_store_that_is_not_a_breaker_store():
    """store= must implement BreakerStore."""
    with pytest.raises(TypeError, match="store must be a BreakerStore"):
        CircuitBreaker(store=object())  # type: ignore[arg-type]
