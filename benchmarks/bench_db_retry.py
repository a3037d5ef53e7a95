"""Per-call overhead of db_retry and ensure_connection on the success path (SQLite, PostgreSQL).

Usage::

    .venv/bin/python benchmarks/bench_db_retry.py            # prints the Markdown section
    .venv/bin/python benchmarks/bench_db_retry.py --write    # and replaces it in RESULTS.md
    .venv/bin/python benchmarks/bench_db_retry.py --calls 500 --repeats 3   # quicker

Every case runs the same unit of work: open a ``Session``, call ``get(db, 1)``
(one ``SELECT ... WHERE id = :id`` through the session), close the session. The
wrappers differ:

* ``bare``: the function itself;
* ``db_retry``: ``@db_retry(max_attempts=3)``;
* ``ensure+db_retry``: ``@ensure_connection @db_retry(...)``, a ping on every checkout;
* ``ensure(5s)+db_retry``: ``@ensure_connection(ping_interval=5.0)``, at most one ping
  per pooled connection per 5 s.

Round trips are counted, not guessed: statements through a ``before_cursor_execute``
listener, pings by wrapping the dialect's ``do_ping`` (the ping runs on the DBAPI
connection, below SQLAlchemy's statement events). Repeats are interleaved; the figure
is the median. Timing uses ``time.perf_counter`` directly (benchmarks are outside the
library's clock rule). PostgreSQL is the local test server (``RECOVERLY_TEST_PG_URL``),
in a schema of its own dropped afterwards; skipped when unreachable.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import write_section
from recoverly.db.retry import db_retry, ensure_connection

PG_URL = os.environ.get(
    "RECOVERLY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
RESULTS = Path(__file__).with_name("RESULTS.md")
QUERY = sa.text("SELECT v FROM bench_items WHERE id = :id")


def get(db: Session, item_id: int) -> int:
    """The unit of work: one primary-key lookup."""
    return int(db.execute(QUERY, {"id": item_id}).scalar_one())


def variants() -> dict[str, Callable[[Session, int], int]]:
    """Return the wrapped forms of :func:`get`, by case name."""
    return {
        "bare": get,
        "db_retry": db_retry(max_attempts=3)(get),
        "ensure+db_retry": ensure_connection(db_retry(max_attempts=3)(get)),
        "ensure(5s)+db_retry": ensure_connection(ping_interval=5.0)(db_retry(max_attempts=3)(get)),
    }


class Counter:
    """Counts statements and pings on one engine."""

    def __init__(self, engine: Any) -> None:
        self.statements = 0
        self.pings = 0
        event.listen(engine, "before_cursor_execute", self._statement)
        original = engine.dialect.do_ping

        def counting_ping(dbapi_connection: Any) -> bool:
            self.pings += 1
            return bool(original(dbapi_connection))

        engine.dialect.do_ping = counting_ping

    def _statement(self, *_: object) -> None:
        self.statements += 1

    def reset(self) -> None:
        """Start counting from zero."""
        self.statements = self.pings = 0


def prepare(url: str) -> Any:
    """Create the engine and the table with one row."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS bench_items"))
        conn.execute(sa.text("CREATE TABLE bench_items (id int PRIMARY KEY, v int)"))
        conn.execute(sa.text("INSERT INTO bench_items VALUES (1, 42)"))
    return engine


def run_once(engine: Any, fn: Callable[[Session, int], int], calls: int) -> float:
    """Return seconds per call of ``calls`` sessions each calling ``fn`` once."""
    started = time.perf_counter()
    for _ in range(calls):
        with Session(engine) as s:
            fn(s, 1)
    return (time.perf_counter() - started) / calls


