"""Workers run the training jobs the API queues; settings pick which one.

:class:`Worker` is the seam: ``submit(run_id)``, ``start()``, ``stop()`` and
``status()``. :class:`ProcessWorker` (the default, ``broker_url`` unset) takes
the queued runs one at a time on a thread of the service's process, and trains
each in a **worker process** it starts and watches: a fresh interpreter
(:mod:`subprocess`, this Python) running
:func:`recoverly.service.worker_process.main`, connected by a
:func:`multiprocessing.Pipe`.

It acknowledges a run only when its process ends normally. When the process
dies in the middle of a run (killed by ``SIGKILL`` on the fault injector's
decision, by the OOM killer, or crashed), the worker records the death (pid,
exit code, signal, the last step the process reported), marks the run
``interrupted`` and starts a new process on the same run, which resumes from
its newest checkpoint. After ``max_redeliveries`` deaths on the same run, the
run is marked ``failed``.

The kill decision is made here, in the service process: for each step the
worker process reports, :meth:`FaultInjector.after_step
<recoverly.service.faults.FaultInjector.after_step>` consults the kill part
(whose ``at=`` schedule therefore numbers every step run, in all processes).
When it decides a kill, the worker sends ``SIGKILL`` while the process waits
for the answer to that step, or, when a checkpoint save follows the step, while
it waits for leave to commit that checkpoint (its files written, the entry not
yet visible).

.. versionadded:: 0.2
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from recoverly.service.faults import FaultInjector
from recoverly.service.supervision import WorkerExit, WorkerLife
from recoverly.service.worker_process import WorkerSpec

__all__ = ["ProcessWorker", "Worker"]

_log = logging.getLogger("recoverly.service")
_STOP = -1
#: Process exits kept for ``status()``.
_HISTORY = 20
#: Seconds ``stop()`` waits for the worker thread after ending its process.
_GRACE = 5.0


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


class ProcessWorker:
    """Run training jobs one at a time, each in a worker process it watches and restarts.

    Args:
        spec_for: Called as ``spec_for(run_id)`` before each process starts;
            returns what the process gets.
        faults: The fault injector whose kill part decides the kills (and which
            collects the worker processes' fault counters); ``None``: none.
        on_interrupted: Called as ``on_interrupted(run_id, exit)`` when a process
            died during the run (before a new one is started).
        on_given_up: Called as ``on_given_up(run_id, exit)`` when the run's
            processes died more than ``max_redeliveries`` times.
        max_redeliveries: Deaths on one run before it is given up.

    .. versionadded:: 0.2
    """

    kind = "process"

    def __init__(
        self,
        spec_for: Callable[[int], WorkerSpec],
        *,
        faults: FaultInjector | None = None,
        on_interrupted: Callable[[int, WorkerExit], None] | None = None,
        on_given_up: Callable[[int, WorkerExit], None] | None = None,
        max_redeliveries: int = 5,
    ) -> None:
        self.spec_for = spec_for
        self.faults = faults
        self.on_interrupted = on_interrupted
        self.on_given_up = on_given_up
        self.max_redeliveries = max_redeliveries
        self.restarts = 0
        self.completed = 0
        self.exits: deque[WorkerExit] = deque(maxlen=_HISTORY)
        self._queue: queue.Queue[int] = queue.Queue()
        self._lock = threading.Lock()
        self._current: int | None = None
        self._life: WorkerLife | None = None
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
                self._run(run_id)
            except Exception:  # never kill the worker thread
                _log.exception("training run %s could not be run", run_id)
            self._current = None
            with self._lock:
                self.completed += 1
                self._pending -= 1
                if self._pending == 0:
                    self._idle.set()

    def _run(self, run_id: int) -> None:
        deaths = 0
        while True:
            life = WorkerLife(self.spec_for(run_id), self.faults)
            with self._lock:
                self._life = life
            _log.info("worker process %d started on run %d", life.pid, run_id)
            ended = life.supervise()
            with self._lock:
                self._life = None
                self.exits.append(ended)
            if ended.returncode == 0:
                return
            deaths += 1
            if self._stopping:
                _log.warning("%s; the run resumes when the service starts again", ended)
                if self.on_interrupted is not None:
                    self.on_interrupted(run_id, ended)
                return
            if deaths > self.max_redeliveries:
                _log.error("%s; run %d is given up after %d deaths", ended, run_id, deaths)
                if self.on_given_up is not None:
                    self.on_given_up(run_id, ended)
                return
            _log.warning("%s; a new process resumes run %d from its checkpoint", ended, run_id)
            if self.on_interrupted is not None:
                self.on_interrupted(run_id, ended)
            with self._lock:
                self.restarts += 1

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every submitted run finished; return whether it did in time."""
        return self._idle.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current job; wait up to ``timeout`` seconds, then end its process.

        A process still training then gets ``SIGTERM`` (and a few seconds to
        go); its run is marked ``interrupted`` and is resumed, from its newest
        checkpoint, when the service starts again.
        """
        self._stopping = True
        thread = self._thread
        with self._queue.mutex:  # ahead of the queued runs: they stay queued in the database
            self._queue.queue.appendleft(_STOP)
            self._queue.not_empty.notify()
        if thread is None:
            return
        thread.join(timeout)
        if thread.is_alive():
            with self._lock:
                life = self._life
            if life is not None:
                life.terminate()
            thread.join(_GRACE)

    def status(self) -> dict[str, Any]:
        """Return the worker's state for ``/health``: current run and process, recent exits."""
        thread = self._thread
        with self._lock:
            life = self._life
            exits = [e.as_dict() for e in self.exits]
        return {
            "kind": self.kind,
            "ok": thread is not None and thread.is_alive(),
            "current_run": self._current,
            "current_pid": life.pid if life is not None else None,
            "current_step": life.last_step if life is not None else None,
            "queued": self._queue.qsize(),
            "completed": self.completed,
            "restarts": self.restarts,
            "exits": exits,
        }

    def __repr__(self) -> str:
        return f"<ProcessWorker current={self._current} restarts={self.restarts}>"
