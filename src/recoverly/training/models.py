"""SQLAlchemy 2 models for training runs and their progress.

Three tables, ready to use (``Base.metadata.create_all(engine)``) or to copy
into an application's own models (the tracker's
:class:`~recoverly.training.ProgressWriter` accepts any mapped classes with
the same column names):

- :class:`ModelRun` (``model_runs``): one training run, with a ``version``
  column for optimistic locking (:func:`recoverly.db.atomic_update`).
- :class:`TrainingProgress` (``training_progress``): one row per run, the
  newest progress. It only moves forward: a write is applied only when its
  ``(step, updated_at)`` is not older than the row's.
- :class:`TrainingProgressHistory` (``training_progress_history``): one row
  per ``(run, step)``, so every reported step can be read back in order.

.. versionadded:: 0.2
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, synonym

__all__ = ["Base", "ModelRun", "Timestamp", "TrainingProgress", "TrainingProgressHistory"]


#: Timestamps with time zone, to the microsecond on MySQL/MariaDB too (their default is seconds,
#: too coarse to order two reports of the same step).
Timestamp = DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    """The declarative base of the training models (its ``metadata`` creates their tables).

    .. versionadded:: 0.2
    """


class ModelRun(Base):
    """One training run: what is trained, how, and how it ended.

    ``version`` is the mapper's ``version_id_col``: every ORM update checks and
    bumps it, and :func:`recoverly.db.atomic_update` retries on a conflict.

    .. versionadded:: 0.2
    """

    __tablename__ = "model_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255))
    model_type: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(32), default="created")
    usage_count: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=_now)
    completed_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    accuracy: Mapped[float | None] = mapped_column(Float)
    final_score: Mapped[float | None] = mapped_column(Float)
    error_message: Mapped[str | None] = mapped_column(Text)

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 - SQLAlchemy's convention

    def __repr__(self) -> str:
        return f"<ModelRun id={self.id} {self.name!r} status={self.status!r} v{self.version}>"


class TrainingProgress(Base):
    """The newest progress of one run (one row per run, moved forward only).

    ``current_epoch`` is a synonym of ``epoch`` (the name some applications use).

    .. versionadded:: 0.2
    """

    __tablename__ = "training_progress"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_run_id: Mapped[int] = mapped_column(
        ForeignKey("model_runs.id", ondelete="CASCADE"), unique=True
    )
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(64), default="initialized")
    progress_percentage: Mapped[float] = mapped_column(Float, default=0.0)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=_now)

    current_epoch = synonym("epoch")

    def __repr__(self) -> str:
        return (
            f"<TrainingProgress run={self.model_run_id} epoch={self.epoch} step={self.step} "
            f"status={self.status!r} {self.progress_percentage or 0:.1f}%>"
        )


class TrainingProgressHistory(Base):
    """One reported step of one run: the full, ordered record of a run's progress.

    Unique by ``(model_run_id, step)``: replaying a record twice leaves one row,
    and a newer report of the same step (same ``step``, later ``recorded_at``)
    replaces an older one. ``id`` increases in the order rows were first written.

    .. versionadded:: 0.2
    """

    __tablename__ = "training_progress_history"
    __table_args__ = (UniqueConstraint("model_run_id", "step", name="uq_progress_history_step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_run_id: Mapped[int] = mapped_column(ForeignKey("model_runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(64))
    progress_percentage: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    recorded_at: Mapped[dt.datetime] = mapped_column(Timestamp)

    def __repr__(self) -> str:
        return f"<TrainingProgressHistory run={self.model_run_id} step={self.step}>"
