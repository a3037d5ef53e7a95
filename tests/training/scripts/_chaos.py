"""Fault injection for the training programs the kill tests run as subprocesses.

``RECOVERLY_KILL_AT_IO=n`` makes the process SIGKILL itself at the n-th call of
``os.fsync`` or ``os.replace``: in the middle of writing a checkpoint (after
its data, before or during the rename that commits it) or the attempt journal.
``RECOVERLY_STEP_LOG=path`` appends one line per completed step, so the test
can count steps that were done twice.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any


def install_io_kill() -> None:
    """Arm the self-kill inside file commits when RECOVERLY_KILL_AT_IO is set."""
    target = int(os.environ.get("RECOVERLY_KILL_AT_IO", "0"))
    if target <= 0:
        return
    calls = [0]

    def wrap(real: Callable[..., Any]) -> Callable[..., Any]:
        def chaos(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] == target:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        return chaos

    os.fsync = wrap(os.fsync)  # type: ignore[assignment]
    os.replace = wrap(os.replace)  # type: ignore[assignment]


class StepLog:
    """Appends ``pid step`` lines (O_APPEND, one write each) when a path is given."""

    def __init__(self) -> None:
        path = os.environ.get("RECOVERLY_STEP_LOG")
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if path else None

    def write(self, step: int) -> None:
        """Record that ``step`` is done."""
        if self.fd is not None:
            os.write(self.fd, f"{os.getpid()} {step}\n".encode())
