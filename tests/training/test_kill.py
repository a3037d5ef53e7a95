"""Kill tests: training processes SIGKILLed at random moments resume to byte-identical weights.

Each attempt is a real process (forked by ``scripts/launcher.py``, which has
NumPy, scikit-learn or PyTorch imported already) that is SIGKILLed from
outside after a random delay, or kills itself inside a file commit (the n-th
``os.fsync``/``os.replace``: in the middle of writing a checkpoint or the
attempt journal). The next attempt resumes from what is on disk. The final
weights must hash the same as an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("numpy")

SCRIPTS = Path(__file__).parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
from launcher import Launcher  # noqa: E402

pytestmark = pytest.mark.realtime
KILLS = 6
PREEMPTED_EXIT_CODE = 75


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _journal(run_dir: Path) -> dict:
    return json.loads((run_dir / "attempts.json").read_text())


def _steps(log: Path) -> list[tuple[int, int]]:
    if not log.exists():
        return []
    return [(int(p), int(s)) for p, s in (line.split() for line in log.read_text().splitlines())]


@pytest.fixture(scope="module")
def sgd() -> Iterator[Launcher]:
    pytest.importorskip("sklearn")
    launcher = Launcher("train_sgd")
    yield launcher
    launcher.close()


@pytest.fixture(scope="module")
def sgd_reference(sgd: Launcher, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, float]:
    base = tmp_path_factory.mktemp("sgd-reference")
    started = time.monotonic()
    assert sgd.run(base / "run", base / "final.bin") == 0
    return _sha(base / "final.bin"), time.monotonic() - started


def _chaos(
    launcher: Launcher, base: Path, seconds: float, seed: int, extra: dict[str, str] | None = None
) -> dict[str, object]:
    """Kill attempts until KILLS of them died by SIGKILL, then let one finish."""
    rnd = random.Random(seed)
    base.mkdir(parents=True, exist_ok=True)
    run_dir, out, log = base / "run", base / "final.bin", base / "steps.log"
    killed: list[int] = []
    recorded: list[int] = []  # killed attempts whose journal record was committed
    io_kills = timed_kills = 0
    for _ in range(4 * KILLS):
        env = {"RECOVERLY_STEP_LOG": str(log), "RECOVERLY_NO_CRASH_LOOP": "1", **(extra or {})}
        mode = "finish" if len(killed) >= KILLS else rnd.choice(["io", "timed"])
        if mode == "io":
            env["RECOVERLY_KILL_AT_IO"] = str(rnd.randint(1, 30))
        pid = launcher.start(run_dir, out, env)
        if mode == "timed":  # once this attempt is training, after a random delay
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(p == pid for p, _ in _steps(log)):
                time.sleep(0.002)
            time.sleep(rnd.uniform(0.0, 0.15 * seconds))
            launcher.kill(pid)
        status = launcher.wait(pid)
        if status == 0:
            assert mode == "finish", f"the run finished before {KILLS} kills landed"
            break
        assert status == -signal.SIGKILL, f"attempt {pid} ended with {status}"
        killed.append(pid)
        io_kills += mode == "io"
        timed_kills += mode == "timed"
        if any(a["pid"] == pid for a in _journal(run_dir)["attempts"]):
            recorded.append(pid)
    else:
        pytest.fail("the run did not finish")
    journal = _journal(run_dir)
    steps = _steps(log)
    per_step = Counter(step for _, step in steps)
    return {
        "hash": _sha(out),
        "kills": len(killed),
        "io_kills": io_kills,
        "timed_kills": timed_kills,
        "killed": killed,
        "recorded": recorded,
        "journal": journal,
        "steps_total": max(per_step),
        "steps_run": len(steps),
        "steps_redone": len(steps) - len(per_step),
        "resumes": sum(a["start_step"] > 0 for a in journal["attempts"]),
    }


def _check(name: str, result: dict, reference: str) -> None:
    journal = result["journal"]
    crashed = [a["pid"] for a in journal["attempts"] if a["outcome"] == "crashed"]
    print(  # noqa: T201 - the figures are the point of the proof
        f"\n[{name}] kills={result['kills']} (in a file commit: {result['io_kills']}, "
        f"at a random time: {result['timed_kills']}) resumes={result['resumes']} "
        f"steps={result['steps_total']} run={result['steps_run']} redone={result['steps_redone']} "
        f"journal crashes={journal['counts']['crashed']} "
        f"preemptions={journal['counts']['preempted']} "
        f"final sha256 {result['hash'][:16]} reference {reference[:16]} "
        f"match={result['hash'] == reference}"
    )
    assert result["kills"] >= KILLS
    assert result["hash"] == reference
    assert sorted(crashed) == sorted(result["recorded"])
    assert journal["counts"]["crashed"] == len(result["recorded"])
    assert journal["counts"]["preempted"] == 0
    assert journal["attempts"][-1]["outcome"] == "finished"
    assert result["resumes"] >= 1


def test_sgd_and_numpy_resume_byte_identical_after_sigkills(sgd, sgd_reference, tmp_path):
    """SGDClassifier.partial_fit + NumPy logistic regression: >= 6 SIGKILLs, same final bytes."""
    reference, seconds = sgd_reference
    result = _chaos(sgd, tmp_path, seconds, seed=3)
    _check("sklearn+numpy", result, reference)


def test_async_saves_resume_byte_identical_after_sigkills(sgd, sgd_reference, tmp_path):
    """The same program with async_save=True: kills during background writes change nothing."""
    reference, seconds = sgd_reference
    result = _chaos(sgd, tmp_path, seconds, seed=10, extra={"RECOVERLY_ASYNC_SAVE": "1"})
    _check("sklearn+numpy, async saves", result, reference)


@pytest.fixture(scope="module")
def torch_launcher() -> Iterator[Launcher]:
    if importlib.util.find_spec("torch") is None:
        pytest.skip("PyTorch is not installed")
    launcher = Launcher("train_torch")
    yield launcher
    launcher.close()


@pytest.fixture(scope="module")
def torch_reference(
    torch_launcher: Launcher, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, float]:
    base = tmp_path_factory.mktemp("torch-reference")
    started = time.monotonic()
    assert torch_launcher.run(base / "run", base / "final.bin") == 0
    return _sha(base / "final.bin"), time.monotonic() - started


def test_torch_mlp_with_workers_resumes_byte_identical_after_sigkills(
    torch_launcher, torch_reference, tmp_path
):
    """A PyTorch MLP (DataLoader num_workers=2, dropout, accumulation): same final bytes."""
    reference, seconds = torch_reference
    result = _chaos(torch_launcher, tmp_path, seconds, seed=7)
    _check("torch", result, reference)


def test_sigterm_to_the_process_group_with_loader_workers(
    torch_launcher, torch_reference, tmp_path
):
    """SIGTERM to the trainer and its DataLoader workers: exit 75, then an identical finish."""
    reference, _ = torch_reference
    run_dir, out, log = tmp_path / "run", tmp_path / "final.bin", tmp_path / "steps.log"
    env = {"RECOVERLY_STEP_LOG": str(log), "RECOVERLY_STEP_SLEEP": "0.05"}
    pid = torch_launcher.start(run_dir, out, env)
    deadline = time.monotonic() + 30
    while len(_steps(log)) < 7 and time.monotonic() < deadline:  # inside the second epoch
        time.sleep(0.005)
    Launcher.kill(pid, signal.SIGTERM, group=True)
    status = torch_launcher.wait(pid)
    journal = _journal(run_dir)
    print(f"\n[sigterm torch] exit={status} counts={journal['counts']}")  # noqa: T201
    assert status == PREEMPTED_EXIT_CODE
    assert journal["counts"] == {"crashed": 0, "finished": 0, "preempted": 1}
    assert torch_launcher.run(run_dir, out, {"RECOVERLY_STEP_LOG": str(log)}) == 0
    assert _sha(out) == reference


def test_sigterm_saves_exits_with_the_preemption_code_and_resumes(sgd, sgd_reference, tmp_path):
    """SIGTERM: checkpoint within one step, exit 75, counted as a pre-emption; resume finishes."""
    reference, _ = sgd_reference
    run_dir, out, log = tmp_path / "run", tmp_path / "final.bin", tmp_path / "steps.log"
    env = {"RECOVERLY_STEP_LOG": str(log), "RECOVERLY_STEP_SLEEP": "0.02"}
    pid = launcher_pid = sgd.start(run_dir, out, env)
    deadline = time.monotonic() + 30
    while len(_steps(log)) < 10 and time.monotonic() < deadline:
        time.sleep(0.005)
    done_at_signal = len(_steps(log))
    Launcher.kill(pid, signal.SIGTERM, group=False)
    status = sgd.wait(launcher_pid)
    stopped_at = _steps(log)[-1][1]
    journal = _journal(run_dir)
    print(  # noqa: T201 - the figures are the point of the proof
        f"\n[sigterm] steps done at the signal={done_at_signal} checkpoint step={stopped_at} "
        f"exit={status} counts={journal['counts']}"
    )
    assert status == PREEMPTED_EXIT_CODE
    # The step in flight finishes; one more may have ended between reading the log and kill().
    assert stopped_at - done_at_signal <= 2
    last = journal["attempts"][-1]
    assert (last["outcome"], last["reached"]) == ("preempted", stopped_at)
    assert "SIGTERM" in last["reason"]
    assert journal["counts"] == {"crashed": 0, "finished": 0, "preempted": 1}
    assert not out.exists()

    assert sgd.run(run_dir, out, {"RECOVERLY_STEP_LOG": str(log)}) == 0
    second = [step for p, step in _steps(log) if p != pid]
    assert second[0] == stopped_at + 1
    journal = _journal(run_dir)
    assert journal["counts"] == {"crashed": 0, "finished": 1, "preempted": 1}
    assert journal["attempts"][-1]["start_step"] == stopped_at
    assert _sha(out) == reference


def test_processes_crashing_at_the_same_step_are_refused(sgd, tmp_path):
    """Four processes crash at step 10; the fifth is refused with CrashLoopError before step 1."""
    run_dir, out, log = tmp_path / "run", tmp_path / "final.bin", tmp_path / "steps.log"
    env = {"RECOVERLY_STEP_LOG": str(log), "RECOVERLY_CRASH_AT": "10"}
    statuses = [sgd.run(run_dir, out, env) for _ in range(5)]
    journal = _journal(run_dir)
    assert statuses == [1, 1, 1, 1, 1]
    assert [a["outcome"] for a in journal["attempts"]] == ["crashed"] * 4
    assert all("deliberate crash at step 10" in a["reason"] for a in journal["attempts"])
    assert [a["start_step"] for a in journal["attempts"]] == [0, 8, 8, 8]
    assert len({pid for pid, _ in _steps(log)}) == 4  # the refused process ran no step
    error = Path(f"{out}.error").read_text()
    assert error.startswith("CrashLoopError: ")
    assert "crashed 3 times in a row without getting past step 9" in error
    assert "RuntimeError: deliberate crash at step 10" in error
