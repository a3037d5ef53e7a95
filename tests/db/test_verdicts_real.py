"""The verdict table against real errors, provoked on the real servers through each driver.

No exception object is built by hand here: every error comes from PostgreSQL,
MariaDB or SQLite through the driver under test and SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sa = pytest.importorskip("sqlalchemy")

from sqlalchemy import text  # noqa: E402 - after the importorskip
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from recoverly.db import Verdict, classify  # noqa: E402
from recoverly.db._classify import FailureKind  # noqa: E402

PG_DRIVERS = ["psycopg", "psycopg2"]
SETUP = [
    "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)",
    "INSERT INTO t VALUES (1, 0), (2, 0)",
]


def _with_driver(url: str, driver: str) -> str:
    made = sa.engine.make_url(url)
    return made.set(drivername=f"{made.get_backend_name()}+{driver}").render_as_string(
        hide_password=False
    )


def _engine(url: str, driver: str) -> Any:
    pytest.importorskip(driver, reason=f"the {driver} driver is not installed")
    engine = sa.create_engine(_with_driver(url, driver))
    with engine.begin() as conn:
        for sql in SETUP:
            conn.execute(text(sql))
    return engine


def _raised(fn: Callable[[], object]) -> BaseException:
    try:
        fn()
    except Exception as exc:  # the error under test
        return exc
    pytest.fail("no error was raised")


def _deadlock(engine: Any, prepare: str = "") -> BaseException:
    """Two connections lock rows 1 and 2 in opposite orders; return the victim's error."""
    a, b = engine.connect(), engine.connect()
    errors: list[BaseException] = []
    try:
        for conn in (a, b):
            if prepare:
                conn.execute(text(prepare))
        a.execute(text("UPDATE t SET v = v + 1 WHERE id = 1"))
        b.execute(text("UPDATE t SET v = v + 1 WHERE id = 2"))

        def second(conn: Any, row: int) -> None:
            try:
                conn.execute(text("UPDATE t SET v = v + 1 WHERE id = :r"), {"r": row})
            except Exception as exc:  # the deadlock victim
                errors.append(exc)
                conn.rollback()

        other = threading.Thread(target=second, args=(b, 1))
        other.start()
        second(a, 2)
        other.join(timeout=30)
    finally:
        a.close()
        b.close()
    assert len(errors) == 1
    return errors[0]


# ------------------------------------------------------------------ PostgreSQL
@pytest.fixture(params=PG_DRIVERS)
def pg(request: Any, pg_url: str) -> Any:
    engine = _engine(pg_url, request.param)
    yield engine
    engine.dispose()


def test_pg_serialization_failure(pg):
    """40001 through each driver: retry the whole transaction."""
    with pg.connect() as a, pg.connect() as b:
        a.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        a.execute(text("SELECT v FROM t WHERE id = 1"))
        b.execute(text("UPDATE t SET v = 5 WHERE id = 1"))
        b.commit()
        exc = _raised(lambda: a.execute(text("UPDATE t SET v = 6 WHERE id = 1")))
    failure = classify(exc)
    assert (failure.kind, failure.code, failure.verdict) == (
        FailureKind.SERIALIZATION,
        "40001",
        Verdict.RETRY_TRANSACTION,
    )


def test_pg_deadlock(pg):
    """40P01 through each driver: retry the whole transaction."""
    exc = _deadlock(pg, "SET deadlock_timeout = '50ms'")
    assert (classify(exc).kind, classify(exc).verdict) == (
        FailureKind.DEADLOCK,
        Verdict.RETRY_TRANSACTION,
    )


def test_pg_lock_timeout(pg):
    """55P03 through each driver: retry with backoff."""
    with pg.connect() as holder, pg.connect() as waiter:
        holder.execute(text("SELECT * FROM t WHERE id = 1 FOR UPDATE"))
        waiter.execute(text("SET lock_timeout = '50ms'"))
        exc = _raised(lambda: waiter.execute(text("UPDATE t SET v = 1 WHERE id = 1")))
    assert (classify(exc).kind, classify(exc).verdict) == (
        FailureKind.LOCK_TIMEOUT,
        Verdict.RETRY_WITH_BACKOFF,
    )


