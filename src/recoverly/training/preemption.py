"""Turn SIGTERM, SIGINT and SIGUSR1 into "finish the step, checkpoint, exit".

Schedulers announce a pre-emption with a signal and a grace period: Kubernetes
sends SIGTERM and waits ``terminationGracePeriodSeconds``; SLURM sends the
signal named by ``--signal`` (SIGUSR1 by convention) before the time limit;
Ctrl-C sends SIGINT. :class:`PreemptionGuard` only records the signal; the
training loop checks it at the end of each step, saves a checkpoint and raises
:class:`Preempted`, which leaves the process with :data:`PREEMPTED_EXIT_CODE`
so the scheduler can tell "stopped cleanly, restart me" from a crash.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import warnings
from collections.abc import Callable, Iterable
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from recoverly._core.validate import Problems

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "DEFAULT_SIGNALS",
    "PREEMPTED_EXIT_CODE",
    "Preempted",
    "PreemptionGuard",
    "ignore_preemption_signals",
]

#: The exit status of a process that stopped for a pre-emption after saving a
#: checkpoint: 75 is ``EX_TEMPFAIL`` from ``sysexits.h``, "temporary failure,
#: try again later". It differs from a crash (1), a kill by SIGTERM (143 in a
#: shell, -15 from :mod:`subprocess`) and SIGKILL (137).
PREEMPTED_EXIT_CODE = 75

#: The signals a guard handles by default (SIGUSR1 only where it exists).
DEFAULT_SIGNALS: tuple[signal.Signals, ...] = tuple(
    sig
    for sig in (
        getattr(signal, "SIGTERM", None),
        getattr(signal, "SIGINT", None),
        getattr(signal, "SIGUSR1", None),
    )
    if sig is not None
)

_MAX_EXIT_CODE = 255

_Handler = Callable[[int, FrameType | None], Any] | int | None


class Preempted(SystemExit):
    """Raised after the checkpoint of a pre-empted run has been saved.

    It is a :class:`SystemExit` whose code is the guard's exit code, so left
    uncaught it ends the process quietly with that status, and an
    ``except Exception`` in your loop does not swallow it.

    Attributes:
        signal: The number of the signal that asked for the stop
            (``signal.SIGTERM`` ...), or ``None`` when asked by :meth:`PreemptionGuard.request`
            without one.
        step: The step the checkpoint holds; a restart continues after it.
        exit_code: The process exit status (also ``.code``).

    .. versionadded:: 0.2
    """

    def __init__(self, signum: int | None, step: int, exit_code: int = PREEMPTED_EXIT_CODE) -> None:
        super().__init__(exit_code)
        self.signal = signum
        self.step = step
        self.exit_code = exit_code

    def __str__(self) -> str:
        return (
            f"pre-empted by {_signal_name(self.signal)}; checkpoint saved at step {self.step}; "
            f"exit code {self.exit_code}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.signal, self.step, self.exit_code))


class PreemptionGuard:
    """Records pre-emption signals so a loop can stop at a step boundary.

    Use it as a context manager (or :meth:`install`/:meth:`uninstall`): the
    handlers it installs only set a flag, so the current step, and a checkpoint
    being written, finish normally. A second signal of the same kind while the
    flag is set falls back to the handler that was there before (a second
    Ctrl-C interrupts at once). The previous handlers are restored on exit.

    Signal handlers can only be installed from the main thread. Elsewhere (a
    worker thread), the guard warns and installs nothing; :meth:`request`
    still works, for example from a worker's own shutdown hook.

    Args:
        signals: The signals to handle; default SIGTERM, SIGINT and SIGUSR1.
        exit_code: The exit status carried by :class:`Preempted`.

    Raises:
        ValueError: ``signals`` is empty or ``exit_code`` is outside 1..255.
        TypeError: ``signals`` holds something that is not a signal number.

    .. versionadded:: 0.2
    """

    __slots__ = ("_installed", "_previous", "_signal", "exit_code", "signals")

    def __init__(
        self, signals: Iterable[int] = DEFAULT_SIGNALS, *, exit_code: int = PREEMPTED_EXIT_CODE
    ) -> None:
        problems = Problems()
        valid = set(signal.valid_signals())
        chosen: list[signal.Signals] = []
        for sig in list[object](signals):
            if isinstance(sig, bool) or not isinstance(sig, int) or sig not in valid:
                problems._bad(f"signals must hold signal numbers, got {sig!r}", kind=True)
            else:
                chosen.append(signal.Signals(sig))
        if not chosen and not problems.messages:
            problems._bad("signals must name at least one signal, got none")
        code = problems.int_at_least("exit_code", exit_code, 1)
        if code > _MAX_EXIT_CODE:
            problems._bad(f"exit_code must be an integer in 1..255, got {exit_code!r}")
        problems.raise_if_any()
        self.signals = tuple(chosen)
        self.exit_code = exit_code
        self._previous: dict[signal.Signals, _Handler] = {}
        self._signal: int | None = None
        self._installed = False

    # ------------------------------------------------------------------ state
    @property
    def requested(self) -> bool:
        """Whether a stop was asked for (by a signal or :meth:`request`)."""
        return self._signal is not None

    @property
    def received(self) -> int | None:
        """The first signal received, ``0`` for :meth:`request` without one, or ``None``."""
        return self._signal

    def request(self, signum: int = 0) -> None:
        """Ask for a stop at the next step boundary, as a signal would."""
        # No lock: this runs inside signal handlers, which interrupt the main
        # thread anywhere (a lock it holds would deadlock). Two racing requests
        # both ask for a stop; which signal is recorded does not matter.
        if self._signal is None:
            self._signal = signum

    def clear(self) -> None:
        """Forget a request (after the loop has acted on it)."""
        self._signal = None

    def preempted(self, step: int) -> Preempted:
        """Return the :class:`Preempted` exception for a stop after ``step``."""
        return Preempted(self._signal or None, step, self.exit_code)

    # ------------------------------------------------------------------ handlers
    def install(self) -> Self:
        """Install the handlers (main thread only; elsewhere warn and do nothing)."""
        if self._installed:
            return self
        if threading.current_thread() is not threading.main_thread():
            warnings.warn(
                "PreemptionGuard: signal handlers can only be installed in the main thread; "
                "this guard reacts only to request()",
                RuntimeWarning,
                stacklevel=2,
            )
            return self
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        self._installed = True
        return self

    def uninstall(self) -> None:
        """Restore the handlers that were installed before :meth:`install`."""
        if not self._installed:
            return
        self._installed = False
        previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._signal != signum:
            self.request(signum)
            return
        # The same signal twice: the user insists. Give it to whoever had it before us.
        previous = self._previous.get(signal.Signals(signum), signal.SIG_DFL)
        self.uninstall()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.raise_signal(signum)

    def __enter__(self) -> Self:
        return self.install()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstall()

    def __repr__(self) -> str:
        names = ",".join(sig.name for sig in self.signals)
        state = f"requested by {_signal_name(self._signal)}" if self.requested else "idle"
        return f"<PreemptionGuard {names} exit_code={self.exit_code} {state}>"


def ignore_preemption_signals(worker_id: int = 0) -> None:  # noqa: ARG001 - worker_init_fn
    """Ignore the default pre-emption signals in this process: a ``worker_init_fn``.

    When a scheduler signals a whole process group (SLURM without ``B:``,
    Ctrl-C in a terminal), ``DataLoader`` worker processes receive SIGTERM,
    SIGINT or SIGUSR1 too, and a worker that dies of it makes the training
    process fail instead of finishing its step. Pass this function as
    ``DataLoader(worker_init_fn=ignore_preemption_signals)``; the workers still
    exit when the loader shuts them down or the training process dies.

    .. versionadded:: 0.2
    """
    for sig in DEFAULT_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _signal_name(signum: int | None) -> str:
    if not signum:
        return "request()"
    try:
        return signal.Signals(signum).name
    except ValueError:  # pragma: no cover - a number the platform does not name
        return f"signal {signum}"


# Shown where users import them from.
Preempted.__module__ = "recoverly.training"
PreemptionGuard.__module__ = "recoverly.training"
ignore_preemption_signals.__module__ = "recoverly.training"
