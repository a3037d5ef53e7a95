"""Drive every strategy the exporter reports on, for real, and scrape what it exported.

Shared by the Grafana dashboard test and the alert rules test: both check that the
metric names and label values they query are ones a real exporter produces.
"""

from __future__ import annotations

import errno
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import recoverly
import recoverly.prometheus as rp
from recoverly import (
    AdaptiveThrottle,
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitBreakerError,
    RateLimiter,
    RetryBudget,
    ThrottledError,
    events,
)
from recoverly._core.bus import BUS
from recoverly.testing import ManualClock

Scrape = dict[str, list[dict[str, str]]]


def scrape(registry: CollectorRegistry) -> Scrape:
    """Every sample name the registry exposes now, with the label sets it has."""
    found: Scrape = {}
    for family in registry.collect():
        for sample in family.samples:
            found.setdefault(sample.name, []).append(dict(sample.labels))
    return found


def _retries(clock: ManualClock) -> None:
    left = [2]

    @recoverly.retry(3, 0.1, name="payments")
    def payments() -> str:
        if left[0]:
            left[0] -= 1
            raise ConnectionError
        return "ok"

    assert payments() == "ok"
    with pytest.raises(KeyError):
        recoverly.retry(2, 0.0, name="lookup")(lambda: {}["x"])()
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, clock=clock)
    with pytest.raises(TimeoutError):
        recoverly.retry(3, 0.0, name="reindex", budget=budget)(_raise(TimeoutError))()
    recoverly.fallback(0, name="price")(lambda: 1 / 0)()


def _raise(kind: type[BaseException]) -> Callable[[], object]:
    def fail() -> object:
        raise kind

    return fail


def _breaker_and_throttle(clock: ManualClock) -> None:
    breaker = CircuitBreaker(1, 30, name="payments", clock=clock)
    assert breaker.call(lambda: 1) == 1
    with pytest.raises(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)
    with pytest.raises(CircuitBreakerError):
        breaker.call(lambda: 1)
    clock.advance(31)
    assert breaker.call(lambda: 2) == 2  # the probe closes it: half_open -> closed
    throttle = AdaptiveThrottle(2.0, 60, name="ranker", clock=clock, random=lambda: 0.0)
    backend = throttle(_raise(ConnectionError))
    with pytest.raises(ConnectionError):
        backend()
    with pytest.raises(ThrottledError):
        backend()


def _bulkhead_and_limiter(clock: ManualClock) -> list[object]:
    """Returns the bulkhead and limiter: they are read at scrape time while alive."""
    bulkhead = Bulkhead(1, 0, name="thumbnails", clock=clock)
    with bulkhead, pytest.raises(BulkheadFullError), bulkhead:
        pass
    limiter = RateLimiter(1, 60, burst=1, name="partner-api", clock=clock)
    assert [limiter.try_acquire(), limiter.try_acquire()] == [True, False]
    limiter.acquire(timeout=120)  # sleeps 60 s on the manual clock: RateLimitDelayed
    # A queued bulkhead call needs a second thread holding the slot; its event is emitted
    # as the bulkhead emits it.
    BUS.emit(events.BulkheadWaited("thumbnails", 0.1))
    return [bulkhead, limiter]


def _transactions_and_batches() -> None:
    class Db:
        def commit(self) -> None:
            pass

        def rollback(self) -> None:
            pass

    with pytest.raises(ValueError), recoverly.TransactionManager(Db(), name="orders"):
        raise ValueError
    recoverly.batch_with_retry([1], lambda n: 1 / n - 1 / 0, max_retries=0, name="batch")
    BUS.emit(events.TimedOut("slow", 1.0))  # a real timeout would wait on the real clock


