"""Writing progress to the database: forward-only upserts, and the seeds' two functions.

:class:`ProgressWriter` turns :class:`~recoverly.training.ProgressRecord` objects
into rows. Both tables are written with one ``INSERT ... ON CONFLICT DO UPDATE
... WHERE <guard>`` per statement on PostgreSQL and SQLite (an ``UPDATE ...
WHERE <guard>``, then an ``INSERT`` when no row exists, elsewhere), where the
guard lets a write through only when it is not older than the row:

- progress row (one per run): ``step < new.step OR (step = new.step AND
  updated_at <= new.updated_at)``;
- history row (one per run and step): ``recorded_at <= new.recorded_at``.

So a late or repeated replay never moves progress backwards, and replaying the
same records twice leaves the same rows.

.. versionadded:: 0.2
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Table, and_, insert, or_, select, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Mapper, Session

from recoverly._core.clock import resolve
from recoverly._core.validate import Problems
from recoverly.db import db_retry, ensure_connection
from recoverly.training._journal import ProgressRecord, finite_or_text
from recoverly.training._progress_check import check_progress
from recoverly.training.models import TrainingProgress, TrainingProgressHistory

__all__ = ["ProgressWriter", "initialize_progress_tracking", "update_training_progress"]

_log = logging.getLogger("recoverly")

_ROWS_PER_STATEMENT = 100
_PROGRESS_COLUMNS = (
    "model_run_id",
    "epoch",
    "step",
    "status",
    "progress_percentage",
    "metrics",
    "updated_at",
)
_HISTORY_COLUMNS = (
    "model_run_id",
    "step",
    "epoch",
    "status",
    "progress_percentage",
    "metrics",
    "recorded_at",
)


def _table(p: Problems, name: str, model: Any, columns: Sequence[str]) -> Table | None:
    mapper = sa_inspect(model, raiseerr=False)
    if not isinstance(mapper, Mapper) or not isinstance(mapper.local_table, Table):
        p._bad(f"{name} must be a mapped ORM class, got {model!r}", kind=True)
        return None
    table = mapper.local_table
    missing = [c for c in columns if c not in table.c]
    if missing:
        p._bad(f"{name} {model.__name__} lacks the column(s) {', '.join(missing)}", kind=True)
        return None
    return table


def _when(record: ProgressRecord) -> dt.datetime:
    return dt.datetime.fromtimestamp(record.recorded_at, dt.timezone.utc)


def _metrics(record: ProgressRecord) -> dict[str, Any]:
    return {key: finite_or_text(value) for key, value in record.metrics.items()}


def _order(record: ProgressRecord) -> tuple[int, float, int]:
    return (record.step, record.recorded_at, record.seq)


class ProgressWriter:
    """Writes progress records to a progress table and (optionally) a history table.

    The defaults are :class:`~recoverly.training.models.TrainingProgress` and
    :class:`~recoverly.training.models.TrainingProgressHistory`; any mapped
    classes with the same column names work (``history_model=None`` keeps no
    history). The progress table needs a unique constraint on ``model_run_id``,
    the history table one on ``(model_run_id, step)``. Subclass and override
    :meth:`write` / :meth:`initialize` to write somewhere else entirely.

    The writer only executes statements; the caller commits.

    Args:
        progress_model: Mapped class of the one-row-per-run progress table.
        history_model: Mapped class of the per-step history table, or ``None``.

    Raises:
        TypeError: A model is not mapped or lacks a column.

    .. versionadded:: 0.2
    """

    __slots__ = ("_history", "_progress", "history_model", "progress_model")

    def __init__(
        self,
        progress_model: type[Any] = TrainingProgress,
        history_model: type[Any] | None = TrainingProgressHistory,
    ) -> None:
        p = Problems()
        progress = _table(p, "progress_model", progress_model, _PROGRESS_COLUMNS)
        history = (
            None
            if history_model is None
            else _table(p, "history_model", history_model, _HISTORY_COLUMNS)
        )
        p.raise_if_any()
        self.progress_model = progress_model
        self.history_model = history_model
        self._progress = cast("Table", progress)
        self._history = history

    # ------------------------------------------------------------------ the API
    def initialize(self, db: Session, run_id: Any) -> None:
        """Create the run's progress row (status ``"initialized"``, 0 %) unless it exists."""
        values = {
            "model_run_id": run_id,
            "epoch": 0,
            "step": 0,
            "status": "initialized",
            "progress_percentage": 0.0,
            "metrics": {},
            "updated_at": dt.datetime.fromtimestamp(resolve(None).wall(), dt.timezone.utc),
        }
        table = self._progress
        ins = _dialect_insert(db, table)
        if ins is not None:
            db.execute(ins.values(values).on_conflict_do_nothing(index_elements=["model_run_id"]))
            return
        if db.execute(select(table.c.model_run_id).where(table.c.model_run_id == run_id)).first():
            return
        db.execute(insert(table).values(values))

    def write(self, db: Session, records: Sequence[ProgressRecord]) -> None:
        """Write ``records``: every one to the history, the newest per run to the progress row."""
        newest: dict[Any, ProgressRecord] = {}
        per_step: dict[tuple[Any, int], ProgressRecord] = {}
        for record in records:
            best = newest.get(record.run_id)
            if best is None or _order(best) <= _order(record):
                newest[record.run_id] = record
            key = (record.run_id, record.step)
            seen = per_step.get(key)
            if seen is None or _order(seen) <= _order(record):
                per_step[key] = record
        if self._history is not None and per_step:
            self._write_history(db, self._history, list(per_step.values()))
        for record in newest.values():
            self._write_progress(db, record)

    # ------------------------------------------------------------------ statements
    def _write_progress(self, db: Session, record: ProgressRecord) -> None:
        table = self._progress
        values: dict[str, Any] = {
            "model_run_id": record.run_id,
            "epoch": record.epoch,
            "step": record.step,
            "status": record.status,
            "metrics": _metrics(record),
            "updated_at": _when(record),
        }
        if record.progress_percentage is not None:
            values["progress_percentage"] = record.progress_percentage
        ins = _dialect_insert(db, table)
        if ins is not None:
            new = ins.excluded
            guard = or_(
                table.c.step < new.step,
                and_(table.c.step == new.step, table.c.updated_at <= new.updated_at),
            )
            changes = {key: new[key] for key in values if key != "model_run_id"}
            first = {"progress_percentage": 0.0, **values}
            stmt = ins.values(first).on_conflict_do_update(
                index_elements=["model_run_id"], set_=changes, where=guard
            )
            db.execute(stmt)
            return
        when = values["updated_at"]
        guard = or_(
            table.c.step < record.step,
            and_(table.c.step == record.step, table.c.updated_at <= when),
        )
        where = and_(table.c.model_run_id == record.run_id, guard)
        key = table.c.model_run_id == record.run_id
        self._update_or_insert(db, table, where, key, values, {"progress_percentage": 0.0})

    def _write_history(self, db: Session, table: Table, records: list[ProgressRecord]) -> None:
        rows = [
            {
                "model_run_id": r.run_id,
                "step": r.step,
                "epoch": r.epoch,
                "status": r.status,
                "progress_percentage": r.progress_percentage,
                "metrics": _metrics(r),
                "recorded_at": _when(r),
            }
            for r in sorted(records, key=lambda r: (r.seq, r.step))
        ]
        ins = _dialect_insert(db, table)
        if ins is not None:
            new = ins.excluded
            changes = {key: new[key] for key in rows[0] if key not in ("model_run_id", "step")}
            upsert = ins.on_conflict_do_update(
                index_elements=["model_run_id", "step"],
                set_=changes,
                where=table.c.recorded_at <= new.recorded_at,
            )
            # Chunks keep each statement under SQLite's older 999-parameter limit.
            for start in range(0, len(rows), _ROWS_PER_STATEMENT):
                db.execute(upsert.values(rows[start : start + _ROWS_PER_STATEMENT]))
            return
        for row in rows:
            key = and_(table.c.model_run_id == row["model_run_id"], table.c.step == row["step"])
            where = and_(key, table.c.recorded_at <= row["recorded_at"])
            self._update_or_insert(db, table, where, key, row, {})

    @staticmethod
    def _update_or_insert(
        db: Session,
        table: Table,
        where: Any,
        key: Any,
        values: Mapping[str, Any],
        first: Mapping[str, Any],
    ) -> None:
        result = cast("CursorResult[Any]", db.execute(update(table).where(where).values(values)))
        if result.rowcount:
            return
        if db.execute(select(1).select_from(table).where(key)).first() is None:
            db.execute(insert(table).values({**first, **values}))

    def __repr__(self) -> str:
        history = None if self.history_model is None else self.history_model.__name__
        return f"<ProgressWriter progress={self.progress_model.__name__} history={history}>"


