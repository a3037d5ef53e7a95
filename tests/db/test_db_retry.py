"""db_retry: what is retried, which session is rolled back, lost commits, seeds' usage."""

from __future__ import annotations

import inspect
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sa = pytest.importorskip("sqlalchemy")
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker  # noqa: E402

from recoverly import TransactionManager  # noqa: E402
from recoverly.db.errors import CommitOutcomeUnknown  # noqa: E402
from recoverly.db.retry import DbRetry, db_retry, ensure_connection  # noqa: E402
from recoverly.events import RetryGaveUp, RetryScheduled, TransactionRolledBack  # noqa: E402


class Base(DeclarativeBase):
    """Declarative base of the test models."""


class Model(Base):
    """A row with a status, like the seeds' ModelRun."""

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(unique=True)
    status: Mapped[str] = mapped_column(default="created")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Path of a SQLite file with the ``models`` table."""
    path = tmp_path / "app.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    engine.dispose()
    return path


@pytest.fixture
def engine(db_path: Path) -> Iterator[Any]:
    """An engine that fails at once (timeout 0) when the file is locked."""
    engine = sa.create_engine(f"sqlite:///{db_path}", connect_args={"timeout": 0})
    yield engine
    engine.dispose()


@pytest.fixture
def locker(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A raw connection holding the file's write lock until ``locker.commit()``."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    yield conn
    conn.close()


def release(locker: sqlite3.Connection) -> Any:
    """Return an on_retry hook that releases the lock before the retry."""

    def hook(*_: object) -> None:
        if locker.in_transaction:
            locker.execute("COMMIT")

    return hook


def names(engine: Any) -> list[str]:
    """Return the names of every row, sorted."""
    with Session(engine) as s:
        return sorted(s.scalars(sa.select(Model.name)))


class PgCommitUnknown(Exception):
    """A driver error carrying SQLSTATE 40003 (statement completion unknown)."""

    sqlstate = "40003"


# ---------------------------------------------------------------- shape
def test_bare_decorator_keeps_name_signature_and_result(engine: Any) -> None:
    """@db_retry without arguments returns a wrapper with the function's signature."""

    def query_database(db: Session) -> list[Model]:
        return list(db.scalars(sa.select(Model)))

    wrapped = db_retry(query_database)
    assert wrapped.__name__ == "query_database"
    assert inspect.signature(wrapped) == inspect.signature(query_database)
    with Session(engine) as s:
        assert wrapped(s) == []


def test_async_def_stays_a_coroutine_function_with_its_signature() -> None:
    """An async def keeps being a coroutine function, with Depends-style defaults intact."""
    marker = object()

    async def get_model(model_id: int, db: Session = marker) -> int:  # type: ignore[assignment]
        return model_id

    wrapped = ensure_connection(db_retry(max_attempts=3, delay=0.5)(get_model))
    assert inspect.iscoroutinefunction(wrapped)
    assert inspect.signature(wrapped).parameters["db"].default is marker


def test_bad_settings_are_reported_together() -> None:
    """idempotent with a check, and a non-callable check, are refused at decoration time."""
    with pytest.raises(ValueError, match="not both"):
        db_retry(idempotent=True, idempotency_check=lambda *a: True)
    with pytest.raises(TypeError, match="idempotency_check"):
        db_retry(idempotency_check=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="exceptions"):
        db_retry(exceptions=3)


def test_generator_functions_are_refused() -> None:
    """A generator function cannot be retried meaningfully."""

    def rows() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        db_retry(rows)


def test_repr_and_statistics_show_config_and_counters() -> None:
    """The policy's repr shows its settings; statistics come from the core Retry."""
    policy = db_retry(max_attempts=4, delay=0.25, idempotent=True, name="w")
    assert isinstance(policy, DbRetry)
    assert "max_attempts=4" in repr(policy)
    assert "idempotent=True" in repr(policy)
    assert policy.statistics().retries == 0


# ---------------------------------------------------------------- retrying
def test_locked_database_is_rolled_back_and_retried(
    engine: Any, locker: sqlite3.Connection, recoverly_clock: Any, events: list[object]
) -> None:
    """SQLite 'database is locked': rollback, wait, and the second attempt writes the row."""
    attempts: list[int] = []

    @db_retry(max_attempts=3, delay=0.5, on_retry=release(locker))
    def add(db: Session, name: str) -> None:
        attempts.append(1)
        db.add(Model(name=name))
        db.commit()

    with Session(engine) as s:
        add(s, "a")
    assert len(attempts) == 2
    assert names(engine) == ["a"]
    assert recoverly_clock.sleeps == [0.5]
    assert [type(e) for e in events if isinstance(e, TransactionRolledBack)] == [
        TransactionRolledBack
    ]
    assert any(isinstance(e, RetryScheduled) and e.name.endswith("add") for e in events)


