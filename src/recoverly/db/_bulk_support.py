"""Helpers of safe_bulk_insert: which errors are the rows' fault, statements, rows."""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import insert
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapper, Session

from recoverly.db._classify import FailureKind, classify

__all__ = ["as_row", "is_row_error", "quiet_pipeline", "statement"]

_MYSQL_ROW_ERRORS = frozenset({4025, 3819, 1366, 1292, 1265, 1264, 1406})

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
    args: tuple[Any, ...] = getattr(exc.orig, "args", ())
    # MySQL/MariaDB report some row errors as OperationalError: a failed CHECK
    # constraint (MariaDB 4025, MySQL 3819), a value the column cannot take in
    # strict mode (1366 incorrect value, 1292 incorrect datetime, 1265 truncated).
    return bool(args) and args[0] in _MYSQL_ROW_ERRORS


class _PipelineNoise(logging.Filter):
    """Drops psycopg's "error ignored terminating <Pipeline>" warning while a batch runs.

    psycopg 3 logs it when a pipelined ``executemany`` fails; safe_bulk_insert
    expects that failure and handles it, so the warning would only be noise.
    The filter is scoped to the thread (and task) inside :func:`_quiet_pipeline`.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record except that warning inside a bulk insert."""
        return not (_IN_BATCH.get() and record.getMessage().startswith("error ignored terminating"))


_IN_BATCH: contextvars.ContextVar[bool] = contextvars.ContextVar("recoverly_bulk", default=False)
logging.getLogger("psycopg").addFilter(_PipelineNoise())


@contextlib.contextmanager
def quiet_pipeline() -> Iterator[None]:
    """Filter psycopg's pipeline warning in this thread/task while the block runs."""
    token = _IN_BATCH.set(True)
    try:
        yield
    finally:
        _IN_BATCH.reset(token)


def statement(db: Session, mapper: Mapper[Any], on_conflict: str | None, *, orm: bool) -> Any:
    """The INSERT for the mapper (ORM) or its table (Core), ``ON CONFLICT DO NOTHING`` if asked."""
    target: Any = mapper if orm else mapper.local_table
    if on_conflict is None:
        return insert(target)
    dialect = db.get_bind(mapper).dialect.name
    if dialect not in _SKIP_DIALECTS:
        msg = (
            f"on_conflict='skip' is supported on PostgreSQL and SQLite, not {dialect!r} "
            "(MySQL's INSERT IGNORE also hides NOT NULL and data errors)"
        )
        raise ValueError(msg)
    return _SKIP_DIALECTS[dialect](target).on_conflict_do_nothing()


def as_row(mapper: Mapper[Any], keys: frozenset[str], record: object) -> dict[str, Any] | str:
    """The column values of ``record`` (dict or mapped instance), or why it cannot be used.

    A plain ``dict`` is used as it is (nothing downstream changes a row); other
    mappings are copied into one.
    """
    if type(record) is dict:
        row: dict[str, Any] = record
    elif isinstance(record, Mapping):
        row = dict(record)
    elif isinstance(record, mapper.class_):
        state = sa_inspect(record)
        row = {k: v for k, v in state.dict.items() if k in keys}
    else:
        return (
            f"record must be a mapping or a {mapper.class_.__name__} instance, "
            f"got {type(record).__name__}"
        )
    if not keys.issuperset(row):
        unknown = sorted(k for k in row if k not in keys)
        return f"{mapper.class_.__name__} has no column attribute {', '.join(map(repr, unknown))}"
    return row
