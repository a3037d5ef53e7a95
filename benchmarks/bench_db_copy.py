"""safe_bulk_insert through COPY on PostgreSQL, with bad rows of every kind.

Usage::

    .venv/bin/python benchmarks/bench_db_copy.py            # prints the Markdown section
    .venv/bin/python benchmarks/bench_db_copy.py --write    # and replaces it in RESULTS.md
    .venv/bin/python benchmarks/bench_db_copy.py --rows 20000 --repeats 1   # quicker

Cases, all loading into the same freshly truncated table (unique code, NOT NULL,
CHECK, a foreign key, integer columns; one existing row whose code the "unique"
bad rows repeat) in one process:

* ``clean COPY``: psycopg's ``cursor.copy()`` of the good rows only, one transaction
  (the floor: the database's fastest path, no error handling);
* ``clean executemany``: ``session.execute(insert(Model), rows)`` of the good rows;
* ``safe_bulk_insert, method="copy"`` with 0 %, 0.1 %, 1 % and 10 % bad rows, the
  bad rows spread over five kinds (unique, NOT NULL, CHECK, foreign key, bad type);
* ``row by row, commit each``: INSERT and COMMIT per row, the naive loop (measured
  on a sample, scaled per row, marked *).

Each measured run of safe_bulk_insert is checked: exactly the good rows land.
Repeats are interleaved; the figure is the median.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import write_section
from recoverly.db.bulk import DEFAULT_COPY_BATCH_SIZE, safe_bulk_insert

PG_URL = os.environ.get(
    "RECOVERLY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
RESULTS = Path(__file__).with_name("RESULTS.md")
TARGET_CLEAN_RATIO = 2.0
TARGET_ROW_BY_ROW = 20.0
SHARES = (0.0, 0.001, 0.01, 0.1)
KINDS = ("unique", "not_null", "check", "foreign_key", "bad_type")


class Base(DeclarativeBase):
    pass


class Parent(Base):
    __tablename__ = "copy_parents"
    id: Mapped[int] = mapped_column(primary_key=True)


class Row(Base):
    __tablename__ = "copy_rows"
    __table_args__ = (sa.CheckConstraint("qty >= 0", name="copy_qty_not_negative"),)

    # not AUTO_INCREMENT: MySQL would turn an inserted id 0 into the next number
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    code: Mapped[str] = mapped_column(sa.String(32), unique=True)
    qty: Mapped[int]
    parent_id: Mapped[int] = mapped_column(sa.ForeignKey("copy_parents.id"))
    payload: Mapped[str] = mapped_column(sa.String(64))


def make_rows(n: int, share: float, seed: int = 42) -> tuple[list[dict[str, Any]], set[int]]:
    """``n`` rows, ``round(n * share)`` of them bad, the five kinds in turn."""
    rows = [
        {
            "id": i,
            "code": f"code-{i}",
            "qty": i % 1000,
            "parent_id": 1 + i % 10,
            "payload": f"payload {i:08d}",
        }
        for i in range(n)
    ]
    bad = random.Random(seed).sample(range(n), round(n * share))
    for k, i in enumerate(bad):
        kind = KINDS[k % len(KINDS)]
        change: dict[str, Any] = {
            "unique": {"code": "taken"},  # the row _truncate leaves in the table
            "not_null": {"qty": None},
            "check": {"qty": -1},
            "foreign_key": {"parent_id": 999},
            "bad_type": {"qty": "many"},
        }[kind]
        rows[i] = {**rows[i], **change}
    return rows, set(bad)


def clean_copy(engine: sa.Engine, rows: list[dict[str, Any]]) -> None:
    """The floor: one COPY of the good rows, one commit."""
    keys = list(rows[0])
    with engine.connect() as conn:
        raw: Any = conn.connection.dbapi_connection
        with raw.cursor() as cur, cur.copy(f"COPY copy_rows ({', '.join(keys)}) FROM STDIN") as cp:
            for row in rows:
                cp.write_row([row[k] for k in keys])
        raw.commit()


def clean_executemany(engine: sa.Engine, rows: list[dict[str, Any]]) -> None:
    """A plain bulk INSERT of the good rows."""
    with Session(engine) as s:
        s.execute(sa.insert(Row), rows)
        s.commit()


def safe(engine: sa.Engine, rows: list[dict[str, Any]], bad: set[int]) -> None:
    """safe_bulk_insert through COPY; checks that exactly the good rows landed."""
    with Session(engine) as s:
        inserted, failed = safe_bulk_insert(s, Row, rows, method="copy")
    assert sorted(r["id"] for r, _ in failed) == sorted(bad)
    assert len(inserted) == len(rows) - len(bad)


def row_by_row_commit(engine: sa.Engine, rows: list[dict[str, Any]]) -> None:
    """The naive loop: INSERT and COMMIT each row, roll back a bad one."""
    with Session(engine) as s:
        for row in rows:
            try:
                s.execute(sa.insert(Row), [row])
                s.commit()
            except sa.exc.DBAPIError:  # noqa: PERF203 - the naive loop is what is measured
                s.rollback()


def _truncate(engine: sa.Engine) -> None:
    """Empty the table but for one row whose code the 'unique' bad rows collide with."""
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE copy_rows"))
        conn.execute(
            sa.insert(Row),
            {"id": -1, "code": "taken", "qty": 0, "parent_id": 1, "payload": "existing"},
        )


def run(n: int, repeats: int, sample: int) -> str:
    """Run the benchmark on PostgreSQL and return the Markdown section."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    engine = sa.create_engine(f"{PG_URL}{sep}options=-csearch_path%3D{schema}")
    try:
        Base.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(sa.insert(Parent), [{"id": i} for i in range(1, 11)])
        data = {share: make_rows(n, share) for share in SHARES}
        good = {
            share: [r for i, r in enumerate(rows) if i not in bad]
            for share, (rows, bad) in data.items()
        }
        sample_rows, _ = make_rows(sample, 0.001)
        cases: dict[str, Callable[[], object]] = {
            "clean COPY": lambda: clean_copy(engine, good[0.001]),
            "clean executemany": lambda: clean_executemany(engine, good[0.001]),
        }
        for share in SHARES:
            cases[f"safe {share:.1%}"] = lambda share=share: safe(engine, *data[share])
        cases["row by row, commit each (sample)"] = lambda: row_by_row_commit(engine, sample_rows)
        med = _measure(engine, cases, repeats, truncate=_truncate)
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    return _markdown(n, repeats, sample, med)


