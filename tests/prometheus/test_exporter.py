"""recoverly.prometheus: exact samples after real strategy calls, caps, isolation."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, generate_latest

import recoverly
import recoverly.prometheus as rp
from recoverly import CircuitBreaker, CircuitBreakerError, events
from recoverly._core import telemetry
from recoverly._core.bus import BUS


@pytest.fixture
def registry():
    """A private registry with the exporter installed; uninstalled afterwards."""
    reg = CollectorRegistry()
    handle = rp.install(reg)
    yield reg
    handle.uninstall()


def value(reg, metric, /, **labels):
    """The sample's value, 0.0 when the series does not exist."""
    return reg.get_sample_value(metric, labels) or 0.0


def flaky(failures, exc=ConnectionError):
    """A function that raises ``exc`` ``failures`` times, then returns 'ok'."""
    left = [failures]

    def call():
        if left[0]:
            left[0] -= 1
            raise exc("backend said no to user 42")
        return "ok"

    return call


def test_retry_that_recovers_counts_retries_delays_and_the_outcome(registry):
    """Two failures then success: 2 retries by error class, delays 0.5+1.0, one 'succeeded'."""
    fetch = recoverly.retry(3, 0.5, 2.0, name="fetch")(flaky(2))
    assert fetch() == "ok"
    assert value(registry, "recoverly_retries_total", name="fetch", error="ConnectionError") == 2
    assert (
        value(
            registry, "recoverly_retry_outcomes_total", name="fetch", outcome="succeeded", reason=""
        )
        == 1
    )
    assert value(registry, "recoverly_retry_delay_seconds_count", name="fetch") == 2
    assert value(registry, "recoverly_retry_delay_seconds_sum", name="fetch") == 1.5
    assert value(registry, "recoverly_retry_delay_seconds_bucket", name="fetch", le="0.5") == 1
    assert value(registry, "recoverly_retry_delay_seconds_bucket", name="fetch", le="0.25") == 0
    assert value(registry, "recoverly_retry_delay_seconds_bucket", name="fetch", le="1.0") == 2
    assert value(registry, "recoverly_retry_delay_seconds_bucket", name="fetch", le="+Inf") == 2
    assert value(registry, "recoverly_events_total", event="RetryScheduled", name="fetch") == 2
    assert value(registry, "recoverly_events_total", event="RetrySucceeded", name="fetch") == 1


def test_retry_that_gives_up_counts_the_reason(registry):
    """Three failed attempts: 2 retries and one gave_up with reason 'attempts'."""
    fetch = recoverly.retry(3, 0.1, name="fetch")(flaky(5, TimeoutError))
    with pytest.raises(TimeoutError):
        fetch()
    assert value(registry, "recoverly_retries_total", name="fetch", error="TimeoutError") == 2
    assert (
        value(
            registry,
            "recoverly_retry_outcomes_total",
            name="fetch",
            outcome="gave_up",
            reason="attempts",
        )
        == 1
    )


def test_breaker_opening_sets_the_state_gauge_and_counts_transition_calls_rejections(
    registry, clock
):
    """Two failures open 'payments': gauge open=1, one closed->open, 2 failures, 1 rejection."""
    breaker = CircuitBreaker(2, 30, name="payments", clock=clock)
    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)
    with pytest.raises(CircuitBreakerError):
        breaker.call(lambda: 1)
    state = "recoverly_circuit_breaker_state"
    assert value(registry, state, name="payments", state="open") == 1
    assert value(registry, state, name="payments", state="closed") == 0
    assert (
        value(
            registry,
            "recoverly_circuit_breaker_transitions_total",
            name="payments",
            from_state="closed",
            to_state="open",
        )
        == 1
    )
    assert (
        value(
            registry,
            "recoverly_calls_total",
            strategy="circuit_breaker",
            name="payments",
            outcome="failure",
        )
        == 2
    )
    assert (
        value(
            registry,
            "recoverly_rejections_total",
            strategy="circuit_breaker",
            name="payments",
            reason="open",
        )
        == 1
    )


def test_breaker_recovery_is_counted_through_half_open_to_closed(registry, clock):
    """After the timeout a successful probe: open->half_open->closed, gauge closed=1."""
    breaker = CircuitBreaker(1, 10, name="search", clock=clock)
    with pytest.raises(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)
    clock.advance(10)
    assert breaker.call(lambda: "fine") == "fine"
    transitions = "recoverly_circuit_breaker_transitions_total"
    assert value(registry, transitions, name="search", from_state="open", to_state="half_open") == 1
    assert (
        value(registry, transitions, name="search", from_state="half_open", to_state="closed") == 1
    )
    assert value(registry, "recoverly_circuit_breaker_state", name="search", state="closed") == 1
    assert (
        value(
            registry,
            "recoverly_calls_total",
            strategy="circuit_breaker",
            name="search",
            outcome="success",
        )
        == 1
    )


