"""safe_bulk_insert: insert many rows fast, and keep the good ones when some are bad.

::

    inserted, failed = safe_bulk_insert(db, Prediction, records, batch_size=500)
    for record, error in failed:
        log.error("Record: %s, Error: %s", record, error)

**Fast path.** On PostgreSQL with psycopg 3, each batch is one ``COPY ... FROM
STDIN`` inside a savepoint (``method="auto"``, see :mod:`recoverly.db._copy`
for when COPY is exact; a failing COPY names its bad row by line). Elsewhere,
each batch is one bulk INSERT of the table (SQLAlchemy Core
``executemany``: psycopg 3 pipelines it, other drivers use insertmanyvalues or
their own batching) inside a savepoint, on the session's connection. Mappers
over several tables (joined inheritance), or batches whose records do not all
name the same attributes, go through the ORM's ``insert(Model)`` instead.

**Isolating bad rows.** When a batch fails because of its data (a constraint, a
value the column cannot take), the work is rolled back and the bad rows are
found in one of two ways:

- *By the error's hint.* The database usually names the culprit: PostgreSQL's
  diagnostics give the NOT NULL column or the duplicate key (``Key (code)=(x)``)
  or the value it could not parse; MySQL and SQLite say the same in their
  messages. The rows matching the hint are tried one by one and the others go
  back as one batch, so one bad row costs three statements (the batch, the row,
  the rest) and about one resend of its batch.
- *By bisection*, when there is no usable hint (a CHECK constraint, a trigger):
  the batch is split in halves, each tried in its own savepoint, recursively; a
  batch of ``n`` rows with ``k`` bad rows costs about ``1 + 2·k·log2(n)``
  statements instead of ``n`` for the row-by-row fallback.

A hint is only a guess: every suspect row is tried on its own, so a wrong hint
costs statements, never rows. Inserted records are reported in input order.

**Which errors are the rows' fault.** ``IntegrityError`` and ``DataError``,
values the driver refused to send (a ``StatementError`` that is not a server
error, or a ``ProgrammingError``/``InterfaceError`` without a server code).
Everything else (lost connection, lock timeout, missing table, disk full) is not
a property of some rows: bisecting would only report every row as bad, so the
error propagates at once (after a rollback), with a note saying how many
records earlier batches committed. Whether an error is transient is decided by
:func:`recoverly.db.is_retryable`.

**Transactions.** With ``commit=True`` (default) the rows are committed in
transactions of about ``commit_every`` rows (default 10 000; each batch inside
them has its own savepoint, so a bad row never costs the rows around it). A
commit is one durable write (a WAL flush) on the server, so committing every
few thousand rows instead of every batch is what keeps the insert near the
speed of a plain bulk INSERT; ``commit_every=batch_size`` commits each batch.
Committed rows stay committed when a later error propagates; the rows of the
transaction that error interrupted are rolled back and are in neither list.
The first commit also commits whatever the caller had pending on the session.
With ``commit=False`` everything stays in the caller's transaction (still with
savepoints).

**Batch size.** ``batch_size`` (default 200) is the largest batch. A bad row
costs about one re-send of its batch, a batch a fixed overhead (savepoint,
statement), so while many rows turn out bad the batches shrink to about
``sqrt(400 / bad_share)`` rows for INSERT (63 at 10 % bad; 1000 instead of 400
for COPY) and grow back as the share falls; see ``benchmarks/bench_db_bulk.py``
and ``bench_db_copy.py``.

.. versionadded:: 0.1
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import Any, Literal, TypeVar, cast

from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Mapper, Session
from sqlalchemy.sql.schema import Table

from recoverly._core.validate import Problems
from recoverly.db._bulk_support import as_row, is_row_error, quiet_pipeline, statement
from recoverly.db._copy import CopyPlan, copy_rows
from recoverly.db._suspects import copy_line, suspects
from recoverly.db.savepoint import check_savepoints

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_COMMIT_EVERY",
    "DEFAULT_COPY_BATCH_SIZE",
    "safe_bulk_insert",
]

R = TypeVar("R")

#: Rows per INSERT batch when ``batch_size`` is not given (see the module docs).
DEFAULT_BATCH_SIZE = 200
#: Rows per COPY batch when ``batch_size`` is not given: a COPY waits for the server
#: at the end of each batch, so small batches lose the overlap of sending and loading.
DEFAULT_COPY_BATCH_SIZE = 1000
#: Rows per committed transaction when ``commit_every`` is not given.
DEFAULT_COMMIT_EVERY = 10_000
_OVERHEAD_ROWS = 400  # a batch's fixed cost (savepoints, statement, sync) in rows' worth
_COPY_OVERHEAD_ROWS = 1000  # the same for COPY, whose rows are ~10x cheaper
_MIN_BATCH = 8

# None means NULL (not "omit the column"), so every row of a batch has the same
# columns and the batch stays one statement.
_OPTIONS = {"render_nulls": True}


def _note(exc: BaseException, text: str) -> None:
    if sys.version_info >= (3, 11):
        exc.add_note(text)


class _Run:
    """One safe_bulk_insert call: the statements, the results so far, the bisection."""

    __slots__ = (
        "copy",
        "core",
        "db",
        "failed",
        "force_copy",
        "isolations",
        "mapper",
        "orm",
        "uniform",
    )

    def __init__(
        self, db: Session, mapper: Mapper[Any], on_conflict: str | None, method: str
    ) -> None:
        self.db = db
        self.mapper = mapper
        self.orm = statement(db, mapper, on_conflict, orm=True)
        # The Core statement skips the ORM's per-call work; it needs one table and
        # attribute names that are column names.
        plain = len(mapper.tables) == 1 and all(
            len(prop.columns) == 1 and prop.columns[0].key == prop.key
            for prop in mapper.column_attrs
        )
        self.core = statement(db, mapper, on_conflict, orm=False) if plain else None
        self.copy: CopyPlan | None = None
        self.force_copy = method == "copy"
        if method != "insert":
            dialect = db.get_bind(mapper).dialect
            usable = plain and on_conflict is None and CopyPlan.possible(dialect)
            if usable:
                self.copy = CopyPlan(cast("Table", mapper.local_table), dialect)
            elif self.force_copy:
                msg = (
                    "method='copy' needs PostgreSQL through psycopg 3, a mapper over one "
                    f"table and no on_conflict; got {dialect.name}+{dialect.driver}"
                )
                raise ValueError(msg)
        self.failed: list[tuple[Any, BaseException]] = []
        self.isolations = 0
        self.uniform = True  # every row of the current batch names the same keys

    def execute(self, rows: list[dict[str, Any]]) -> None:
        """One bulk INSERT (or COPY) of ``rows`` in a savepoint of the session's transaction."""
        uniform = self.uniform or len(rows) == 1
        if self.copy is not None and uniform:
            sql = self.copy.statement(rows[0].keys())
            if sql is not None:
                conn = self.db.connection(bind_arguments={"mapper": self.mapper})
                with conn.begin_nested():
                    copy_rows(conn, sql, rows)
                return
            if self.force_copy:
                msg = (
                    f"method='copy' cannot load the columns {sorted(rows[0])} exactly: one "
                    "converts its values in SQLAlchemy (JSON, enum, custom type) or an "
                    "omitted one has a Python-side default; use method='auto'"
                )
                raise ValueError(msg)
        if self.core is not None and uniform:
            conn = self.db.connection(bind_arguments={"mapper": self.mapper})
            with quiet_pipeline(), conn.begin_nested():
                conn.execute(self.core, rows)
        else:
            with quiet_pipeline(), self.db.begin_nested():
                self.db.execute(self.orm, rows, execution_options=_OPTIONS)

    def insert(self, records: list[Any], rows: list[dict[str, Any]], done: list[Any]) -> None:
        """Insert ``rows`` (isolating bad rows); append landed records to ``done``."""
        if not rows:
            return
        try:
            self.execute(rows)
        except Exception as exc:
            if not is_row_error(exc):
                raise
            if len(rows) == 1:
                self.failed.append((records[0], exc))
                return
            self.isolate(records, rows, done, exc)
            return
        done.extend(records)

    def isolate(
        self, records: list[Any], rows: list[dict[str, Any]], done: list[Any], exc: BaseException
    ) -> None:
        """Find the bad rows of a failed batch: by the error's hint, else by bisection.

        Rows the error points at are tried one by one and the others go back as
        one batch (which isolates again if it fails), so a bad row usually costs
        one resend of its batch instead of about two with bisection.
        """
        self.isolations += 1
        error = getattr(exc, "orig", None) or exc
        line = copy_line(error, rows)
        if line is not None:
            # The server named the row: it is not tried again. The rows before it
            # passed the checks made row by row, so they go back as one batch and
            # the rest as another: a batch with several bad rows is not re-sent
            # whole for each of them.
            self.failed.append((records[line], exc))
            self.insert(records[:line], rows[:line], done)
            self.insert(records[line + 1 :], rows[line + 1 :], done)
            return
        hint = suspects(error, rows)
        if not hint:
            self.split(records, rows, done)
            return
        chosen = set(hint)
        rest = [i for i in range(len(rows)) if i not in chosen]
        for i in hint:
            self.insert([records[i]], [rows[i]], done)
        self.insert([records[i] for i in rest], [rows[i] for i in rest], done)

    def split(self, records: list[Any], rows: list[dict[str, Any]], done: list[Any]) -> None:
        """Insert the two halves of a failed batch, each in its own savepoint."""
        mid = len(rows) // 2
        self.insert(records[:mid], rows[:mid], done)
        self.insert(records[mid:], rows[mid:], done)


