"""run_transaction / arun_transaction against real PostgreSQL and SQLite."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

sa = pytest.importorskip("sqlalchemy")

from sqlalchemy import event, text  # noqa: E402 - after the importorskip
from sqlalchemy.ext.asyncio import (  # noqa: E402
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, scoped_session, sessionmaker  # noqa: E402

from recoverly import events as ev  # noqa: E402
from recoverly.db.errors import CommitOutcomeUnknown, NestedTransactionError  # noqa: E402
from recoverly.db.transaction import arun_transaction, run_transaction  # noqa: E402
from recoverly.events import RetryGaveUp, RetryScheduled, RetrySucceeded  # noqa: E402

INSERT = text("INSERT INTO items (id, note) VALUES (:id, :note)")


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's asyncio extension runs on asyncio only."""
    return "asyncio"


def _items(engine: Any) -> list[tuple[int, str]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text("SELECT id, note FROM items ORDER BY id"))]


@pytest.fixture
def pg(pg_engine: Any) -> Any:
    with pg_engine.begin() as conn:
        conn.execute(text("CREATE TABLE items (id int PRIMARY KEY, note text NOT NULL)"))
    return pg_engine


@pytest.fixture
def sqlite(sqlite_engine: Any) -> Any:
    with sqlite_engine.begin() as conn:
        conn.execute(text("CREATE TABLE items (id int PRIMARY KEY, note text NOT NULL)"))
    return sqlite_engine


def _pid(session: Session) -> int:
    return int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _killing_factory(engine: Any, kill: Callable[[int], bool], times: int) -> Callable[[], Session]:
    """Sessions whose backend is terminated right before COMMIT, the first ``times`` times."""
    left = [times]

    def before_commit(session: Session) -> None:
        if left[0] > 0:
            left[0] -= 1
            kill(int(session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar()))

    def factory() -> Session:
        session = Session(engine)
        event.listen(session, "before_commit", before_commit)
        return session

    return factory


# ------------------------------------------------------------------ success path
def test_commits_the_unit_and_returns_fns_result(pg):
    """The unit runs once, is committed, and its return value comes back."""
    calls = []

    def add(session):
        calls.append(session)
        session.execute(INSERT, {"id": 1, "note": "a"})
        return "done"

    assert run_transaction(sessionmaker(pg), add) == "done"
    assert len(calls) == 1
    assert _items(pg) == [(1, "a")]
    assert not calls[0].in_transaction()  # closed afterwards


def test_accepts_an_engine_and_binds_a_new_session_to_it(sqlite):
    """An Engine works as the session source."""
    run_transaction(sqlite, lambda s: s.execute(INSERT, {"id": 7, "note": "e"}))
    assert _items(sqlite) == [(7, "e")]


def test_accepts_a_connection_with_no_transaction_in_progress(pg):
    """A Connection not in a transaction is a valid source; the unit commits on it."""
    with pg.connect() as conn:
        run_transaction(conn, lambda s: s.execute(INSERT, {"id": 2, "note": "c"}))
        assert not conn.in_transaction()
    assert _items(pg) == [(2, "c")]


def test_isolation_level_applies_to_every_attempt(pg, pg_kill):
    """Each attempt, the retried one included, runs at the requested isolation level."""
    seen = []

    def unit(session):
        seen.append(session.execute(text("SHOW transaction_isolation")).scalar())
        if len(seen) == 1:
            pg_kill(_pid(session))
            session.execute(text("SELECT 1"))

    run_transaction(sessionmaker(pg), unit, isolation_level="SERIALIZABLE")
    assert seen == ["serializable", "serializable"]


# ------------------------------------------------------------------ retries
def test_lost_connection_retries_the_whole_unit_in_a_fresh_session(pg, pg_kill, events):
    """A backend killed mid-unit: rolled back, re-run from the start in a new session, once."""
    sessions = []

    def add_two(session):
        sessions.append(session)
        session.execute(INSERT, {"id": 1, "note": "first"})
        if len(sessions) == 1:
            pg_kill(_pid(session))
        session.execute(INSERT, {"id": 2, "note": "second"})

    run_transaction(sessionmaker(pg), add_two)
    assert len(sessions) == 2
    assert sessions[0] is not sessions[1]
    assert _items(pg) == [(1, "first"), (2, "second")]
    scheduled = [e for e in events if isinstance(e, RetryScheduled)]
    assert [e.name for e in scheduled] == [f"{add_two.__module__}.{add_two.__qualname__}"]
    assert isinstance(scheduled[0].exception, sa.exc.OperationalError)
    assert [type(e) for e in events if isinstance(e, RetrySucceeded)] == [RetrySucceeded]


