"""ProgressTracker: training progress that reaches the database without ever holding training up.

::

    tracker = ProgressTracker(engine, run_id=run.id, journal_path="runs/42/progress.journal")
    for step, batch in enumerate(loader, 1):
        loss = train_step(batch)
        tracker.update(epoch, step, {"loss": loss})   # a local append; never raises, never waits
    tracker.update(epoch, step, status="completed")
    tracker.close(timeout=30)                          # delivers what is left, if it can

**The path of a report.** :meth:`ProgressTracker.update` validates its
arguments and appends one line to a local journal (see
:mod:`recoverly.training._journal`): no database round trip, no lock held by
the database side. A background thread wakes every ``interval`` seconds, takes
the pending records (oldest first, at most ``max_batch`` at a time) and writes
them in one transaction through a
:class:`~recoverly.training.ProgressWriter`, under
``ensure_connection`` + ``db_retry`` and behind a
:class:`~recoverly.CircuitBreaker`; after the commit it appends an
acknowledgement to the journal.

**When the database is down** the breaker opens after a few failed passes and
the sender stops trying until its recovery timeout has passed; meanwhile
reports pile up in the journal (bounded by ``max_journal_bytes``: past it the
oldest undelivered records are dropped, the newest kept). When the database
answers again, everything pending is written, in journal order. Nothing is
needed at start either: the run's progress row is created by the first
successful write, so a tracker built while the database is down works.

**Ordering and replays.** Rows are keyed by ``(run, step)`` and only move
forward (the writer's guarded upsert), so writing a record twice, or late, never
overwrites newer progress.

**Crashes.** A new tracker on the same journal file first replays the records
of the previous process that were never acknowledged.

.. versionadded:: 0.2
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, cast

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from recoverly._core.clock import Clock, SystemClock, resolve
from recoverly._core.validate import Duration, Problems
from recoverly.circuit_breaker import CircuitBreaker
from recoverly.db import db_retry, ensure_connection
from recoverly.errors import CircuitBreakerError
from recoverly.training._journal import Journal, ProgressRecord
from recoverly.training._progress_check import check_progress, check_run_id
from recoverly.training._progress_db import ProgressWriter, write_and_commit

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["ProgressStatistics", "ProgressTracker"]

_log = logging.getLogger("recoverly")
_REAL_CLOCK = SystemClock()
#: Seconds between two fsyncs of the journal by the sender (a power cut loses at most this).
_SYNC_EVERY = 1.0


@dataclass(frozen=True, slots=True)
class ProgressStatistics:
    """A snapshot of a tracker's counters.

    Attributes:
        updates: Reports accepted by :meth:`ProgressTracker.update`.
        delivered: Records written to the database (and acknowledged).
        pending: Records journaled but not yet delivered.
        dropped: Undelivered records dropped because the journal was full.
        failed_sends: Send attempts that failed (after their retries).
        rejected_sends: Send attempts the open breaker refused.
        recovered: Records found undelivered in the journal at start.
        circuit: The breaker's state (``"closed"``, ``"open"``, ``"half_open"``).

    .. versionadded:: 0.2
    """

    updates: int
    delivered: int
    pending: int
    dropped: int
    failed_sends: int
    rejected_sends: int
    recovered: int
    circuit: str


class ProgressTracker:
    """Journal progress locally and replay it to the database from a background thread.

    The module documentation describes the path of a report, outages,
    ordering and crash recovery.

    Args:
        bind: An ``Engine`` or a session factory (``sessionmaker``) for the database.
        run_id: The run (``ModelRun.id``; its row must exist by the time the
            database is reachable).
        journal_path: The journal file; keep one per run, on local disk.
        total_steps: When given, ``progress_percentage`` defaults to
            ``step / total_steps * 100``.
        writer: Where records go (default: the tables of :mod:`recoverly.training.models`).
        interval: Seconds between the sender's passes (and between its tries
            while the database is down).
        max_batch: Records written per transaction.
        max_journal_bytes: Bound on the journal file.
        fsync: ``fsync`` the journal after every report (survives a power cut;
            costs a disk flush per report). Otherwise the sender thread syncs
            it at most once a second.
        breaker: The breaker in front of the database (default: opens after 3
            failed passes, probes again after 5 s).
        clock: Time source for timestamps, retries and the breaker.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument is out of range.

    .. versionadded:: 0.2
    """

    __slots__ = (
        "_breaker",
        "_clock",
        "_closed",
        "_delivered",
        "_done",
        "_failed_sends",
        "_failing",
        "_initialized",
        "_journal",
        "_late_warned",
        "_lock",
        "_rejected_sends",
        "_send",
        "_sessions",
        "_stop_at",
        "_thread",
        "_wake",
        "interval",
        "max_batch",
        "run_id",
        "total_steps",
        "writer",
    )

    def __init__(
        self,
        bind: Engine | Callable[[], Session],
        run_id: int | str,
        journal_path: str | os.PathLike[str],
        *,
        total_steps: int | None = None,
        writer: ProgressWriter | None = None,
        interval: Duration = 1.0,
        max_batch: int = 500,
        max_journal_bytes: int = 4 * 1024 * 1024,
        fsync: bool = False,
        breaker: CircuitBreaker | None = None,
        clock: Clock | None = None,
    ) -> None:
        p = Problems()
        if not (isinstance(bind, Engine) or callable(cast("object", bind))):
            p._bad(f"bind must be an Engine or a session factory, got {bind!r}", kind=True)
        self.run_id = check_run_id(p, run_id)
        if not isinstance(cast("object", journal_path), (str, os.PathLike)):
            p._bad(f"journal_path must be a path, got {journal_path!r}", kind=True)
        self.total_steps = p.optional_int_at_least("total_steps", total_steps, 1)
        self.writer = p.optional_instance("writer", writer, ProgressWriter) or ProgressWriter()
        self.interval = p.duration("interval", interval, positive=True)
        self.max_batch = p.int_at_least("max_batch", max_batch, 1)
        journal_bytes = p.int_at_least("max_journal_bytes", max_journal_bytes, 4096)
        if not isinstance(cast("object", fsync), bool):
            p._bad(f"fsync must be a bool, got {fsync!r}", kind=True)
        given = p.optional_instance("breaker", breaker, CircuitBreaker)
        p.raise_if_any()
        self._clock = clock
        self._sessions: Callable[[], Session] = (
            sessionmaker(bind=bind) if isinstance(bind, Engine) else bind
        )
        self._breaker = given or CircuitBreaker(
            failure_threshold=3, recovery_timeout=5.0, clock=clock
        )
        self._send = ensure_connection(
            db_retry(max_attempts=2, delay=0.2, idempotent=True, clock=clock)(write_and_commit)
        )
        self._journal = Journal(journal_path, journal_bytes, fsync=fsync)
        if self._journal.recovered:
            _log.info(
                "Progress journal %s: replaying %d undelivered record(s) of an earlier run",
                journal_path,
                self._journal.recovered,
            )
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._done = threading.Condition(self._lock)
        self._closed = False
        self._late_warned = False
        self._initialized = False
        self._failing = False
        self._stop_at: float | None = None
        self._delivered = 0
        self._failed_sends = 0
        self._rejected_sends = 0
        self._thread = threading.Thread(
            target=self._run, name=f"recoverly-progress-{self.run_id}", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------------ training side
    def update(
        self,
        epoch: int,
        step: int,
        metrics: Mapping[str, float] | None = None,
        *,
        status: str = "running",
        progress_percentage: float | None = None,
    ) -> None:
        """Report progress: journal it and return; never waits on or raises for the database.

        Args:
            epoch: Epoch number (``>= 0``).
            step: Global step (``>= 0``); the database keeps the highest one.
            metrics: Metric names to real numbers (NaN and infinities are kept;
                the database gets them as the strings ``"NaN"``, ``"Infinity"``).
            status: Status text, 1 to 64 characters.
            progress_percentage: 0 to 100 (default: from ``total_steps``, else unknown).

        Raises:
            TypeError: An argument has the wrong type (a programming error).
            ValueError: An argument is out of range.
        """
        checked = check_progress(epoch, step, metrics, status, progress_percentage)
        pct = checked.progress_percentage
        if pct is None and self.total_steps is not None:
            pct = min(100.0, 100.0 * checked.step / self.total_steps)
        if self._closed:
            if not self._late_warned:
                self._late_warned = True
                _log.warning(
                    "ProgressTracker of run %s: update() after close() ignored", self.run_id
                )
            return
        try:
            self._journal.append(
                self.run_id,
                checked.epoch,
                checked.step,
                checked.status,
                pct,
                checked.metrics,
                resolve(self._clock).wall(),
            )
        except Exception:  # pragma: no cover - the journal logs its own disk errors
            _log.exception("ProgressTracker of run %s: could not journal a report", self.run_id)

    def flush(self, timeout: Duration | None = 10.0) -> bool:
        """Ask the sender to write everything reported so far, and wait for it.

        Args:
            timeout: Seconds to wait at most (``None``: as long as it takes).

        Returns:
            ``True`` when every record up to now is in the database (and the
            run's progress row exists).
        """
        p = Problems()
        limit = p.optional_duration("timeout", timeout)
        p.raise_if_any()
        target = self._journal.last_seq
        with self._done:
            self._wake.set()
            return self._done.wait_for(
                lambda: self._initialized and self._journal.acked >= target, limit
            )

    def close(self, timeout: Duration = 10.0) -> bool:
        """Stop accepting reports, deliver what is pending (up to ``timeout`` s), stop the thread.

        What is not delivered stays in the journal; a new tracker on the same
        file replays it. Closing twice is harmless.

        Returns:
            ``True`` when nothing is left undelivered.
        """
        p = Problems()
        limit = p.duration("timeout", timeout)
        p.raise_if_any()
        with self._lock:
            if not self._closed:
                self._closed = True
                self._stop_at = self._now() + limit
        self._wake.set()
        self._thread.join(limit)
        if not self._thread.is_alive():
            self._journal.close()
        left = self._journal.pending_count
        if left:
            _log.warning(
                "ProgressTracker of run %s closed with %d undelivered record(s) kept in %s",
                self.run_id,
                left,
                self._journal.path,
            )
        return left == 0

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ sender side
    @staticmethod
    def _now() -> float:
        # Real time: the thread waits on real events, whatever clock the policies use.
        return _REAL_CLOCK.monotonic()

    def _run(self) -> None:
        next_sync = 0.0
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self._pump()
                if self._now() >= next_sync or self._stop_at is not None:
                    self._journal.sync()
                    next_sync = self._now() + _SYNC_EVERY
            except Exception:  # pragma: no cover - a bug must not end the delivery for good
                _log.exception("ProgressTracker of run %s: sender pass failed", self.run_id)
            with self._done:
                self._done.notify_all()
            stop_at = self._stop_at
            if stop_at is not None and (not self._journal.pending_count or self._now() >= stop_at):
                return

    def _pump(self) -> None:
        """Send pending records, oldest first, until none are left or a send fails."""
        while True:
            batch = self._journal.pending(self.max_batch)
            if not batch and self._initialized:
                return
            try:
                self._breaker.call(self._deliver, batch)
            except CircuitBreakerError:
                self._rejected_sends += 1
                return
            except Exception as exc:
                self._failed_sends += 1
                if not self._failing:
                    _log.warning(
                        "ProgressTracker of run %s: database write failed (%s: %s); "
                        "%d record(s) kept in the journal, training goes on",
                        self.run_id,
                        type(exc).__name__,
                        exc,
                        self._journal.pending_count,
                    )
                self._failing = True
                return
            if self._failing:
                _log.warning("ProgressTracker of run %s: database writes work again", self.run_id)
                self._failing = False
            if not batch:
                return
            self._journal.ack(batch[-1].seq)
            self._delivered += len(batch)

    def _deliver(self, batch: list[ProgressRecord]) -> None:
        with self._sessions() as db:
            self._send(db, self.writer, None if self._initialized else self.run_id, batch)
        self._initialized = True

    # ------------------------------------------------------------------ inspection
    def statistics(self) -> ProgressStatistics:
        """Return a snapshot of the counters."""
        journal = self._journal
        return ProgressStatistics(
            updates=journal.appended,
            delivered=self._delivered,
            pending=journal.pending_count,
            dropped=journal.dropped,
            failed_sends=self._failed_sends,
            rejected_sends=self._rejected_sends,
            recovered=journal.recovered,
            circuit=self._breaker.state.value,
        )

    @property
    def journal_path(self) -> str:
        """The journal file."""
        return str(self._journal.path)

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<ProgressTracker run={self.run_id!r} updates={s.updates} delivered={s.delivered} "
            f"pending={s.pending} dropped={s.dropped} circuit={s.circuit}"
            f"{' closed' if self._closed else ''}>"
        )


ProgressStatistics.__module__ = "recoverly.training"
ProgressTracker.__module__ = "recoverly.training"
