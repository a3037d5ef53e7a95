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
- **A worker killed mid-training** (:data:`KILL`): after each training step the
  part, scheduled with ``at=`` (rate 0), raises :class:`WorkerKilled` after the
  planned steps; it is a ``BaseException``, so no retry or handler in the
  training code catches it, and the worker restarts the run from its newest
  checkpoint.

The parts are switched on and off together, for every thread, by
:meth:`FaultInjector.enable` / :meth:`FaultInjector.disable` (the faults happen
on the worker's, the progress tracker's and the API's threads, which a
``with chaos.enabled():`` block in the caller would not reach). The external
predictor's faults are chaos parts of the predictor itself (see
:mod:`recoverly.service.predictor_server`).

.. versionadded:: 0.2
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError

from recoverly import chaos

__all__ = ["DATA", "DB", "KILL", "FaultInjector", "FaultPlan", "WorkerKilled"]

#: Fault kinds: the names of the :class:`FaultInjector`'s chaos parts.
DB = "db_connection_dropped"
DATA = "data_load_failed"
KILL = "worker_killed"


class WorkerKilled(BaseException):
    """The training worker was killed (injected); the run resumes from its checkpoint.

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
            resume included (the kill part's ``at=`` schedule).
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

    __slots__ = ("_after_step", "_load", "_statement", "data", "db", "kill", "plan")

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
    def after_step(self, run_id: object, step: int) -> None:  # noqa: ARG002 - hook signature
        """Called after each training step; the :data:`KILL` part may kill the worker.

        Raises:
            WorkerKilled: The injected kill.
        """
        self._after_step()

    def counts(self) -> dict[str, int]:
        """Return the faults injected so far by kind (kinds with none left out)."""
        injected = {part.name or "": part.statistics().injected for part in self.parts}
        return {kind: n for kind, n in injected.items() if n}

    def __repr__(self) -> str:
        parts = "; ".join(repr(part) for part in self.parts)
        return f"<FaultInjector {parts}>"
