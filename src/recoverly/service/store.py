"""The service's database access: every read and write is one retried transaction.

Runs live in the tables of :mod:`recoverly.training.models` (``model_runs``,
``training_progress``), written by the API and by the training worker's
:class:`~recoverly.training.ProgressTracker`; :class:`RunDetails` adds what the
service itself needs per run. Every unit goes through
:func:`recoverly.db.run_transaction`, so a dropped connection or a locked
SQLite file costs a retry, not an error.

.. versionadded:: 0.2
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import ForeignKey, Integer, String, create_engine, event, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from recoverly.db import run_transaction
from recoverly.training.models import Base, ModelRun, TrainingProgress

__all__ = ["RunDetails", "RunRecord", "Store", "make_engine"]

T = TypeVar("T")


class RunDetails(Base):
    """What the service records per run beyond :class:`~recoverly.training.ModelRun`.

    .. versionadded:: 0.2
    """

    __tablename__ = "service_run_details"

    model_run_id: Mapped[int] = mapped_column(
        ForeignKey("model_runs.id", ondelete="CASCADE"), primary_key=True
    )
    total_steps: Mapped[int] = mapped_column(Integer)
    resumes: Mapped[int] = mapped_column(Integer, default=0)
    weights_sha256: Mapped[str | None] = mapped_column(String(64))

    def __repr__(self) -> str:
        return f"<RunDetails run={self.model_run_id} resumes={self.resumes}>"


RunRecord = dict[str, Any]


def make_engine(url: str) -> Engine:
    """Create the engine for ``url`` (SQLite: WAL, a busy timeout, and usable from threads).

    .. versionadded:: 0.2
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 5})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Store:
    """Runs, their progress and their details, read and written through retried transactions.

    Args:
        engine: The service's engine.

    .. versionadded:: 0.2
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(bind=engine, expire_on_commit=False)

    def _tx(self, fn: Callable[[Session], T], name: str, *, idempotent: bool = False) -> T:
        return run_transaction(
            self.sessions, fn, idempotent=idempotent, name=name, max_attempts=6, delay=0.02
        )

    def create_schema(self) -> None:
        """Create the tables that do not exist yet."""
        Base.metadata.create_all(self.engine)

    def ping(self) -> None:
        """Run ``SELECT 1``; raises when the database does not answer."""
        self._tx(lambda s: s.execute(text("SELECT 1")), "service.ping", idempotent=True)

    # ------------------------------------------------------------ writes
    def create_run(self, name: str, config: dict[str, Any], total_steps: int) -> int:
        """Insert a queued run; return its id."""

        def unit(session: Session) -> int:
            run = ModelRun(name=name, model_type=config["model_type"], config=config)
            run.status = "queued"
            session.add(run)
            session.flush()
            session.add(RunDetails(model_run_id=run.id, total_steps=total_steps, resumes=0))
            return run.id

        return self._tx(unit, "service.create_run")

    def set_status(
        self,
        run_id: int,
        status: str,
        *,
        error: str | None = None,
        accuracy: float | None = None,
        final_loss: float | None = None,
        weights_sha256: str | None = None,
        resumed: bool = False,
    ) -> None:
        """Update a run's status (and its results when it completed)."""

        def unit(session: Session) -> None:
            run = session.get(ModelRun, run_id)
            details = session.get(RunDetails, run_id)
            if run is None or details is None:
                return
            run.status = status
            run.error_message = error
            if status == "completed":
                run.completed_at = _now()
                run.accuracy = accuracy
                run.final_score = final_loss
                details.weights_sha256 = weights_sha256
            if resumed:
                details.resumes += 1

        self._tx(unit, "service.set_status")

    # ------------------------------------------------------------ reads
    def get_run(self, run_id: int) -> RunRecord | None:
        """Return one run as a plain dictionary, or ``None``."""
        return self._tx(lambda s: _record(s, run_id), "service.get_run", idempotent=True)

    def list_runs(self, limit: int = 100) -> list[RunRecord]:
        """Return the newest runs first."""

        def unit(session: Session) -> list[RunRecord]:
            ids = session.scalars(select(ModelRun.id).order_by(ModelRun.id.desc()).limit(limit))
            return [r for r in (_record(session, i) for i in list(ids)) if r is not None]

        return self._tx(unit, "service.list_runs", idempotent=True)

    def newest_completed(self) -> int | None:
        """Return the id of the newest completed run, or ``None``."""

        def unit(session: Session) -> int | None:
            query = (
                select(ModelRun.id)
                .where(ModelRun.status == "completed")
                .order_by(ModelRun.id.desc())
                .limit(1)
            )
            return session.scalars(query).first()

        return self._tx(unit, "service.newest_completed", idempotent=True)

    def unfinished(self) -> list[int]:
        """Return the ids of runs that are queued or were running (to resume at start)."""

        def unit(session: Session) -> list[int]:
            query = select(ModelRun.id).where(
                ModelRun.status.in_(("queued", "running", "interrupted"))
            )
            return list(session.scalars(query.order_by(ModelRun.id)))

        return self._tx(unit, "service.unfinished", idempotent=True)


def _record(session: Session, run_id: int) -> RunRecord | None:
    run = session.get(ModelRun, run_id)
    if run is None:
        return None
    details = session.get(RunDetails, run_id)
    progress = session.scalars(
        select(TrainingProgress).where(TrainingProgress.model_run_id == run_id)
    ).first()
    return {
        "id": run.id,
        "name": run.name,
        "status": run.status,
        "config": dict(run.config or {}),
        "accuracy": run.accuracy,
        "final_loss": run.final_score,
        "error": run.error_message,
        "total_steps": details.total_steps if details else None,
        "resumes": details.resumes if details else 0,
        "weights_sha256": details.weights_sha256 if details else None,
        "progress": None
        if progress is None
        else {
            "epoch": progress.epoch,
            "step": progress.step,
            "status": progress.status,
            "percent": progress.progress_percentage or 0.0,
            "metrics": dict(progress.metrics or {}),
        },
    }
