"""ResumableRun in one process: exact resumes, positions, cadence, pre-emption, crash loops."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

np = pytest.importorskip("numpy", reason="the training extra needs numpy")

from recoverly.training import (  # noqa: E402
    ArrayState,
    CheckpointManager,
    CrashLoopError,
    Preempted,
    PreemptionGuard,
    ResumableRun,
)

EPOCHS, N, B = 3, 24, 4  # 6 batches an epoch, 18 steps


class Boom(Exception):
    """The injected crash."""


def shuffled(n=N, b=B):
    order = np.random.permutation(n)
    for i in range(0, n, b):
        yield order[i : i + b]


def train(directory, *, crash_at=None, seen=None, every=2, **options):
    """A NumPy loop drawing from numpy, a Generator and random; returns the weights' sha256."""
    options.setdefault("preemption", False)
    run = ResumableRun(directory, seed=1, checkpoint_every=every, **options)
    params = run.register("params", ArrayState(w=np.zeros(3)))
    noise = run.register("noise", np.random.default_rng(5))
    with run:
        for epoch in run.epochs(EPOCHS):
            bias = random.random()  # top of the epoch: replayed on a mid-epoch resume
            for idx in run.batches(shuffled()):
                params["w"] += idx.sum() * noise.normal(size=3) + random.random() + bias
                if seen is not None:
                    seen.append((epoch, idx.tolist()))
                if run.step + 1 == crash_at:
                    raise Boom(f"crash at step {crash_at}")
                run.step_done(loss=float(params["w"][0]))
            params["w"] *= 0.5  # after the batch loop: runs once per epoch
            run.state["closed_epochs"] = run.state.get("closed_epochs", 0) + 1
    return hashlib.sha256(params["w"].tobytes()).hexdigest(), run


def attempts(directory):
    return json.loads((directory / "attempts.json").read_text())


def test_crashes_mid_epoch_and_at_epoch_ends_resume_to_identical_weights(tmp_path):
    """Crashes at several steps (mid-epoch, epoch end, before any checkpoint) change nothing."""
    reference, _ = train(tmp_path / "ref")
    for crash_at in (1, 5, 6, 7, 12, 13, 18):
        with pytest.raises(Boom):
            train(tmp_path / "run", crash_at=crash_at)
    final, run = train(tmp_path / "run")
    assert final == reference
    assert run.state["closed_epochs"] == EPOCHS
    counts = attempts(tmp_path / "run")["counts"]
    assert counts == {"crashed": 7, "finished": 1, "preempted": 0}


def test_resume_skips_consumed_batches_and_keeps_the_shuffle_order(tmp_path):
    """After a crash at step 9 the next process sees exactly the batches not yet done."""
    full: list[tuple[int, list[int]]] = []
    train(tmp_path / "ref", seen=full)
    first: list[tuple[int, list[int]]] = []
    with pytest.raises(Boom):
        train(tmp_path / "run", crash_at=10, every=3, seen=first)
    second: list[tuple[int, list[int]]] = []
    _, run = train(tmp_path / "run", every=3, seen=second)
    assert run.resumed_from == 9
    # steps 1..9 were checkpointed; the 10th batch ran in the crashed process and again here
    assert first == full[:10]
    assert second == full[9:]


def test_resume_restores_position_user_state_and_objects(tmp_path):
    """resume() puts back epoch, step, run.state and the registered arrays."""
    with pytest.raises(Boom):
        train(tmp_path / "run", crash_at=9, every=4)
    run = ResumableRun(tmp_path / "run", preemption=False)
    params = run.register("params", ArrayState(w=np.zeros(3)))
    run.register("noise", np.random.default_rng(0))
    ckpt = run.resume()
    assert ckpt is not None
    assert (ckpt.step, run.step, run.epoch) == (8, 8, 1)
    assert ckpt.state["loop"]["batch"] == 2
    assert run.state == {"closed_epochs": 1}
    assert params["w"].tobytes() == ckpt.state["objects"]["params"]["w"].tobytes()
    assert ckpt.metrics == {"loss": float(params["w"][0])}
    run.finish()


def test_a_finished_run_runs_no_more_epochs(tmp_path):
    """Running a finished run again yields no epoch and saves nothing new."""
    first, _ = train(tmp_path / "run")
    steps_before = [c.step for c in CheckpointManager(tmp_path / "run" / "checkpoints").list()]
    again, run = train(tmp_path / "run")
    assert again == first
    assert run.step == EPOCHS * N // B
    assert [c.step for c in CheckpointManager(tmp_path / "run" / "checkpoints").list()] == (
        steps_before
    )


