"""One worker process's life, seen from the service process: start it, answer it, kill it, bury it.

:class:`WorkerLife` starts a worker process on a run (a fresh interpreter
running :func:`recoverly.service.worker_process.main`), then reads what it
sends until it ends: steps and checkpoint commits, which it answers (or, when
the kill part decides, answers with ``SIGKILL``), its events, re-emitted here,
its log records, logged here, and its fault counters, handed to the
:class:`~recoverly.service.faults.FaultInjector`. When the pipe ends it waits
for the process and returns a :class:`WorkerExit`: the kernel's exit code
(``-9`` after ``SIGKILL``), the steps it reported, where a kill landed.

.. versionadded:: 0.2
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Any

from recoverly._core.bus import BUS
from recoverly.service import worker_process as wp
from recoverly.service.faults import FaultInjector, WorkerKilled

__all__ = ["WorkerExit", "WorkerLife"]

_log = logging.getLogger("recoverly.service")


@dataclass(frozen=True, slots=True)
class WorkerExit:
    """How a worker process ended.

    Attributes:
        run_id: The run it trained.
        pid: Its process id.
        returncode: Its exit code; ``-N`` when signal ``N`` ended it.
        first_step: The first step it reported (``None``: none).
        last_step: The last step it reported (``None``: none).
        killed: Whether the service process sent it ``SIGKILL`` (the kill part decided).
        in_checkpoint_write: Whether the kill landed while it was writing the
            checkpoint of ``last_step`` (written, not committed).

    .. versionadded:: 0.2
    """

    run_id: int
    pid: int
    returncode: int | None
    first_step: int | None = None
    last_step: int | None = None
    killed: bool = False
    in_checkpoint_write: bool = False

    @property
    def signal(self) -> str | None:
        """The name of the signal that ended the process (``None``: it exited)."""
        code = self.returncode
        if code is None or code >= 0:
            return None
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"

    def as_dict(self) -> dict[str, Any]:
        """Return the exit as JSON-ready data (with ``signal``)."""
        return {**asdict(self), "signal": self.signal}

    def __str__(self) -> str:
        how = f"killed by {self.signal}" if self.signal else "exited"
        where = ""
        if self.last_step is not None:
            where = (
                f" while writing the checkpoint of step {self.last_step}"
                if self.in_checkpoint_write
                else f" after step {self.last_step}"
            )
        return f"worker process {self.pid} {how} (exit code {self.returncode}){where}"


#: What the worker process runs (``{fd}``: its end of the pipe). It reads the
#: service process's ``sys.path`` first, as ``multiprocessing``'s spawn does, but
#: never imports the service's ``__main__`` module: an unguarded script that
#: starts the service does not start it again in each worker process.
_ENTRY = (
    "import sys\n"
    "from multiprocessing.connection import Connection\n"
    "conn = Connection({fd})\n"
    "sys.path[:] = conn.recv()\n"
    "from recoverly.service.worker_process import main\n"
    "main(conn, conn.recv())\n"
)


class WorkerLife:
    """One worker process on one run: started, answered, maybe killed, waited for.

    Args:
        spec: What the process gets (sent over the pipe once it runs).
        faults: The injector whose kill part decides kills and which takes the
            process's fault counters; ``None``: no faults.

    .. versionadded:: 0.2
    """

    def __init__(self, spec: wp.WorkerSpec, faults: FaultInjector | None) -> None:
        self.spec = spec
        self.faults = faults
        self.conn, child_end = multiprocessing.Pipe(duplex=True)
        fd = child_end.fileno()
        try:
            self.process = subprocess.Popen(  # noqa: S603 - this interpreter, fixed code
                [sys.executable, "-c", _ENTRY.format(fd=fd)],
                pass_fds=(fd,),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            self.conn.close()
            raise
        finally:
            child_end.close()  # the process holds the only other end: its death is our EOF
        self.pid: int = self.process.pid
        self.first_step: int | None = None
        self.last_step: int | None = None
        self.kill_at_commit: int | None = None
        self.killed = False
        self.in_checkpoint_write = False
        with contextlib.suppress(OSError):  # it died at once: supervise() sees the end
            self.conn.send(list(sys.path))
            self.conn.send(spec)

    def supervise(self) -> WorkerExit:
        """Answer the process until it ends; return how it ended."""
        try:
            while True:
                try:
                    message = self.conn.recv()
                except (EOFError, OSError):
                    break
                try:
                    self._handle(message)
                except Exception:  # a bad message must not leave the process unwatched
                    _log.exception("worker process %d: could not handle %r", self.pid, message)
        finally:
            self.conn.close()
        returncode = self.process.wait()
        return WorkerExit(
            self.spec.run_id,
            self.pid,
            returncode,
            self.first_step,
            self.last_step,
            self.killed,
            self.in_checkpoint_write,
        )

    def terminate(self) -> None:
        """Ask the process to end now (``SIGTERM``), for a shutdown."""
        if self.process.poll() is None:
            self.process.terminate()

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == wp.EVENT:
            _, event, counts = message
            self._counts(counts)
            if BUS.wants(type(event)):
                BUS.emit(event)
        elif kind == wp.LOG:
            _, name, level, text = message
            logging.getLogger(name).log(level, "worker process %d: %s", self.pid, text)
        elif kind == wp.STEP:
            _, step, saving, counts, asks = message
            self._counts(counts)
            self._step(step, saving=saving, asks=asks)
        elif kind == wp.COMMIT:
            _, step, counts = message
            self._counts(counts)
            if self.kill_at_commit == step:
                self.in_checkpoint_write = True
                self._kill()
            else:
                self._go()
        elif kind == wp.DONE:
            self._counts(message[1])

    def _counts(self, counts: dict[str, tuple[int, int]]) -> None:
        if self.faults is not None and counts:
            self.faults.record_worker(self.pid, counts)

    def _step(self, step: int, *, saving: bool, asks: bool) -> None:
        if self.first_step is None:
            self.first_step = step
            if step > 1:
                _log.info(
                    "worker process %d resumed run %d at step %d",
                    self.pid,
                    self.spec.run_id,
                    step,
                )
        self.last_step = step
        if not asks:
            return
        if self.kill_at_commit is not None:  # the decided checkpoint write never came
            self._kill()
            return
        if self.faults is not None:
            try:
                self.faults.after_step(self.spec.run_id, step)
            except WorkerKilled:
                if saving:
                    self.kill_at_commit = step  # in the middle of writing its checkpoint
                else:
                    self._kill()
                    return
            except Exception:  # a broken hook must not stop training
                _log.exception("fault hook after step %d raised", step)
        self._go()

    def _go(self) -> None:
        switches = self.faults.switches() if self.faults is not None else {}
        with contextlib.suppress(OSError):  # it died meanwhile; recv() sees the end
            self.conn.send((wp.GO, switches))

    def _kill(self) -> None:
        self.killed = True
        os.kill(self.pid, signal.SIGKILL)
