"""Durable, atomic file operations on a local filesystem.

Every write goes to a temporary name *next to* its target (same directory, so
the same filesystem), is flushed with ``fsync``, and only then renamed into
place; the directory is fsynced after the rename so the new name survives a
power cut. A crash at any byte leaves the old file or the new one, never a
mix.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "TRANSIENT_ERRNOS",
    "atomic_write_bytes",
    "fsync_dir",
    "is_transient_io_error",
    "lower_thread_priority",
    "pid_alive",
    "temp_name",
    "write_new_file",
]

#: ``OSError`` numbers worth one more try: the device or the network stumbled.
#: Full disks (``ENOSPC``, ``EDQUOT``), read-only filesystems and permission
#: errors are not in the list: retrying them only delays a loud failure.
TRANSIENT_ERRNOS = frozenset(
    code
    for code in (
        errno.EIO,
        errno.EAGAIN,
        errno.EINTR,
        errno.EBUSY,
        errno.ETIMEDOUT,
        getattr(errno, "ESTALE", None),
        getattr(errno, "ECONNRESET", None),
    )
    if code is not None
)

_CHUNK = 16 << 20  # bytes handed to one os.write call


def is_transient_io_error(exc: BaseException) -> bool:
    """Return whether ``exc`` is an ``OSError`` a retry may cure (EIO, EAGAIN, ...)."""
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


def temp_name(prefix: str) -> str:
    """Return a hidden temporary name ``.{prefix}-{pid}-{random}`` for this process."""
    return f".{prefix}-{os.getpid()}-{secrets.token_hex(4)}"


def pid_alive(pid: int) -> bool:
    """Return whether a process with this id exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory entry table to disk (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - Windows cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_file(
    path: str | os.PathLike[str], chunks: Iterable[bytes | memoryview], *, fsync: bool = True
) -> int:
    """Create ``path`` (it must not exist), write every chunk, fsync, close; return the size.

    Partial writes are continued; any error closes the file and re-raises.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
    size = 0
    try:
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            while view:
                done = os.write(fd, view[:_CHUNK])
                view = view[done:]
                size += done
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return size


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    The bytes go to a temporary file in the same directory, which is fsynced,
    renamed over ``path`` and followed by an fsync of the directory. On error
    the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    tmp = target.with_name(temp_name(target.name + ".tmp"))
    try:
        write_new_file(tmp, [data])
        tmp.replace(target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)


def lower_thread_priority() -> None:
    """Make the calling (background) thread yield the CPU to the training thread.

    On Linux the nice value is per thread; threads it starts (the hashing
    helper) inherit it. Elsewhere, or when refused, nothing changes.
    """
    setpriority = getattr(os, "setpriority", None)
    if setpriority is None or not sys.platform.startswith("linux"):  # pragma: no cover
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 10))
