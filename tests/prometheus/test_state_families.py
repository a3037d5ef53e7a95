"""recoverly.prometheus: families read at scrape time (bulkheads, rate limiters, pool monitors).

Also the event families added for alerting: lost COMMITs by verdict and dead letters.
"""

from __future__ import annotations

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, generate_latest

import recoverly
import recoverly.prometheus as rp
from recoverly import BulkheadFullError, RateLimitExceeded, events
from recoverly._core.bus import BUS


@pytest.fixture
def registry():
    """A private registry with the exporter installed; uninstalled afterwards."""
    reg = CollectorRegistry()
    handle = rp.install(reg)
    yield reg
    handle.uninstall()


def value(reg, metric, /, **labels):
    """The sample's value, or None when the series does not exist."""
    return reg.get_sample_value(metric, labels)


def test_named_bulkhead_reports_occupancy_and_admissions(registry):
    """One call inside a 1-slot bulkhead, one turned away: active 1, admitted 1, rejected 1."""
    bulkhead = recoverly.Bulkhead(1, 0, name="thumbnails")
    with bulkhead:
        assert value(registry, "recoverly_bulkhead_active", name="thumbnails") == 1
        assert value(registry, "recoverly_bulkhead_max_concurrent", name="thumbnails") == 1
        assert value(registry, "recoverly_bulkhead_queued", name="thumbnails") == 0
        with pytest.raises(BulkheadFullError), bulkhead:
            pass
    assert value(registry, "recoverly_bulkhead_active", name="thumbnails") == 0
    requests = "recoverly_bulkhead_requests_total"
    assert value(registry, requests, name="thumbnails", outcome="admitted") == 1
    assert value(registry, requests, name="thumbnails", outcome="rejected") == 1
    # the event family agrees
    assert (
        value(
            registry,
            "recoverly_rejections_total",
            strategy="bulkhead",
            name="thumbnails",
            reason="full",
        )
        == 1
    )


def test_unnamed_bulkhead_is_not_listed(registry):
    """Only named bulkheads are in recoverly.bulkheads(), so only they are reported."""
    bulkhead = recoverly.Bulkhead(2)
    with bulkhead:
        text = generate_latest(registry).decode()
    assert "recoverly_bulkhead_active{" not in text


def test_named_rate_limiter_reports_admitted_and_rejected(registry, clock):
    """A burst of 2: two acquisitions granted, the third refused."""
    limiter = recoverly.RateLimiter(1, 60, burst=2, name="partner-api", clock=clock)
    assert [limiter.try_acquire() for _ in range(3)] == [True, True, False]
    with pytest.raises(RateLimitExceeded):
        limiter.acquire(timeout=0)
    requests = "recoverly_rate_limiter_requests_total"
    assert value(registry, requests, name="partner-api", outcome="admitted") == 2
    assert value(registry, requests, name="partner-api", outcome="rejected") == 2


def test_lost_commit_resolutions_are_counted_by_verdict_and_method(registry):
    """CommitResolved adds one to commit_resolutions_total{verdict, method}."""
    BUS.emit(events.CommitResolved("orders", "unknown", "commit_marker", ConnectionError()))
    BUS.emit(events.CommitResolved("orders", "committed", "xact_status", ConnectionError()))
    family = "recoverly_commit_resolutions_total"
    assert value(registry, family, name="orders", verdict="unknown", method="commit_marker") == 1
    assert value(registry, family, name="orders", verdict="committed", method="xact_status") == 1


def test_dead_letters_are_counted_by_task_name_not_key(registry):
    """DeadLettered is counted in events_total under the task name; the key is no label."""
    BUS.emit(events.DeadLettered("tasks.train", "run-1234", 3))
    assert value(registry, "recoverly_events_total", event="DeadLettered", name="tasks.train") == 1
    assert "run-1234" not in generate_latest(registry).decode()


class TestPoolMonitor:
    """An open ConnectionPoolMonitor on a real SQLite QueuePool is read at every scrape."""

    @pytest.fixture
    def engine(self, sqlite_url):
        sa = pytest.importorskip("sqlalchemy")
        pytest.importorskip("recoverly.db")
        engine = sa.create_engine(sqlite_url, pool_size=2, max_overflow=0, pool_timeout=1)
        yield engine
        engine.dispose()

    def test_utilisation_leaks_waits_and_invalidations(self, registry, engine, clock):
        """Two of two connections out: utilisation 1.0; 10 s later both count as leaked."""
        from recoverly.db import ConnectionPoolMonitor

        monitor = ConnectionPoolMonitor(engine, leak_timeout=5, name="orders-db", clock=clock)
        first, second = engine.connect(), engine.connect()
        try:
            assert value(registry, "recoverly_pool_checked_out", name="orders-db") == 2
            assert value(registry, "recoverly_pool_capacity", name="orders-db") == 2
            assert value(registry, "recoverly_pool_utilization", name="orders-db") == 1.0
            assert value(registry, "recoverly_pool_leaked_connections", name="orders-db") == 0
            clock.advance(10)
            assert value(registry, "recoverly_pool_leaked_connections", name="orders-db") == 2
            waits = "recoverly_pool_checkout_wait_seconds_count"
            assert value(registry, waits, name="orders-db") == 2
            first.invalidate()
        finally:
            first.close()
            second.close()
        assert value(registry, "recoverly_pool_checked_out", name="orders-db") == 0
        assert value(registry, "recoverly_pool_leaked_connections", name="orders-db") == 0
        invalidations = "recoverly_pool_invalidations_total"
        assert value(registry, invalidations, name="orders-db", in_use="true") == 1
        assert value(registry, invalidations, name="orders-db", in_use="false") == 0
        monitor.close()
        assert value(registry, "recoverly_pool_checked_out", name="orders-db") is None

    def test_without_leak_timeout_there_is_no_leak_series(self, registry, engine):
        """leak_timeout=None: leak detection is off, so no leak gauge (not a misleading 0)."""
        from recoverly.db import ConnectionPoolMonitor

        with ConnectionPoolMonitor(engine, name="reports-db"):
            assert value(registry, "recoverly_pool_checked_out", name="reports-db") == 0
            assert value(registry, "recoverly_pool_leaked_connections", name="reports-db") is None

    def test_unbounded_pool_has_no_capacity_or_utilisation(self, registry, sqlite_url):
        """A NullPool cannot be exhausted: checked_out only, no capacity, no utilisation."""
        sa = pytest.importorskip("sqlalchemy")
        from recoverly.db import ConnectionPoolMonitor

        engine = sa.create_engine(sqlite_url, poolclass=sa.pool.NullPool)
        try:
            with ConnectionPoolMonitor(engine, name="nullpool-db"), engine.connect():
                assert value(registry, "recoverly_pool_checked_out", name="nullpool-db") == 1
                assert value(registry, "recoverly_pool_capacity", name="nullpool-db") is None
                assert value(registry, "recoverly_pool_utilization", name="nullpool-db") is None
        finally:
            engine.dispose()
