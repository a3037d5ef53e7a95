"""The worker process: trains one run for the service process, which watches it and may kill it.

:class:`~recoverly.service.worker.ProcessWorker` starts :func:`main` in a fresh
interpreter (a :mod:`subprocess` of the same Python, handed one end of a
:func:`multiprocessing.Pipe`) for each run, and again after each death of the
process. It builds its own engine and
:class:`~recoverly.service.jobs.TrainingJob` from the service's settings and
trains the run, resuming from the run's newest checkpoint. It talks to the
service process over a pipe (messages are tuples; the first item names them):

- after each step it reports the step and waits for the answer (:data:`STEP`):
  go on, with the chaos switches to follow, or no answer at all, because the
  service process sent it ``SIGKILL`` instead;
- before committing a checkpoint (its files are written and synced, the
  manifest is not, the entry is not visible) it asks again (:data:`COMMIT`), so
  a kill can land in the middle of a checkpoint write;
- its events (chaos injections, retries, checkpoint saves, ...) and its log
  records go over as they happen (:data:`EVENT`, :data:`LOG`); the service
  process emits and logs them again, so its subscribers, metrics and log see
  the worker's as their own.

The database and data-loading faults happen here, through this process's own
:mod:`recoverly.chaos` parts (a :class:`~recoverly.service.faults.FaultInjector`
built from :meth:`~recoverly.service.faults.FaultInjector.worker_plan`). Their
counters go with every step report and every relayed event; an injection is
relayed before its exception is raised. So what a killed process injected is
known to the service process up to the kill.

With no fault injector in the service process, the process still reports its
steps, but asks nothing and trains straight through.

.. versionadded:: 0.2
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from recoverly import events
from recoverly.service.faults import DATA, DB, FaultInjector, FaultPlan
from recoverly.service.jobs import TrainingJob
from recoverly.service.model import Dataset
from recoverly.service.settings import Settings
from recoverly.service.store import Store, make_engine
from recoverly.training import PREEMPTED_EXIT_CODE, LocalStore, StoreTransaction

__all__ = [
    "COMMIT",
    "DONE",
    "EVENT",
    "GO",
    "LOG",
    "STARTED",
    "STEP",
    "WorkerError",
    "WorkerSpec",
    "main",
]

#: ``(STARTED, pid)``: the process is up and about to train.
STARTED = "started"
#: ``(STEP, step, saving, counts, asks)``: a step is done (``saving``: a
#: checkpoint save follows); when ``asks``, answered with :data:`GO` or a kill.
STEP = "step"
#: ``(COMMIT, step, counts)``: the checkpoint of ``step`` is written, not yet
#: committed; answered with :data:`GO` or a kill.
COMMIT = "commit"
#: ``(EVENT, event, counts)``: an event of this process.
EVENT = "event"
#: ``(LOG, logger_name, level, text)``: a log record of this process.
LOG = "log"
#: ``(DONE, counts)``: the job returned (completed or recorded as failed).
DONE = "done"
#: ``(GO, switches)``: the service process's answer: go on, chaos switches by kind.
GO = "go"

#: Longest log text sent (a small message is written to the pipe in one piece).
_MAX_TEXT = 2000


class WorkerError(Exception):
    """Stands in, in a relayed event, for a worker's exception that cannot be pickled.

    .. versionadded:: 0.2
    """


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker process needs: the run, the settings, its faults, the data.

    Attributes:
        run_id: The run to train.
        settings: The service's settings (database, directories, step delay).
        faults: The plan of the process's own database and data parts; ``None``:
            no fault hooks, and no questions to the service process.
        switches: The parts' switches at start, by kind.
        dataset: The run's data (``None``: generated from its config).
        progress_interval: Seconds between the progress tracker's writes.

    .. versionadded:: 0.2
    """

    run_id: int
    settings: Settings
    faults: FaultPlan | None = None
    switches: dict[str, bool | None] = field(default_factory=dict)
    dataset: Dataset | None = None
    progress_interval: float = 0.2


