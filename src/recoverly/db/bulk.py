"""safe_bulk_insert: insert many rows fast, and keep the good ones when some are bad.

::

    inserted, failed = safe_bulk_insert(db, Prediction, records, batch_size=500)
    for record, error in failed:
        log.error("Record: %s, Error: %s", record, error)

**Fast path.** On PostgreSQL with psycopg 3, each batch is one ``COPY ... FROM
STDIN`` inside a savepoint (``method="auto"``, see :mod:`recoverly.db._copy`
for when COPY is exact; a failing COPY names its bad row by line). The
savepoint is sent in the same query as the COPY, and the next batch is gathered
and formatted while the server loads the current one. Elsewhere, each batch is
one bulk INSERT of the table (SQLAlchemy Core ``executemany``: psycopg 3
pipelines it, other drivers use insertmanyvalues or their own batching) inside a
savepoint, on the session's connection. With psycopg 3 the savepoint and its
release ride in the INSERT's pipeline: one round trip per batch instead of three
(see :mod:`recoverly.db._pipelined`). Mappers over several tables (joined
inheritance), or batches whose records do not all name the same attributes, go
through the ORM's ``insert(Model)`` instead.

**Isolating bad rows.** When a batch fails because of its data (a constraint, a
value the column cannot take), the work is rolled back and the bad rows are
found in one of three ways:

- *By the line a COPY names* (``COPY items, line 57``: NOT NULL, CHECK, unique,
  a value the column cannot parse). That row is reported and the batch goes
  back without it, again until it lands; when more bad rows are likely, the
  rows before the named one first go back on their own, and a rest much longer
  than a batch should be goes back in smaller batches.
- *By the error's hint.* The database usually names the culprit: PostgreSQL's
  diagnostics give the NOT NULL column or the duplicate or missing key
  (``Key (code)=(x)``) or the value it could not parse; MySQL and SQLite say the
  same in their messages. The rows matching the hint are tried one by one and
  the others go back as one batch, so one bad row costs three statements (the
  batch, the row, the rest) and about one resend of its batch.
- *By bisection*, when there is no usable hint (a CHECK constraint, a trigger):
  the batch is split in halves, each tried in its own savepoint, recursively; a
  batch of ``n`` rows with ``k`` bad rows costs about ``1 + 2·k·log2(n)``
  statements instead of ``n`` for the row-by-row fallback.

A hint is only a guess: every suspect row is tried on its own, so a wrong hint
costs statements, never rows. Inserted records are reported in input order.

*Before sending*, on the INSERT path: once a column has refused a NULL, later
rows with ``None`` in it are sent on their own ahead of their batch instead of
failing it (a row a trigger fills in still lands). Other bad rows (a unique
key, a CHECK) cannot be seen in the row and still cost a failed batch.

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

**Batch size.** ``batch_size`` is the largest batch (default 2 000 for INSERT,
10 000 for COPY). Batches start small (200 rows for INSERT, 250 for COPY) and
double while no row is bad: a longer statement costs less per row. A bad row
costs about one re-send of its batch, a batch a fixed overhead (savepoint,
statement), so once rows turn out bad the batches shrink to about
``sqrt(50 / bad_share)`` rows for INSERT (224 at 0.1 %, 22 at 10 %; the share
is averaged over about the last 2 000 rows) and ``sqrt(100 / bad_share)`` for
COPY (316 at 0.1 %, 32 at 10 %), and grow back as the share falls. See
``benchmarks/bench_db_bulk.py`` and ``bench_db_copy.py``.

.. versionadded:: 0.1
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import Any, Literal, TypeVar, cast

from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Mapper, Session

from recoverly._core.validate import Problems
from recoverly.db._bulk_support import as_row, is_row_error
from recoverly.db._copy import CopyWire
from recoverly.db._isolate import COPY_STATEMENT_ROWS, BulkRun
from recoverly.db.savepoint import check_savepoints

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_COMMIT_EVERY",
    "DEFAULT_COPY_BATCH_SIZE",
    "safe_bulk_insert",
]

R = TypeVar("R")

#: The largest INSERT batch when ``batch_size`` is not given. INSERT batches start
#: at 200 rows and double while no row is bad (see the module docs).
DEFAULT_BATCH_SIZE = 2000
#: The largest COPY batch when ``batch_size`` is not given. COPY batches start at
#: 250 rows and double while no row is bad: a long COPY costs less per row, but a
#: bad row costs about half a batch of rows the server loaded and rolled back.
DEFAULT_COPY_BATCH_SIZE = 10_000
#: Rows per committed transaction when ``commit_every`` is not given.
DEFAULT_COMMIT_EVERY = 10_000
_OVERHEAD_ROWS = 50  # a batch's fixed cost (savepoints, statement, sync) in rows' worth
_COPY_FIRST_BATCH = 250  # the first COPY batch; later ones double while no row is bad
_INSERT_FIRST_BATCH = 200  # the first INSERT batch; later ones double while no row is bad
_MIN_BATCH = 8
_SHARE_WINDOW = 2000  # rows over which the INSERT path's share of bad rows is averaged


def _note(exc: BaseException, text: str) -> None:
    if sys.version_info >= (3, 11):
        exc.add_note(text)


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
        batch_size: The largest batch (``>= 1``); default 2 000 rows per
            INSERT, 10 000 per COPY (batches start at 200 rows for INSERT and
            250 for COPY and double while no row is bad).
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
       ``commit_every`` and ``method``; batches run as COPY (each sent while
       the previous one loads) or Core INSERTs where that inserts exactly what
       the ORM's INSERT would; batches grow while no row is bad (INSERT: from
       200 up to 2 000 rows by default); on psycopg 3 an INSERT batch and its
       savepoint go in one round trip; a column that refused a NULL has later
       NULLs sent on their own.
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
    run = BulkRun(db, mapper, on_conflict, method)
    if size is None:
        size = DEFAULT_BATCH_SIZE if run.copy is None else DEFAULT_COPY_BATCH_SIZE
    check_savepoints(db.connection(bind_arguments={"mapper": mapper}))
    load = _Load(run, commit=commit, commit_every=every)
    try:
        load.feed(records, size)
    except BaseException as exc:
        if run.wire is not None:
            run.wire.discard()  # a batch still in flight: read its outcome first
        if commit:
            _note(exc, f"safe_bulk_insert: {len(load.inserted)} records were committed before this")
            try:
                db.rollback()
            except Exception as failure:
                _note(exc, f"recoverly: the rollback also failed: {failure!r}")
        raise
    return load.inserted, cast("list[tuple[R, BaseException]]", run.failed)


class _Load:
    """Batches the records, commits every ``commit_every`` rows, keeps input order.

    A COPY batch is sent without waiting for its outcome: the next batch is
    gathered and formatted while the server loads it, and only then is the
    outcome read (:meth:`settle`), bad rows isolated and a commit made if due.
    """

    __slots__ = (
        "bad_share",
        "commit",
        "commit_every",
        "in_flight",
        "inserted",
        "pending",
        "ramp",
        "run",
        "sent",
    )

    def __init__(self, run: BulkRun, *, commit: bool, commit_every: int) -> None:
        self.run = run
        self.commit = commit
        self.commit_every = commit_every
        self.inserted: list[Any] = []  # committed (or, with commit=False, in the transaction)
        self.pending: list[Any] = []  # landed in the open transaction, not committed yet
        self.sent = 0  # rows sent since the last commit
        self.bad_share = 0.0  # recent share of bad rows (moving average)
        # The next batch while no row has been bad.
        self.ramp = _INSERT_FIRST_BATCH if run.copy is None else _COPY_FIRST_BATCH
        self.in_flight: tuple[list[Any], list[dict[str, Any]]] | None = None

    def feed(self, records: Iterable[Any], size: int) -> None:
        """Turn records into rows, batch them, and insert every batch."""
        run = self.run
        keys = frozenset(run.mapper.column_attrs.keys())
        good: list[Any] = []
        rows: list[dict[str, Any]] = []
        first: Any = None
        uniform = True  # every row of the current batch names the same keys
        target = self.size(size)  # changes only when a batch is inserted
        for record in records:
            row = as_row(run.mapper, keys, record)
            if isinstance(row, str):
                run.failed.append((record, ValueError(row)))
                continue
            if not rows:
                first = row.keys()
                uniform = True
            elif uniform and row.keys() != first:
                uniform = False
            good.append(record)
            rows.append(row)
            if len(rows) >= target:
                self.batch(good, rows, uniform=uniform)
                good, rows = [], []
                target = self.size(size)
        if rows:
            self.batch(good, rows, uniform=uniform)
        self.settle()
        if self.commit and self.sent:
            self.flush()

    def size(self, limit: int) -> int:
        """Rows for the next batch: at most ``limit``, smaller while rows are bad.

        A bad row costs about one re-send of its batch, a batch costs a fixed
        overhead worth about ``_OVERHEAD_ROWS`` rows; the batch size that
        minimises both is ``sqrt(overhead / bad_share)``: for INSERT (overhead
        about 50 rows) 224 rows at 0.1 % bad, 71 at 1 %, 22 at 10 %; for COPY
        (100) 316 at 0.1 %, 100 at 1 %, 32 at 10 %. Until a bad row is seen,
        batches start at 200 rows (INSERT) or 250 (COPY) and double.
        """
        if self.bad_share <= 0:
            return min(limit, self.ramp)
        overhead = _OVERHEAD_ROWS if self.run.copy is None else COPY_STATEMENT_ROWS
        return max(_MIN_BATCH, min(limit, round(math.sqrt(overhead / self.bad_share))))

    def batch(self, records: list[Any], rows: list[dict[str, Any]], *, uniform: bool) -> None:
        """Insert one batch: send a COPY and return, or INSERT and account for it."""
        run = self.run
        plan = run.copy_plan(rows, uniform=uniform)
        if plan is None:
            self.settle()
            done: list[Any] = []
            failed_before, isolations_before = len(run.failed), run.isolations
            aside = run.insert_batch(records, rows, done, uniform=uniform)
            self.account(records, rows, done, failed_before + aside, isolations_before)
            return
        wire = cast("CopyWire", run.wire)
        sql, keys = plan
        data = wire.format(run.connection(), keys, rows)  # while the server loads the last batch
        self.settle()
        wire.send(run.connection(), sql, data)
        self.in_flight = (records, rows)

    def settle(self) -> None:
        """Read the outcome of the COPY in flight, isolate its bad rows, account for it."""
        if self.in_flight is None:
            return
        records, rows = self.in_flight
        self.in_flight = None
        run = self.run
        done: list[Any] = []
        failed_before, isolations_before = len(run.failed), run.isolations
        try:
            cast("CopyWire", run.wire).finish()
        except Exception as exc:  # recover() re-raises what is not the rows' fault
            run.recover(records, rows, done, exc, uniform=True)
        else:
            done = records
        self.account(records, rows, done, failed_before, isolations_before)

    def account(
        self,
        records: list[Any],
        rows: list[dict[str, Any]],
        done: list[Any],
        failed_before: int,
        isolations_before: int,
    ) -> None:
        """Record a finished batch, adapt the batch size, commit when enough rows are pending."""
        run = self.run
        share = (len(run.failed) - failed_before) / len(rows)
        if run.copy is None:
            # Weighed by rows: a batch of n rows counts like n single rows.
            keep = math.exp(-len(rows) / _SHARE_WINDOW)
            self.bad_share = keep * self.bad_share + (1 - keep) * share
        else:
            self.bad_share = 0.7 * self.bad_share + 0.3 * share
        run.bad_share = self.bad_share
        if self.bad_share <= 0:
            self.ramp = max(self.ramp, 2 * len(rows))
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
