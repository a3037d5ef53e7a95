"""TransactionManager against a real sqlite3 database (and a fake async session)."""

from __future__ import annotations

import logging
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from recoverly import events as ev
from recoverly.transaction import TransactionManager, TransactionStatistics


@pytest.fixture
def dbfile(tmp_path: Path) -> Path:
    path = tmp_path / "tx.sqlite3"
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, name TEXT)")
    setup.close()
    return path


@pytest.fixture
def db(dbfile: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(dbfile, timeout=0.1)
    yield conn
    conn.close()


@pytest.fixture
def other(dbfile: Path) -> Iterator[sqlite3.Connection]:
    """A second connection: sees only what was committed."""
    conn = sqlite3.connect(dbfile, timeout=0.1)
    yield conn
    conn.close()


def names(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM runs ORDER BY id")]


def add(conn: sqlite3.Connection, name: str) -> int:
    cur = conn.execute("INSERT INTO runs (name) VALUES (?)", (name,))
    assert cur.lastrowid is not None
    return cur.lastrowid


class Boom(Exception):
    pass


class RollbackFails:
    """Wraps a connection; its rollback() raises like a dropped connection would."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        raise sqlite3.OperationalError("disk I/O error")


class CommitFails:
    """Wraps a connection; commit() raises, rollback() really rolls back."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def commit(self) -> None:
        raise sqlite3.OperationalError("database is locked")

    def rollback(self) -> None:
        self.conn.rollback()


# ---------------------------------------------------------------- sync, real database
def test_clean_exit_commits_rows_other_connections_then_see(db, other):
    """Rows written in the block are visible to another connection after a clean exit."""
    with TransactionManager(db) as tx:
        add(db, "a")
        add(db, "b")
        assert names(other) == []
        assert tx.active
    assert names(other) == ["a", "b"]
    assert tx.state == "committed"


def test_return_inside_the_block_commits(db, other):
    """Returning from inside the block (the seed's pattern) is a clean exit and commits."""

    def create_run(name: str) -> int:
        with TransactionManager(db):
            return add(db, name)

    run_id = create_run("model")
    assert run_id == 1
    assert names(other) == ["model"]


def test_exception_rolls_back_and_reraises_the_original(db, other, events):
    """An exception rolls the rows back and propagates as the very same object."""
    error = Boom("validation failed")
    with pytest.raises(Boom) as info, TransactionManager(db, name="runs"):
        add(db, "half-done")
        raise error
    assert info.value is error
    assert names(other) == []
    assert names(db) == []
    rolled = [e for e in events if isinstance(e, ev.TransactionRolledBack)]
    assert rolled == [ev.TransactionRolledBack("runs", error)]


def test_keyboard_interrupt_also_rolls_back(db, other):
    """Interrupts are not failures to retry, but their half-done work is still rolled back."""
    with pytest.raises(KeyboardInterrupt), TransactionManager(db):
        add(db, "x")
        raise KeyboardInterrupt
    assert names(db) == []


def test_manual_commit_inside_keeps_work_when_a_later_step_fails(db, other):
    """tx.commit() is a checkpoint: committed rows survive a later failure, later rows do not."""
    with pytest.raises(Boom), TransactionManager(db) as tx:
        add(db, "kept")
        tx.commit()
        assert names(other) == ["kept"]
        add(db, "lost")
        raise Boom
    assert names(other) == ["kept"]
    assert tx.statistics() == TransactionStatistics(
        blocks=1, commits=1, rollbacks=1, rollback_failures=0
    )


def test_manual_rollback_then_clean_exit_commits_only_later_work(db, other, events):
    """After tx.rollback() the block continues; a clean exit commits only what came after."""
    with TransactionManager(db, name="runs") as tx:
        add(db, "discarded")
        tx.rollback()
        add(db, "after")
    assert names(other) == ["after"]
    assert ev.TransactionRolledBack("runs", None) in events


def test_manual_rollback_then_clean_exit_leaves_nothing(db, other):
    """tx.rollback() used as "abort" leaves nothing behind: the exit commit is a no-op."""
    with TransactionManager(db) as tx:
        add(db, "discarded")
        tx.rollback()
    assert names(other) == []
    assert tx.state == "committed"


def test_auto_commit_false_discards_uncommitted_work(db, other, events):
    """With auto_commit=False only tx.commit() keeps work; the rest is rolled back at exit."""
    with TransactionManager(db, auto_commit=False, name="manual") as tx:
        add(db, "kept")
        tx.commit()
        add(db, "forgotten")
    assert names(other) == ["kept"]
    assert names(db) == ["kept"]
    assert tx.state == "rolled back"
    assert events.count(ev.TransactionRolledBack("manual", None)) == 1


def test_rollback_failure_keeps_the_original_exception(db, other, caplog):
    """If rollback() raises, it is logged and the block's own exception still propagates."""
    error = Boom("real problem")
    tm = TransactionManager(RollbackFails(db), name="flaky-db")
    with (
        caplog.at_level(logging.ERROR, logger="recoverly"),
        pytest.raises(Boom) as info,
        tm,
    ):
        add(db, "x")
        raise error
    assert info.value is error
    assert tm.statistics().rollback_failures == 1
    assert tm.statistics().rollbacks == 0
    [record] = [r for r in caplog.records if "Rollback of flaky-db failed" in r.getMessage()]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], sqlite3.OperationalError)
    if sys.version_info >= (3, 11):
        assert any("disk I/O error" in note for note in error.__notes__)
    assert names(other) == []