def _dialect_insert(db: Session, table: Table) -> Any:
    """Return an ``INSERT`` with ``ON CONFLICT`` support for this dialect, or ``None``."""
    name = db.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    return None


# ---------------------------------------------------------------- the seeds' functions
_DEFAULT_WRITER: list[ProgressWriter] = []


def _default_writer() -> ProgressWriter:
    if not _DEFAULT_WRITER:
        _DEFAULT_WRITER.append(ProgressWriter())
    return _DEFAULT_WRITER[0]


def write_and_commit(
    db: Session, writer: ProgressWriter, run_id: Any, records: Sequence[ProgressRecord]
) -> None:
    """Initialise the run's row (when ``run_id`` is given), write ``records``, commit."""
    try:
        if run_id is not None:
            writer.initialize(db, run_id)
        if records:
            writer.write(db, records)
        db.commit()
    except BaseException:
        db.rollback()
        raise


@ensure_connection
@db_retry(max_attempts=3, delay=0.5, idempotent=True)
def _initialize(db: Session, writer: ProgressWriter, model_run_id: Any) -> None:
    write_and_commit(db, writer, model_run_id, ())


@ensure_connection
@db_retry(max_attempts=3, delay=0.5, idempotent=True)
def _update(db: Session, writer: ProgressWriter, record: ProgressRecord) -> None:
    write_and_commit(db, writer, None, (record,))