def test_exhausted_retries_raise_the_original_error_with_the_session_rolled_back(
    engine: Any, locker: sqlite3.Connection, recoverly_clock: Any, events: list[object]
) -> None:
    """After the last attempt the driver's OperationalError propagates, unwrapped."""

    @db_retry(max_attempts=3, delay=0.5)
    def add(db: Session) -> None:
        db.add(Model(name="a"))
        db.commit()

    with Session(engine) as s:
        with pytest.raises(sa.exc.OperationalError, match="database is locked"):
            add(s)
        assert not s.in_transaction()
    assert recoverly_clock.sleeps == [0.5, 1.0]
    assert [e.reason for e in events if isinstance(e, RetryGaveUp)] == ["attempts"]
    locker.execute("COMMIT")
    assert names(engine) == []


def test_non_retryable_errors_propagate_at_once_and_leave_the_session_alone(
    engine: Any, recoverly_clock: Any, events: list[object]
) -> None:
    """A unique violation is raised on the first attempt; db_retry does not roll back."""
    with Session(engine) as s:
        s.add(Model(name="a"))
        s.commit()
    attempts: list[int] = []

    @db_retry(max_attempts=3)
    def add(db: Session) -> None:
        attempts.append(1)
        db.add(Model(name="a"))
        db.flush()

    with Session(engine) as s:
        with pytest.raises(sa.exc.IntegrityError):
            add(s)
        assert s.in_transaction()  # left for the caller to roll back
    assert attempts == [1]
    assert recoverly_clock.sleeps == []
    assert not any(isinstance(e, TransactionRolledBack) for e in events)


def test_a_transaction_the_caller_began_is_not_retried_nor_rolled_back(
    engine: Any, locker: sqlite3.Connection, recoverly_clock: Any
) -> None:
    """Work the caller did first stays in its transaction: the retryable error propagates."""
    attempts: list[int] = []

    @db_retry(max_attempts=3)
    def add(db: Session) -> None:
        attempts.append(1)
        db.add(Model(name="inner"))
        db.flush()

    with Session(engine) as s:
        s.add(Model(name="outer"))
        s.connection()  # the caller's transaction is in progress
        with pytest.raises(sa.exc.OperationalError):
            add(s)
        assert s.in_transaction()
    assert attempts == [1]
    assert recoverly_clock.sleeps == []


def test_exceptions_replaces_the_classification(engine: Any, recoverly_clock: Any) -> None:
    """exceptions= decides what is retried instead of is_retryable."""
    calls: list[int] = []

    @db_retry(max_attempts=3, delay=0.1, exceptions=KeyError)
    def flaky(db: Session) -> str:
        calls.append(1)
        if len(calls) < 2:
            raise KeyError
        return "ok"

    with Session(engine) as s:
        assert flaky(s) == "ok"
    assert recoverly_clock.sleeps == [0.1]


# ---------------------------------------------------------------- finding the session
def test_session_is_found_by_keyword_position_or_self_attribute(
    engine: Any, locker: sqlite3.Connection, events: list[object]
) -> None:
    """The rollback reaches the session whether passed by keyword, anywhere, or as self.db."""

    class Repo:
        def __init__(self, db: Session) -> None:
            self.db = db

        @db_retry(max_attempts=2, delay=0, on_retry=release(locker))
        def add(self, name: str) -> None:
            self.db.add(Model(name=name))
            self.db.commit()

    @db_retry(max_attempts=2, delay=0, on_retry=release(locker))
    def add_kw(name: str, *, db: Session) -> None:
        db.add(Model(name=name))
        db.commit()

    with Session(engine) as s:
        Repo(s).add("a")
        locker.execute("BEGIN IMMEDIATE")
        add_kw("b", db=s)
    assert names(engine) == ["a", "b"]
    assert sum(isinstance(e, TransactionRolledBack) for e in events) == 2


def test_function_opening_its_own_session_is_simply_called_again(
    engine: Any, locker: sqlite3.Connection, recoverly_clock: Any
) -> None:
    """The seeds' update_progress takes no session: each attempt opens a fresh one."""
    factory = sessionmaker(engine)

    def get_db() -> Iterator[Session]:
        db = factory()
        try:
            yield db
        finally:
            db.close()

    @ensure_connection
    @db_retry(max_attempts=3, on_retry=release(locker))
    def update_progress(name: str, status: str) -> None:
        db = next(get_db())
        try:
            with TransactionManager(db):
                db.add(Model(name=name, status=status))
        finally:
            db.close()

    update_progress("run", "epoch 1")
    assert names(engine) == ["run"]
    assert recoverly_clock.sleeps == [0.5]


# ---------------------------------------------------------------- seeds
def test_seed_update_model_status_with_transaction_manager(
    engine: Any, locker: sqlite3.Connection, recoverly_clock: Any
) -> None:
    """The seeds' update_model_status retries a locked write and lands it once."""
    with Session(engine) as s:
        locker.execute("COMMIT")
        s.add(Model(id=1, name="m"))
        s.commit()
        locker.execute("BEGIN IMMEDIATE")

    @ensure_connection
    @db_retry(max_attempts=3, delay=0.5, on_retry=release(locker))
    def update_model_status(db: Session, model_id: int, status: str) -> None:
        with TransactionManager(db):
            model = db.query(Model).filter_by(id=model_id).first()
            assert model is not None
            model.status = status

    with Session(engine) as s:
        update_model_status(s, 1, "done")
        assert s.get(Model, 1).status == "done"  # type: ignore[union-attr]
    assert recoverly_clock.sleeps == [0.5]