def safe_bulk_insert(
    db: Session,
    model_class: type[Any],
    records: Iterable[R],
    batch_size: int | None = None,
    *,
    on_conflict: Literal["skip"] | None = None,
    commit: bool = True,
    commit_every: int = DEFAULT_COMMIT_EVERY,
    method: Literal["auto", "copy", "insert"] = "auto",
) -> tuple[list[R], list[tuple[R, BaseException]]]:
    """Insert ``records`` in batches; isolate bad rows and keep the good ones.

    Args:
        db: The ORM session.
        model_class: The mapped class to insert into.
        records: Dicts of attribute values, or instances of ``model_class``
            (their loaded column attributes are inserted; they are not added
            to the session).
        batch_size: The largest batch (``>= 1``); default 200 rows per INSERT,
            1 000 per COPY.
        on_conflict: ``"skip"``: rows that collide with an existing row on a
            unique key are skipped (``ON CONFLICT DO NOTHING``; PostgreSQL and
            SQLite). Such records count as done: they are in the first list,
            which then means "is in the table", and re-running the same load
            is idempotent. Other errors are still reported.
        commit: Commit as the load goes (default) or leave everything in the
            caller's transaction.
        commit_every: With ``commit=True``, commit once at least this many
            rows have been sent since the last commit (``>= 1``; rounded up to
            whole batches).
        method: ``"auto"`` loads through ``COPY ... FROM STDIN`` where that
            inserts exactly what INSERT would (PostgreSQL with psycopg 3, see
            the module docs) and INSERTs elsewhere; ``"copy"`` insists on COPY
            (``ValueError`` where it cannot be used); ``"insert"`` never COPYs.

    Returns:
        ``(inserted, failed)``: the records that landed, in input order per
        batch, and ``(record, exception)`` for each record that did not. A
        record that is neither a mapping nor an instance, or names an unknown
        attribute, fails with a ``ValueError`` without being sent.

    Raises:
        TypeError: ``model_class`` is not mapped, or a bad argument type.
        ValueError: ``batch_size < 1``, ``commit_every < 1``, an unknown
            ``on_conflict``, or ``"skip"`` on a dialect without it.
        RuntimeError: SQLite without working savepoints (see
            :func:`recoverly.db.enable_sqlite_savepoints`).
        Exception: Any error that is not caused by the rows (see the module
            docs); rows committed before it stay committed.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       ``commit_every`` and ``method``; batches run as COPY or Core INSERTs
       where that inserts exactly what the ORM's INSERT would.
    """
    mapper = sa_inspect(model_class, raiseerr=False)
    p = Problems()
    if not isinstance(mapper, Mapper):
        p._bad(f"model_class must be a mapped ORM class, got {model_class!r}", kind=True)
    size = None if batch_size is None else p.int_at_least("batch_size", batch_size, 1)
    every = p.int_at_least("commit_every", commit_every, 1)
    if on_conflict not in (None, "skip"):
        p._bad(f"on_conflict must be None or 'skip', got {on_conflict!r}")
    if method not in ("auto", "copy", "insert"):
        p._bad(f"method must be 'auto', 'copy' or 'insert', got {method!r}")
    if not isinstance(cast("object", commit), bool):
        p._bad(f"commit must be a bool, got {commit!r}", kind=True)
    p.raise_if_any()
    mapper = cast("Mapper[Any]", mapper)
    run = _Run(db, mapper, on_conflict, method)
    if size is None:
        size = DEFAULT_BATCH_SIZE if run.copy is None else DEFAULT_COPY_BATCH_SIZE
    check_savepoints(db.connection(bind_arguments={"mapper": mapper}))
    load = _Load(run, commit=commit, commit_every=every)
    try:
        load.feed(records, size)
    except BaseException as exc:
        if commit:
            _note(exc, f"safe_bulk_insert: {len(load.inserted)} records were committed before this")
            try:
                db.rollback()
            except Exception as failure:
                _note(exc, f"recoverly: the rollback also failed: {failure!r}")
        raise
    return load.inserted, cast("list[tuple[R, BaseException]]", run.failed)