def test_a_named_breaker_that_never_changed_is_reported_closed(registry):
    """A registered breaker appears in the state gauge before any event."""
    keep = CircuitBreaker(3, 5, name="quiet")
    assert value(registry, "recoverly_circuit_breaker_state", name="quiet", state="closed") == 1
    assert value(registry, "recoverly_circuit_breaker_state", name="quiet", state="open") == 0
    assert keep.state is recoverly.CircuitState.CLOSED


def test_fallback_is_counted_by_error_class(registry):
    """A fallback used twice after ValueError counts 2 under its name and error class."""

    @recoverly.fallback("default", name="config")
    def load():
        raise ValueError("bad file /etc/secret")

    assert load() == "default"
    assert load() == "default"
    assert (
        value(
            registry,
            "recoverly_fallbacks_total",
            name="config",
            strategy="fallback",
            error="ValueError",
        )
        == 2
    )


@pytest.mark.realtime
def test_timeout_is_counted(registry):
    """A call cut off after 0.05 s counts one timeout under its name."""

    @recoverly.timeout(0.05, name="slow")
    def slow():
        time.sleep(2)

    with pytest.raises(TimeoutError):
        slow()
    assert value(registry, "recoverly_timeouts_total", name="slow") == 1


class FakeConnection:
    """Anything with commit() and rollback()."""

    def __init__(self):
        self.rollbacks = 0

    def commit(self):
        pass

    def rollback(self):
        self.rollbacks += 1


def test_rolled_back_transaction_is_counted_by_error_class(registry):
    """A transaction failing with KeyError is rolled back once and counted once."""
    db = FakeConnection()
    with pytest.raises(KeyError), recoverly.TransactionManager(db, name="orders"):
        raise KeyError("row 12")
    assert db.rollbacks == 1
    assert (
        value(registry, "recoverly_transactions_rolled_back_total", name="orders", error="KeyError")
        == 1
    )


def test_batch_item_failures_are_counted(registry):
    """Two of five items fail for good: two batch item failures by error class."""

    def square(n):
        if n % 2:
            raise ArithmeticError(f"odd {n}")
        return n * n

    results, failures = recoverly.batch_with_retry(
        range(5), square, batch_size=5, max_retries=1, name="squares"
    )
    assert len(failures) == 2
    assert results == [0, 4, 16]
    assert (
        value(
            registry, "recoverly_batch_item_failures_total", name="squares", error="ArithmeticError"
        )
        == 2
    )


def test_database_retries_are_counted_by_error_class_and_failure_kind(registry):
    """A retried SQLite 'database is locked' error counts as a db retry of kind 'busy'."""
    pytest.importorskip("sqlalchemy")
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from recoverly.db import db_retry

    left = [1]

    @db_retry(max_attempts=2, delay=0.01, name="save_row")
    def save_row():
        if left[0]:
            left[0] -= 1
            raise OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
        return 1

    assert save_row() == 1
    assert (
        value(
            registry,
            "recoverly_db_retries_total",
            name="save_row",
            error="OperationalError",
            kind="busy",
        )
        == 1
    )
    assert (
        value(registry, "recoverly_retries_total", name="save_row", error="OperationalError") == 1
    )


def test_non_database_retries_are_not_db_retries(registry):
    """A ConnectionError retry leaves recoverly_db_retries_total empty."""
    recoverly.retry(2, 0.0, name="plain")(flaky(1))()
    assert "recoverly_db_retries_total{" not in generate_latest(registry).decode()


@dataclass(frozen=True, slots=True)
class CheckpointSaved(events.Event):
    """Shaped like the checkpoint event a training loop may emit."""

    step: int
    duration: float


@dataclass(frozen=True, slots=True)
class CheckpointSaveFailed(events.Event):
    step: int
    exception: BaseException


@dataclass(frozen=True, slots=True)
class BulkheadWaited(events.Event):
    waited: float


@dataclass(frozen=True, slots=True)
class RateLimitDelayed(events.Event):
    key: object
    tokens: int
    delay: float


@dataclass(frozen=True, slots=True)
class WarmupFinished(events.Event):
    """An event type the exporter has never heard of."""

    seconds: float


