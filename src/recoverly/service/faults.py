"""Fault injection for the demo and the tests: :mod:`recoverly.chaos` parts where faults happen.

Every fault is a chaos part (a :func:`recoverly.chaos.fault`), so it is
counted by the part's :meth:`~recoverly.chaos.Fault.statistics`, reported as a
:class:`~recoverly.events.ChaosInjected` event named after its kind, seeded
for a reproducible run, and off whenever the part is switched off:

- **Dropped database connections** (:data:`DB`): the engine's
  ``before_cursor_execute`` hook calls a no-op through the part before each
  statement. When the part raises SQLAlchemy's ``DisconnectionError``, the hook
  first invalidates the connection under the statement (the driver's connection
  is closed and discarded by the pool), then lets the error through; the
  retried transaction runs again on a new connection.
- **Flaky data loading** (:data:`DATA`): each batch load goes through the part,
  which raises ``ConnectionError``.
- **A worker killed mid-training** (:data:`KILL`): the part, scheduled with
  ``at=`` (rate 0), decides after which steps the worker dies; it raises
  :class:`WorkerKilled` in :meth:`FaultInjector.after_step`. The service's
  worker (:class:`~recoverly.service.worker.ProcessWorker`) consults it in the
  service process for every step its worker process reports, and carries the
  decision out by sending that process ``SIGKILL``.

Training runs in a worker process, so the database and data parts that act
there are that process's own parts: :meth:`FaultInjector.worker_plan` gives
each new worker process the settings (and what is left of each cap), and
:meth:`FaultInjector.record_worker` takes back the counters it reports, which
:meth:`FaultInjector.statistics` and :meth:`FaultInjector.counts` add to the
service process's own.

The parts are switched on and off together, for every thread, by
:meth:`FaultInjector.enable` / :meth:`FaultInjector.disable` (the faults happen
on the worker's, the progress tracker's and the API's threads, which a
``with chaos.enabled():`` block in the caller would not reach); a worker
process follows the switches it is sent with each answer to a step. The
external predictor's faults are chaos parts of the predictor itself (see
:mod:`recoverly.service.predictor_server`).

.. versionadded:: 0.2
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError

from recoverly import chaos

__all__ = ["DATA", "DB", "KILL", "FaultInjector", "FaultPlan", "WorkerKilled"]

#: Counters of the worker process's parts, by kind, as ``(calls, injected)``.
WorkerCounts = dict[str, tuple[int, int]]

#: Fault kinds: the names of the :class:`FaultInjector`'s chaos parts.
DB = "db_connection_dropped"
DATA = "data_load_failed"
KILL = "worker_killed"


class WorkerKilled(BaseException):
    """The kill part's decision: the training worker is to die here.

    The service's worker catches it in the service process and sends the
    worker process ``SIGKILL``; a plain :func:`~recoverly.service.jobs.fit`
    with a :class:`FaultInjector` simply stops there (nothing in the training
    code catches a ``BaseException``). Either way the run resumes from its
    newest checkpoint.

    .. versionadded:: 0.2
    """


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Which faults to inject, and how often: the settings of the chaos parts.

    Attributes:
        db_drop_rate: Share of SQL statements that lose their connection.
        db_drop_max: At most this many dropped connections (``None``: no limit).
        data_fail_rate: Share of batch loads that fail.
        data_fail_max: At most this many failed loads (``None``: no limit).
        kill_after_steps: Kill the worker after its N-th training step, for each
            N; every step the worker runs counts, the ones it redoes after a
            resume included (the kill part's ``at=`` schedule). When that step
            ends with a checkpoint save, the worker process is killed in the
            middle of writing it (files written, not yet committed).
        seed: Seeds the database part (``seed``) and the data part (``seed + 1``);
            ``None``: a different sequence each run.

    .. versionadded:: 0.2
    """

    db_drop_rate: float = 0.0
    db_drop_max: int | None = None
    data_fail_rate: float = 0.0
    data_fail_max: int | None = None
    kill_after_steps: tuple[int, ...] = ()
    seed: int | None = None


def _connection_dropped() -> DisconnectionError:
    return DisconnectionError("database connection dropped (injected)")


def _data_source_reset() -> ConnectionError:
    return ConnectionError("data source reset the connection (injected)")


def _worker_killed() -> WorkerKilled:
    return WorkerKilled("worker killed after a training step (injected)")


def _go_ahead() -> None:
    """What a chaos part calls when it injects nothing: the statement, load or step goes on."""


