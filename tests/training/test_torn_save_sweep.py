"""SIGKILL a saving process at random moments: what is left always loads and verifies.

A fork server (one Python process with numpy and recoverly imported) forks a
child per round; the child saves ~4 MB states in a loop, every step twice (the
second save replaces the first, so the replace path is hit too), with fsync.
The test kills it with SIGKILL after a random delay, then opens the directory
the way a restarted job would and checks every checkpoint in it.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

np = pytest.importorskip("numpy", reason="checkpoints of arrays need numpy (recoverly[training])")

from recoverly.training import CheckpointManager  # noqa: E402

N = 500_000  # float64s: 4 MB per checkpoint
KILLS = 30

SERVER = textwrap.dedent(
    f"""
    import os, sys
    import numpy as np
    from recoverly.training import CheckpointManager

    def state(step, version):
        return {{"w": np.arange({N}, dtype=np.float64) + step * 10 + version,
                 "meta": {{"step": step, "version": version, "pair": (step, str(step))}}}}

    def child(directory):
        mgr = CheckpointManager(directory, keep_last=2)
        done = mgr.list()
        step = done[-1].step + 1 if done else 0
        os.write(1, f"ready {{os.getpid()}}\\n".encode())
        while True:
            for version in (0, 1):
                mgr.save(step, state(step, version))
            step += 1

    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            child(line.strip())
        _, status = os.waitpid(pid, 0)
        os.write(1, f"dead {{status}}\\n".encode())
    """
)


def expected(step: int, version: int):
    return np.arange(N, dtype=np.float64) + step * 10 + version


@pytest.mark.realtime
def test_sigkill_at_random_points_never_leaves_a_bad_checkpoint(tmp_path, caplog):
    """After each of 30 kills every listed checkpoint verifies and equals a saved state."""
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    directory = tmp_path / "ckpt"
    server = subprocess.Popen(  # noqa: S603
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    assert server.stdin is not None
    assert server.stdout is not None
    rng = random.Random(20261130)
    mid_write = replaced = 0
    steps_seen = []
    try:
        for _ in range(KILLS):
            server.stdin.write(f"{directory}\n")
            line = server.stdout.readline().split()
            assert line[0] == "ready", line
            time.sleep(rng.uniform(0.0, 0.15))
            os.kill(int(line[1]), signal.SIGKILL)
            assert server.stdout.readline().split() == ["dead", str(signal.SIGKILL)]
            leftovers = [p.name for p in directory.iterdir() if p.name.startswith(".")]
            mid_write += any(n.startswith(".tmp-") for n in leftovers)
            replaced += any(n.startswith(".trash-") for n in leftovers)
            with caplog.at_level(logging.WARNING, logger="recoverly.training"):
                mgr = CheckpointManager(directory, keep_last=2)
                ckpt = mgr.load_latest()
                infos = mgr.list()
            assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == []
            for info in infos:
                loaded = mgr.load(info.step)
                meta = loaded.state["meta"]
                assert meta["step"] == info.step
                assert meta["pair"] == (info.step, str(info.step))
                assert loaded.state["w"].tobytes() == expected(info.step, meta["version"]).tobytes()
            if ckpt is None:  # killed before the very first commit
                assert steps_seen == []
                assert infos == []
                continue
            assert ckpt.step == infos[-1].step
            steps_seen.append(ckpt.step)
    finally:
        server.kill()
        server.communicate()  # closes the pipes and reaps the server
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert steps_seen == sorted(steps_seen)
    assert steps_seen[-1] >= 5  # the runs made progress across the kills
    assert mid_write >= 5  # many kills landed inside a save