class _Load:
    """Batches the records, commits every ``commit_every`` rows, keeps input order."""

    __slots__ = ("bad_share", "commit", "commit_every", "inserted", "pending", "run", "sent")

    def __init__(self, run: _Run, *, commit: bool, commit_every: int) -> None:
        self.run = run
        self.commit = commit
        self.commit_every = commit_every
        self.inserted: list[Any] = []  # committed (or, with commit=False, in the transaction)
        self.pending: list[Any] = []  # landed in the open transaction, not committed yet
        self.sent = 0  # rows sent since the last commit
        self.bad_share = 0.0  # recent share of bad rows (moving average)

    def feed(self, records: Iterable[Any], size: int) -> None:
        """Turn records into rows, batch them, and insert every batch."""
        run = self.run
        keys = frozenset(run.mapper.column_attrs.keys())
        good: list[Any] = []
        rows: list[dict[str, Any]] = []
        first: Any = None
        for record in records:
            row = as_row(run.mapper, keys, record)
            if isinstance(row, str):
                run.failed.append((record, ValueError(row)))
                continue
            if not rows:
                first = row.keys()
                run.uniform = True
            elif run.uniform and row.keys() != first:
                run.uniform = False
            good.append(record)
            rows.append(row)
            if len(rows) >= self.size(size):
                self.batch(good, rows)
                good, rows = [], []
        if rows:
            self.batch(good, rows)
        if self.commit and self.sent:
            self.flush()

    def size(self, limit: int) -> int:
        """Rows for the next batch: ``limit``, smaller while many rows are bad.

        A bad row costs about one re-send of its batch, a batch costs a fixed
        overhead worth about ``_OVERHEAD_ROWS`` rows; the batch size that
        minimises both is ``sqrt(overhead / bad_share)``: for INSERT (overhead
        about 400 rows) 200 rows at 1 % bad, 63 at 10 %; for COPY (1000) 316 at 1 %.
        """
        if self.bad_share <= 0:
            return limit
        overhead = _OVERHEAD_ROWS if self.run.copy is None else _COPY_OVERHEAD_ROWS
        return max(_MIN_BATCH, min(limit, round(math.sqrt(overhead / self.bad_share))))

    def batch(self, records: list[Any], rows: list[dict[str, Any]]) -> None:
        """Insert one batch and commit when enough rows are pending."""
        run = self.run
        done: list[Any] = []
        isolations_before = run.isolations
        failed_before = len(run.failed)
        run.insert(records, rows, done)
        share = (len(run.failed) - failed_before) / len(rows)
        self.bad_share = 0.7 * self.bad_share + 0.3 * share
        if run.isolations != isolations_before and len(done) > 1:
            # Isolation may have landed rows out of order: report them in input order.
            position = {id(record): i for i, record in enumerate(records)}
            done.sort(key=lambda record: position[id(record)])
        if not self.commit:
            self.inserted.extend(done)
            return
        self.pending.extend(done)
        self.sent += len(rows)
        if self.sent >= self.commit_every:
            self.flush()

    def flush(self) -> None:
        """Commit the open transaction; its rows become inserted."""
        self.run.db.commit()
        self.inserted.extend(self.pending)
        self.pending = []
        self.sent = 0


for _obj in (safe_bulk_insert, is_row_error):
    _obj.__module__ = "recoverly.db"
del _obj