def test_events_added_by_other_modules_are_mapped_by_class_name(registry):
    """Checkpoint, bulkhead and rate-limit events count by shape; unknown ones in events_total."""
    BUS.emit(CheckpointSaved("trainer", 100, 0.25))
    BUS.emit(CheckpointSaved("trainer", 200, 0.75))
    BUS.emit(CheckpointSaveFailed("trainer", 300, OSError("disk full")))
    BUS.emit(BulkheadWaited("pool", 0.2))
    BUS.emit(RateLimitDelayed("api", "user-123", 1, 0.5))
    BUS.emit(WarmupFinished("trainer", 3.0))
    saves = "recoverly_checkpoint_saves_total"
    assert value(registry, saves, name="trainer", outcome="saved") == 2
    assert value(registry, saves, name="trainer", outcome="failed") == 1
    assert value(registry, "recoverly_checkpoint_save_duration_seconds_sum", name="trainer") == 1.0
    assert value(registry, "recoverly_bulkhead_wait_seconds_sum", name="pool") == pytest.approx(0.2)
    assert value(registry, "recoverly_rate_limit_delay_seconds_count", name="api") == 1
    assert value(registry, "recoverly_events_total", event="WarmupFinished", name="trainer") == 1
    # The rate-limit key (a user id) never becomes a label.
    assert "user-123" not in generate_latest(registry).decode()


def test_exception_messages_never_become_labels(registry):
    """Messages such as 'user 42' or file paths stay out of every label value."""
    recoverly.retry(2, 0.0, name="fetch")(flaky(1))()
    text = generate_latest(registry).decode()
    assert 'error="ConnectionError"' in text
    assert "user 42" not in text


def test_name_label_is_capped_and_the_overflow_counted():
    """With max_names=2, the third and fourth names count under '_other', overflow 2."""
    reg = CollectorRegistry()
    handle = rp.install(reg, max_names=2)
    try:
        for name in ("a", "b", "c", "d"):
            recoverly.retry(2, 0.0, name=name)(flaky(1))()
        retries = "recoverly_retries_total"
        assert value(reg, retries, name="a", error="ConnectionError") == 1
        assert value(reg, retries, name="b", error="ConnectionError") == 1
        assert value(reg, retries, name="_other", error="ConnectionError") == 2
        assert value(reg, retries, name="c", error="ConnectionError") == 0
        assert value(reg, "recoverly_label_overflow_total", label="name") == 4
    finally:
        handle.uninstall()


def test_error_label_is_capped():
    """With max_errors=1 a second exception class is folded into '_other'."""
    reg = CollectorRegistry()
    handle = rp.install(reg, max_errors=1)
    try:
        recoverly.retry(2, 0.0, name="x")(flaky(1, KeyError))()
        recoverly.retry(2, 0.0, name="x")(flaky(1, IndexError))()
        assert value(reg, "recoverly_retries_total", name="x", error="KeyError") == 1
        assert value(reg, "recoverly_retries_total", name="x", error="_other") == 1
    finally:
        handle.uninstall()


def test_a_failing_exporter_never_breaks_the_protected_call(registry, monkeypatch):
    """If recording fails the retried call still returns and the failures are counted."""

    def broken(event, limiter):
        raise RuntimeError("exporter bug")

    monkeypatch.setattr(telemetry, "measure", broken)
    assert recoverly.retry(3, 0.0, name="fetch")(flaky(2))() == "ok"
    # Two RetryScheduled and one RetrySucceeded could not be recorded.
    assert value(registry, "recoverly_exporter_errors_total") == 3
    assert value(registry, "recoverly_retries_total", name="fetch", error="ConnectionError") == 0


def test_installing_twice_shares_metrics_until_the_last_uninstall():
    """Two installs into one registry share a subscriber; the last uninstall removes it all."""
    reg = CollectorRegistry()
    first = rp.install(reg)
    second = rp.install(reg)
    recoverly.retry(2, 0.0, name="f")(flaky(1))()
    assert value(reg, "recoverly_retries_total", name="f", error="ConnectionError") == 1
    first.uninstall()
    first.uninstall()
    assert not first.installed
    assert second.installed
    recoverly.retry(2, 0.0, name="f")(flaky(1))()
    assert value(reg, "recoverly_retries_total", name="f", error="ConnectionError") == 2
    subscribed = len(events.subscribers())
    second.uninstall()
    assert len(events.subscribers()) == subscribed - 1
    assert list(reg.collect()) == []
    assert repr(second) == "<PrometheusExporter namespace='recoverly' uninstalled>"


def test_namespace_prefixes_every_family():
    """namespace='ml' names the families ml_*."""
    reg = CollectorRegistry()
    handle = rp.install(reg, namespace="ml")
    try:
        recoverly.retry(2, 0.0, name="f")(flaky(1))()
        assert value(reg, "ml_retries_total", name="f", error="ConnectionError") == 1
        assert all(m.name.startswith("ml_") for m in reg.collect())
    finally:
        handle.uninstall()


def test_bad_arguments_are_all_reported():
    """A bad namespace and caps below 1 are named in one ValueError."""
    with pytest.raises(ValueError) as info:
        rp.install(CollectorRegistry(), namespace="1bad", max_names=0, max_errors=0)
    text = str(info.value)
    assert "namespace" in text
    assert "max_names" in text
    assert "max_errors" in text
    with pytest.raises(TypeError, match="registry must be a CollectorRegistry"):
        rp.install(object())  # type: ignore[arg-type]