def test_pg_terminated_backend(pg, pg_kill):
    """A terminated backend through each driver: reconnect and retry."""
    with pg.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        conn.commit()
        pg_kill(pid)
        exc = _raised(lambda: conn.execute(text("SELECT 1")))
    assert (classify(exc).kind, classify(exc).verdict) == (
        FailureKind.CONNECTION_LOST,
        Verdict.RECONNECT_AND_RETRY,
    )


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t VALUES (1, 0)",  # unique
        "INSERT INTO t VALUES (3, NULL)",  # NOT NULL
        "INSERT INTO t VALUES (3, 'x')",  # bad value
        "SELEC 1",  # syntax
    ],
)
def test_pg_errors_of_the_statement_are_never_retried(pg, sql):
    """Constraint, data and syntax errors through each driver: never retry."""
    with pg.connect() as conn:
        exc = _raised(lambda: conn.execute(text(sql)))
    assert (classify(exc).kind, classify(exc).verdict) == (
        FailureKind.NOT_RETRYABLE,
        Verdict.NEVER_RETRY,
    )


def test_asyncpg_errors_follow_the_same_table(pg_url, pg_kill):
    """asyncpg: 40001, 55P03, a terminated backend and a unique violation, classified alike."""
    pytest.importorskip("asyncpg", reason="the asyncpg driver is not installed")
    url = _with_driver(pg_url, "asyncpg").split("?")[0]
    schema = sa.engine.make_url(pg_url).query["application_name"]

    async def provoke() -> dict[str, BaseException]:
        settings = {"search_path": schema, "application_name": schema}
        engine = create_async_engine(url, connect_args={"server_settings": settings})
        found: dict[str, BaseException] = {}
        try:
            async with engine.connect() as a, engine.connect() as b:
                await a.execute(text("CREATE TABLE at (id int PRIMARY KEY, v int)"))
                await a.execute(text("INSERT INTO at VALUES (1, 0)"))
                await a.commit()
                await a.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
                await a.execute(text("SELECT v FROM at"))
                await b.execute(text("UPDATE at SET v = 5"))
                await b.commit()
                try:
                    await a.execute(text("UPDATE at SET v = 6"))
                except Exception as exc:  # 40001
                    found["serialization"] = exc
                await a.rollback()
                await b.execute(text("SELECT * FROM at FOR UPDATE"))
                await a.execute(text("SET lock_timeout = '50ms'"))
                try:
                    await a.execute(text("UPDATE at SET v = 7"))
                except Exception as exc:  # 55P03
                    found["lock_timeout"] = exc
                await a.rollback()
                await b.rollback()
                try:
                    await a.execute(text("INSERT INTO at VALUES (1, 0)"))
                except Exception as exc:  # unique
                    found["unique"] = exc
                await a.rollback()
                pid = (await a.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                await a.commit()
                await asyncio.to_thread(pg_kill, pid)
                try:
                    await a.execute(text("SELECT 1"))
                except Exception as exc:  # terminated
                    found["terminated"] = exc
        finally:
            await engine.dispose()
        return found

    found = asyncio.run(provoke())
    kinds = {name: classify(exc).kind for name, exc in found.items()}
    assert kinds == {
        "serialization": FailureKind.SERIALIZATION,
        "lock_timeout": FailureKind.LOCK_TIMEOUT,
        "unique": FailureKind.NOT_RETRYABLE,
        "terminated": FailureKind.CONNECTION_LOST,
    }


# ------------------------------------------------------------------ MariaDB (PyMySQL)
@pytest.fixture
def maria(mysql_url: str) -> Any:
    engine = _engine(mysql_url, "pymysql")
    yield engine
    engine.dispose()


def test_mariadb_deadlock_lock_wait_and_kill(maria, mysql_url):
    """1213, 1205 and a killed connection through PyMySQL; a duplicate is never retried."""
    deadlock = _deadlock(maria)
    with maria.connect() as holder, maria.connect() as waiter:
        holder.execute(text("SELECT * FROM t WHERE id = 1 FOR UPDATE"))
        waiter.execute(text("SET innodb_lock_wait_timeout = 1"))
        wait = _raised(lambda: waiter.execute(text("UPDATE t SET v = 1 WHERE id = 1")))
    admin = sa.create_engine(mysql_url)
    with maria.connect() as conn, admin.connect() as killer:
        server_id = conn.execute(text("SELECT CONNECTION_ID()")).scalar_one()
        killer.exec_driver_sql(f"KILL CONNECTION {int(server_id)}")
        killed = _raised(lambda: conn.execute(text("SELECT 1")))
    admin.dispose()
    with maria.connect() as conn:
        duplicate = _raised(lambda: conn.execute(text("INSERT INTO t VALUES (1, 0)")))
    assert [(classify(e).kind, classify(e).code) for e in (deadlock, wait)] == [
        (FailureKind.DEADLOCK, "1213"),
        (FailureKind.LOCK_TIMEOUT, "1205"),
    ]
    assert classify(killed).verdict is Verdict.RECONNECT_AND_RETRY
    assert classify(duplicate).verdict is Verdict.NEVER_RETRY


# ------------------------------------------------------------------ SQLite (sqlite3, aiosqlite)
def _lock_file(path: Path) -> Any:
    import sqlite3

    holder = sqlite3.connect(path)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_sqlite_locked_database(tmp_path):
    """'database is locked' through sqlite3: retry with backoff; a duplicate never."""
    path = tmp_path / "v.db"
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.01})
    with engine.begin() as conn:
        for sql in SETUP:
            conn.execute(text(sql))
    holder = _lock_file(path)
    try:
        with engine.connect() as conn:
            locked = _raised(lambda: conn.execute(text("UPDATE t SET v = 1")))
    finally:
        holder.close()
    with engine.connect() as conn:
        duplicate = _raised(lambda: conn.execute(text("INSERT INTO t VALUES (1, 0)")))
    engine.dispose()
    assert classify(locked).verdict is Verdict.RETRY_WITH_BACKOFF
    assert classify(duplicate).verdict is Verdict.NEVER_RETRY


