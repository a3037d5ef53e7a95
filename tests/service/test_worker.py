"""The service's worker trains each run in a worker process, which a kill really ends (SIGKILL)."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sklearn")

from service_support import SMALL, service, wait_done, wait_for, wait_worker_idle

from recoverly import events as ev
from recoverly.service import worker_process as wp
from recoverly.service.faults import DATA, KILL, FaultInjector, FaultPlan
from recoverly.service.jobs import fit
from recoverly.service.schemas import TrainConfig
from recoverly.service.supervision import WorkerExit
from recoverly.training import CheckpointManager
from recoverly.training.storage import MANIFEST

REFERENCE = fit(TrainConfig(**SMALL)).model.weights_hash()  # 30 steps, a checkpoint every 5


def _on_interrupted(client: Any, seen: list[Any], died: threading.Event) -> None:
    """Record what the checkpoint directory held at each death, before the next process starts."""
    service_ = client.app.state.service
    original = service_.worker.on_interrupted

    def look(run_id: int, ended: WorkerExit) -> None:
        directory = service_.job.checkpoints_of(run_id)
        listing = {p.name: sorted(f.name for f in p.iterdir()) for p in directory.iterdir()}
        try:
            os.kill(ended.pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        with CheckpointManager(directory) as manager:  # what the next process will load
            latest = manager.load_latest()
        seen.append((ended, alive, listing, latest.step if latest else None))
        original(run_id, ended)
        died.set()

    service_.worker.on_interrupted = look


def test_a_kill_in_a_checkpoint_write_sigkills_the_process_and_keeps_the_previous_one(tmp_path):
    """Killed at its 10th step's commit: exit -9, the step-10 entry never appears, step 5 loads."""
    faults = FaultInjector(FaultPlan(kill_after_steps=(10,)))
    seen: list[Any] = []
    died = threading.Event()
    with service(tmp_path, faults=faults) as client:
        _on_interrupted(client, seen, died)
        run_id = client.post("/train", json=SMALL).json()["id"]
        # No request until then: GET /models/{id} lists checkpoints, which cleans up too.
        assert died.wait(30)
        done = wait_done(client, run_id)
        worker = wait_worker_idle(client)
        directory = client.app.state.service.job.checkpoints_of(run_id)
    [(ended, alive, listing, loadable)] = seen
    assert ended.returncode == -signal.SIGKILL  # the kernel's verdict, from waitpid
    assert ended.signal == "SIGKILL"
    assert ended.killed
    assert not alive  # gone and reaped
    assert ended.pid != os.getpid()
    assert (ended.last_step, ended.in_checkpoint_write) == (10, True)
    # The write was cut between its files and its commit: staged out of sight, no manifest.
    staged = [name for name in listing if name.startswith(".tmp-step-000000000010-")]
    assert len(staged) == 1
    assert f"-{ended.pid}-" in staged[0]
    assert MANIFEST not in listing[staged[0]]
    assert listing[staged[0]]  # the data files were written
    assert sorted(name for name in listing if name.startswith("step-")) == ["step-000000000005"]
    assert loadable == 5
    # A new process resumed at step 6, cleaned the leftover up, and finished the same model.
    assert [(e["returncode"], e["first_step"]) for e in worker["exits"]] == [(-9, 1), (0, 6)]
    assert worker["exits"][1]["pid"] != ended.pid
    assert done["status"] == "completed"
    assert done["resumes"] == 1
    assert done["error"] is None
    assert done["weights_sha256"] == REFERENCE
    assert not [p.name for p in Path(directory).iterdir() if p.name.startswith(".")]


def _first_hits(seed: int, rate: float, count: int) -> list[int]:
    """The call numbers a part seeded with ``seed`` injects into first (1-based)."""
    rng = random.Random(seed)
    return [n for n in range(1, 1000) if rng.random() < rate][:count]


def test_fault_counts_of_a_killed_worker_process_reach_the_service_process(tmp_path):
    """Data faults injected in a process later SIGKILLed are counted and relayed as events."""
    plan = FaultPlan(data_fail_rate=0.3, data_fail_max=2, kill_after_steps=(12,), seed=1)
    assert _first_hits(2, 0.3, 2) == [3, 4]  # both within the first process's loads
    faults = FaultInjector(plan)
    seen: list[object] = []
    ev.subscribe(seen.append, (ev.ChaosInjected, ev.RetryScheduled))
    try:
        with service(tmp_path, faults=faults) as client:
            run_id = client.post("/train", json=SMALL).json()["id"]
            done = wait_done(client, run_id)
            worker = wait_worker_idle(client)
    finally:
        ev.unsubscribe(seen.append)
    first, second = (e["pid"] for e in worker["exits"])
    assert worker["exits"][0]["returncode"] == -signal.SIGKILL
    reported = faults.workers()
    assert reported[first][DATA][1] == 2  # reported by the process before its death
    assert reported[second][DATA][1] == 0  # the cap was used up: the next one got none left
    assert faults.statistics(DATA).injected == 2
    assert faults.counts() == {DATA: 2, KILL: 1}
    injected = [e.name for e in seen if isinstance(e, ev.ChaosInjected)]
    assert sorted(injected) == [DATA, DATA, KILL]
    retried = [e.name for e in seen if isinstance(e, ev.RetryScheduled) and e.name == "load_batch"]
    assert retried == ["load_batch", "load_batch"]
    assert done["weights_sha256"] == REFERENCE


def test_stop_ends_a_running_worker_process_and_leaves_the_run_resumable(tmp_path):
    """A stop that outlasts its timeout ends the process (SIGTERM); the run stays resumable."""
    with service(tmp_path, training_step_delay=0.2) as client:
        run_id = client.post("/train", json=SMALL).json()["id"]

        def training() -> bool:
            progress = client.get(f"/models/{run_id}").json()["progress"]
            return bool(progress and progress["step"] >= 1)

        wait_for(training)
        worker = client.app.state.service.worker
        worker.stop(timeout=0.1)
        [ended] = worker.exits
        status = client.get(f"/models/{run_id}").json()["status"]
    assert ended.returncode == -signal.SIGTERM
    assert ended.signal == "SIGTERM"
    assert not ended.killed
    assert status == "interrupted"  # unfinished(): queued again when the service starts


class _Unpicklable(Exception):
    """An exception that refuses to be pickled (like some drivers' errors)."""

    def __reduce__(self):
        raise TypeError("not picklable")


def test_a_relayed_event_keeps_its_fields_and_replaces_an_unpicklable_exception():
    """Events go over the pipe as they are; an exception that cannot be pickled becomes text."""
    here, there = multiprocessing.Pipe(duplex=True)
    relay = wp._relay_events(wp._Link(here), None)
    relay(ev.RetryScheduled("load_batch", 1, ConnectionError("reset"), 0.01))
    relay(ev.RetryScheduled("db", 2, _Unpicklable("driver state"), 0.2))
    kept = there.recv()
    replaced = there.recv()
    here.close()
    there.close()
    assert kept[0] == wp.EVENT
    assert kept[1].name == "load_batch"
    assert (type(kept[1].exception), str(kept[1].exception)) == (ConnectionError, "reset")
    event = replaced[1]
    assert (event.name, event.attempt, event.delay) == ("db", 2, 0.2)
    assert isinstance(event.exception, wp.WorkerError)
    assert str(event.exception) == "_Unpicklable: driver state"
