"""The service's faults are recoverly.chaos parts: seeded, scheduled, switched for every thread."""

from __future__ import annotations

import random
import sqlite3
import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sklearn")

import sqlalchemy as sa
from service_support import SMALL
from sqlalchemy.exc import DisconnectionError

from recoverly import chaos
from recoverly import events as ev
from recoverly.service.faults import DATA, DB, KILL, FaultInjector, FaultPlan, WorkerKilled
from recoverly.service.jobs import FitResult, fit
from recoverly.service.schemas import TrainConfig
from recoverly.training import CheckpointManager

CONFIG = TrainConfig(**SMALL)  # 30 steps, a checkpoint every 5


def _train_to_the_end(
    directory: Path, plan: FaultPlan
) -> tuple[list[tuple[str, int]], FitResult, FaultInjector]:
    """Train like the worker does (killed: start again from the newest checkpoint).

    Returns every injection as (part name, the part's call number), the fit, the injector.
    """
    faults = FaultInjector(plan)
    by_name = {part.name: part for part in faults.parts}
    trace: list[tuple[str, int]] = []

    def seen(event: object) -> None:
        if isinstance(event, ev.ChaosInjected):  # on the training thread: calls is this call's
            trace.append((event.name, by_name[event.name].statistics().calls))

    ev.subscribe(seen)
    try:
        with CheckpointManager(directory, keep_last=3) as checkpoints:
            for _life in range(5):
                try:
                    result = fit(CONFIG, checkpoints=checkpoints, faults=faults)
                    break
                except WorkerKilled:
                    continue
            else:
                pytest.fail("the worker was killed more often than planned")
    finally:
        ev.unsubscribe(seen)
    return trace, result, faults


def _first_hits(seed: int, rate: float, count: int) -> list[int]:
    """The call numbers a part seeded with ``seed`` injects into first (1-based)."""
    rng = random.Random(seed)
    hits = [n for n in range(1, 10_000) if rng.random() < rate]
    return hits[:count]


def test_a_seed_injects_the_same_faults_at_the_same_calls_twice(tmp_path):
    """Same plan, same seed: same data failures and kills; the model equals a fault-free fit."""
    plan = FaultPlan(data_fail_rate=0.15, data_fail_max=3, kill_after_steps=(7, 23), seed=11)
    first, result, faults = _train_to_the_end(tmp_path / "a", plan)
    second, again, _ = _train_to_the_end(tmp_path / "b", plan)
    assert first == second
    # The data part is chaos.fault(0.15, ..., seed=12, max_injections=3): its first three hits.
    assert [n for name, n in first if name == DATA] == _first_hits(12, 0.15, 3)
    # The kill part is chaos.fault(0, WorkerKilled, at=(7, 23)): exactly those steps.
    assert [n for name, n in first if name == KILL] == [7, 23]
    assert faults.counts() == {DATA: 3, KILL: 2}
    assert faults.db.statistics().calls == 0  # not installed on any engine
    reference = fit(CONFIG)
    assert result.model.weights_hash() == reference.model.weights_hash()
    assert again.model.weights_hash() == reference.model.weights_hash()
    assert result.resumed_from == 20  # resumed last from the checkpoint before the 2nd kill


def test_another_seed_fails_other_loads(tmp_path):
    """The seed, not a fixed counter, decides which batch loads fail."""
    one, _, _ = _train_to_the_end(tmp_path / "a", FaultPlan(data_fail_rate=0.15, seed=1))
    two, _, _ = _train_to_the_end(tmp_path / "b", FaultPlan(data_fail_rate=0.15, seed=2))
    assert [n for _, n in one] == _first_hits(2, 0.15, len(one))
    assert [n for _, n in two] == _first_hits(3, 0.15, len(two))
    assert one != two


