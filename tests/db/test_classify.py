"""The classification table against errors provoked on real PostgreSQL, MariaDB and SQLite."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sa = pytest.importorskip("sqlalchemy")

from recoverly.db._classify import FailureKind, classify, is_retryable  # noqa: E402


def error_of(conn: Any, sql: str, params: dict[str, Any] | None = None) -> BaseException:
    """Run ``sql`` on ``conn`` and return what it raised."""
    with pytest.raises(sa.exc.DBAPIError) as info:
        conn.execute(sa.text(sql), params or {})
    return info.value


def deadlock(engine: Any, setup: str) -> BaseException:
    """Lock rows 1 and 2 from two connections in opposite order; return the victim's error."""
    errors: list[BaseException] = []
    a, b = engine.connect(), engine.connect()
    try:
        for conn in (a, b):
            if setup:
                conn.execute(sa.text(setup))
        a.execute(sa.text("UPDATE acct SET v = v + 1 WHERE id = 1"))
        b.execute(sa.text("UPDATE acct SET v = v + 1 WHERE id = 2"))

        def second(conn: Any, row: int) -> None:
            try:
                conn.execute(sa.text("UPDATE acct SET v = v + 1 WHERE id = :r"), {"r": row})
            except sa.exc.DBAPIError as exc:
                errors.append(exc)
                conn.rollback()

        thread = threading.Thread(target=second, args=(a, 2))
        thread.start()
        second(b, 1)
        thread.join(10)
    finally:
        for conn in (a, b):
            conn.rollback()
            conn.close()
    assert len(errors) == 1
    return errors[0]


@pytest.fixture
def pg(pg_engine: Any) -> Any:
    """PostgreSQL engine with ``acct(id, v)`` holding rows 1 and 2."""
    with pg_engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL)"))
        conn.execute(sa.text("INSERT INTO acct VALUES (1, 0), (2, 0)"))
    return pg_engine


@pytest.fixture
def my(mysql_engine: Any) -> Any:
    """MariaDB engine with an InnoDB ``acct(id, v)`` holding rows 1 and 2."""
    with mysql_engine.begin() as conn:
        conn.execute(
            sa.text("CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL) ENGINE=InnoDB")
        )
        conn.execute(sa.text("INSERT INTO acct VALUES (1, 0), (2, 0)"))
    return mysql_engine


# ---------------------------------------------------------------- PostgreSQL
@pytest.mark.integration
def test_pg_serialization_failure(pg: Any) -> None:
    """A REPEATABLE READ update of a row changed since the snapshot is SERIALIZATION (40001)."""
    with pg.connect() as t1, pg.connect() as t2:
        t1.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        t1.execute(sa.text("SELECT v FROM acct WHERE id = 1"))  # the snapshot
        t2.execute(sa.text("UPDATE acct SET v = 10 WHERE id = 1"))
        t2.commit()
        failure = classify(error_of(t1, "UPDATE acct SET v = v + 1 WHERE id = 1"))
    assert (failure.kind, failure.code) == (FailureKind.SERIALIZATION, "40001")
    assert failure.retryable


@pytest.mark.integration
def test_pg_deadlock(pg: Any) -> None:
    """Two transactions locking rows in opposite order: the victim's error is DEADLOCK (40P01)."""
    failure = classify(deadlock(pg, "SET deadlock_timeout = '50ms'"))
    assert (failure.kind, failure.code) == (FailureKind.DEADLOCK, "40P01")


@pytest.mark.integration
def test_pg_lock_timeout(pg: Any) -> None:
    """A row lock not granted within lock_timeout is LOCK_TIMEOUT (55P03)."""
    with pg.connect() as holder, pg.connect() as waiter:
        holder.execute(sa.text("SELECT * FROM acct WHERE id = 1 FOR UPDATE"))
        waiter.execute(sa.text("SET lock_timeout = '50ms'"))
        failure = classify(error_of(waiter, "SELECT * FROM acct WHERE id = 1 FOR UPDATE"))
    assert (failure.kind, failure.code) == (FailureKind.LOCK_TIMEOUT, "55P03")


@pytest.mark.integration
def test_pg_terminated_backend_is_connection_lost(pg: Any, pg_kill: Callable[[int], bool]) -> None:
    """A statement on a backend ended by pg_terminate_backend is CONNECTION_LOST."""
    with pg.connect() as conn:
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        pg_kill(pid)
        failure = classify(error_of(conn, "SELECT 1"))
        conn.invalidate()
    assert failure.kind is FailureKind.CONNECTION_LOST