class _Link:
    """This end of the pipe: sends from any thread, questions from the training thread."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        # OSError: the service process is gone; the next question notices.
        with self.lock, contextlib.suppress(OSError):
            self.conn.send(message)

    def ask(self, message: tuple[Any, ...]) -> tuple[Any, ...]:
        self.send(message)
        try:
            answer: tuple[Any, ...] = self.conn.recv()
        except (EOFError, OSError):
            # The service process is gone: stop here; the run resumes when it comes back.
            raise SystemExit(PREEMPTED_EXIT_CODE) from None
        return answer


class _Hooks:
    """The training loop's hooks in a worker process: own parts, the service process's verdicts.

    Without an injector the process only reports its steps, and waits for no answer.
    """

    def __init__(self, injector: FaultInjector | None, link: _Link) -> None:
        self.injector = injector
        self.link = link

    def data_load(self) -> None:
        if self.injector is not None:
            self.injector.data_load()

    def after_step(self, run_id: object, step: int, *, saving: bool = False) -> None:  # noqa: ARG002
        if self.injector is None:
            self.link.send((STEP, step, saving, {}, False))
            return
        self._follow(self.link.ask((STEP, step, saving, self.injector.counters(), True)))

    def before_commit(self, name: str) -> None:
        if self.injector is None:
            return
        step = int(name.removeprefix("step-"))
        self._follow(self.link.ask((COMMIT, step, self.injector.counters())))

    def _follow(self, answer: tuple[Any, ...]) -> None:
        switches: dict[str, bool | None] = answer[1]
        if self.injector is not None:
            _switch(self.injector, switches)


def _switch(injector: FaultInjector, switches: dict[str, bool | None]) -> None:
    for kind, part in ((DB, injector.db), (DATA, injector.data)):
        if kind in switches and part.enabled != switches[kind]:
            part.enabled = switches[kind]


class _GatedTransaction(StoreTransaction):
    """A checkpoint write that asks before its commit."""

    __slots__ = ("_gate", "_inner", "_name")

    def __init__(self, inner: StoreTransaction, name: str, gate: Callable[[str], None]) -> None:
        self._inner = inner
        self._name = name
        self._gate = gate

    def write(self, filename: str, chunks: Any) -> None:
        self._inner.write(filename, chunks)

    def commit(self, manifest: bytes) -> None:
        self._gate(self._name)
        self._inner.commit(manifest)

    def abort(self) -> None:
        self._inner.abort()


class _GatedStore(LocalStore):
    """A :class:`LocalStore` whose writes call ``gate(entry name)`` before committing."""

    __slots__ = ("_gate",)

    def __init__(self, path: Path, gate: Callable[[str], None]) -> None:
        super().__init__(path)
        self._gate = gate

    def begin(self, name: str) -> StoreTransaction:
        return _GatedTransaction(super().begin(name), name, self._gate)


class _LogRelay(logging.Handler):
    """Sends this process's log records to the service process."""

    def __init__(self, link: _Link) -> None:
        super().__init__(logging.DEBUG)
        self.link = link

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)[:_MAX_TEXT]
            self.link.send((LOG, record.name, record.levelno, text))
        except Exception:  # a log line must never break training
            self.handleError(record)


def _plain(event: object) -> object:
    """``event`` with its exceptions replaced by :class:`WorkerError` (for pickling)."""
    changes = {
        f.name: WorkerError(f"{type(value).__name__}: {value}")
        for f in fields(event)  # type: ignore[arg-type]
        if isinstance(value := getattr(event, f.name), BaseException)
    }
    return replace(event, **changes)  # type: ignore[type-var]


def _relay_events(link: _Link, injector: FaultInjector | None) -> Callable[[object], None]:
    def relay(event: object) -> None:
        counts = injector.counters() if injector is not None else {}
        try:
            link.send((EVENT, event, counts))
        except Exception:  # pickling failed before anything was written
            link.send((EVENT, _plain(event), counts))

    return relay


def _relay_logs(link: _Link) -> None:
    """Log through the pipe only (the service process decides what is shown)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_LogRelay(link))
    root.setLevel(logging.WARNING)
    logging.getLogger("recoverly").setLevel(logging.INFO)
    # Events are relayed and logged by the service process's own subscriber.
    events.unsubscribe(events.log_event)


def main(conn: Connection, spec: WorkerSpec) -> None:
    """Train ``spec.run_id`` in this process, reporting to the service process over ``conn``.

    Args:
        conn: This end of the pipe to the service process.
        spec: What to train, and how.

    .. versionadded:: 0.2
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the service process decides
    link = _Link(conn)
    injector = None
    if spec.faults is not None:
        injector = FaultInjector(spec.faults)
        _switch(injector, spec.switches)
    _relay_logs(link)
    events.subscribe(_relay_events(link, injector))
    settings = spec.settings
    engine = make_engine(settings.resolved_database_url)
    try:
        hooks = _Hooks(injector, link)
        gate = None
        if injector is not None:
            injector.install(engine)
            gate = hooks.before_commit
        job = TrainingJob(
            Store(engine),
            engine,
            settings.resolved_checkpoint_dir,
            settings.journal_dir,
            faults=hooks,
            progress_interval=spec.progress_interval,
            step_delay=settings.training_step_delay,
            checkpoint_store=None if gate is None else lambda path: _GatedStore(path, gate),
        )
        link.send((STARTED, os.getpid()))
        job(spec.run_id, spec.dataset)
        link.send((DONE, injector.counters() if injector is not None else {}))
    finally:
        engine.dispose()
        conn.close()