def test_commit_failure_on_exit_rolls_back_and_raises_the_commit_error(db, other, events):
    """A failing commit on a clean exit rolls the work back and raises the commit's error."""
    tm = TransactionManager(CommitFails(db), name="locked")
    with pytest.raises(sqlite3.OperationalError, match="locked"), tm:
        add(db, "x")
    assert names(db) == []
    assert tm.state == "rolled back"
    [rolled] = [e for e in events if isinstance(e, ev.TransactionRolledBack)]
    assert isinstance(rolled.exception, sqlite3.OperationalError)


def test_manager_is_reusable_block_after_block(db, other):
    """Each block is its own transaction; a failed block does not affect the next one."""
    tm = TransactionManager(db)
    with tm:
        add(db, "one")
    with pytest.raises(Boom), tm:
        add(db, "two")
        raise Boom
    with tm:
        add(db, "three")
    assert names(other) == ["one", "three"]
    assert tm.statistics() == TransactionStatistics(
        blocks=3, commits=2, rollbacks=1, rollback_failures=0
    )


def test_nesting_the_same_manager_is_refused(db):
    """Entering an active manager again raises RuntimeError; the outer block still rolls back."""
    tm = TransactionManager(db)
    with pytest.raises(RuntimeError, match="already active"), tm:
        add(db, "x")
        with tm:
            pass  # pragma: no cover
    assert names(db) == []


def test_commit_and_rollback_outside_the_block_are_refused(db):
    """tx.commit()/tx.rollback() only make sense inside the block."""
    tm = TransactionManager(db)
    with pytest.raises(RuntimeError, match="inside"):
        tm.commit()
    with pytest.raises(RuntimeError, match="inside"):
        tm.rollback()


@pytest.mark.parametrize("db_obj", [object(), "conn", type("OnlyCommit", (), {"commit": print})()])
def test_db_without_commit_and_rollback_is_a_type_error(db_obj):
    """The constructor names `db` when it lacks commit() or rollback()."""
    with pytest.raises(TypeError, match=r"db must have callable commit\(\) and rollback\(\)"):
        TransactionManager(db_obj)


def test_bad_auto_commit_and_name_are_reported_together(db):
    """Every bad argument is listed in one TypeError."""
    with pytest.raises(TypeError, match=r"auto_commit must be a bool.*name must be a string"):
        TransactionManager(db, "yes", name=3)  # type: ignore[arg-type]


def test_repr_shows_name_state_and_counters(db):
    """repr shows the name, the state and the counters."""
    tm = TransactionManager(db, name="runs")
    assert repr(tm) == "<TransactionManager 'runs' idle auto_commit=True commits=0 rollbacks=0>"
    with tm:
        assert "active" in repr(tm)
    assert (
        repr(tm) == "<TransactionManager 'runs' committed auto_commit=True commits=1 rollbacks=0>"
    )
    assert TransactionManager.__module__ == "recoverly"


def test_default_name_is_the_db_type(db):
    """Without name=, events name the type of the wrapped object."""
    assert TransactionManager(db).name == "sqlite3.Connection"


