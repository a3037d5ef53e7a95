"""Lost COMMITs resolved by asking the database: pg_xact_status and commit markers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

sa = pytest.importorskip("sqlalchemy")

from sqlalchemy import event, text  # noqa: E402 - after the importorskip
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from recoverly import events as ev  # noqa: E402
from recoverly._core.clock import SystemClock  # noqa: E402
from recoverly.db import install_commit_markers, prune_commit_markers  # noqa: E402
from recoverly.db.commits import MARKER_TABLE, CommitMarkerResolver, XactStatusResolver  # noqa: E402
from recoverly.db.errors import CommitOutcomeUnknown  # noqa: E402
from recoverly.db.transaction import arun_transaction, run_transaction  # noqa: E402
from recoverly.events import CommitResolved  # noqa: E402

INSERT = text("INSERT INTO items (id, note) VALUES (:id, :note)")


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's asyncio extension runs on asyncio only."""
    return "asyncio"


def _table(engine: Any) -> Any:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE items (id int PRIMARY KEY, note varchar(20) NOT NULL)"))
    return engine


@pytest.fixture
def pg(pg_engine: Any) -> Any:
    return _table(pg_engine)


@pytest.fixture(params=["pg", "mysql"])
def any_db(request: Any) -> Any:
    return _table(request.getfixturevalue(f"{request.param}_engine"))


def _items(engine: Any) -> list[tuple[int, str]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text("SELECT id, note FROM items ORDER BY id"))]


def _resolved() -> list[CommitResolved]:
    seen: list[CommitResolved] = []
    ev.subscribe(seen.append, CommitResolved)
    return seen


def _commit_lands_then_connection_drops(engine: Any, times: int = 1) -> list[int]:
    """The server commits, then the client's connection is closed before it hears so."""
    dropped: list[int] = []

    @event.listens_for(engine, "commit")
    def commit_then_drop(conn: Any) -> None:
        if len(dropped) < times:
            dropped.append(1)
            raw = conn.connection.dbapi_connection
            raw.commit()
            raw.close()

    return dropped


def _killed_before_commit(engine: Any, kill: Callable[[Any], None]) -> list[int]:
    """The first COMMIT meets a connection its server has just killed (nothing committed)."""
    killed: list[int] = []

    @event.listens_for(engine, "commit")
    def kill_then_commit(conn: Any) -> None:
        if not killed:
            killed.append(1)
            kill(conn)

    return killed


# ------------------------------------------------------------------ PostgreSQL: pg_xact_status
def test_lost_commit_that_landed_is_resolved_as_committed(pg):
    """The COMMIT landed but its answer was lost: fn's result comes back, fn runs once."""
    seen, dropped = _resolved(), _commit_lands_then_connection_drops(pg)
    calls: list[int] = []

    def add(session: Session) -> int:
        calls.append(1)
        session.execute(INSERT, {"id": 1, "note": "a"})
        return 42

    assert run_transaction(sessionmaker(pg), add) == 42
    assert (dropped, calls, _items(pg)) == ([1], [1], [(1, "a")])
    assert [(e.verdict, e.method) for e in seen] == [("committed", "xact_status")]


def test_lost_commit_that_did_not_land_is_resolved_as_aborted_and_retried(pg, pg_kill):
    """The backend died before COMMIT: pg_xact_status says aborted, the unit runs again once."""
    seen = _resolved()

    def kill(conn: Any) -> None:
        pg_kill(int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()))

    killed = _killed_before_commit(pg, kill)
    calls: list[int] = []

    def add(session: Session) -> None:
        calls.append(1)
        session.execute(INSERT, {"id": 1, "note": "a"})

    run_transaction(sessionmaker(pg), add, delay=0)
    assert (killed, calls, _items(pg)) == ([1], [1, 1], [(1, "a")])
    assert [(e.verdict, e.method) for e in seen] == [("aborted", "xact_status")]


def test_read_only_unit_needs_no_answer(pg, pg_kill):
    """A unit that wrote nothing has no transaction id: a lost COMMIT just runs it again."""
    killed = _killed_before_commit(
        pg, lambda c: pg_kill(int(c.exec_driver_sql("SELECT pg_backend_pid()").scalar()))
    )
    calls: list[int] = []

    def read(session: Session) -> int:
        calls.append(1)
        return int(session.execute(text("SELECT count(*) FROM items")).scalar_one())

    assert run_transaction(sessionmaker(pg), read, delay=0) == 0
    assert (killed, calls) == ([1], [1, 1])


def test_xid_is_read_with_one_statement_before_commit(pg):
    """Automatic resolution costs one statement per writing unit, and none when turned off."""
    statements: list[str] = []

    @event.listens_for(pg, "before_cursor_execute")
    def record(conn, cursor, statement, params, context, executemany):
        statements.append(statement)

    run_transaction(sessionmaker(pg), lambda s: s.execute(INSERT, {"id": 1, "note": "a"}))
    with_resolution = len(statements)
    statements.clear()
    run_transaction(
        sessionmaker(pg),
        lambda s: s.execute(INSERT, {"id": 2, "note": "b"}),
        resolve_commits=False,
    )
    assert with_resolution - len(statements) == 1
    assert "pg_current_xact_id_if_assigned" not in " ".join(statements)


@pytest.mark.realtime
def test_in_progress_transaction_is_waited_for(pg):
    """'in progress' is asked again until the transaction ends; then its verdict counts."""
    with pg.connect() as other:
        other.begin()
        other.execute(INSERT, {"id": 7, "note": "slow"})
        xid = other.exec_driver_sql("SELECT pg_current_xact_id()::text").scalar()
        resolver = XactStatusResolver(SystemClock(), timeout=10)
        resolver.xid = xid
        timer = threading.Timer(0.3, other.commit)
        timer.start()
        started = time.monotonic()
        verdict = resolver.resolve(sessionmaker(pg))
        timer.join()
    assert verdict is True
    assert time.monotonic() - started >= 0.3