def test_seed_query_database(engine: Any) -> None:
    """The seeds' query_database returns the rows."""

    @ensure_connection
    @db_retry(max_attempts=3)
    def query_database(db: Session) -> list[Model]:
        return db.query(Model).all()

    with Session(engine) as s:
        s.add(Model(name="x"))
        s.commit()
        assert [m.name for m in query_database(s)] == ["x"]


@pytest.mark.anyio
async def test_seed_async_endpoint_with_a_sync_session(
    engine: Any, locker: sqlite3.Connection, recoverly_clock: Any
) -> None:
    """async def get_model(model_id, db: Session = Depends(...)) retries with the sync session."""
    calls: list[int] = []

    @ensure_connection
    @db_retry(max_attempts=3, delay=0.5, on_retry=release(locker))
    async def get_model(model_id: int, db: Session) -> str:
        calls.append(model_id)
        db.add(Model(id=model_id, name=f"m{model_id}"))
        db.commit()
        return db.get(Model, model_id).name  # type: ignore[union-attr]

    with Session(engine) as s:
        assert await get_model(7, db=s) == "m7"
    assert calls == [7, 7]
    assert recoverly_clock.sleeps == [0.5]


@pytest.mark.anyio
async def test_async_session_is_rolled_back_and_retried(
    db_path: Path, locker: sqlite3.Connection, recoverly_clock: Any, anyio_backend: str
) -> None:
    """An AsyncSession (aiosqlite) is rolled back with await and the retry writes once."""
    if anyio_backend != "asyncio":
        pytest.skip("aiosqlite runs on asyncio only")
    engine = create_async_engine(f"sqlite+aiosqlite:///{db_path}", connect_args={"timeout": 0})

    @db_retry(max_attempts=3, delay=0.5, on_retry=release(locker))
    async def add(db: AsyncSession, name: str) -> None:
        db.add(Model(name=name))
        await db.commit()

    try:
        async with AsyncSession(engine) as s:
            await add(s, "a")
            assert list(await s.scalars(sa.select(Model.name))) == ["a"]
    finally:
        await engine.dispose()
    assert recoverly_clock.sleeps == [0.5]


# ---------------------------------------------------------------- lost commits (unit)
def test_commit_unknown_is_not_rerun_without_a_flag() -> None:
    """SQLSTATE 40003 becomes CommitOutcomeUnknown, caused by the driver error, after one run."""
    calls: list[int] = []

    @db_retry(max_attempts=3)
    def write() -> None:
        calls.append(1)
        raise PgCommitUnknown

    with pytest.raises(CommitOutcomeUnknown) as info:
        write()
    assert isinstance(info.value.__cause__, PgCommitUnknown)
    assert calls == [1]


def test_commit_unknown_of_an_idempotent_call_is_rerun() -> None:
    """idempotent=True runs the call again after an unknown commit."""
    calls: list[int] = []

    @db_retry(max_attempts=3, idempotent=True)
    def write() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise PgCommitUnknown
        return "ok"

    assert write() == "ok"
    assert calls == [1, 1]


@pytest.mark.parametrize(("found", "expected", "runs"), [(True, None, 1), ("row", "row", 1)])
def test_idempotency_check_saying_committed_returns_without_rerunning(
    found: object, expected: object, runs: int
) -> None:
    """A truthy check result is returned (None for True) and the call is not run again."""
    calls: list[int] = []
    checks: list[tuple[Any, ...]] = []

    def check(*args: Any) -> object:
        checks.append(args)
        return found

    @db_retry(max_attempts=3, idempotency_check=check)
    def write(key: str) -> str:
        calls.append(1)
        raise PgCommitUnknown

    assert write("k") == expected
    assert checks == [("k",)]
    assert len(calls) == runs


def test_idempotency_check_that_keeps_failing_ends_in_commit_outcome_unknown(
    recoverly_clock: Any,
) -> None:
    """When the check itself never answers, the caller learns the outcome is unknown."""
    broken = sa.exc.OperationalError("SELECT", {}, sqlite3.OperationalError("database is locked"))

    def check() -> bool:
        raise broken

    @db_retry(max_attempts=3, delay=0.5, idempotency_check=check)
    def write() -> None:
        raise PgCommitUnknown

    with pytest.raises(CommitOutcomeUnknown) as info:
        write()
    assert info.value.__cause__ is broken
    assert recoverly_clock.sleeps == [0.5, 1.0]


@pytest.mark.anyio
async def test_async_commit_unknown_with_an_async_check() -> None:
    """The async wrapper awaits an async idempotency check."""

    async def check() -> bool:
        return False

    calls: list[int] = []

    @db_retry(max_attempts=3, idempotency_check=check)
    async def write() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise PgCommitUnknown
        return "again"

    assert await write() == "again"
    assert calls == [1, 1]
