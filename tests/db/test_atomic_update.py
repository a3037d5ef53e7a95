"""atomic_update: optimistic locking on real PostgreSQL and SQLite, retries on conflicts."""

from __future__ import annotations

import pytest

sa = pytest.importorskip("sqlalchemy")

from sqlalchemy import event  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column  # noqa: E402
from sqlalchemy.orm.exc import StaleDataError  # noqa: E402

from recoverly.db.atomic import atomic_update  # noqa: E402
from recoverly.events import RetryScheduled  # noqa: E402


class Base(DeclarativeBase):
    pass


class ModelRun(Base):
    """Versioned through the mapper's version_id_col."""

    __tablename__ = "model_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    usage_count: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(sa.String(20), default="new")
    version_id: Mapped[int] = mapped_column(nullable=False)
    __mapper_args__ = {"version_id_col": version_id}  # noqa: RUF012


class Counter(Base):
    """A plain integer column named `version`, not configured on the mapper."""

    __tablename__ = "counters"

    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[int] = mapped_column(default=0)
    version: Mapped[int] = mapped_column(default=0)


class Unversioned(Base):
    __tablename__ = "unversioned"

    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[int] = mapped_column(default=0)


@pytest.fixture(params=["pg", "sqlite"])
def engine(request):
    engine = request.getfixturevalue(f"{request.param}_engine")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all([ModelRun(id=1), Counter(id=1)])
        s.commit()
    return engine


@pytest.fixture
def pg(pg_engine):
    Base.metadata.create_all(pg_engine)
    with Session(pg_engine) as s:
        s.add_all([ModelRun(id=1), Counter(id=1)])
        s.commit()
    return pg_engine


def _row(engine, model=ModelRun):
    with Session(engine) as s:
        return s.get(model, 1)


def increment_model_usage(db: Session, model_id: int) -> bool:
    """The seed's "Update with Optimistic Locking" example, imports changed only."""
    model = db.query(ModelRun).filter_by(id=model_id).first()
    if not model:
        return False
    return atomic_update(
        db=db,
        model_class=ModelRun,
        record_id=model_id,
        updates={"usage_count": model.usage_count + 1},
        max_retries=5,
    )


def test_seed_example_updates_commits_and_bumps_the_version(engine):
    """The seed's call returns True, commits, and the version column moves on."""
    with Session(engine) as db:
        assert increment_model_usage(db, 1) is True
        assert increment_model_usage(db, 2) is False
    row = _row(engine)
    assert (row.usage_count, row.version_id) == (1, 2)


@pytest.mark.parametrize("model", [ModelRun, Counter])
def test_missing_row_returns_false(engine, model):
    """A record id that does not exist gives False and writes nothing."""
    with Session(engine) as db:
        assert atomic_update(db, model, 99, {"status": "x"} if model is ModelRun else {}) is False
        assert not db.in_transaction()


def test_plain_version_column_is_checked_and_incremented(engine):
    """Without version_id_col a column named `version` is used: WHERE version = seen, +1."""
    with Session(engine) as db:
        assert atomic_update(db, Counter, 1, lambda row: {"value": row.value + 5}) is True
        assert atomic_update(db, Counter, 1, lambda row: {"value": row.value + 5}) is True
    row = _row(engine, Counter)
    assert (row.value, row.version) == (10, 2)


def test_without_a_version_column_it_refuses_at_call_time(engine):
    """A model with no version column is a TypeError naming it, before any SQL runs."""
    statements = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with Session(engine) as db, pytest.raises(TypeError, match="version column on Unversioned"):
        atomic_update(db, Unversioned, 1, {"value": 1})
    assert statements == []


