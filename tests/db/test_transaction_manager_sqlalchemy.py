"""recoverly.TransactionManager on real SQLAlchemy Session and AsyncSession (PostgreSQL, SQLite)."""

from __future__ import annotations

import datetime as dt

import pytest

sa = pytest.importorskip("sqlalchemy")

from sqlalchemy import ForeignKey, String  # noqa: E402 - after the importorskip
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column  # noqa: E402

from recoverly import TransactionManager  # noqa: E402
from recoverly import events as ev  # noqa: E402


class Base(DeclarativeBase):
    pass


class ModelRun(Base):
    __tablename__ = "model_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    model_type: Mapped[str] = mapped_column(String(50), default="linear")
    config: Mapped[dict[str, object]] = mapped_column(sa.JSON, default=dict)
    status: Mapped[str] = mapped_column(String(20), default="created")
    created_at: Mapped[dt.datetime | None]


class TrainingProgress(Base):
    __tablename__ = "training_progress"
    id: Mapped[int] = mapped_column(primary_key=True)
    model_run_id: Mapped[int] = mapped_column(ForeignKey("model_runs.id"))
    status: Mapped[str] = mapped_column(String(20))
    progress_percentage: Mapped[float]


@pytest.fixture(params=["postgresql", "sqlite"])
def url(request: pytest.FixtureRequest) -> str:
    """A real PostgreSQL schema or a file-backed SQLite database, with the tables created."""
    url = str(request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url"))
    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    return url


@pytest.fixture
def engine(url):
    """The engine the session under test uses."""
    engine = sa.create_engine(url)
    yield engine
    engine.dispose()


def committed(url: str, table: str = "model_runs") -> list[str]:
    """What another connection (of a separate engine) sees committed in ``table``."""
    other = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with other.connect() as conn:
            column = "name" if table == "model_runs" else "status"
            query = f"SELECT {column} FROM {table} ORDER BY id"  # noqa: S608 - fixed names
            return list(conn.execute(sa.text(query)).scalars())
    finally:
        other.dispose()


# ---------------------------------------------------------------- Session
def test_clean_exit_commits_and_another_connection_sees_the_row(url, engine):
    """A clean exit commits: a separate engine's connection reads the row."""
    with Session(engine) as session, TransactionManager(session) as tx:
        session.add(ModelRun(name="resnet"))
        assert committed(url) == []  # not visible before the commit
    assert committed(url) == ["resnet"]
    assert tx.state == "committed"
    assert tx.statistics().commits == 1


def test_exception_rolls_back_and_propagates_unchanged(url, engine, events):
    """An exception rolls the flushed row back; the same exception object propagates."""
    boom = RuntimeError("boom")
    with Session(engine) as session:
        with pytest.raises(RuntimeError) as info, TransactionManager(session):
            session.add(ModelRun(name="resnet"))
            session.flush()  # the INSERT reached the server
            raise boom
        assert info.value is boom
        assert not session.in_transaction()
        session.add(ModelRun(name="vit"))  # the session is usable again
        session.commit()
    assert committed(url) == ["vit"]
    (rolled,) = [e for e in events if isinstance(e, ev.TransactionRolledBack)]
    assert rolled.exception is boom


def test_integrity_error_inside_the_block_rolls_back_the_whole_unit(url, engine):
    """A unique violation at flush rolls back the rows before it; the IntegrityError propagates."""
    with Session(engine) as session:
        session.add(ModelRun(name="taken"))
        session.commit()
        with pytest.raises(sa.exc.IntegrityError), TransactionManager(session):
            session.add(ModelRun(name="first"))
            session.flush()
            session.add(ModelRun(name="taken"))
            session.flush()
    assert committed(url) == ["taken"]


def test_commit_checkpoint_inside_keeps_work_done_before_it(url, engine):
    """tx.commit() inside the block keeps earlier work even if the block later fails."""
    with (
        Session(engine) as session,
        pytest.raises(ValueError, match="late"),
        TransactionManager(session) as tx,
    ):
        session.add(ModelRun(name="kept"))
        tx.commit()
        session.add(ModelRun(name="lost"))
        session.flush()
        raise ValueError("late")
    assert committed(url) == ["kept"]


def test_rollback_checkpoint_inside_discards_earlier_work_only(url, engine):
    """tx.rollback() inside discards what came before; later work commits on the clean exit."""
    with Session(engine) as session, TransactionManager(session) as tx:
        session.add(ModelRun(name="discarded"))
        session.flush()
        tx.rollback()
        session.add(ModelRun(name="kept"))
    assert committed(url) == ["kept"]
    assert tx.statistics().rollbacks == 1


def test_auto_commit_false_keeps_only_explicit_commits(url, engine):
    """auto_commit=False: the block's uncommitted tail is rolled back at the end."""
    with Session(engine) as session, TransactionManager(session, auto_commit=False) as tx:
        session.add(ModelRun(name="committed"))
        tx.commit()
        session.add(ModelRun(name="dropped"))
        session.flush()
    assert committed(url) == ["committed"]
    assert tx.state == "rolled back"


@pytest.mark.parametrize("url", ["postgresql"], indirect=True)
def test_failing_commit_is_rolled_back_and_its_error_propagates(url, engine):
    """A deferred constraint failing at COMMIT: the error propagates and the session recovers."""
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE deferred (k int UNIQUE DEFERRABLE INITIALLY DEFERRED)"))
    with Session(engine) as session:
        with pytest.raises(sa.exc.IntegrityError), TransactionManager(session) as tx:
            session.execute(sa.text("INSERT INTO deferred VALUES (1), (1)"))  # fine until COMMIT
        assert tx.state == "rolled back"
        assert not session.in_transaction()
        session.add(ModelRun(name="after"))
        session.commit()
    assert committed(url) == ["after"]


# ---------------------------------------------------------------- the seed's example
def create_model_run(db: Session, name: str, model_type: str, config: dict) -> ModelRun:
    """The seeds' "Create Record with Transaction" body, as written there."""
    with TransactionManager(db) as tx:  # noqa: F841 - the seed names it
        model_run = ModelRun(
            name=name,
            model_type=model_type,
            config=config,
            status="created",
            created_at=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
        )
        db.add(model_run)
        db.flush()  # Get ID without committing

        progress = TrainingProgress(
            model_run_id=model_run.id, status="initialized", progress_percentage=0.0
        )
        db.add(progress)

        # Transaction commits automatically on exit
        return model_run


def test_seed_create_record_with_transaction_commits_both_rows(url, engine):
    """Returning from inside the block commits the run and its related progress row."""
    with Session(engine) as session:
        run = create_model_run(session, "resnet", "cnn", {"lr": 0.1})
        assert not session.in_transaction()
        assert run.id is not None
        run_id = run.id
    assert committed(url) == ["resnet"]
    assert committed(url, "training_progress") == ["initialized"]
    with Session(engine) as session:
        progress = session.scalars(sa.select(TrainingProgress)).one()
        assert progress.model_run_id == run_id
        assert session.get(ModelRun, run_id).config == {"lr": 0.1}


def test_seed_create_record_rolls_back_both_rows_on_failure(url, engine):
    """If the related row fails (duplicate name first), nothing of the unit is kept."""
    with Session(engine) as session:
        create_model_run(session, "resnet", "cnn", {})
        with pytest.raises(sa.exc.IntegrityError):
            create_model_run(session, "resnet", "cnn", {})  # unique name
    assert committed(url) == ["resnet"]
    assert committed(url, "training_progress") == ["initialized"]


# ---------------------------------------------------------------- AsyncSession
@pytest.fixture
def async_url(url: str) -> str:
    """The same database through an asyncio driver (psycopg async, aiosqlite)."""
    pytest.importorskip("greenlet", reason="SQLAlchemy's asyncio layer needs greenlet")
    return url.replace("sqlite://", "sqlite+aiosqlite://", 1)


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's asyncio layer runs on asyncio only."""
    return "asyncio"


@pytest.mark.anyio
async def test_async_session_commits_on_clean_exit(url, async_url):
    """async with TransactionManager(AsyncSession) awaits commit(): the row is visible."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(async_url)
    try:
        async with AsyncSession(engine) as session:
            async with TransactionManager(session) as tx:
                session.add(ModelRun(name="async-kept"))
                await session.flush()
                assert committed(url) == []
            assert tx.state == "committed"
            assert not session.in_transaction()
    finally:
        await engine.dispose()
    assert committed(url) == ["async-kept"]


@pytest.mark.anyio
async def test_async_session_rolls_back_on_exception(url, async_url):
    """An exception in async with rolls back (awaited) and propagates unchanged."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(async_url)
    boom = LookupError("boom")
    try:
        async with AsyncSession(engine) as session:
            with pytest.raises(LookupError) as info:
                async with TransactionManager(session):
                    session.add(ModelRun(name="async-lost"))
                    await session.flush()
                    raise boom
            assert info.value is boom
            assert not session.in_transaction()
    finally:
        await engine.dispose()
    assert committed(url) == []


@pytest.mark.anyio
async def test_async_checkpoints_acommit_and_arollback(url, async_url):
    """await tx.acommit() keeps earlier work; await tx.arollback() discards only what followed."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(async_url)
    try:
        async with AsyncSession(engine) as session:
            with pytest.raises(ValueError, match="late"):
                async with TransactionManager(session) as tx:
                    session.add(ModelRun(name="a-kept"))
                    await tx.acommit()
                    session.add(ModelRun(name="a-dropped"))
                    await session.flush()
                    await tx.arollback()
                    session.add(ModelRun(name="a-lost"))
                    await session.flush()
                    raise ValueError("late")
    finally:
        await engine.dispose()
    assert committed(url) == ["a-kept"]
    assert tx.statistics().commits == 1
    assert tx.statistics().rollbacks == 2


@pytest.mark.anyio
async def test_plain_with_on_an_async_session_is_refused(async_url):
    """A sync `with` on an AsyncSession raises TypeError before touching the database."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(async_url)
    try:
        async with AsyncSession(engine) as session:
            with pytest.raises(TypeError, match="async with"), TransactionManager(session):
                pass  # pragma: no cover - never entered
            assert not session.in_transaction()
    finally:
        await engine.dispose()


def test_work_pending_before_the_block_joins_its_transaction(url, engine):
    """The manager does not begin a fresh transaction: earlier uncommitted work commits with it."""
    with Session(engine) as session:
        session.add(ModelRun(name="before"))
        session.flush()  # autobegin: a transaction is already open
        with TransactionManager(session):
            session.add(ModelRun(name="inside"))
    assert committed(url) == ["before", "inside"]
