"""SQLite lock storm: several processes write one file through db_retry; every write lands."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

sa = pytest.importorskip("sqlalchemy")

PROCESSES = 4
WRITES = 25
DEADLINE = 10.0


def writer(path: str, worker: int, writes: int, barrier: Any) -> tuple[int, float]:
    """Write ``writes`` rows through db_retry; return (retries needed, seconds taken).

    The writers start together (``barrier``) and hold the write lock for a few
    milliseconds per transaction, so they collide however the machine schedules them.
    """
    from sqlalchemy.orm import Session

    from recoverly._core.clock import SystemClock
    from recoverly.db.retry import db_retry

    # A 1 ms busy timeout: contention surfaces as "database is locked" for db_retry.
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.001})

    retries: list[int] = []
    policy = db_retry(
        max_attempts=None,
        delay=0.002,
        max_delay=0.05,
        jitter=True,
        deadline=DEADLINE,
        on_retry=lambda *_: retries.append(1),
        clock=SystemClock(),
    )

    @policy
    def write(db: Session, n: int) -> None:
        db.execute(sa.text("INSERT INTO log (worker, n) VALUES (:w, :n)"), {"w": worker, "n": n})
        db.execute(sa.text("UPDATE counter SET total = total + 1"))
        time.sleep(0.003)  # hold the write lock: the others must wait for it
        db.commit()

    barrier.wait(timeout=30)
    started = time.monotonic()
    with Session(engine) as s:
        for n in range(writes):
            write(s, n)
    engine.dispose()
    return len(retries), time.monotonic() - started


@pytest.mark.integration
@pytest.mark.realtime
def test_every_write_of_four_processes_lands_within_the_deadline(tmp_path: Path) -> None:
    """4 processes x 25 transactions on one SQLite file: 100 rows, counter 100, no loss."""
    path = tmp_path / "storm.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE log (worker int, n int, PRIMARY KEY (worker, n))"))
        conn.execute(sa.text("CREATE TABLE counter (total int)"))
        conn.execute(sa.text("INSERT INTO counter VALUES (0)"))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(PROCESSES) as pool:
        barrier = manager.Barrier(PROCESSES)
        results = [
            pool.apply_async(writer, (str(path), w, WRITES, barrier)) for w in range(PROCESSES)
        ]
        outcomes = [result.get(timeout=45) for result in results]
    retries = sum(r for r, _ in outcomes)
    elapsed = max(t for _, t in outcomes)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM log")).scalar()
        total = conn.execute(sa.text("SELECT total FROM counter")).scalar()
    engine.dispose()
    assert rows == PROCESSES * WRITES
    assert total == PROCESSES * WRITES
    assert elapsed < DEADLINE
    assert retries > 0  # the writers really did collide