@pytest.mark.integration
@pytest.mark.parametrize(
    ("sql", "error", "code"),
    [
        ("INSERT INTO acct VALUES (1, 0)", "IntegrityError", "23505"),
        ("INSERT INTO acct VALUES (3, NULL)", "IntegrityError", "23502"),
        ("SELECT 1 / 0", "DataError", "22012"),
        ("SELEC 1", "ProgrammingError", "42601"),
        ("SELECT nope FROM acct", "ProgrammingError", "42703"),
    ],
)
def test_pg_errors_that_are_never_retried(pg: Any, sql: str, error: str, code: str) -> None:
    """Constraint violations, bad data and bad SQL are NOT_RETRYABLE, with their SQLSTATE."""
    with pg.connect() as conn:
        exc = error_of(conn, sql)
    assert type(exc).__name__ == error
    failure = classify(exc)
    assert (failure.kind, failure.code) == (FailureKind.NOT_RETRYABLE, code)
    assert not is_retryable(exc)


# ---------------------------------------------------------------- MariaDB
@pytest.mark.integration
def test_mysql_deadlock(my: Any) -> None:
    """InnoDB's deadlock victim error 1213 is DEADLOCK."""
    failure = classify(deadlock(my, ""))
    assert (failure.kind, failure.code) == (FailureKind.DEADLOCK, "1213")


@pytest.mark.integration
def test_mysql_lock_wait_timeout(my: Any) -> None:
    """Error 1205 after innodb_lock_wait_timeout=1 is LOCK_TIMEOUT."""
    with my.connect() as holder, my.connect() as waiter:
        holder.execute(sa.text("SELECT * FROM acct WHERE id = 1 FOR UPDATE"))
        waiter.execute(sa.text("SET SESSION innodb_lock_wait_timeout = 1"))
        failure = classify(error_of(waiter, "SELECT * FROM acct WHERE id = 1 FOR UPDATE"))
    assert (failure.kind, failure.code) == (FailureKind.LOCK_TIMEOUT, "1205")


@pytest.mark.integration
def test_mysql_killed_connection_is_connection_lost(my: Any, mysql_url: str) -> None:
    """A connection ended by KILL from another connection is CONNECTION_LOST."""
    admin = sa.create_engine(mysql_url, isolation_level="AUTOCOMMIT")
    try:
        with my.connect() as conn:
            cid = conn.execute(sa.text("SELECT CONNECTION_ID()")).scalar()
            with admin.connect() as killer:
                killer.execute(sa.text(f"KILL {int(cid)}"))
            failure = classify(error_of(conn, "SELECT 1"))
            conn.invalidate()
    finally:
        admin.dispose()
    assert failure.kind is FailureKind.CONNECTION_LOST
    assert failure.code in {"2006", "2013", "1927", "4031"}


@pytest.mark.integration
def test_mysql_duplicate_key_is_never_retried(my: Any) -> None:
    """Duplicate key (1062) is an IntegrityError: NOT_RETRYABLE."""
    with my.connect() as conn:
        exc = error_of(conn, "INSERT INTO acct VALUES (1, 0)")
    assert isinstance(exc, sa.exc.IntegrityError)
    assert classify(exc).kind is FailureKind.NOT_RETRYABLE


# ---------------------------------------------------------------- SQLite
def test_sqlite_locked_database_is_busy(tmp_path: Path) -> None:
    """'database is locked' from a second writer with timeout=0 is BUSY."""
    path = tmp_path / "busy.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x int)")
    holder.execute("BEGIN IMMEDIATE")
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    try:
        with engine.connect() as conn:
            exc = error_of(conn, "INSERT INTO t VALUES (1)")
    finally:
        engine.dispose()
        holder.close()
    failure = classify(exc)
    assert failure.kind is FailureKind.BUSY
    assert failure.retryable


# ---------------------------------------------------------------- SQLAlchemy's own errors
def test_pool_timeout_is_retryable(sqlite_url: str) -> None:
    """SQLAlchemy's pool TimeoutError (QueuePool exhausted) is POOL_TIMEOUT."""
    engine = sa.create_engine(
        sqlite_url, poolclass=sa.pool.QueuePool, pool_size=1, max_overflow=0, pool_timeout=0.01
    )
    held = engine.connect()
    try:
        with pytest.raises(sa.exc.TimeoutError) as info:
            engine.connect()
    finally:
        held.close()
        engine.dispose()
    assert classify(info.value).kind is FailureKind.POOL_TIMEOUT
    assert is_retryable(info.value)


def test_disconnection_error_is_connection_lost() -> None:
    """DisconnectionError (raised by pool listeners for a dead connection) is CONNECTION_LOST."""
    assert classify(sa.exc.DisconnectionError("gone")).kind is FailureKind.CONNECTION_LOST