def measure(name: str, url: str, calls: int, repeats: int) -> list[dict[str, Any]]:
    """Measure every variant on ``url``; return one row per case."""
    engine = prepare(url)
    counter = Counter(engine)
    cases = variants()
    times: dict[str, list[float]] = {case: [] for case in cases}
    for fn in cases.values():  # warm up: pool, statement cache
        run_once(engine, fn, 20)
    for r in range(repeats):
        order = list(cases)[r % len(cases) :] + list(cases)[: r % len(cases)]
        for case in order:
            times[case].append(run_once(engine, cases[case], calls))
    rows = []
    for case, fn in cases.items():
        counter.reset()
        run_once(engine, fn, 100)
        rows.append(
            {
                "db": name,
                "case": case,
                "us": statistics.median(times[case]) * 1e6,
                "statements": counter.statements / 100,
                "pings": counter.pings / 100,
            }
        )
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE bench_items"))
    engine.dispose()
    bare = rows[0]
    for row in rows:
        row["ratio"] = row["us"] / bare["us"]
        row["added"] = row["statements"] + row["pings"] - bare["statements"] - bare["pings"]
    return rows


def pg_reachable() -> bool:
    """Return whether the test PostgreSQL answers."""
    try:
        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception:
        return False
    return True


def wrapper_cost(repeats: int) -> list[tuple[str, float]]:
    """Return ns per call of each wrapper around a function that does no I/O."""

    def touch(_db: Session, item_id: int) -> int:
        return item_id

    cases = {
        "bare": touch,
        "db_retry": db_retry(max_attempts=3)(touch),
        "ensure+db_retry": ensure_connection(db_retry(max_attempts=3)(touch)),
    }
    engine = sa.create_engine("sqlite://")
    n = 100_000
    times: dict[str, list[float]] = {case: [] for case in cases}
    with Session(engine) as s:
        for _ in range(repeats):
            for case, fn in cases.items():
                started = time.perf_counter()
                for _ in range(n):
                    fn(s, 1)
                times[case].append((time.perf_counter() - started) / n * 1e9)
    engine.dispose()
    return [(case, statistics.median(t)) for case, t in times.items()]


def markdown(
    rows: list[dict[str, Any]],
    wrapper_only: list[tuple[str, float]],
    calls: int,
    repeats: int,
) -> str:
    """Return the Markdown section."""
    lines = [
        "## db_retry and ensure_connection overhead (success path)",
        "",
        (
            f"One session per call, one primary-key SELECT; {calls} calls x {repeats} "
            "interleaved repeats, median. `added` = statements + pings per call beyond the "
            f"bare call (Python {sys.version.split()[0]}, SQLAlchemy {sa.__version__})."
        ),
        "",
        "| db | case | us/call | x bare | statements/call | pings/call | added round trips |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['db']} | {r['case']} | {r['us']:.1f} | {r['ratio']:.2f} | "
        f"{r['statements']:.2f} | {r['pings']:.2f} | {r['added']:.2f} |"
        for r in rows
    ]
    lines += [
        "",
        (
            "The ping is the only round trip added (one per checkout, or at most one per "
            "pooled connection per `ping_interval`); `db_retry` adds none on success."
        ),
        "",
        "Wrapper cost alone (a session argument, no I/O in the function), ns per call:",
        "",
        "| case | ns/call | added ns |",
        "| --- | ---: | ---: |",
    ]
    base = wrapper_only[0][1]
    lines += [f"| {case} | {ns:.0f} | {ns - base:.0f} |" for case, ns in wrapper_only]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the Markdown section and optionally write it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure("SQLite", f"sqlite:///{Path(tmp) / 'bench.db'}", args.calls, args.repeats)
    if pg_reachable():
        schema = f"bench_retry_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        sep = "&" if "?" in PG_URL else "?"
        try:
            url = f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
            rows += measure("PostgreSQL", url, args.calls // 4, args.repeats)
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    else:
        print("PostgreSQL not reachable: skipped", file=sys.stderr)
    section = markdown(rows, wrapper_cost(args.repeats), args.calls, args.repeats)
    print(section)
    if args.write:
        write_section(RESULTS, "db-retry", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