def test_bus_cleared_by_someone_else_is_joined_again_on_the_next_install():
    """After the bus lost the subscriber, installing again subscribes it again."""
    reg = CollectorRegistry()
    first = rp.install(reg)
    try:
        events.unsubscribe(first._exporter)  # what clearing the bus does
        second = rp.install(reg)
        recoverly.retry(2, 0.0, name="f")(flaky(1))()
        assert value(reg, "recoverly_retries_total", name="f", error="ConnectionError") == 1
        second.uninstall()
    finally:
        first.uninstall()


def test_breaker_tripped_before_install_is_reported_open(clock):
    """The state gauge tracks breakers even when the exporter is installed after they tripped."""
    breaker = CircuitBreaker(1, 60, name="late", clock=clock)
    with pytest.raises(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)
    reg = CollectorRegistry()
    handle = rp.install(reg)
    try:
        assert value(reg, "recoverly_circuit_breaker_state", name="late", state="open") == 1
    finally:
        handle.uninstall()


def test_known_state_values_match_the_circuit_states():
    """Every CircuitState has a series in the gauge (a state-set metric)."""
    reg = CollectorRegistry()
    handle = rp.install(reg)
    try:
        keep = CircuitBreaker(name="all-states")
        samples = [
            s
            for m in reg.collect()
            for s in m.samples
            if s.name == "recoverly_circuit_breaker_state" and s.labels["name"] == "all-states"
        ]
        assert sorted(s.labels["state"] for s in samples) == sorted(
            st.value for st in recoverly.CircuitState
        )
        assert sum(s.value for s in samples) == 1
        del keep
    finally:
        handle.uninstall()


def test_calls_false_keeps_the_breaker_success_path_silent(clock):
    """calls=False: no per-call series, nobody listens for CallSucceeded; other events count."""
    reg = CollectorRegistry()
    handle = rp.install(reg, calls=False)
    try:
        assert not BUS.wants(events.CallSucceeded)
        assert not BUS.wants(events.CallFailed)
        assert BUS.wants(events.CircuitOpened)
        assert BUS.wants(WarmupFinished)  # classes defined elsewhere still arrive
        breaker = CircuitBreaker(1, 30, name="quiet", clock=clock)
        breaker.call(lambda: 1)
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)
        text = generate_latest(reg).decode()
        assert "recoverly_calls_total{" not in text
        transitions = "recoverly_circuit_breaker_transitions_total"
        assert value(reg, transitions, name="quiet", from_state="closed", to_state="open") == 1
    finally:
        handle.uninstall()


def test_installing_again_with_other_settings_is_refused():
    """A second install into the same registry must use the same settings."""
    reg = CollectorRegistry()
    handle = rp.install(reg)
    try:
        with pytest.raises(ValueError, match="already installed"):
            rp.install(reg, calls=False)
    finally:
        handle.uninstall()


def test_real_checkpoint_saves_are_exported(registry, tmp_path):
    """A CheckpointManager save shows up as a saved checkpoint with its duration."""
    pytest.importorskip("numpy", reason="recoverly.training needs NumPy")
    from recoverly.training import CheckpointManager

    manager = CheckpointManager(tmp_path, name="trainer")
    manager.save(1, {"w": [1.0, 2.0]})
    manager.save(2, {"w": [3.0, 4.0]})
    saves = "recoverly_checkpoint_saves_total"
    assert value(registry, saves, name="trainer", outcome="saved") == 2
    assert value(registry, "recoverly_checkpoint_save_duration_seconds_count", name="trainer") == 2


def test_pool_autoscaler_resizes_are_counted_by_direction_and_reason(registry, sqlite_url):
    """A real PoolAutoscaler growing then shrinking a SQLite pool adds one sample each."""
    sa = pytest.importorskip("sqlalchemy")
    from recoverly.db import PoolAutoscaler
    from recoverly.testing import ManualClock

    engine = sa.create_engine(sqlite_url, pool_size=1, max_overflow=0)
    clock = ManualClock()
    scaler = PoolAutoscaler(
        engine, max_size=4, grow_after=1, shrink_after=5, interval=None, name="orders", clock=clock
    )
    conn = engine.connect()
    clock.advance(1)
    assert scaler.tick() == 2
    conn.close()
    clock.advance(10)
    assert scaler.tick() == 1
    resizes = "recoverly_pool_resizes_total"
    assert value(registry, resizes, name="orders", direction="grow", reason="busy") == 1
    assert value(registry, resizes, name="orders", direction="shrink", reason="idle") == 1
    assert value(registry, "recoverly_events_total", event="PoolResized", name="orders") == 2
    scaler.close()
    engine.dispose()