def test_step_done_once_per_epoch_without_batches_resumes_at_the_next_epoch(tmp_path):
    """The seeds' shape (one step per epoch, no batches()) does not repeat a finished epoch."""
    ran: list[int] = []

    def epochs(crash_in=None):
        with ResumableRun(tmp_path, checkpoint_every=1, preemption=False) as run:
            for epoch in run.epochs(5):
                if epoch == crash_in:
                    raise Boom
                ran.append(epoch)
                run.state["best"] = max(run.state.get("best", 0.0), epoch * 0.1)
                run.step_done(score=epoch * 0.1)
            return run

    with pytest.raises(Boom):
        epochs(crash_in=3)
    run = epochs()
    assert ran == [0, 1, 2, 3, 4]
    assert run.state["best"] == pytest.approx(0.4)


def test_checkpoints_follow_the_injected_clock(tmp_path, clock):
    """checkpoint_every_seconds saves when the clock has advanced that far, not before."""
    run = ResumableRun(
        tmp_path, checkpoint_every=None, checkpoint_every_seconds=10, clock=clock, preemption=False
    )
    saved = []
    for _epoch in run.epochs(1):
        for _ in run.batches(range(6)):
            clock.advance(4)
            saved.append(run.step_done())
    run.finish()
    assert saved == [False, False, True, False, False, True]
    steps = [c.step for c in CheckpointManager(tmp_path / "checkpoints", keep_last=None).list()]
    assert steps[-1] == 6


def test_batches_twice_in_one_epoch_is_refused(tmp_path):
    """A second batches() in the same epoch raises instead of corrupting the position."""
    run = ResumableRun(tmp_path, preemption=False)
    for _epoch in run.epochs(1):
        list(run.batches([1, 2]))
        with pytest.raises(RuntimeError, match="once per epoch"):
            list(run.batches([3]))
    run.finish()


def test_preemption_request_saves_raises_and_is_counted(tmp_path):
    """A requested stop checkpoints that step, raises Preempted(75) and is not a crash."""
    guard = PreemptionGuard()
    run = ResumableRun(tmp_path, checkpoint_every=100, preemption=guard)
    with pytest.raises(Preempted) as caught, run:
        for _epoch in run.epochs(2):
            for _ in run.batches(range(5)):
                if run.step == 3:
                    guard.request()
                run.step_done()
    assert (caught.value.code, caught.value.step) == (75, 4)
    assert CheckpointManager(tmp_path / "checkpoints").load_latest().step == 4
    journal = attempts(tmp_path)
    assert journal["counts"] == {"crashed": 0, "finished": 0, "preempted": 1}
    resumed = ResumableRun(tmp_path, preemption=False)
    seen = []
    for _epoch in resumed.epochs(2):
        seen.extend(resumed.batches(range(5)))
        resumed.step_done()
    resumed.finish()
    assert resumed.resumed_from == 4
    assert seen == [4, 0, 1, 2, 3, 4]


def test_crash_loop_is_refused_with_the_history(tmp_path):
    """Crashing at the same step again and again stops with CrashLoopError saying why."""
    for _ in range(4):  # the first attempt gets to step 5; three restarts get no further
        with pytest.raises(Boom):
            train(tmp_path, crash_at=6, max_restarts_without_progress=3)
    with pytest.raises(CrashLoopError) as caught:
        train(tmp_path, crash_at=6, max_restarts_without_progress=3)
    err = caught.value
    assert "crashed 3 times in a row without getting past step 5" in str(err)
    assert "Boom: crash at step 6" in str(err)
    assert [a.outcome for a in err.history] == ["crashed"] * 4
    assert err.stuck_at == 5
    # the refusal itself is not an attempt
    assert len(attempts(tmp_path)["attempts"]) == 4


def test_reset_crash_loop_lets_a_fixed_run_finish(tmp_path):
    """After reset_crash_loop() the run starts again and finishes like an uninterrupted one."""
    reference, _ = train(tmp_path / "ref")
    for _ in range(3):
        with pytest.raises(Boom):
            train(tmp_path / "run", crash_at=6, max_restarts_without_progress=2)
    with pytest.raises(CrashLoopError):
        train(tmp_path / "run", max_restarts_without_progress=2)
    ResumableRun(tmp_path / "run").reset_crash_loop()
    final, _ = train(tmp_path / "run", max_restarts_without_progress=2)
    assert final == reference


def test_progress_between_crashes_is_not_a_loop(tmp_path):
    """Crashes that each get further never trip the detector."""
    for crash_at in (3, 5, 7, 9, 11):
        with pytest.raises(Boom):
            train(tmp_path, crash_at=crash_at, max_restarts_without_progress=1)
    final, _ = train(tmp_path, max_restarts_without_progress=1)
    assert final == train(tmp_path / "ref")[0]


def test_async_saves_resume_identically(tmp_path):
    """With async_save=True a crash still resumes to the same weights."""
    reference, _ = train(tmp_path / "ref")
    with pytest.raises(Boom):
        train(tmp_path / "run", crash_at=11, async_save=True)
    final, _ = train(tmp_path / "run", async_save=True)
    assert final == reference


