"""Workers run the training jobs the API queues; settings pick which one.

:class:`Worker` is the seam: ``submit(run_id)``, ``start()``, ``stop()`` and
``status()``. :class:`InProcessWorker` (the default, ``broker_url`` unset) runs
jobs one at a time on a thread of the service's own process. It acknowledges a
run only when its job returns: when the worker thread dies in the middle of a
job (an injected :class:`~recoverly.service.faults.WorkerKilled`), it marks the
run ``interrupted``, starts a fresh thread and hands it the same run again,
which resumes from its newest checkpoint. After ``max_redeliveries`` deaths on
the same run, the run is marked ``failed``.

.. versionadded:: 0.2
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from recoverly.service.faults import WorkerKilled

__all__ = ["InProcessWorker", "Worker"]

_log = logging.getLogger("recoverly.service")
_STOP = -1


@runtime_checkable
class Worker(Protocol):
    """What the API needs from a worker.

    .. versionadded:: 0.2
    """

    kind: str

    def submit(self, run_id: int) -> None:
        """Queue run ``run_id``."""

    def start(self) -> None:
        """Start taking jobs."""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs and wait up to ``timeout`` seconds for the current one."""

    def status(self) -> dict[str, Any]:
        """Return a JSON-ready description for ``/health``."""


class InProcessWorker:
    """Run training jobs one at a time on a thread of this process.

    Args:
        job: Called as ``job(run_id)``; it records its own outcome.
        on_interrupted: Called as ``on_interrupted(run_id, error)`` when the
            thread died during the run (before the run is handed out again).
        max_redeliveries: Deaths on one run before it is given up.

    .. versionadded:: 0.2
    """

    kind = "in-process"

    def __init__(
        self,
        job: Callable[[int], None],
        *,
        on_interrupted: Callable[[int, BaseException], None] | None = None,
        on_given_up: Callable[[int, BaseException], None] | None = None,
        max_redeliveries: int = 5,
    ) -> None:
        self.job = job
        self.on_interrupted = on_interrupted
        self.on_given_up = on_given_up
        self.max_redeliveries = max_redeliveries
        self.restarts = 0
        self.completed = 0
        self._queue: queue.Queue[int] = queue.Queue()
        self._lock = threading.Lock()
        self._deaths: dict[int, int] = {}
        self._current: int | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._idle = threading.Event()
        self._idle.set()
        self._pending = 0

    def submit(self, run_id: int) -> None:
        """Queue run ``run_id`` (it runs after those queued before it)."""
        with self._lock:
            self._pending += 1
            self._idle.clear()
        self._queue.put(run_id)

    def start(self) -> None:
        """Start the worker thread (a no-op if it runs)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="recoverly-worker", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            run_id = self._queue.get()
            if run_id == _STOP:
                return
            self._current = run_id
            try:
                self.job(run_id)
            except WorkerKilled as exc:
                self._died(run_id, exc)
                return  # this thread is dead; _died started its replacement
            except Exception:  # the job records its own failures; never kill the worker
                _log.exception("training job %s raised", run_id)
            self._current = None
            self._finished()

    def _finished(self) -> None:
        with self._lock:
            self.completed += 1
            self._pending -= 1
            if self._pending == 0:
                self._idle.set()

    def _died(self, run_id: int, exc: BaseException) -> None:
        self._current = None
        deaths = self._deaths[run_id] = self._deaths.get(run_id, 0) + 1
        _log.warning("worker died during run %s (%s); restarting it", run_id, exc)
        if deaths > self.max_redeliveries:
            if self.on_given_up is not None:
                self.on_given_up(run_id, exc)
            self._finished()
        else:
            if self.on_interrupted is not None:
                self.on_interrupted(run_id, exc)
            # Redeliver ahead of anything queued since: the run was acknowledged late.
            with self._queue.mutex:
                self._queue.queue.appendleft(run_id)
                self._queue.not_empty.notify()
        with self._lock:
            self.restarts += 1
            self._thread = None
        if not self._stopping:
            self.start()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every submitted run finished; return whether it did in time."""
        return self._idle.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current job; wait up to ``timeout`` seconds for it."""
        self._stopping = True
        thread = self._thread
        with self._queue.mutex:  # ahead of the queued runs: they stay queued in the database
            self._queue.queue.appendleft(_STOP)
            self._queue.not_empty.notify()
        if thread is not None:
            thread.join(timeout)

    def status(self) -> dict[str, Any]:
        """Return the worker's state for ``/health``."""
        thread = self._thread
        return {
            "kind": self.kind,
            "ok": thread is not None and thread.is_alive(),
            "current_run": self._current,
            "queued": self._queue.qsize(),
            "completed": self.completed,
            "restarts": self.restarts,
        }

    def __repr__(self) -> str:
        return f"<InProcessWorker current={self._current} restarts={self.restarts}>"
