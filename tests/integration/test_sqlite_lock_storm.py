"""SQLite lock storm: several processes write one file through db_retry; every write lands."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

sa = pytest.importorskip("sqlalchemy")

PROCESSES = 4
WRITES = 25
DEADLINE = 10.0


def writer(path: str, worker: int, writes: int) -> int:
    """Write ``writes`` rows through db_retry; return the number of retries it needed."""
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
        db.commit()

    with Session(engine) as s:
        for n in range(writes):
            write(s, n)
    engine.dispose()
    return len(retries)


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
    started = time.monotonic()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(PROCESSES) as pool:
        results = [pool.apply_async(writer, (str(path), w, WRITES)) for w in range(PROCESSES)]
        retries = sum(result.get(timeout=30) for result in results)
    elapsed = time.monotonic() - started
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM log")).scalar()
        total = conn.execute(sa.text("SELECT total FROM counter")).scalar()
    engine.dispose()
    assert rows == PROCESSES * WRITES
    assert total == PROCESSES * WRITES
    assert elapsed < DEADLINE
    assert retries > 0  # the writers really did collide