@contextmanager
def _database(tmp_path: Path, clock: ManualClock) -> Iterator[None]:
    """A monitored SQLite pool with a leaked connection, a database retry, lost COMMITs."""
    sa = pytest.importorskip("sqlalchemy")
    from sqlalchemy.orm import sessionmaker

    from recoverly.db import ConnectionPoolMonitor, install_commit_markers, run_transaction
    from recoverly.db._transaction_unit import Unit
    from recoverly.db.errors import CommitOutcomeUnknown

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'drive.db'}", pool_size=2, max_overflow=0)
    monitor = ConnectionPoolMonitor(engine, leak_timeout=5, name="orders-db", clock=clock)
    held = engine.connect()
    try:
        clock.advance(10)  # `held` is now a leak
        held.invalidate()
        left = [1]

        @recoverly.retry(2, 0.0, name="save_row")
        def save_row() -> int:
            if left[0]:
                left[0] -= 1
                raise sa.exc.OperationalError(
                    "x", {}, sqlite3.OperationalError("database is locked")
                )
            return 1

        save_row()
        # A COMMIT that lands, then its connection drops: resolved by the commit marker.
        install_commit_markers(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE items (id int PRIMARY KEY)"))
        dropped: list[int] = []

        @sa.event.listens_for(engine, "commit")
        def commit_then_drop(conn: Any) -> None:
            if not dropped:
                dropped.append(1)
                raw = conn.connection.dbapi_connection
                raw.commit()
                raw.close()

        def add(session: Any) -> str:
            session.execute(sa.text("INSERT INTO items (id) VALUES (1)"))
            return "added"

        sessions = sessionmaker(engine)
        assert run_transaction(sessions, add, commit_marker=True, name="orders") == "added"
        assert dropped == [1]
        # A resolver that cannot tell: the verdict run_transaction reports as unknown.
        unit = Unit("orders", sessionmaker(engine), None, False, None)
        with pytest.raises(CommitOutcomeUnknown):
            unit.settle(ConnectionError("lost during COMMIT"), None, None)
        yield
    finally:
        held.close()
        monitor.close()
        engine.dispose()


def _checkpoints(tmp_path: Path, clock: ManualClock) -> None:
    pytest.importorskip("numpy")
    from recoverly.training import CheckpointManager
    from recoverly.training.storage import LocalStore

    class FullDisk(LocalStore):
        def begin(self, name: str) -> Any:
            raise OSError(errno.ENOSPC, "No space left on device", name)

    good = CheckpointManager(tmp_path / "good", name="trainer", clock=clock)
    good.save(1, {"epoch": 1})
    full = CheckpointManager(FullDisk(tmp_path / "full"), name="trainer", clock=clock)
    with pytest.raises(OSError, match="No space"):
        full.save(2, {"epoch": 2})


def _dead_letter(redis_url: str) -> None:
    pytest.importorskip("celery")
    redis = pytest.importorskip("redis")
    from celery import Celery
    from recoverly.celery import KEY_ARGUMENT, RedisTaskStore, TaskDeadLettered, resilient_task

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        pytest.skip(f"Redis at {redis_url} is not reachable ({exc}); start ../shared/services.sh")
    prefix = f"test:alerts:{uuid.uuid4().hex[:12]}"
    store = RedisTaskStore(client, prefix=prefix)
    app = Celery(f"t{uuid.uuid4().hex[:8]}", broker="memory://", backend="cache+memory://")
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = False
    app.conf.task_store_eager_result = False
    try:

        @resilient_task(app, store=store, max_redeliveries=0)
        def train(self: Any) -> str:
            return "ran"

        store.begin("run-1", 30.0, record={"hostname": "w1"})
        store.client.delete(store.key("run-1", "lease"))  # its worker died
        with pytest.raises(TaskDeadLettered):
            train.apply(kwargs={KEY_ARGUMENT: "run-1"}).get()
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
        if keys:
            client.delete(*keys)
        client.close()


def exported(tmp_path: Path, redis_url: str, *, max_errors: int = 30) -> Scrape:
    """Install an exporter, drive every strategy it reports on, and return the scrape.

    ``max_errors`` small makes the ``error`` label overflow (the overflow family appears).
    """
    clock = ManualClock()
    registry = CollectorRegistry()
    handle = rp.install(registry, max_errors=max_errors)
    try:
        _retries(clock)
        _breaker_and_throttle(clock)
        alive = _bulkhead_and_limiter(clock)
        _transactions_and_batches()
        _checkpoints(tmp_path, clock)
        _dead_letter(redis_url)
        with _database(tmp_path, clock):
            found = scrape(registry)
        del alive
        return found
    finally:
        handle.uninstall()