def test_statistics_and_repr_show_position_and_history(tmp_path):
    """statistics() counts attempts and crashes; repr shows them."""
    with pytest.raises(Boom):
        train(tmp_path, crash_at=4)
    _, run = train(tmp_path)
    stats = run.statistics()
    assert (stats.step, stats.epoch, stats.attempt, stats.crashes, stats.preemptions) == (
        18,
        3,
        2,
        1,
        0,
    )
    assert stats.resumed_from == 2
    assert "step=18" in repr(run)
    assert "crashes=1" in repr(run)
    assert [a.outcome for a in run.history] == ["crashed", "finished"]


def test_register_refuses_duplicates_and_stateless_objects(tmp_path):
    """register() fails at once for a taken name or an object it cannot save."""
    run = ResumableRun(tmp_path, preemption=False)
    run.register("a", ArrayState())
    with pytest.raises(ValueError, match="already registered"):
        run.register("a", ArrayState())
    with pytest.raises(TypeError, match="state_dict"):
        run.register("b", object())


def test_bad_arguments_are_reported_together(tmp_path):
    """Every bad argument is named in one exception."""
    with pytest.raises(TypeError) as caught:
        ResumableRun(tmp_path, checkpoint_every=0, keep_last=0, async_save="yes", preemption="no")
    message = str(caught.value)
    for part in ("checkpoint_every", "keep_last", "async_save", "preemption"):
        assert part in message
    with pytest.raises(ValueError, match="checkpoint_every_seconds"):
        ResumableRun(tmp_path, checkpoint_every_seconds=-1)


def test_objects_with_get_state_are_state_not_generators(tmp_path):
    """A trainer with get_state()/load_state() (the seeds' shape) is saved at checkpoints only."""

    class Trainer:
        def __init__(self):
            self.weights = [0.0]

        def get_state(self):
            return {"weights": list(self.weights)}

        def load_state(self, state):
            self.weights = list(state["weights"])

    def go(crash_in=None):
        trainer = Trainer()
        with ResumableRun(tmp_path, checkpoint_every=1, preemption=False) as run:
            run.register("trainer", trainer)
            for epoch in run.epochs(4):
                if epoch == crash_in:
                    raise Boom
                trainer.weights.append(trainer.weights[-1] + epoch)
                run.step_done()
        return trainer

    with pytest.raises(Boom):
        go(crash_in=2)
    assert go().weights == [0.0, 0.0, 1.0, 3.0, 6.0]


def test_checkpoint_after_finish_is_refused(tmp_path):
    """A finished run saves nothing more: checkpoint() raises and the history stays closed."""
    run = ResumableRun(tmp_path, preemption=False)
    for _epoch in run.epochs(1):
        run.step_done()
    run.finish()
    run.finish()  # idempotent
    with pytest.raises(RuntimeError, match="has ended"):
        run.checkpoint()
    assert [a.outcome for a in run.history] == ["finished"]


def test_checkpoints_can_live_in_another_store(tmp_path):
    """store=FsspecStore(...) keeps checkpoints there; the run still resumes exactly."""
    pytest.importorskip("fsspec")
    from recoverly.training import FsspecStore

    reference, _ = train(tmp_path / "ref")
    url = f"memory://recoverly-run-{tmp_path.name}"
    with pytest.raises(Boom):
        train(tmp_path / "run", crash_at=8, store=FsspecStore(url))
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert [c.step for c in CheckpointManager(FsspecStore(url)).list()][-1] == 6
    final, run = train(tmp_path / "run", store=FsspecStore(url))
    assert final == reference
    assert run.resumed_from == 6


def test_one_run_object_at_a_time_in_a_process(tmp_path):
    """A second run on a running directory is refused until the first one ends."""
    from recoverly.training import RunInUseError

    first = ResumableRun(tmp_path, preemption=False)
    first.resume()
    with pytest.raises(RunInUseError, match="already running in this process"):
        ResumableRun(tmp_path, preemption=False).resume()
    first.finish()
    again = ResumableRun(tmp_path, preemption=False)
    again.resume()
    again.finish()
    assert [a.outcome for a in again.history] == ["finished", "finished"]


def test_another_process_holding_the_run_is_named_and_its_death_frees_it(tmp_path):
    """While a process runs the directory others are refused; SIGKILL frees it (a crash)."""
    import signal
    import subprocess
    import sys

    from recoverly.training import RunInUseError

    code = (
        "import sys\n"
        "from recoverly.training import ResumableRun\n"
        f"run = ResumableRun({str(tmp_path)!r}, preemption=False)\n"
        "run.resume()\n"
        "print('running', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "running"
        with pytest.raises(RunInUseError) as caught:
            ResumableRun(tmp_path, preemption=False).resume()
        assert caught.value.pid == holder.pid
        assert f"running in process {holder.pid}" in str(caught.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        holder.stdin.close()
        holder.stdout.close()
    run = ResumableRun(tmp_path, preemption=False)
    run.resume()
    run.finish()
    assert [a.outcome for a in run.history] == ["crashed", "finished"]