MYSQL_URL = os.environ.get("RECOVERLY_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")


def safe_insert(engine: sa.Engine, rows: list[dict[str, Any]], bad: set[int]) -> None:
    """safe_bulk_insert on the INSERT path; checks that exactly the good rows landed."""
    with Session(engine) as s:
        inserted, failed = safe_bulk_insert(s, Row, rows, method="insert")
    assert sorted(r["id"] for r, _ in failed) == sorted(bad)
    assert len(inserted) == len(rows) - len(bad)


def run_mysql(n: int, repeats: int, sample: int) -> str:
    """The same table on MariaDB/MySQL (INSERT path), as Markdown."""
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(MYSQL_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}`"))
    base, _, _ = MYSQL_URL.rpartition("/")
    engine = sa.create_engine(f"{base}/{name}")
    try:
        Base.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(sa.insert(Parent), [{"id": i} for i in range(1, 11)])
        data = {share: make_rows(n, share) for share in SHARES}
        good = [r for i, r in enumerate(data[0.001][0]) if i not in data[0.001][1]]
        sample_rows, _ = make_rows(sample, 0.001)
        cases: dict[str, Callable[[], object]] = {
            "clean executemany": lambda: clean_executemany(engine, good),
        }
        for share in SHARES:
            cases[f"safe {share:.1%}"] = lambda share=share: safe_insert(engine, *data[share])
        cases["row by row, commit each (sample)"] = lambda: row_by_row_commit(engine, sample_rows)
        med = _measure(engine, cases, repeats, truncate=_truncate_mysql)
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE `{name}`"))
        admin.dispose()
    floor = med["clean executemany"]
    naive = med["row by row, commit each (sample)"] / sample * n
    lines = [
        "### The same load on MariaDB (INSERT path)",
        "",
        (
            f'{n:,} rows into the local MariaDB through PyMySQL, `method="insert"` (MySQL has '
            "no COPY), median of {repeats} interleaved runs; the same five kinds of bad rows."
        ).replace("{repeats}", str(repeats)),
        "",
        "| case | seconds | rows/s | vs clean executemany | row by row / case |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for case, t in med.items():
        shown = naive if case.startswith("row by row") else t
        label = "row by row, commit each*" if case.startswith("row by row") else case
        label = label.replace("safe ", "safe_bulk_insert, ").replace("%", " % bad")
        lines.append(
            f"| {label} | {shown:.3f} | {n / shown:,.0f} | {shown / floor:.2f}x | "
            f"{naive / shown:.1f}x |"
        )
    return "\n".join(lines)


def _truncate_mysql(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM copy_rows"))
        conn.execute(
            sa.insert(Row),
            {"id": -1, "code": "taken", "qty": 0, "parent_id": 1, "payload": "existing"},
        )


def _measure(
    engine: sa.Engine,
    cases: dict[str, Callable[[], object]],
    repeats: int,
    truncate: Callable[[sa.Engine], None],
) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in cases}
    names = list(cases)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            truncate(engine)
            started = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - started)
            print(f"  {name}: {times[name][-1]:.3f} s", file=sys.stderr)
    return {k: statistics.median(v) for k, v in times.items()}


def _markdown(n: int, repeats: int, sample: int, med: dict[str, float]) -> str:
    copy = med["clean COPY"]
    naive = med["row by row, commit each (sample)"] / sample * n
    lines = [
        "## Database: safe_bulk_insert through COPY",
        "",
        (
            f"{n:,} rows into PostgreSQL (local server) with psycopg 3, median of {repeats} "
            'interleaved runs, `method="copy"` with the default batch sizes (COPY batches '
            "start at 250 rows and double while no row is bad, up to "
            f"{DEFAULT_COPY_BATCH_SIZE:,}; while rows are bad, about sqrt(100 / bad share)). "
            "Bad rows "
            "are spread over five kinds in turn: unique (existing key), NOT NULL, CHECK, "
            "foreign key, bad type. Clean cases load the good rows of the 0.1 % set. Row by row "
            f"= INSERT + COMMIT per row, measured on {sample:,} rows and scaled (marked *)."
        ),
        "",
        "| case | seconds | rows/s | vs clean COPY | row by row / case |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, t in med.items():
        shown = naive if name.startswith("row by row") else t
        label = "row by row, commit each*" if name.startswith("row by row") else name
        label = label.replace("safe ", "safe_bulk_insert, ").replace("%", " % bad")
        lines.append(
            f"| {label} | {shown:.3f} | {n / shown:,.0f} | {shown / copy:.2f}x | "
            f"{naive / shown:.1f}x |"
        )
    ratio = med["safe 0.1%"] / copy
    speedup = naive / med["safe 0.1%"]
    ok = ratio <= TARGET_CLEAN_RATIO and speedup >= TARGET_ROW_BY_ROW
    lines += [
        "",
        (
            f"Targets at 0.1 % bad rows: within {TARGET_CLEAN_RATIO:.0f}x of a clean COPY of the "
            f"good rows (**{ratio:.2f}x**) and >= {TARGET_ROW_BY_ROW:.0f}x faster than row by "
            f"row with a transaction each (**{speedup:.0f}x**): **{'PASS' if ok else 'MISS'}**."
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the Markdown section, optionally write it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sample", type=int, default=2_000)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--no-mysql", action="store_true", help="skip the MariaDB table")
    args = parser.parse_args(argv)
    section = run(args.rows, args.repeats, args.sample)
    if not args.no_mysql:
        section += "\n\n" + run_mysql(args.rows, args.repeats, args.sample)
    print(section)
    if args.write:
        write_section(RESULTS, "db-copy", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
