"""8 threads incrementing one PostgreSQL counter through atomic_update: no lost update."""

from __future__ import annotations

import threading

import pytest

sa = pytest.importorskip("sqlalchemy")

from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column  # noqa: E402
from sqlalchemy.orm.exc import StaleDataError  # noqa: E402

from recoverly.db.atomic import atomic_update  # noqa: E402
from recoverly.events import RetryScheduled  # noqa: E402

pytestmark = pytest.mark.integration

THREADS = 8
ROUNDS = 15


class Base(DeclarativeBase):
    pass


class ModelRun(Base):
    __tablename__ = "model_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    usage_count: Mapped[int] = mapped_column(default=0)
    version_id: Mapped[int] = mapped_column(nullable=False)
    __mapper_args__ = {"version_id_col": version_id}  # noqa: RUF012


@pytest.fixture
def engine(pg_url):
    engine = sa.create_engine(pg_url, pool_size=THREADS, max_overflow=0)
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add(ModelRun(id=1))
        s.commit()
    yield engine
    engine.dispose()


def _run_threads(target) -> None:
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            target()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=guarded) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []


def _final(engine) -> int:
    with Session(engine) as s:
        return s.get(ModelRun, 1).usage_count


def test_callable_form_loses_no_update_under_forced_conflicts(engine, events):
    """All threads read the same version each round, then write: 8*N increments all land."""
    barrier = threading.Barrier(THREADS, timeout=20)

    def worker() -> None:
        with Session(engine) as db:
            for _ in range(ROUNDS):
                first = [True]

                def increment(row, first=first):
                    if first[0]:  # everyone has read the same version before anyone writes
                        first[0] = False
                        barrier.wait()
                    return {"usage_count": row.usage_count + 1}

                assert atomic_update(db, ModelRun, 1, increment, max_retries=THREADS)

    _run_threads(worker)
    assert _final(engine) == THREADS * ROUNDS
    conflicts = [e for e in events if isinstance(e, RetryScheduled)]
    assert len(conflicts) >= (THREADS - 1) * ROUNDS  # 7 losers per round, at least
    assert all(isinstance(e.exception, StaleDataError) for e in conflicts)


def test_absolute_dict_computed_outside_loses_updates_deterministically(engine):
    """The seed's form: each round all 8 threads read n and write n + 1, so 7 of 8 are lost."""
    read_done = threading.Barrier(THREADS, timeout=20)
    round_done = threading.Barrier(THREADS, timeout=20)

    def worker() -> None:
        with Session(engine) as db:
            for _ in range(ROUNDS):
                model = db.get(ModelRun, 1, populate_existing=True)
                updates = {"usage_count": model.usage_count + 1}
                db.rollback()
                read_done.wait()  # every thread has read before any writes
                assert atomic_update(db, ModelRun, 1, updates, max_retries=THREADS)
                round_done.wait()  # every write is in before the next read

    _run_threads(worker)
    assert _final(engine) == ROUNDS  # not THREADS * ROUNDS