def test_db_part_invalidates_the_connection_under_the_statement(tmp_path, events):
    """A drop closes the driver connection and raises DisconnectionError; a new one follows."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'faults.db'}")
    faults = FaultInjector(FaultPlan(db_drop_rate=1.0, db_drop_max=1, seed=0))
    faults.install(engine)
    try:
        with engine.connect() as conn:
            dropped = conn.connection.dbapi_connection
            with pytest.raises(DisconnectionError, match=r"dropped \(injected\)"):
                conn.execute(sa.text("SELECT 1"))
            assert conn.invalidated
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 2")).scalar() == 2
            assert conn.connection.dbapi_connection is not dropped
    finally:
        faults.uninstall(engine)
        engine.dispose()
    assert isinstance(dropped, sqlite3.Connection)
    with pytest.raises(sqlite3.ProgrammingError, match="closed database"):
        dropped.execute("SELECT 1")
    assert faults.db.statistics() == chaos.ChaosStatistics(calls=2, injected=1)
    assert [e for e in events if isinstance(e, ev.ChaosInjected)] == [ev.ChaosInjected(DB, "fault")]


def test_switched_off_parts_inject_nothing_and_enable_reaches_other_threads(
    monkeypatch: pytest.MonkeyPatch,
):
    """Off: nothing injected or counted, even in ``chaos.enabled()``; ``enable()`` spans threads."""
    monkeypatch.setattr(chaos, "ENV_ENABLED", True)  # as with RECOVERLY_CHAOS=1
    faults = FaultInjector(FaultPlan(data_fail_rate=1.0), enabled=False)
    with chaos.enabled():
        faults.data_load()
        faults.after_step(1, 1)
    assert [part.statistics() for part in faults.parts] == [chaos.ChaosStatistics(0, 0)] * 3

    failures: list[BaseException] = []

    def load_on_a_worker_thread() -> None:
        try:
            faults.data_load()
        except ConnectionError as exc:
            failures.append(exc)

    faults.enable()
    worker = threading.Thread(target=load_on_a_worker_thread)
    worker.start()
    worker.join()
    faults.disable()
    faults.data_load()  # off again: passes
    assert [str(e) for e in failures] == ["data source reset the connection (injected)"]
    assert faults.counts() == {DATA: 1}
    assert faults.data.statistics().calls == 1


def test_plan_becomes_the_parts_settings():
    """Each FaultPlan field is a chaos setting of one part; the parts are named by kind."""
    plan = FaultPlan(
        db_drop_rate=0.1,
        db_drop_max=3,
        data_fail_rate=0.06,
        data_fail_max=4,
        kill_after_steps=(71, 37),
        seed=7,
    )
    faults = FaultInjector(plan)
    settings = [
        (part.name, part.rate, part.max_injections, part.at, part.seed, part.enabled)
        for part in faults.parts
    ]
    assert settings == [
        (DB, 0.1, 3, (), 7, True),
        (DATA, 0.06, 4, (), 8, True),
        (KILL, 0.0, None, (37, 71), None, True),
    ]
    assert [type(part.exception()) for part in faults.parts] == [
        DisconnectionError,
        ConnectionError,
        WorkerKilled,
    ]


def test_worker_plan_hands_a_new_worker_process_what_is_left_of_each_cap():
    """A worker process's parts get the plan's rates and seed, minus the injections made."""
    plan = FaultPlan(
        db_drop_rate=0.1,
        db_drop_max=3,
        data_fail_rate=0.06,
        data_fail_max=3,
        kill_after_steps=(5,),
        seed=7,
    )
    faults = FaultInjector(plan)
    assert faults.worker_plan() == FaultPlan(0.1, 3, 0.06, 3, (), 7)  # no kills: decided here
    faults.record_worker(101, {DB: (40, 2), DATA: (20, 1)})
    faults.record_worker(101, {DB: (35, 1), DATA: (25, 3)})  # a stale report: counters only grow
    assert faults.workers() == {101: {DB: (40, 2), DATA: (25, 3)}}
    left = faults.worker_plan()
    assert (left.db_drop_rate, left.db_drop_max) == (0.1, 1)
    assert (left.data_fail_rate, left.data_fail_max) == (0.0, None)  # used up: inject no more
    assert left.seed == 7
    # The worker processes' counters add up with this process's own.
    faults.record_worker(102, {DB: (5, 1)})
    faults.data_load()  # this process's own data part: nothing injected, one call
    assert faults.statistics(DB) == chaos.ChaosStatistics(calls=45, injected=3)
    assert faults.statistics(DATA) == chaos.ChaosStatistics(calls=26, injected=3)
    assert faults.counts() == {DB: 3, DATA: 3}
    assert faults.counters() == {DB: (0, 0), DATA: (1, 0)}