def test_bad_arguments_are_reported(engine):
    """Managed or unknown keys, a negative max_retries and a bad updates type are rejected."""
    with Session(engine) as db:
        with pytest.raises(ValueError, match="'version_id'"):
            atomic_update(db, ModelRun, 1, {"version_id": 7})
        with pytest.raises(ValueError, match="'nope'"):
            atomic_update(db, ModelRun, 1, lambda row: {"nope": 1})
        with pytest.raises(ValueError, match="max_retries"):
            atomic_update(db, ModelRun, 1, {}, max_retries=-1)
        with pytest.raises(TypeError, match="updates must be"):
            atomic_update(db, ModelRun, 1, 3)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="mapped ORM class"):
            atomic_update(db, int, 1, {})
    assert _row(engine).version_id == 1


def test_pending_changes_are_protected(engine):
    """commit=True refuses to run over unflushed work it would commit or discard."""
    with Session(engine) as db:
        db.add(Counter(id=2))
        with pytest.raises(ValueError, match="pending changes"):
            atomic_update(db, ModelRun, 1, {"status": "x"})
        assert len(db.new) == 1


def _bump_elsewhere(engine, times=1):
    for _ in range(times):
        with Session(engine) as other:
            row = other.get(ModelRun, 1)
            row.usage_count += 1
            other.commit()


def test_absolute_dict_computed_outside_loses_a_concurrent_update(engine):
    """The seed's dict form: a write committed after the caller's read is overwritten."""
    with Session(engine) as db:
        model = db.get(ModelRun, 1)
        seen = model.usage_count  # 0
        _bump_elsewhere(engine)  # another writer: 0 -> 1
        assert atomic_update(db, ModelRun, 1, {"usage_count": seen + 1}) is True
    assert _row(engine).usage_count == 1  # two increments, one lost


def test_callable_recomputes_from_fresh_state(engine):
    """The callable form sees the committed concurrent write: nothing is lost."""
    with Session(engine) as db:
        db.get(ModelRun, 1)
        _bump_elsewhere(engine)
        assert atomic_update(db, ModelRun, 1, lambda row: {"usage_count": row.usage_count + 1})
    assert _row(engine).usage_count == 2


def test_conflict_between_read_and_write_is_retried(engine, events, clock):
    """A writer that wins between the read and the UPDATE causes one retry with fresh state."""
    seen = []

    def updates(row):
        seen.append(row.usage_count)
        if len(seen) == 1:
            _bump_elsewhere(engine)  # the version changes under our feet
        return {"usage_count": row.usage_count + 1}

    with Session(engine) as db:
        assert atomic_update(db, ModelRun, 1, updates, clock=clock) is True
    assert seen == [0, 1]
    assert _row(engine).usage_count == 2
    retries = [e for e in events if isinstance(e, RetryScheduled)]
    assert len(retries) == 1
    assert isinstance(retries[0].exception, StaleDataError)
    assert len(clock.sleeps) == 1


@pytest.mark.parametrize("model", [ModelRun, Counter])
def test_gives_up_after_max_retries(engine, model, clock):
    """A conflict on every attempt raises StaleDataError after max_retries + 1 attempts."""
    attempts = []
    version = "version_id" if model is ModelRun else "version"

    def updates(row):
        attempts.append(1)
        with Session(engine) as other:  # always win the race
            other.execute(sa.update(model).values({version: 100 + len(attempts)}))
            other.commit()
        return {"usage_count": 1} if model is ModelRun else {"value": 1}

    with Session(engine) as db, pytest.raises(StaleDataError):
        atomic_update(db, model, 1, updates, max_retries=2, clock=clock)
    assert len(attempts) == 3
    assert len(clock.sleeps) == 2


def test_commit_false_retries_inside_the_callers_transaction(pg):
    """commit=False: a savepoint per attempt; nothing is committed until the caller commits."""
    bumped = []

    def updates(row):
        if not bumped:
            bumped.append(1)
            _bump_elsewhere(pg)
        return {"usage_count": row.usage_count + 1}

    with Session(pg) as db:
        db.add(Counter(id=2, value=7))
        db.flush()
        assert atomic_update(db, ModelRun, 1, updates, commit=False) is True
        assert db.in_transaction()
        assert _row(pg).usage_count == 1  # only the other writer's commit is visible yet
        db.commit()
    assert _row(pg).usage_count == 2
    assert _row(pg, Counter) is not None
