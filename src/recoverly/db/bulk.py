"""safe_bulk_insert: insert many rows fast, and keep the good ones when some are bad.

::

    inserted, failed = safe_bulk_insert(db, Prediction, records, batch_size=500)
    for record, error in failed:
        log.error("Record: %s, Error: %s", record, error)

**Fast path.** Each batch is one ``session.execute(insert(Model), rows)``
(SQLAlchemy's bulk INSERT: a multi-row INSERT through insertmanyvalues, or the
driver's pipelined ``executemany``), inside a savepoint.

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

**Transactions.** With ``commit=True`` (default) and nothing pending on the
session, each batch is a transaction of its own: its first try runs without a
savepoint (two round trips fewer), and a row error rolls that transaction back
before the bad rows are isolated. Every batch is committed as soon as it is
done, so a later failure never takes earlier rows with it and no transaction
holds locks on more than one batch; the first commit also commits
whatever the caller had pending on the session. With ``commit=False``
everything stays in the caller's transaction (still with savepoints).

**Batch size.** The default, 200, keeps a bad row's re-sends small (bisection
resends about twice the batch) while amortising the per-batch savepoint and
commit; see ``benchmarks/bench_db_bulk.py`` for the measurements.

.. versionadded:: 0.1
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar, cast

from sqlalchemy import exc as sa_exc
from sqlalchemy import insert
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapper, Session

from recoverly._core.validate import Problems
from recoverly.db._classify import FailureKind, classify
from recoverly.db._suspects import suspects
from recoverly.db.savepoint import check_savepoints

__all__ = ["DEFAULT_BATCH_SIZE", "safe_bulk_insert"]

R = TypeVar("R")

#: Rows per INSERT batch when ``batch_size`` is not given (see the module docs).
DEFAULT_BATCH_SIZE = 200

# None means NULL (not "omit the column"), so every row of a batch has the same
# columns and the batch stays one statement.
_OPTIONS = {"render_nulls": True}
_SKIP_DIALECTS: dict[str, Callable[[Any], Any]] = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
}


def _has_server_code(exc: sa_exc.DBAPIError) -> bool:
    err = exc.orig
    if getattr(err, "sqlstate", None) or getattr(err, "pgcode", None):
        return True
    if getattr(err, "sqlite_errorcode", None) is not None:
        return True
    args: tuple[Any, ...] = getattr(err, "args", ())
    return bool(args) and isinstance(args[0], int)


def is_row_error(exc: BaseException) -> bool:
    """Whether ``exc`` from a batch INSERT is caused by some rows' data.

    Args:
        exc: What the INSERT raised.

    Returns:
        ``True`` for constraint violations, bad values and values the driver
        refused to bind; ``False`` for everything that is not a property of
        the rows (transient errors, missing tables, non-SQLAlchemy errors).

    .. versionadded:: 0.1
    """
    if not isinstance(exc, sa_exc.StatementError):
        return False
    if isinstance(exc, sa_exc.IntegrityError | sa_exc.DataError):
        return True
    if classify(exc).kind is not FailureKind.NOT_RETRYABLE:
        return False
    if not isinstance(exc, sa_exc.DBAPIError):
        return True  # a Python value could not be converted for its column
    if isinstance(exc, sa_exc.ProgrammingError | sa_exc.InterfaceError):
        return not _has_server_code(exc)  # the driver refused to bind a value
    return False


def _note(exc: BaseException, text: str) -> None:
    if sys.version_info >= (3, 11):
        exc.add_note(text)


class _Run:
    """One safe_bulk_insert call: the statement, the results so far, the bisection."""

    __slots__ = ("db", "failed", "isolations", "stmt")

    def __init__(self, db: Session, stmt: Any) -> None:
        self.db = db
        self.stmt = stmt
        self.failed: list[tuple[Any, BaseException]] = []
        self.isolations = 0

    def insert(self, records: list[Any], rows: list[dict[str, Any]], done: list[Any]) -> None:
        """Insert ``rows`` (bisecting on row errors); append landed records to ``done``."""
        try:
            with self.db.begin_nested():
                self.db.execute(self.stmt, rows, execution_options=_OPTIONS)
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
        hint = suspects(getattr(exc, "orig", None) or exc, rows)
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


def _statement(db: Session, mapper: Mapper[Any], on_conflict: str | None) -> Any:
    if on_conflict is None:
        return insert(mapper)
    dialect = db.get_bind(mapper).dialect.name
    if dialect not in _SKIP_DIALECTS:
        msg = (
            f"on_conflict='skip' is supported on PostgreSQL and SQLite, not {dialect!r} "
            "(MySQL's INSERT IGNORE also hides NOT NULL and data errors)"
        )
        raise ValueError(msg)
    return _SKIP_DIALECTS[dialect](mapper).on_conflict_do_nothing()


def _as_row(mapper: Mapper[Any], keys: frozenset[str], record: object) -> dict[str, Any] | str:
    """The column values of ``record`` (dict or mapped instance), or why it cannot be used."""
    if isinstance(record, Mapping):
        row = dict(record)
    elif isinstance(record, mapper.class_):
        state = sa_inspect(record)
        row = {k: v for k, v in state.dict.items() if k in keys}
    else:
        return (
            f"record must be a mapping or a {mapper.class_.__name__} instance, "
            f"got {type(record).__name__}"
        )
    unknown = sorted(k for k in row if k not in keys)
    if unknown:
        return f"{mapper.class_.__name__} has no column attribute {', '.join(map(repr, unknown))}"
    return row


def safe_bulk_insert(
    db: Session,
    model_class: type[Any],
    records: Iterable[R],
    batch_size: int = DEFAULT_BATCH_SIZE,
    *,
    on_conflict: Literal["skip"] | None = None,
    commit: bool = True,
) -> tuple[list[R], list[tuple[R, BaseException]]]:
    """Insert ``records`` in batches; isolate bad rows by bisection and keep the good ones.

    Args:
        db: The ORM session.
        model_class: The mapped class to insert into.
        records: Dicts of attribute values, or instances of ``model_class``
            (their loaded column attributes are inserted; they are not added
            to the session).
        batch_size: Rows per INSERT batch (``>= 1``).
        on_conflict: ``"skip"``: rows that collide with an existing row on a
            unique key are skipped (``ON CONFLICT DO NOTHING``; PostgreSQL and
            SQLite). Such records count as done: they are in the first list,
            which then means "is in the table", and re-running the same load
            is idempotent. Other errors are still reported.
        commit: Commit after every batch (default) or leave everything in the
            caller's transaction.

    Returns:
        ``(inserted, failed)``: the records that landed, in input order per
        batch, and ``(record, exception)`` for each record that did not. A
        record that is neither a mapping nor an instance, or names an unknown
        attribute, fails with a ``ValueError`` without being sent.

    Raises:
        TypeError: ``model_class`` is not mapped, or a bad argument type.
        ValueError: ``batch_size < 1``, an unknown ``on_conflict``, or
            ``"skip"`` on a dialect without it.
        RuntimeError: SQLite without working savepoints (see
            :func:`recoverly.db.enable_sqlite_savepoints`).
        Exception: Any error that is not caused by the rows (see the module
            docs); batches committed before it stay committed.

    .. versionadded:: 0.1
    """
    mapper = sa_inspect(model_class, raiseerr=False)
    p = Problems()
    if not isinstance(mapper, Mapper):
        p._bad(f"model_class must be a mapped ORM class, got {model_class!r}", kind=True)
    size = p.int_at_least("batch_size", batch_size, 1)
    if on_conflict not in (None, "skip"):
        p._bad(f"on_conflict must be None or 'skip', got {on_conflict!r}")
    if not isinstance(cast("object", commit), bool):
        p._bad(f"commit must be a bool, got {commit!r}", kind=True)
    p.raise_if_any()
    mapper = cast("Mapper[Any]", mapper)
    run = _Run(db, _statement(db, mapper, on_conflict))
    check_savepoints(db.connection(bind_arguments={"mapper": mapper}))
    inserted: list[R] = []
    try:
        _load(run, mapper, records, size, inserted, commit=commit)
    except BaseException as exc:
        if commit:
            _note(exc, f"safe_bulk_insert: {len(inserted)} records were committed before this")
            try:
                db.rollback()
            except Exception as failure:
                _note(exc, f"recoverly: the rollback also failed: {failure!r}")
        raise
    return inserted, cast("list[tuple[R, BaseException]]", run.failed)


def _load(
    run: _Run,
    mapper: Mapper[Any],
    records: Iterable[Any],
    size: int,
    inserted: list[Any],
    *,
    commit: bool,
) -> None:
    keys = frozenset(mapper.column_attrs.keys())
    good: list[Any] = []
    rows: list[dict[str, Any]] = []
    for record in records:
        row = _as_row(mapper, keys, record)
        if isinstance(row, str):
            run.failed.append((record, ValueError(row)))
            continue
        good.append(record)
        rows.append(row)
        if len(rows) == size:
            _batch(run, good, rows, inserted, commit=commit)
            good, rows = [], []
    if rows:
        _batch(run, good, rows, inserted, commit=commit)


def _batch(
    run: _Run, records: list[Any], rows: list[dict[str, Any]], inserted: list[Any], *, commit: bool
) -> None:
    done: list[Any] = []
    isolations_before = run.isolations
    if commit and not run.db.in_transaction():
        # The batch is a transaction of its own: try it without a savepoint (two
        # round trips fewer), and on a row error roll back the whole transaction,
        # which holds nothing else, before bisecting inside savepoints.
        try:
            run.db.execute(run.stmt, rows, execution_options=_OPTIONS)
        except Exception as exc:
            if not is_row_error(exc):
                raise
            run.db.rollback()
            run.isolate(records, rows, done, exc)
        else:
            done.extend(records)
    else:
        run.insert(records, rows, done)
    if commit:
        run.db.commit()
    if run.isolations != isolations_before and len(done) > 1:
        # Isolation may have landed rows out of order: report them in input order.
        position = {id(record): i for i, record in enumerate(records)}
        done.sort(key=lambda record: position[id(record)])
    inserted.extend(done)


for _obj in (safe_bulk_insert, is_row_error):
    _obj.__module__ = "recoverly.db"
del _obj
