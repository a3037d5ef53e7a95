"""ConnectionPoolMonitor counts what happens in use: lost connections, waits, retries, commits."""

from __future__ import annotations

import threading
import time

import pytest

sa = pytest.importorskip("sqlalchemy")

from sqlalchemy import text  # noqa: E402 - after the importorskip
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from recoverly import events as ev  # noqa: E402
from recoverly._core.clock import SystemClock  # noqa: E402
from recoverly.db import ConnectionPoolMonitor, db_retry, run_transaction  # noqa: E402
from recoverly.db.testing import inject_fault  # noqa: E402
from recoverly.events import ConnectionInvalidated  # noqa: E402


def test_connection_lost_while_checked_out_is_counted_and_announced(pg_engine, pg_kill):
    """A backend killed under a checked-out connection: invalidated_in_use 1, one event."""
    seen: list[ConnectionInvalidated] = []
    ev.subscribe(seen.append, ConnectionInvalidated)
    with ConnectionPoolMonitor(pg_engine, name="orders") as monitor, pg_engine.connect() as conn:
        pg_kill(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        with pytest.raises(sa.exc.OperationalError):
            conn.execute(text("SELECT 1"))
        status = monitor.status()
    assert (status["invalidated_in_use"], status["invalidated_idle"]) == (1, 0)
    assert [(e.name, e.in_use) for e in seen] == [("orders", True)]


@pytest.mark.realtime
def test_checkout_wait_is_measured(sqlite_url):
    """With one connection held for 0.3 s, the next checkout's wait is measured (>= 0.2 s)."""
    engine = sa.create_engine(sqlite_url, poolclass=sa.pool.QueuePool, pool_size=1, max_overflow=0)
    monitor = ConnectionPoolMonitor(engine, clock=SystemClock())
    held = threading.Event()

    def hold() -> None:
        with engine.connect():
            held.set()
            time.sleep(0.3)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    with engine.connect():
        pass
    holder.join()
    wait = monitor.status()["checkout_wait"]
    monitor.close()
    engine.dispose()
    assert wait["count"] == 2
    assert wait["max"] >= 0.2
    assert wait["total"] >= wait["max"]


def test_retries_and_resolved_commits_are_counted_by_verdict(pg_engine):
    """A deadlock retried by db_retry and a lost COMMIT resolved: both counted by verdict."""
    with pg_engine.begin() as conn:
        conn.execute(text("CREATE TABLE items (id int PRIMARY KEY)"))
    monitor = ConnectionPoolMonitor(pg_engine)

    @db_retry(max_attempts=3, delay=0)
    def add(db: Session, n: int) -> None:
        db.execute(text("INSERT INTO items VALUES (:n)"), {"n": n})
        db.commit()

    with inject_fault(pg_engine, "deadlock", at=1, match="INSERT"), Session(pg_engine) as s:
        add(s, 1)
    with inject_fault(pg_engine, "commit_lost_after", at=1):
        run_transaction(
            sessionmaker(pg_engine), lambda s: s.execute(text("INSERT INTO items VALUES (2)"))
        )
    status = monitor.status()
    monitor.close()
    assert status["retries_by_verdict"] == {"retry_transaction": 1}
    assert status["commits_resolved"] == {"committed": 1}
    with pg_engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM items ORDER BY id")).scalars().all() == [1, 2]


def test_close_unwraps_the_pool_and_stops_counting(sqlite_engine):
    """After close() the pool's connect is its own again and events are not counted."""
    pool = sqlite_engine.pool
    original = pool.connect
    monitor = ConnectionPoolMonitor(sqlite_engine)
    assert pool.connect is not original
    monitor.close()
    assert pool.connect == original
    with sqlite_engine.connect():
        pass
    assert monitor.counts.snapshot()["checkout_wait"]["count"] == 0
    assert monitor.counts._on_event not in ev.subscribers()
