"""with_savepoint on real PostgreSQL, MariaDB and SQLite: only the savepoint's work rolls back."""

from __future__ import annotations

import pytest

sa = pytest.importorskip("sqlalchemy")

from sqlalchemy import ForeignKey, event, func, select  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column  # noqa: E402

from recoverly import TransactionManager  # noqa: E402
from recoverly.db.savepoint import (  # noqa: E402
    Savepoint,
    enable_sqlite_savepoints,
    with_savepoint,
)
from recoverly.events import TransactionRolledBack  # noqa: E402


class Base(DeclarativeBase):
    pass


class ModelRun(Base):
    __tablename__ = "model_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(40))


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_run_id: Mapped[int] = mapped_column(ForeignKey("model_runs.id"))
    name: Mapped[str] = mapped_column(sa.String(40))  # NOT NULL: name=None fails


@pytest.fixture(params=["pg", "mysql", "sqlite"])
def engine(request):
    engine = request.getfixturevalue(f"{request.param}_engine")
    if request.param == "sqlite":
        enable_sqlite_savepoints(engine)
    Base.metadata.create_all(engine)
    return engine


def _counts(engine) -> tuple[int, int]:
    with Session(engine) as s:
        runs = s.scalar(select(func.count()).select_from(ModelRun))
        datasets = s.scalar(select(func.count()).select_from(Dataset))
    return runs, datasets


def create_model_with_dataset(db: Session, model_data: dict, dataset_data: dict):
    """The seed's "Complex Transaction with Savepoints" example, imports changed only."""
    with TransactionManager(db) as tx:  # noqa: F841 - the seed's spelling
        model = ModelRun(**model_data)
        db.add(model)
        db.flush()

        @with_savepoint
        def create_dataset_with_savepoint(db: Session):
            dataset = Dataset(**dataset_data, model_run_id=model.id)
            db.add(dataset)
            db.flush()
            return dataset

        try:
            dataset = create_dataset_with_savepoint(db)
        except Exception:
            dataset = None
        return model, dataset


def test_seed_example_keeps_the_model_when_the_dataset_fails(engine):
    """A failing dataset insert rolls back to the savepoint; the model is still committed."""
    with Session(engine, expire_on_commit=False) as db:
        model, dataset = create_model_with_dataset(db, {"name": "m"}, {"name": None})
    assert dataset is None
    assert model.id is not None
    assert _counts(engine) == (1, 0)


def test_seed_example_keeps_both_when_nothing_fails(engine):
    """On success the savepoint is released and the outer commit keeps both rows."""
    with Session(engine) as db:
        _, dataset = create_model_with_dataset(db, {"name": "m"}, {"name": "d"})
    assert dataset is not None
    assert _counts(engine) == (1, 1)


def test_block_form_rolls_back_only_the_block_and_reraises(engine, events):
    """`with with_savepoint(db)`: the original error propagates; earlier work survives."""
    with Session(engine) as db:
        db.add(ModelRun(id=1, name="kept"))
        db.flush()
        with pytest.raises(sa.exc.IntegrityError), with_savepoint(db):
            db.add(ModelRun(id=1, name="duplicate key"))
            db.flush()
        db.add(ModelRun(id=2, name="after"))
        db.commit()
    assert _counts(engine) == (2, 0)
    rolled = [e for e in events if isinstance(e, TransactionRolledBack)]
    assert [(e.name, type(e.exception)) for e in rolled] == [("savepoint", sa.exc.IntegrityError)]


def test_decorator_finds_the_session_by_keyword_and_on_a_connection(pg_engine):
    """The session may come as db=...; a Core Connection works too."""
    Base.metadata.create_all(pg_engine)

    @with_savepoint()
    def add(name: str, *, db):
        db.execute(sa.insert(ModelRun).values(name=name))
        if name == "bad":
            raise ValueError(name)

    with pg_engine.connect() as conn:
        add("good", db=conn)
        with pytest.raises(ValueError, match="bad"):
            add("bad", db=conn)
        conn.commit()
    with Session(pg_engine) as s:
        assert list(s.scalars(select(ModelRun.name))) == ["good"]