def test_events_carry_the_given_name(pg, pg_kill, events):
    """name= replaces fn's name in the retry events."""
    killed = []

    def unit(session):
        if not killed:
            killed.append(pg_kill(_pid(session)))
        session.execute(text("SELECT 1"))

    run_transaction(sessionmaker(pg), unit, name="payments")
    assert {e.name for e in events if isinstance(e, (RetryScheduled, RetrySucceeded))} == {
        "payments"
    }


def test_gives_up_after_max_attempts_with_the_last_original_error(pg, pg_kill, events, clock):
    """When every attempt loses its connection, the last driver error is raised unchanged."""
    calls = []

    def doomed(session):
        calls.append(1)
        pg_kill(_pid(session))
        session.execute(text("SELECT 1"))

    with pytest.raises(sa.exc.OperationalError) as info:
        run_transaction(sessionmaker(pg), doomed, max_attempts=3, delay=0.1, clock=clock)
    assert info.value.connection_invalidated
    assert len(calls) == 3
    assert len(clock.sleeps) == 2
    assert all(0 <= s <= 0.2 for s in clock.sleeps)  # jittered backoff, capped
    gave_up = [e for e in events if isinstance(e, RetryGaveUp)]
    assert [(e.attempts, e.reason) for e in gave_up] == [(3, "attempts")]


def test_non_retryable_error_propagates_at_once_after_rollback(pg):
    """An IntegrityError is not retried and the unit's earlier writes are rolled back."""
    calls = []

    def duplicate(session):
        calls.append(1)
        session.execute(INSERT, {"id": 1, "note": "a"})
        session.execute(INSERT, {"id": 1, "note": "b"})

    with pytest.raises(sa.exc.IntegrityError):
        run_transaction(sessionmaker(pg), duplicate)
    assert calls == [1]
    assert _items(pg) == []


