"""Fault injection for the demo and the tests: real faults at the points where they happen.

- **Dropped database connections**: a ``before_cursor_execute`` hook
  invalidates the connection under the statement (the driver's connection is
  closed and discarded by the pool) and raises SQLAlchemy's
  ``DisconnectionError``; the retried transaction runs again on a new connection.
- **Flaky data loading**: a batch load raises ``ConnectionError``.
- **A worker killed mid-training**: the training thread is stopped by a
  :class:`WorkerKilled` raised after a step (it is a ``BaseException``, so no
  retry or handler in the training code catches it); the worker restarts the
  run from its newest checkpoint.

The external predictor's faults are made by the predictor itself (see
:mod:`recoverly.service.predictor_server`). Every fault is counted by kind.

.. versionadded:: 0.2
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError

__all__ = ["DATA", "DB", "KILL", "FaultInjector", "FaultPlan", "WorkerKilled"]

#: Fault kinds, as counted by :class:`FaultInjector`.
DB = "db_connection_dropped"
DATA = "data_load_failed"
KILL = "worker_killed"


class WorkerKilled(BaseException):
    """The training worker was killed (injected); the run resumes from its checkpoint.

    .. versionadded:: 0.2
    """


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Which faults to inject, and how often.

    Attributes:
        db_drop_every: Drop the connection under every N-th SQL statement
            (``None``: never).
        db_drop_max: At most this many dropped connections in all.
        data_fail_every: Fail every N-th batch load (``None``: never).
        data_fail_max: At most this many failed loads in all.
        kill_at_steps: Kill the worker once after each of these training steps
            (counted per run).

    .. versionadded:: 0.2
    """

    db_drop_every: int | None = None
    db_drop_max: int = 0
    data_fail_every: int | None = None
    data_fail_max: int = 0
    kill_at_steps: tuple[int, ...] = ()


class FaultInjector:
    """Injects the faults of a :class:`FaultPlan` and counts them by kind.

    A disabled injector (``enabled=False``) injects nothing; switch it with
    :meth:`enable` / :meth:`disable` (the demo keeps the fault-free phases clean).

    Args:
        plan: What to inject.
        enabled: Whether injection starts switched on.

    .. versionadded:: 0.2
    """

    __slots__ = ("_killed", "_loads", "_lock", "_statements", "enabled", "injected", "plan")

    def __init__(self, plan: FaultPlan | None = None, *, enabled: bool = True) -> None:
        self.plan = plan or FaultPlan()
        self.enabled = enabled
        self.injected: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._statements = 0
        self._loads = 0
        self._killed: set[tuple[object, int]] = set()

    def enable(self) -> None:
        """Switch injection on."""
        self.enabled = True

    def disable(self) -> None:
        """Switch injection off (counters are kept)."""
        self.enabled = False

    def _due(self, kind: str, count: int, every: int | None, limit: int) -> bool:
        return (
            self.enabled
            and every is not None
            and count % every == 0
            and self.injected[kind] < limit
        )

    # ------------------------------------------------------------ database
    def install(self, engine: Engine) -> None:
        """Hook ``engine`` so that statements can lose their connection."""
        event.listen(engine, "before_cursor_execute", self._before_execute)

    def uninstall(self, engine: Engine) -> None:
        """Remove the hook :meth:`install` added."""
        if event.contains(engine, "before_cursor_execute", self._before_execute):
            event.remove(engine, "before_cursor_execute", self._before_execute)

    def _before_execute(self, conn: Any, cursor: Any, *_args: Any) -> None:
        with self._lock:
            self._statements += 1
            plan = self.plan
            if not self._due(DB, self._statements, plan.db_drop_every, plan.db_drop_max):
                return
            self.injected[DB] += 1
        # Drop the connection: SQLAlchemy's invalidate() closes the driver's connection and
        # marks it dead in the pool, as it does when it detects a connection the server
        # dropped; the statement about to run then fails with a disconnection error.
        cursor.close()  # first, while its connection is open: nothing to log later
        conn.invalidate()
        msg = "database connection dropped (injected)"
        raise DisconnectionError(msg)

    # ------------------------------------------------------------ data loading
    def data_load(self) -> None:
        """Called before each batch load; raises ``ConnectionError`` when a fault is due.

        Raises:
            ConnectionError: The injected data-source failure.
        """
        with self._lock:
            self._loads += 1
            plan = self.plan
            if not self._due(DATA, self._loads, plan.data_fail_every, plan.data_fail_max):
                return
            self.injected[DATA] += 1
        msg = "data source reset the connection (injected)"
        raise ConnectionError(msg)

    # ------------------------------------------------------------ worker
    def after_step(self, run_id: object, step: int) -> None:
        """Called after each training step; kills the worker once at each planned step.

        Raises:
            WorkerKilled: The injected kill.
        """
        if not self.enabled or step not in self.plan.kill_at_steps:
            return
        with self._lock:
            if (run_id, step) in self._killed:
                return
            self._killed.add((run_id, step))
            self.injected[KILL] += 1
        msg = f"worker killed after step {step} of run {run_id} (injected)"
        raise WorkerKilled(msg)

    def counts(self) -> dict[str, int]:
        """Return the faults injected so far, by kind."""
        with self._lock:
            return dict(self.injected)

    def __repr__(self) -> str:
        state = "on" if self.enabled else "off"
        return f"<FaultInjector {state} injected={dict(self.injected)}>"