class FaultInjector:
    """Injects the faults of a :class:`FaultPlan` through three chaos parts.

    Attributes:
        db: The :data:`DB` part (``before_cursor_execute``).
        data: The :data:`DATA` part (batch loads).
        kill: The :data:`KILL` part (after each training step).

    Args:
        plan: What to inject.
        enabled: Whether the parts start switched on (``None``: they follow
            ``with chaos.enabled():`` and ``RECOVERLY_CHAOS``).

    .. versionadded:: 0.2
    """

    __slots__ = (
        "_after_step",
        "_load",
        "_lock",
        "_statement",
        "_workers",
        "data",
        "db",
        "kill",
        "plan",
    )

    def __init__(self, plan: FaultPlan | None = None, *, enabled: bool | None = True) -> None:
        self.plan = plan = plan or FaultPlan()
        seed = plan.seed
        self.db = chaos.fault(
            plan.db_drop_rate,
            _connection_dropped,
            seed,
            max_injections=plan.db_drop_max,
            enabled=enabled,
            name=DB,
        )
        self.data = chaos.fault(
            plan.data_fail_rate,
            _data_source_reset,
            None if seed is None else seed + 1,
            max_injections=plan.data_fail_max,
            enabled=enabled,
            name=DATA,
        )
        self.kill = chaos.fault(
            0.0, _worker_killed, at=plan.kill_after_steps, enabled=enabled, name=KILL
        )
        self._statement = self.db(_go_ahead)
        self._load = self.data(_go_ahead)
        self._after_step = self.kill(_go_ahead)
        self._lock = threading.Lock()
        self._workers: dict[int, WorkerCounts] = {}

    @property
    def parts(self) -> tuple[chaos.Fault, ...]:
        """The chaos parts: database, data loading, worker."""
        return (self.db, self.data, self.kill)

    def enable(self) -> None:
        """Switch every part on, in every thread."""
        for part in self.parts:
            part.enabled = True

    def disable(self) -> None:
        """Switch every part off, in every thread (the counters are kept)."""
        for part in self.parts:
            part.enabled = False

    def switches(self) -> dict[str, bool | None]:
        """Return the switches a worker process's parts follow, by kind."""
        return {DB: self.db.enabled, DATA: self.data.enabled}

    # ------------------------------------------------------------ database
    def install(self, engine: Engine) -> None:
        """Hook ``engine`` so that statements can lose their connection."""
        event.listen(engine, "before_cursor_execute", self._before_execute)

    def uninstall(self, engine: Engine) -> None:
        """Remove the hook :meth:`install` added."""
        if event.contains(engine, "before_cursor_execute", self._before_execute):
            event.remove(engine, "before_cursor_execute", self._before_execute)

    def _before_execute(self, conn: Any, cursor: Any, *_args: Any) -> None:
        try:
            self._statement()
        except DisconnectionError:
            # The chaos part decided to drop the connection. SQLAlchemy's invalidate()
            # closes the driver's connection and marks it dead in the pool, as it does when
            # it detects a connection the server dropped; the statement about to run then
            # fails with the part's disconnection error.
            cursor.close()  # first, while its connection is open: nothing to log later
            conn.invalidate()
            raise

    # ------------------------------------------------------------ data loading
    def data_load(self) -> None:
        """Called before each batch load; the :data:`DATA` part may fail it.

        Raises:
            ConnectionError: The injected data-source failure.
        """
        self._load()

    # ------------------------------------------------------------ worker
    def after_step(
        self,
        run_id: object,  # noqa: ARG002 - hook signature
        step: int,  # noqa: ARG002
        *,
        saving: bool = False,  # noqa: ARG002
    ) -> None:
        """Called after each training step; the :data:`KILL` part may decide a kill.

        Args:
            run_id: The run.
            step: The step just trained.
            saving: Whether a checkpoint save follows the step.

        Raises:
            WorkerKilled: The kill part's decision.
        """
        self._after_step()

    # ------------------------------------------------------------ worker processes
    def worker_plan(self) -> FaultPlan:
        """Return the plan of a new worker process: its database and data parts.

        The rates and seeds are this plan's; each cap is what the worker
        processes of this injector have left of it (the database part of the
        service process keeps its own cap). A worker process never decides
        kills: the service process does (:meth:`after_step`).
        """
        plan = self.plan
        with self._lock:
            db_used = sum(c.get(DB, (0, 0))[1] for c in self._workers.values())
            data_used = sum(c.get(DATA, (0, 0))[1] for c in self._workers.values())
        data_used += self.data.statistics().injected
        db_rate, db_max = _left(plan.db_drop_rate, plan.db_drop_max, db_used)
        data_rate, data_max = _left(plan.data_fail_rate, plan.data_fail_max, data_used)
        return replace(
            plan,
            db_drop_rate=db_rate,
            db_drop_max=db_max,
            data_fail_rate=data_rate,
            data_fail_max=data_max,
            kill_after_steps=(),
        )

    def record_worker(self, pid: int, counts: WorkerCounts) -> None:
        """Take a worker process's counters (reported as it runs; they only grow)."""
        with self._lock:
            known = self._workers.setdefault(pid, {})
            for kind, (calls, injected) in counts.items():
                old_calls, old_injected = known.get(kind, (0, 0))
                known[kind] = (max(calls, old_calls), max(injected, old_injected))

    def workers(self) -> dict[int, WorkerCounts]:
        """Return the counters each worker process reported, by pid."""
        with self._lock:
            return {pid: dict(counts) for pid, counts in self._workers.items()}

    def counters(self) -> WorkerCounts:
        """Return the database and data parts' ``(calls, injected)``: a worker process's report."""
        counts: WorkerCounts = {}
        for part in (self.db, self.data):
            stats = part.statistics()
            counts[part.name or ""] = (stats.calls, stats.injected)
        return counts

    def statistics(self, kind: str) -> chaos.ChaosStatistics:
        """Return the counters of part ``kind``: this process's plus its worker processes'."""
        own = {part.name: part for part in self.parts}[kind].statistics()
        with self._lock:
            calls = sum(c.get(kind, (0, 0))[0] for c in self._workers.values())
            injected = sum(c.get(kind, (0, 0))[1] for c in self._workers.values())
        return chaos.ChaosStatistics(own.calls + calls, own.injected + injected)

    def counts(self) -> dict[str, int]:
        """Return the faults injected so far by kind, worker processes included (none: left out)."""
        injected = {kind: self.statistics(kind).injected for kind in (DB, DATA, KILL)}
        return {kind: n for kind, n in injected.items() if n}

    def __repr__(self) -> str:
        parts = "; ".join(repr(part) for part in self.parts)
        return f"<FaultInjector {parts}>"


def _left(rate: float, cap: int | None, used: int) -> tuple[float, int | None]:
    """The rate and cap of a worker process's part, given the injections already made."""
    if cap is None:
        return rate, None
    if used >= cap:
        return 0.0, None  # nothing left: the part still counts its calls
    return rate, cap - used
