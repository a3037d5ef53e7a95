"""Disk full and I/O errors injected into a real saving process with strace.

``strace -e inject=SYSCALL:error=ERRNO:when=N+`` makes the N-th and later calls
of a system call fail inside a child process that saves checkpoint 2 next to an
existing checkpoint 1. The save must fail loudly (exit code, errno named), and
checkpoint 1 must stay byte-identical and loadable. In the child, the first
write is state.json, the second arrays.bin, the third the manifest; the first
rename is the manifest's, the second the entry's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

np = pytest.importorskip("numpy", reason="checkpoints of arrays need numpy (recoverly[training])")

from recoverly.training import CheckpointManager  # noqa: E402

CHILD = textwrap.dedent(
    """
    import errno, os, sys
    import numpy as np
    from recoverly.training import CheckpointManager

    report = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    mgr = CheckpointManager(sys.argv[1], keep_last=1)
    try:
        mgr.save(2, {"w": np.full(200_000, 2.0), "step": 2})
    except OSError as exc:
        text = f"{type(exc).__name__} {errno.errorcode.get(exc.errno)} {exc}"
        os.pwrite(report, text.encode(), 0)  # pwrite64 is not injected
        os._exit(3)
    os.pwrite(report, b"OK", 0)
    os._exit(0)
    """
)


def _strace_usable() -> str | None:
    strace = shutil.which("strace")
    if strace is None:
        return "strace is not installed (apt-get install strace)"
    probe = subprocess.run([strace, "-f", "-o", os.devnull, "true"], check=False)  # noqa: S603
    if probe.returncode != 0:
        return "ptrace is not permitted here (strace -f true failed)"
    return None


pytestmark = pytest.mark.skipif(_strace_usable() is not None, reason=str(_strace_usable()))


def digests(path: Path) -> dict[str, str]:
    """SHA-256 of every file under ``path``, by relative name."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def run_with_fault(tmp_path: Path, inject: str) -> tuple[int, str]:
    """Run the saving child under strace with one injection; return exit code and report."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    report = tmp_path / "report.txt"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = ["strace", "-f", "-qq", "-o", os.devnull, "-e", f"inject={inject}"]
    cmd += [sys.executable, str(script), str(tmp_path / "ckpt"), str(report)]
    proc = subprocess.run(cmd, check=False, env=env, timeout=50, capture_output=True)  # noqa: S603
    return proc.returncode, report.read_text() if report.exists() else ""


def first_checkpoint(tmp_path: Path) -> dict[str, str]:
    mgr = CheckpointManager(tmp_path / "ckpt")
    mgr.save(1, {"w": np.full(200_000, 1.0), "step": 1})
    return digests(tmp_path / "ckpt")


def assert_first_intact(tmp_path: Path, before: dict[str, str]) -> None:
    assert digests(tmp_path / "ckpt") == before
    ckpt = CheckpointManager(tmp_path / "ckpt").load_latest()
    assert ckpt is not None
    assert ckpt.step == 1
    assert ckpt.state["w"].tobytes() == np.full(200_000, 1.0).tobytes()


@pytest.mark.parametrize(
    ("inject", "errname", "message"),
    [
        ("write:error=ENOSPC:when=1+", "ENOSPC", "No space left on device"),
        ("write:error=ENOSPC:when=2+", "ENOSPC", "No space left on device"),
        ("write:error=ENOSPC:when=3+", "ENOSPC", "No space left on device"),
        ("fsync:error=ENOSPC:when=2+", "ENOSPC", "No space left on device"),
        ("write:error=EIO:when=2+", "EIO", "Input/output error"),
        ("fsync:error=EIO:when=1+", "EIO", "Input/output error"),
        ("rename,renameat,renameat2:error=EIO:when=2+", "EIO", "Input/output error"),
    ],
    ids=[
        "enospc-state",
        "enospc-arrays",
        "enospc-manifest",
        "enospc-fsync",
        "eio-write",
        "eio-fsync",
        "eio-rename",
    ],
)
def test_failing_save_names_the_error_and_keeps_the_previous_checkpoint(
    tmp_path, inject, errname, message
):
    """The child exits non-zero naming the errno; checkpoint 1 is byte-identical and loads."""
    before = first_checkpoint(tmp_path)
    code, report = run_with_fault(tmp_path, inject)
    assert code == 3, report
    assert report.split()[:2] == ["OSError", errname], report
    assert message in report
    assert_first_intact(tmp_path, before)


def test_a_single_eio_is_retried_in_a_real_process(tmp_path):
    """One EIO on the arrays write is retried: checkpoint 2 commits and 1 is pruned after it."""
    first_checkpoint(tmp_path)
    code, report = run_with_fault(tmp_path, "write:error=EIO:when=2")
    assert (code, report) == (0, "OK")
    mgr = CheckpointManager(tmp_path / "ckpt")
    assert [i.step for i in mgr.list()] == [2]
    ckpt = mgr.load_latest()
    assert ckpt is not None
    assert ckpt.state["w"].tobytes() == np.full(200_000, 2.0).tobytes()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step-000000000002"]
