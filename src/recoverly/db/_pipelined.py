"""A bulk INSERT batch and its savepoint in one round trip (PostgreSQL with psycopg 3).

psycopg 3 sends an ``executemany`` in pipeline mode: every row's INSERT goes
out without waiting, and one Sync at the end collects the results. Opening the
pipeline one step earlier lets the batch's ``SAVEPOINT`` and ``RELEASE
SAVEPOINT`` ride along, so a batch costs one round trip instead of three.

The INSERT itself still goes through SQLAlchemy (its parameter processing,
events and error translation). The savepoint is the connection's own, like
the COPY path's: SQLAlchemy does not know about it, and it is gone (released,
or rolled back to and released) when :func:`insert_batch` returns. The
savepoint commands are never prepared: psycopg would otherwise prepare them
after a few uses, and a rollback makes it drop its prepared statements.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Dialect

from recoverly.db._copy import translate

__all__ = ["insert_batch", "possible"]

_SAVEPOINT = "recoverly_batch"


def possible(dialect: Dialect) -> bool:
    """Whether batches can be pipelined: psycopg 3 (sync) with a libpq that has pipeline mode."""
    if dialect.name != "postgresql" or dialect.driver != "psycopg":
        return False
    from psycopg import Pipeline  # noqa: PLC0415 - only with psycopg 3 installed

    return bool(Pipeline.is_supported())


def insert_batch(dialect: Dialect, conn: Connection, statement: Any, rows: list[Any]) -> None:
    """Run ``statement`` for ``rows`` in a savepoint, sent together in one pipeline.

    Raises:
        sqlalchemy.exc.StatementError: The batch's error, as SQLAlchemy raises
            it; the transaction is as it was before the batch. Or the error that
            broke the connection (which is then invalidated).
    """
    raw: Any = conn.connection.dbapi_connection
    failure: BaseException | None = None
    try:
        with raw.pipeline():
            raw.execute(f"SAVEPOINT {_SAVEPOINT}", prepare=False)
            try:
                conn.execute(statement, rows)
            except sa_exc.StatementError as exc:  # raised while the rows were being sent
                failure = exc
            else:
                raw.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}", prepare=False)
    except raw.Error as exc:  # the batch's error, read at the pipeline's Sync
        failure = failure or translate(dialect, conn, raw, str(statement), exc)
    if failure is None:
        return
    if isinstance(failure, sa_exc.DBAPIError) and failure.connection_invalidated:
        raise failure
    try:
        raw.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}", prepare=False)
        raw.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}", prepare=False)
    except raw.Error as exc:
        raise translate(dialect, conn, raw, f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}", exc) from exc
    raise failure