def test_decorator_without_a_session_argument_is_a_type_error():
    """Calling a decorated function with no session among its arguments raises TypeError."""

    @with_savepoint
    def work(x):
        return x

    with pytest.raises(TypeError, match="found no Session"):
        work(1)
    with pytest.raises(TypeError, match="takes a function or a session"):
        with_savepoint(42)  # type: ignore[call-overload]


def test_sqlite_without_the_recipe_raises_a_clear_error(sqlite_engine):
    """Plain pysqlite: entering the savepoint raises RuntimeError naming the fix; body not run."""
    Base.metadata.create_all(sqlite_engine)
    ran = []
    with Session(sqlite_engine) as db:
        db.add(ModelRun(name="outer"))
        db.flush()
        with (
            pytest.raises(RuntimeError, match=r"enable_sqlite_savepoints\(engine\)"),
            with_savepoint(db),
        ):
            ran.append(1)
    assert ran == []


def test_sqlite_recipe_is_idempotent_and_only_for_sqlite(sqlite_engine, pg_engine):
    """Enabling twice installs one listener; a non-SQLite engine is a ValueError."""
    enable_sqlite_savepoints(sqlite_engine)
    enable_sqlite_savepoints(sqlite_engine)
    begins = []
    event.listen(sqlite_engine, "before_cursor_execute", lambda *a: begins.append(a[2]))
    with sqlite_engine.begin() as conn:
        conn.execute(sa.text("SELECT 1"))
    assert begins.count("BEGIN") == 1
    with pytest.raises(ValueError, match="'postgresql'"):
        enable_sqlite_savepoints(pg_engine)
    with pytest.raises(TypeError, match="Engine or AsyncEngine"):
        enable_sqlite_savepoints("sqlite://")  # type: ignore[arg-type]


def test_sync_block_refuses_an_async_session(sqlite_url):
    """`with` on an AsyncSession is a TypeError pointing at `async with`."""
    engine = create_async_engine(sqlite_url.replace("sqlite://", "sqlite+aiosqlite://"))
    block = with_savepoint(AsyncSession(engine))
    assert isinstance(block, Savepoint)
    with pytest.raises(TypeError, match="async with"), block:
        pass


def test_connection_loss_inside_the_savepoint_propagates_the_statement_error(pg_engine, pg_kill):
    """A backend killed inside the savepoint: the failing statement's error comes out unchanged."""
    Base.metadata.create_all(pg_engine)
    with Session(pg_engine) as db:
        pid = db.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        with pytest.raises(sa.exc.OperationalError) as info, with_savepoint(db):
            db.execute(sa.text("SELECT 1"))
            pg_kill(pid)
            db.execute(sa.text("SELECT 2"))
        assert info.value.connection_invalidated
        assert info.value.statement == "SELECT 2"
        db.rollback()
        assert db.execute(sa.text("SELECT 3")).scalar() == 3  # the session recovers


@pytest.fixture
def anyio_backend():
    return "asyncio"  # aiosqlite runs on asyncio only


@pytest.mark.anyio
async def test_async_session_block_and_decorator(sqlite_url):
    """AsyncSession: `async with` and an `async def` decorator roll back only their own work."""
    engine = create_async_engine(sqlite_url.replace("sqlite://", "sqlite+aiosqlite://"))
    enable_sqlite_savepoints(engine)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)

    @with_savepoint
    async def add_dataset(db: AsyncSession, name: str | None) -> None:
        db.add(Dataset(model_run_id=1, name=name))
        await db.flush()

    async with AsyncSession(engine) as db:
        db.add(ModelRun(id=1, name="outer"))
        await db.flush()
        with pytest.raises(sa.exc.IntegrityError):
            async with with_savepoint(db):
                db.add(ModelRun(id=1, name="duplicate"))
                await db.flush()
        with pytest.raises(sa.exc.IntegrityError):
            await add_dataset(db, None)
        await add_dataset(db, "ok")
        await db.commit()
        runs = (await db.scalars(select(ModelRun.name))).all()
        datasets = (await db.scalars(select(Dataset.name))).all()
    await engine.dispose()
    assert (runs, datasets) == (["outer"], ["ok"])
