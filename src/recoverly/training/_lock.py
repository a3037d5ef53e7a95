"""The run lock: one process at a time runs a run directory."""

from __future__ import annotations

import os
from pathlib import Path

from recoverly.errors import RecoverlyError

__all__ = ["RunInUseError", "RunLock"]


class RunInUseError(RecoverlyError):
    """Another process (or another run object in this one) is running this run directory.

    Attributes:
        directory: The run directory.
        pid: The process holding it, when known.

    .. versionadded:: 0.2
    """

    def __init__(self, message: str, *, directory: str, pid: int | None) -> None:
        super().__init__(message)
        self.directory = directory
        self.pid = pid


_HELD: set[str] = set()  # run directories locked by this process


class RunLock:
    """An exclusive lock on a run directory for the life of one run.

    A POSIX record lock (``fcntl.lockf``) on ``run.lock``: the kernel drops it
    when the process dies, SIGKILL included, and child processes (DataLoader
    workers) do not inherit it. Inside one process a set of held directories
    stands in for it. Where ``fcntl`` is missing only the in-process check is made.
    """

    __slots__ = ("_fd", "_key", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key = os.path.realpath(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunInUseError`."""
        directory = str(self.path.parent)
        if self._key in _HELD:
            raise RunInUseError(
                f"run in {directory!r} is already running in this process",
                directory=directory,
                pid=os.getpid(),
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            raise RunInUseError(
                f"run in {directory!r} is running in process {holder}; one process at a time",
                directory=directory,
                pid=holder,
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        _HELD.add(self._key)

    def release(self) -> None:
        """Drop the lock (closing the file releases it)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            _HELD.discard(self._key)
            os.close(fd)


def _lock(fd: int) -> None:
    try:
        import fcntl  # noqa: PLC0415 - POSIX only
    except ImportError:  # pragma: no cover - Windows: the in-process check only
        return
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode() or "x")
    except (OSError, ValueError):
        return None


# Shown where users import it from.
RunInUseError.__module__ = "recoverly.training"
