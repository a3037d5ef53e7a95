"""Durable file primitives: create-only writes, atomic replace, transient error classes."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from recoverly.training import _atomic
from recoverly.training._atomic import (
    atomic_write_bytes,
    is_transient_io_error,
    pid_alive,
    temp_name,
    write_new_file,
)


def test_write_new_file_writes_every_chunk_and_refuses_to_overwrite(tmp_path):
    """Chunks land in order, the size is returned, and an existing file is never clobbered."""
    path = tmp_path / "f.bin"
    assert write_new_file(path, [b"ab", memoryview(b"cde"), bytearray(b"f")]) == 6
    assert path.read_bytes() == b"abcdef"
    with pytest.raises(FileExistsError):
        write_new_file(path, [b"x"])
    assert path.read_bytes() == b"abcdef"


def test_partial_os_writes_are_continued(tmp_path, monkeypatch):
    """When os.write writes fewer bytes than asked, the rest is written too."""
    real = os.write
    monkeypatch.setattr(_atomic.os, "write", lambda fd, data: real(fd, bytes(data[:3])))
    write_new_file(tmp_path / "f", [b"0123456789"])
    assert (tmp_path / "f").read_bytes() == b"0123456789"


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    """atomic_write_bytes replaces the content; only the target remains in the directory."""
    path = tmp_path / "manifest.json"
    path.write_bytes(b"old")
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    """ENOSPC during the write leaves the old content and removes the temporary file."""
    path = tmp_path / "manifest.json"
    path.write_bytes(b"old")

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_atomic.os, "write", full)
    with pytest.raises(OSError, match="No space left") as info:
        atomic_write_bytes(path, b"new")
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


@pytest.mark.parametrize(
    ("code", "transient"),
    [
        (errno.EIO, True),
        (errno.EAGAIN, True),
        (errno.ENOSPC, False),
        (errno.EROFS, False),
        (errno.EACCES, False),
    ],
)
def test_transient_errors_are_the_io_hiccups_only(code, transient):
    """EIO/EAGAIN are worth a retry; a full disk, read-only fs or permission error is not."""
    assert is_transient_io_error(OSError(code, os.strerror(code))) is transient


def test_non_os_errors_are_not_transient():
    """A ValueError is never treated as an I/O hiccup."""
    assert not is_transient_io_error(ValueError("x"))


def test_temp_names_carry_the_pid_and_differ():
    """Temporary names are hidden, name this process and are unique."""
    a, b = temp_name("tmp-x"), temp_name("tmp-x")
    assert a.startswith(f".tmp-x-{os.getpid()}-")
    assert a != b


def test_pid_alive_tells_dead_from_living_processes():
    """This process is alive; a finished child is not."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert pid_alive(os.getpid())
    assert not pid_alive(int(done.stdout))
    assert not pid_alive(0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux-only")
def test_lower_thread_priority_affects_only_the_calling_thread():
    """The background writer's nice value rises by 10; the caller's stays."""
    import threading

    from recoverly.training._atomic import lower_thread_priority

    seen = {}

    def worker():
        tid = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, tid)
        lower_thread_priority()
        seen["delta"] = os.getpriority(os.PRIO_PROCESS, tid) - before
        seen["before"] = before

    main_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["delta"] == min(10, 19 - seen["before"])
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_before
