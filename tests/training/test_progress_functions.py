"""The seeds' progress functions and the ModelRun model, on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

sa = pytest.importorskip("sqlalchemy", reason="progress tracking needs the db extra")

from sqlalchemy.orm import Session  # noqa: E402

from recoverly.db import atomic_update  # noqa: E402
from recoverly.testing import ManualClock  # noqa: E402
from recoverly.training import (  # noqa: E402
    ModelRun,
    TrainingProgress,
    TrainingProgressHistory,
    initialize_progress_tracking,
    update_training_progress,
)
from recoverly.training.models import Base  # noqa: E402


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> Any:
    """An engine on SQLite or on this test's PostgreSQL schema, with the tables."""
    name = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    engine = request.getfixturevalue(name)
    Base.metadata.create_all(engine)
    return engine


def _new_run(engine: Any) -> int:
    with Session(engine) as db:
        run = ModelRun(name="bert", model_type="transformer", config={"layers": 12})
        db.add(run)
        db.commit()
        return run.id


def test_initialize_creates_the_row_once(engine):
    """initialize_progress_tracking creates an 'initialized' 0 % row, and again returns the same."""
    run_id = _new_run(engine)
    with Session(engine) as db:
        row = initialize_progress_tracking(db, run_id)
        assert isinstance(row, TrainingProgress)
        assert (row.status, row.progress_percentage, row.step) == ("initialized", 0.0, 0)
        first_id = row.id
    with Session(engine) as db:
        assert initialize_progress_tracking(db, run_id).id == first_id
        assert db.scalar(sa.select(sa.func.count()).select_from(TrainingProgress)) == 1


def test_update_training_progress_writes_forward_only(engine, clock: ManualClock):
    """Newer epochs move the row; a late older epoch returns True but changes nothing."""
    run_id = _new_run(engine)
    with Session(engine) as db:
        assert update_training_progress(db, run_id, 1, metrics={"loss": 0.5})
        clock.advance(1)
        assert update_training_progress(db, run_id, 3, metrics={"loss": 0.2})
        clock.advance(1)
        assert update_training_progress(db, run_id, 2, metrics={"loss": 0.9})
    with Session(engine) as db:
        row = db.scalars(sa.select(TrainingProgress)).one()
        assert (row.current_epoch, row.step, row.metrics) == (3, 3, {"loss": 0.2})
        steps = db.scalars(
            sa.select(TrainingProgressHistory.step).order_by(TrainingProgressHistory.id)
        ).all()
        assert steps == [1, 3, 2]


def test_update_training_progress_returns_false_when_the_database_is_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, clock: ManualClock
):
    """A database that cannot be reached is retried, logged and reported as False, never raised."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'missing' / 'db.sqlite'}")
    with Session(engine) as db, caplog.at_level(logging.WARNING, logger="recoverly"):
        assert update_training_progress(db, 1, 0, step=5, metrics={"loss": 1.0}) is False
    assert "Training progress of run 1 (step 5) not saved" in caplog.text
    engine.dispose()


def test_update_training_progress_validates_first(sqlite_engine):
    """Bad arguments raise at once; they are not swallowed like database errors."""
    with Session(sqlite_engine) as db:
        with pytest.raises(TypeError, match="metrics"):
            update_training_progress(db, 1, 0, metrics={"loss": None})
        with pytest.raises(ValueError, match="epoch must be an integer >= 0"):
            update_training_progress(db, 1, -3)


def test_model_run_version_supports_atomic_update(engine):
    """ModelRun's version column gives atomic_update its optimistic lock; usage_count increments."""
    run_id = _new_run(engine)
    with Session(engine) as db:
        for _ in range(3):
            assert atomic_update(
                db, ModelRun, run_id, lambda row: {"usage_count": row.usage_count + 1}
            )
    with Session(engine) as db:
        run = db.get(ModelRun, run_id)
        assert run is not None
        assert (run.usage_count, run.version, run.status) == (3, 4, "created")
        assert run.created_at is not None
        assert "bert" in repr(run)


def test_concurrent_stale_write_of_a_model_run_is_refused(engine):
    """Two sessions editing the same run: the second flush sees the version changed."""
    run_id = _new_run(engine)
    with Session(engine) as a, Session(engine) as b:
        ra, rb = a.get(ModelRun, run_id), b.get(ModelRun, run_id)
        assert ra is not None
        assert rb is not None
        ra.status = "running"
        a.commit()
        rb.status = "failed"
        with pytest.raises(sa.orm.exc.StaleDataError):
            b.commit()


def test_the_seeds_create_model_run_works_on_these_models(engine):
    """The seeds' create_model_run (a run and its 'initialized' progress row) runs as written."""
    import datetime as dt

    from recoverly import TransactionManager
    from recoverly.db import db_retry, ensure_connection

    @ensure_connection
    @db_retry(max_attempts=3, delay=0.5)
    def create_model_run(db: Session, name: str, model_type: str, config: dict) -> ModelRun:
        with TransactionManager(db):
            model_run = ModelRun(
                name=name,
                model_type=model_type,
                config=config,
                status="created",
                created_at=dt.datetime.now(dt.timezone.utc),
            )
            db.add(model_run)
            db.flush()
            progress = TrainingProgress(
                model_run_id=model_run.id, status="initialized", progress_percentage=0.0
            )
            db.add(progress)
            return model_run

    with Session(engine) as db:
        run = create_model_run(db, "gbm", "xgboost", {"depth": 6})
        run_id = run.id
    with Session(engine) as db:  # the seeds' update_progress sets current_epoch and metrics
        progress = db.scalars(sa.select(TrainingProgress).filter_by(model_run_id=run_id)).one()
        progress.current_epoch = 4
        progress.metrics = {"score": 0.9}
        db.commit()
    with Session(engine) as db:
        progress = db.scalars(sa.select(TrainingProgress).filter_by(model_run_id=run_id)).one()
        assert (progress.epoch, progress.metrics, progress.status) == (
            4,
            {"score": 0.9},
            "initialized",
        )
        assert db.get(ModelRun, run_id).config == {"depth": 6}