def test_sqlite_busy_is_retried_until_the_lock_is_released(sqlite_url, sqlite):
    """'database is locked' from another writer is retried; the write lands once."""
    blocker = sqlite3.connect(sqlite.url.database, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    ev.subscribe(lambda e: blocker.execute("COMMIT"), RetryScheduled)
    engine = sa.create_engine(sqlite_url, connect_args={"timeout": 0})
    try:
        run_transaction(engine, lambda s: s.execute(INSERT, {"id": 3, "note": "l"}))
    finally:
        engine.dispose()
        blocker.close()
    assert _items(sqlite) == [(3, "l")]


# ------------------------------------------------------------------ lost COMMIT
def test_lost_commit_raises_commit_outcome_unknown_without_rerunning(pg, pg_kill):
    """A connection lost during COMMIT is not retried blindly: CommitOutcomeUnknown."""
    calls = []

    def add(session):
        calls.append(1)
        session.execute(INSERT, {"id": 1, "note": "a"})

    with pytest.raises(CommitOutcomeUnknown, match="may or may not have committed") as info:
        run_transaction(_killing_factory(pg, pg_kill, 1), add, resolve_commits=False)
    assert calls == [1]
    assert isinstance(info.value.__cause__, sa.exc.OperationalError)
    assert info.value.__cause__.connection_invalidated


def test_lost_commit_is_retried_when_the_work_is_idempotent(pg, pg_kill):
    """idempotent=True: a lost COMMIT is retried like any connection loss."""
    calls = []

    def upsert(session):
        calls.append(1)
        session.execute(
            text("INSERT INTO items VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET note = 'a'")
        )

    run_transaction(_killing_factory(pg, pg_kill, 1), upsert, idempotent=True)
    assert calls == [1, 1]
    assert _items(pg) == [(1, "a")]


def test_commit_check_false_retries_the_unit(pg, pg_kill):
    """commit_check finds no effect of the lost COMMIT: the unit runs again, once."""
    checks = []

    def committed(session):
        checks.append(session.in_transaction())
        return session.execute(text("SELECT count(*) FROM items WHERE id = 1")).scalar() == 1

    run_transaction(
        _killing_factory(pg, pg_kill, 1),
        lambda s: s.execute(INSERT, {"id": 1, "note": "a"}),
        commit_check=committed,
    )
    assert checks == [False]  # a fresh session
    assert _items(pg) == [(1, "a")]


def test_commit_check_true_returns_the_result_without_rerunning(pg, pg_kill):
    """commit_check says it committed: fn's result is returned and fn is not run again."""
    calls = []

    def add(session):
        calls.append(1)
        session.execute(INSERT, {"id": 1, "note": "a"})
        return 42

    result = run_transaction(_killing_factory(pg, pg_kill, 1), add, commit_check=lambda s: True)
    assert (result, calls) == (42, [1])


@pytest.mark.parametrize("answer", [None, "boom"])
def test_commit_check_unknown_or_failing_raises_commit_outcome_unknown(pg, pg_kill, answer):
    """A check answering None, or failing, leaves the outcome unknown."""

    def check(session):
        if answer == "boom":
            raise RuntimeError(answer)
        return answer

    with pytest.raises(CommitOutcomeUnknown, match="commit_check could not tell"):
        run_transaction(
            _killing_factory(pg, pg_kill, 1),
            lambda s: s.execute(INSERT, {"id": 1, "note": "a"}),
            commit_check=check,
        )


def test_commit_check_before_commit_hook_runs_inside_the_transaction(pg, pg_kill):
    """The check's before_commit runs in the attempt's transaction (the seam for pg_xact_status)."""

    class XactCheck:
        xid: int | None = None

        def before_commit(self, session):
            self.xid = int(session.execute(text("SELECT txid_current()")).scalar())

        def __call__(self, session):
            status = session.execute(text("SELECT txid_status(:x)"), {"x": self.xid}).scalar()
            return {"committed": True, "aborted": False}.get(status)

    check = XactCheck()
    calls = []

    def add(session):
        calls.append(1)
        session.execute(INSERT, {"id": len(calls), "note": "x"})

    run_transaction(_killing_factory(pg, pg_kill, 1), add, commit_check=check)
    assert calls == [1, 1]  # resolved as aborted, so retried
    assert _items(pg) == [(2, "x")]


# ------------------------------------------------------------------ nesting
def test_refuses_a_session_bound_to_a_connection_in_a_transaction(pg):
    """The Session(bind=connection) test pattern is refused; the outer transaction is untouched."""
    calls = []
    with pg.connect() as conn:
        outer = conn.begin()
        conn.execute(INSERT, {"id": 1, "note": "outer"})
        with pytest.raises(NestedTransactionError, match="transaction in progress"):
            run_transaction(sessionmaker(bind=conn), calls.append)
        assert outer.is_active
        outer.commit()
    assert calls == []
    assert _items(pg) == [(1, "outer")]


def test_refuses_a_session_that_is_already_in_a_transaction(sqlite):
    """A scoped_session already in use is refused and left open with its work."""
    registry = scoped_session(sessionmaker(sqlite))
    session = registry()
    session.execute(INSERT, {"id": 1, "note": "pending"})
    with pytest.raises(NestedTransactionError, match="already in a transaction"):
        run_transaction(registry, lambda s: None)
    assert session.in_transaction()
    session.commit()
    registry.remove()
    assert _items(sqlite) == [(1, "pending")]


def test_refuses_to_run_inside_another_run_transaction(sqlite):
    """A run_transaction inside another's unit is refused, and the outer unit is not retried."""
    calls = []

    def outer(session):
        calls.append(1)
        run_transaction(sqlite, lambda s: None, name="inner")

    with pytest.raises(NestedTransactionError, match=r"'inner'\) was called inside"):
        run_transaction(sqlite, outer, name="outer")
    assert calls == [1]
    run_transaction(sqlite, lambda s: s.execute(INSERT, {"id": 1, "note": "after"}))
    assert _items(sqlite) == [(1, "after")]  # the marker was cleared


def test_fn_that_commits_by_itself_is_an_error(sqlite):
    """fn must not end the transaction run_transaction opened."""
    calls = []

    def commits(session):
        calls.append(1)
        session.commit()

    with pytest.raises(RuntimeError, match="committed or rolled back the session itself"):
        run_transaction(sqlite, commits)
    assert calls == [1]


# ------------------------------------------------------------------ validation
def test_every_bad_setting_is_reported_in_one_error(sqlite):
    """Bad settings are listed together, naming each parameter."""
    with pytest.raises(ValueError, match="isolation_level") as info:
        run_transaction(sqlite, lambda s: None, isolation_level="AUTOCOMMIT", max_attempts=0)
    assert "max_attempts must be an integer >= 1" in str(info.value)


def test_a_session_instead_of_a_factory_is_a_type_error(sqlite):
    """A Session is one transaction's worth; a factory is needed."""
    with Session(sqlite) as session, pytest.raises(TypeError, match="sessions must be"):
        run_transaction(session, lambda s: None)  # type: ignore[arg-type]


def test_a_factory_returning_something_else_is_a_type_error(sqlite):
    """The factory's product is checked before use."""
    with pytest.raises(TypeError, match="not a Session"):
        run_transaction(lambda: "nope", lambda s: None)  # type: ignore[arg-type,return-value]


# ------------------------------------------------------------------ async
@pytest.fixture
async def apg(pg: Any, pg_url: str) -> AsyncIterator[Any]:
    engine = create_async_engine(pg_url)
    yield engine
    await engine.dispose()


@pytest.mark.anyio
async def test_async_commits_and_retries_a_lost_connection(apg, pg, pg_kill):
    """On psycopg async, a killed backend re-runs the whole unit in a fresh AsyncSession."""
    sessions = []

    async def add(session: AsyncSession) -> str:
        sessions.append(session)
        await session.execute(INSERT, {"id": len(sessions), "note": "a"})
        if len(sessions) == 1:
            pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            pg_kill(pid)
        level = (await session.execute(text("SHOW transaction_isolation"))).scalar_one()
        return str(level)

    result = await arun_transaction(async_sessionmaker(apg), add, isolation_level="REPEATABLE READ")
    assert result == "repeatable read"
    assert len(sessions) == 2
    assert _items(pg) == [(2, "a")]


@pytest.mark.anyio
async def test_async_lost_commit_raises_or_resolves_with_the_check(apg, pg, pg_kill):
    """A lost COMMIT raises CommitOutcomeUnknown; an async commit_check saying False retries."""
    kills = [2]

    def before_commit(session: Session) -> None:
        if kills[0] > 0:
            kills[0] -= 1
            kill_pid = session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar()
            pg_kill(int(kill_pid))

    def factory() -> AsyncSession:
        session = AsyncSession(apg)
        event.listen(session.sync_session, "before_commit", before_commit)
        return session

    async def add(session: AsyncSession) -> None:
        await session.execute(INSERT, {"id": 1, "note": "a"})

    async def committed(session: AsyncSession) -> bool:
        return bool((await session.execute(text("SELECT count(*) FROM items"))).scalar())

    with pytest.raises(CommitOutcomeUnknown):
        await arun_transaction(factory, add, resolve_commits=False)
    await arun_transaction(factory, add, commit_check=committed)
    assert _items(pg) == [(1, "a")]


@pytest.mark.anyio
async def test_async_refuses_a_connection_in_a_transaction_and_nesting(apg, pg):
    """An AsyncConnection with a transaction, and a nested call, are both refused."""
    async with apg.connect() as conn:
        await conn.begin()
        with pytest.raises(NestedTransactionError, match="transaction in progress"):
            await arun_transaction(conn, _noop)
        await conn.rollback()

    async def outer(session: AsyncSession) -> None:
        await arun_transaction(apg, _noop)

    with pytest.raises(NestedTransactionError, match="was called inside"):
        await arun_transaction(apg, outer)


async def _noop(session: AsyncSession) -> None:
    """Do nothing."""


@pytest.mark.anyio
async def test_async_sqlite_busy_is_retried(sqlite, tmp_path):
    """aiosqlite: 'database is locked' is retried until the other writer commits."""
    blocker = sqlite3.connect(sqlite.url.database, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    ev.subscribe(lambda e: blocker.execute("COMMIT"), RetryScheduled)
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{sqlite.url.database}", connect_args={"timeout": 0}
    )

    async def add(session: AsyncSession) -> None:
        await session.execute(INSERT, {"id": 4, "note": "async"})

    try:
        await arun_transaction(async_sessionmaker(engine), add)
    finally:
        await engine.dispose()
        blocker.close()
    assert _items(sqlite) == [(4, "async")]