def initialize_progress_tracking(
    db: Session, model_run_id: int, *, writer: ProgressWriter | None = None
) -> Any:
    """Create the run's progress row (``"initialized"``, 0 %) if missing, and return it.

    Runs under ``@ensure_connection @db_retry(max_attempts=3, delay=0.5)`` and
    commits. Unlike :func:`update_training_progress` it raises when the
    database stays unreachable: call it before training starts, or let a
    :class:`~recoverly.training.ProgressTracker` create the row whenever the
    database answers.

    Args:
        db: The session (no transaction in progress, so a retry can start afresh).
        model_run_id: The run's id; its ``ModelRun`` row must exist.
        writer: Where progress goes (default: the tables of :mod:`recoverly.training.models`).

    Returns:
        The run's progress row (an instance of ``writer.progress_model``).

    Raises:
        sqlalchemy.exc.SQLAlchemyError: The database failed for good (after retries).

    .. versionadded:: 0.2
    """
    writer = writer if writer is not None else _default_writer()
    _initialize(db, writer, model_run_id)
    model = writer.progress_model
    return db.execute(select(model).where(model.model_run_id == model_run_id)).scalar_one()


def update_training_progress(
    db: Session,
    model_run_id: int,
    epoch: int,
    step: int | None = None,
    metrics: Mapping[str, float] | None = None,
    *,
    status: str = "running",
    progress_percentage: float | None = None,
    writer: ProgressWriter | None = None,
) -> bool:
    """Record progress now, forward only; on a database failure log it and return ``False``.

    The write runs under ``@ensure_connection @db_retry(max_attempts=3,
    delay=0.5)`` and commits; it only moves the run's progress row forward
    and adds (or refreshes) the history row of ``step``. It never raises into
    training for a database problem: after the retries it logs a warning, rolls
    the session back and returns ``False``. It does wait for those retries
    (about 1.5 s when the database is down): a loop that must never wait on the
    database uses :class:`~recoverly.training.ProgressTracker`.

    Args:
        db: The session (no transaction in progress).
        model_run_id: The run's id.
        epoch: Epoch number (``>= 0``).
        step: Global step (``>= 0``; default: ``epoch``, for per-epoch reporting).
        metrics: Metric names to numbers.
        status: Status text (at most 64 characters).
        progress_percentage: 0 to 100, or ``None`` to leave it unchanged.
        writer: Where progress goes (default: the tables of :mod:`recoverly.training.models`).

    Returns:
        ``True`` when the database holds this progress (or newer), ``False``
        when it could not be written.

    Raises:
        TypeError: An argument has the wrong type (a programming error, raised at once).
        ValueError: An argument is out of range.

    .. versionadded:: 0.2
    """
    checked = check_progress(
        epoch, epoch if step is None else step, metrics, status, progress_percentage
    )
    writer = writer if writer is not None else _default_writer()
    record = ProgressRecord(
        0,
        model_run_id,
        checked.epoch,
        checked.step,
        checked.status,
        checked.progress_percentage,
        checked.metrics,
        resolve(None).wall(),
    )
    try:
        _update(db, writer, record)
    except Exception as exc:
        _log.warning(
            "Training progress of run %s (step %d) not saved: %s: %s",
            model_run_id,
            record.step,
            type(exc).__name__,
            exc,
        )
        try:
            db.rollback()
        except Exception:  # pragma: no cover - the session is already broken
            _log.debug("rollback after a failed progress update failed too", exc_info=True)
        return False
    return True


ProgressWriter.__module__ = "recoverly.training"
initialize_progress_tracking.__module__ = "recoverly.training"
update_training_progress.__module__ = "recoverly.training"