def test_aiosqlite_locked_database(tmp_path):
    """'database is locked' through aiosqlite classifies the same way."""
    pytest.importorskip("aiosqlite", reason="the aiosqlite driver is not installed")
    path = tmp_path / "a.db"

    async def provoke() -> BaseException:
        engine = create_async_engine(f"sqlite+aiosqlite:///{path}", connect_args={"timeout": 0.01})
        try:
            async with engine.begin() as conn:
                await conn.execute(text("CREATE TABLE t (id int PRIMARY KEY)"))
            holder = _lock_file(path)
            try:
                async with engine.connect() as conn:
                    await conn.execute(text("INSERT INTO t VALUES (1)"))
            except Exception as exc:  # locked
                return exc
            finally:
                holder.close()
        finally:
            await engine.dispose()
        pytest.fail("no error was raised")

    locked = asyncio.run(provoke())
    assert (classify(locked).kind, classify(locked).verdict) == (
        FailureKind.BUSY,
        Verdict.RETRY_WITH_BACKOFF,
    )


def test_sqlite_closed_database_with_invalidation_is_a_lost_connection(tmp_path):
    """A closed SQLite connection (a ProgrammingError SQLAlchemy marks invalidated) is reconnect."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    with engine.connect() as conn:
        conn.connection.dbapi_connection.close()
        closed = _raised(lambda: conn.execute(text("SELECT 1")))
    engine.dispose()
    assert isinstance(closed, sa.exc.ProgrammingError)
    assert closed.connection_invalidated
    assert classify(closed).verdict is Verdict.RECONNECT_AND_RETRY