def test_unanswerable_xid_gives_commit_outcome_unknown(pg, pg_kill, clock):
    """An xid the server cannot answer for resolves to unknown: CommitOutcomeUnknown."""
    resolver = XactStatusResolver(clock, timeout=1)
    resolver.xid = "999999999999"  # in the future: the server refuses to say
    assert resolver.resolve(sessionmaker(pg)) is None


@pytest.mark.anyio
async def test_async_lost_commit_resolved_as_committed(pg_url):
    """arun_transaction resolves a landed COMMIT through pg_xact_status as well."""
    engine = create_async_engine(pg_url)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE items (id int PRIMARY KEY, note text NOT NULL)"))
    seen, dropped = _resolved(), _commit_lands_then_connection_drops(engine.sync_engine)
    calls: list[int] = []

    async def add(session: Any) -> str:
        calls.append(1)
        await session.execute(INSERT, {"id": 1, "note": "a"})
        return "ok"

    try:
        assert await arun_transaction(async_sessionmaker(engine), add) == "ok"
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT id FROM items"))).all()
    finally:
        await engine.dispose()
    assert (dropped, calls, [tuple(r) for r in rows]) == ([1], [1], [(1,)])
    assert [e.verdict for e in seen] == ["committed"]


# ------------------------------------------------------------------ commit markers, any database
def test_commit_marker_resolves_a_landed_commit(any_db):
    """commit_marker=True: the token is found, the unit is not run again (PG and MariaDB)."""
    install_commit_markers(any_db)  # its own COMMIT must not be the one that is dropped
    seen, dropped = _resolved(), _commit_lands_then_connection_drops(any_db)
    calls: list[int] = []

    def add(session: Session) -> str:
        calls.append(1)
        session.execute(INSERT, {"id": 1, "note": "a"})
        return "done"

    assert run_transaction(sessionmaker(any_db), add, commit_marker=True) == "done"
    assert (dropped, calls, _items(any_db)) == ([1], [1], [(1, "a")])
    assert [(e.verdict, e.method) for e in seen] == [("committed", "commit_marker")]


def test_commit_marker_resolves_a_killed_connection_on_mariadb(mysql_engine, mysql_url):
    """MariaDB KILL CONNECTION before COMMIT: the token is absent, the unit runs again once."""
    _table(mysql_engine)
    install_commit_markers(mysql_engine)
    admin = sa.create_engine(mysql_url)
    seen = _resolved()

    def kill(conn: Any) -> None:
        server_id = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
        with admin.connect() as a:
            a.exec_driver_sql(f"KILL CONNECTION {int(server_id)}")

    killed = _killed_before_commit(mysql_engine, kill)
    calls: list[int] = []

    def add(session: Session) -> None:
        calls.append(1)
        session.execute(INSERT, {"id": 1, "note": "a"})

    try:
        run_transaction(sessionmaker(mysql_engine), add, commit_marker=True, delay=0)
    finally:
        admin.dispose()
    assert (killed, calls, _items(mysql_engine)) == ([1], [1, 1], [(1, "a")])
    assert [(e.verdict, e.method) for e in seen] == [("aborted", "commit_marker")]


def test_commit_marker_resolver_on_sqlite(sqlite_engine):
    """On SQLite the marker written in a committed unit is found; a rolled-back one is not."""
    _table(sqlite_engine)
    install_commit_markers(sqlite_engine)
    factory = sessionmaker(sqlite_engine)
    verdicts = []
    for commit in (True, False):
        resolver = CommitMarkerResolver(SystemClock(), timeout=1, engine=sqlite_engine)
        with factory() as session, session.begin() as tx:
            resolver.before_commit(session)
            if not commit:
                tx.rollback()
        verdicts.append(resolver.resolve(factory))
    assert verdicts == [True, False]


def test_markers_are_installed_once_and_pruned(sqlite_engine):
    """install_commit_markers creates the table; prune_commit_markers deletes old tokens only."""
    install_commit_markers(sqlite_engine)
    with sqlite_engine.begin() as conn:
        conn.execute(
            text("INSERT INTO recoverly_commit_marker VALUES ('old', :o), ('new', :n)"),
            {"o": "2000-01-01 00:00:00", "n": "2999-01-01 00:00:00"},
        )
    assert prune_commit_markers(sqlite_engine) == 1
    with sqlite_engine.connect() as conn:
        tokens = conn.execute(text("SELECT token FROM recoverly_commit_marker")).scalars().all()
    assert MARKER_TABLE == "recoverly_commit_marker"
    assert tokens == ["new"]


def test_commit_marker_and_commit_check_together_are_refused(sqlite_engine):
    """Two ways to resolve the same loss is a configuration error, named in the message."""
    with pytest.raises(ValueError, match="commit_marker=True and commit_check"):
        run_transaction(
            sessionmaker(sqlite_engine), lambda s: None, commit_marker=True, commit_check=bool
        )


def test_resolution_off_keeps_commit_outcome_unknown(pg):
    """resolve_commits=False: a landed-but-lost COMMIT is reported unknown, not guessed."""
    _commit_lands_then_connection_drops(pg)
    with pytest.raises(CommitOutcomeUnknown):
        run_transaction(
            sessionmaker(pg),
            lambda s: s.execute(INSERT, {"id": 1, "note": "a"}),
            resolve_commits=False,
        )
    assert _items(pg) == [(1, "a")]