def test_awaitable_from_a_sync_block_is_a_type_error():
    """A commit() that returns an awaitable in a plain `with` is refused, never left unawaited."""

    class Sneaky:
        def __init__(self) -> None:
            self.closed = False

        def commit(self) -> object:
            return self._coro()

        def rollback(self) -> None:
            pass

        async def _coro(self) -> None:  # pragma: no cover - never awaited
            pass

    with pytest.raises(TypeError, match="async with"), TransactionManager(Sneaky()):
        pass


# ---------------------------------------------------------------- async
class FakeAsyncSession:
    """Records awaited commit/rollback calls like an AsyncSession would receive them."""

    def __init__(self, *, fail_rollback: bool = False) -> None:
        self.calls: list[str] = []
        self.pending: list[str] = []
        self.stored: list[str] = []
        self.fail_rollback = fail_rollback

    def add(self, value: str) -> None:
        self.pending.append(value)

    async def commit(self) -> None:
        self.calls.append("commit")
        self.stored += self.pending
        self.pending = []

    async def rollback(self) -> None:
        self.calls.append("rollback")
        if self.fail_rollback:
            raise ConnectionError("connection lost")
        self.pending = []


@pytest.mark.anyio
async def test_async_with_awaits_commit_on_clean_exit():
    """`async with` awaits an async commit() on a clean exit."""
    session = FakeAsyncSession()
    async with TransactionManager(session) as tx:
        session.add("row")
        assert tx.active
    assert session.calls == ["commit"]
    assert session.stored == ["row"]


@pytest.mark.anyio
async def test_async_with_awaits_rollback_and_reraises_the_original():
    """An error in `async with` awaits rollback() and propagates unchanged."""
    session = FakeAsyncSession()
    error = Boom("bad row")
    with pytest.raises(Boom) as info:
        async with TransactionManager(session):
            session.add("row")
            raise error
    assert info.value is error
    assert session.calls == ["rollback"]
    assert session.stored == []


@pytest.mark.anyio
async def test_async_manual_commit_and_rollback_inside_the_block():
    """acommit()/arollback() are awaited checkpoints inside `async with`."""
    session = FakeAsyncSession()
    async with TransactionManager(session) as tx:
        session.add("kept")
        await tx.acommit()
        session.add("dropped")
        await tx.arollback()
    assert session.calls == ["commit", "rollback", "commit"]
    assert session.stored == ["kept"]


@pytest.mark.anyio
async def test_async_rollback_failure_keeps_the_original_exception(caplog):
    """A failing async rollback is logged; the block's own exception propagates."""
    session = FakeAsyncSession(fail_rollback=True)
    error = Boom("original")
    with caplog.at_level(logging.ERROR, logger="recoverly"), pytest.raises(Boom) as info:
        async with TransactionManager(session, name="async-db"):
            raise error
    assert info.value is error
    assert any("Rollback of async-db failed" in r.getMessage() for r in caplog.records)


@pytest.mark.anyio
async def test_async_auto_commit_false_rolls_back_on_exit():
    """auto_commit=False in `async with` awaits rollback() at the end of the block."""
    session = FakeAsyncSession()
    async with TransactionManager(session, auto_commit=False):
        session.add("row")
    assert session.calls == ["rollback"]
    assert session.stored == []


@pytest.mark.anyio
async def test_async_with_works_for_a_sync_connection(db, other):
    """`async with` also drives a plain sqlite3 connection."""
    async with TransactionManager(db):
        add(db, "from-async")
    assert names(other) == ["from-async"]


def test_plain_with_on_an_async_session_is_a_type_error():
    """Using `with` on an async session says to use `async with`, before running the block."""
    session = FakeAsyncSession()
    entered = False
    with pytest.raises(TypeError, match="async with"), TransactionManager(session):
        entered = True  # pragma: no cover
    assert not entered
    assert session.calls == []


@pytest.mark.anyio
async def test_sync_commit_on_an_async_session_points_to_acommit():
    """tx.commit() on an async session raises TypeError naming acommit()."""
    session = FakeAsyncSession()
    with pytest.raises(TypeError, match="acommit"):
        async with TransactionManager(session) as tx:
            tx.commit()
    assert session.calls == ["rollback"]
