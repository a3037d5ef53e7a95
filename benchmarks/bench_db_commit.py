"""What resolving lost COMMITs costs a writing transaction on PostgreSQL.

Usage::

    .venv/bin/python benchmarks/bench_db_commit.py            # prints the Markdown section
    .venv/bin/python benchmarks/bench_db_commit.py --write    # and replaces it in RESULTS.md

Every case runs the same writing unit (one ``UPDATE`` of one row) as a whole
transaction, ``calls`` times:

* ``hand-written``: ``with Session(engine) as s, s.begin(): s.execute(update)``;
* ``run_transaction, no resolution``: ``resolve_commits=False``;
* ``run_transaction, pg_xact_status``: the default (the xid is read before COMMIT);
* ``run_transaction, commit marker``: ``commit_marker=True`` (a token row per unit).

Statements per unit are counted with a ``before_cursor_execute`` listener. Repeats
are interleaved; the figure is the median. PostgreSQL is the local test server
(``RECOVERLY_TEST_PG_URL``), in a schema of its own dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import write_section
from recoverly.db import install_commit_markers, run_transaction

PG_URL = os.environ.get(
    "RECOVERLY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
RESULTS = Path(__file__).with_name("RESULTS.md")
UPDATE = sa.text("UPDATE bench_counter SET n = n + 1 WHERE id = 1")


def unit(session: Session) -> None:
    """The writing unit of work."""
    session.execute(UPDATE)


def cases(engine: Any) -> dict[str, Callable[[], None]]:
    """The four ways to run the unit, by name."""
    factory = sessionmaker(engine)

    def hand() -> None:
        with Session(engine) as s, s.begin():
            unit(s)

    return {
        "hand-written": hand,
        "run_transaction, no resolution": lambda: run_transaction(
            factory, unit, resolve_commits=False
        ),
        "run_transaction, pg_xact_status": lambda: run_transaction(factory, unit),
        "run_transaction, commit marker": lambda: run_transaction(
            factory, unit, commit_marker=True
        ),
    }


def run(calls: int, repeats: int, url: str = PG_URL) -> str:
    """Measure and return the Markdown section."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in url else "?"
    engine = sa.create_engine(f"{url}{sep}options=-csearch_path%3D{schema}")
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE bench_counter (id int PRIMARY KEY, n int)"))
            conn.execute(sa.text("INSERT INTO bench_counter VALUES (1, 0)"))
        install_commit_markers(engine)
        named = cases(engine)
        statements: dict[str, float] = {}
        seen: list[int] = []
        event.listen(engine, "before_cursor_execute", lambda *_: seen.append(1))
        for name, fn in named.items():  # warm up and count statements
            for _ in range(20):
                fn()
            seen.clear()
            for _ in range(50):
                fn()
            statements[name] = len(seen) / 50
        times: dict[str, list[float]] = {name: [] for name in named}
        order = list(named)
        for r in range(repeats):
            for name in order[r % len(order) :] + order[: r % len(order)]:
                started = time.perf_counter()
                for _ in range(calls):
                    named[name]()
                times[name].append((time.perf_counter() - started) / calls)
        with engine.connect() as conn:
            total = conn.execute(sa.text("SELECT n FROM bench_counter")).scalar_one()
        assert total == len(named) * (70 + repeats * calls)  # every unit committed once
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    med = {name: statistics.median(t) for name, t in times.items()}
    floor = med["hand-written"]
    base = med["run_transaction, no resolution"]
    lines = [
        "## Database: resolving lost COMMITs (run_transaction)",
        "",
        (
            f"One writing unit (an UPDATE of one row) as a whole transaction on the local "
            f"PostgreSQL, {calls} units per run, median of {repeats} interleaved runs."
        ),
        "",
        "| case | us per unit | vs hand-written | vs no resolution | statements per unit |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, t in med.items():
        lines.append(
            f"| {name} | {t * 1e6:.0f} | {t / floor:.2f}x | {t / base:.2f}x | "
            f"{statements[name]:.0f} |"
        )
    lines += [
        "",
        (
            "The xid read is one extra statement per writing unit (none for a unit that "
            "wrote nothing); a commit marker is one INSERT per unit (plus one "
            "`CONNECTION_ID()`/`pg_backend_pid()` per pooled connection)."
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the Markdown section, optionally write it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    section = run(args.calls, args.repeats)
    print(section)
    if args.write:
        write_section(RESULTS, "db-commit", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
