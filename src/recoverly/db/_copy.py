"""The COPY path of safe_bulk_insert on PostgreSQL with psycopg 3.

``COPY table (columns) FROM STDIN`` moves rows several times faster than any
INSERT. It is used for a batch only when it inserts exactly what the INSERT
would have: the driver is psycopg 3, every column of the batch passes its
Python value to the driver unchanged (no bind processor: JSON, enums and
custom types go through INSERT), no omitted column has a Python-side default
(COPY applies only server defaults), and there is no ``on_conflict``.

**One query per batch.** A batch is sent as one simple-protocol query,
``SAVEPOINT s; COPY ... FROM STDIN; RELEASE SAVEPOINT s``, followed by its data:
the savepoint costs no round trip of its own. Only a failed batch costs one
more (``ROLLBACK TO SAVEPOINT s; RELEASE SAVEPOINT s``, which leaves the
transaction as it was before the batch).

**One batch in flight.** :meth:`CopyWire.send` returns once the data is on its
way; the caller formats the next batch while the server loads this one, and
only then waits for the outcome with :meth:`CopyWire.finish`. Sending and
loading overlap as they do inside one long COPY.

A failing COPY names the bad row itself (``COPY items, line 57``) for row-level
checks (NOT NULL, CHECK, unique, a value the column cannot parse); the
isolation step (:mod:`recoverly.db._isolate`) reports that row and sends the
rest again. Foreign keys are checked at the end of the statement and say only
which key was missing, which the isolation step also reads. Errors are raised as the same
SQLAlchemy exception classes an INSERT would raise, with psycopg's error
(``sqlstate``, ``diag``) as ``.orig``.
"""

from __future__ import annotations

import contextlib
import select
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.schema import Table

__all__ = ["CopyPlan", "CopyWire", "translate"]

_SAVEPOINT = "recoverly_copy"
_PIECE = 128 * 1024  # the largest buffer handed to libpq at once (psycopg does the same)


class CopyPlan:
    """Decides, per set of columns, whether COPY inserts exactly what INSERT would."""

    __slots__ = ("_decided", "dialect", "table")

    def __init__(self, table: Table, dialect: Dialect) -> None:
        self.table = table
        self.dialect = dialect
        self._decided: dict[frozenset[str], tuple[str, tuple[str, ...]] | None] = {}

    @staticmethod
    def possible(dialect: Dialect) -> bool:
        """Whether the dialect can COPY at all (PostgreSQL through psycopg 3)."""
        return dialect.name == "postgresql" and dialect.driver == "psycopg"

    def statement(self, keys: Any) -> tuple[str, tuple[str, ...]] | None:
        """The COPY statement for rows with these keys and the order it lists them in.

        ``None`` means INSERT. The order is the one first seen for this set of
        keys; values must be sent in it, whatever the order of a row's keys.
        """
        key_set = frozenset(keys)
        if key_set not in self._decided:
            self._decided[key_set] = self._plan(tuple(keys), key_set)
        return self._decided[key_set]

    def _plan(
        self, keys: tuple[str, ...], key_set: frozenset[str]
    ) -> tuple[str, tuple[str, ...]] | None:
        columns = self.table.columns
        for column in columns:
            if column.key in key_set:
                if column.type.bind_processor(self.dialect) is not None:
                    return None  # the value needs SQLAlchemy's conversion
            elif column.default is not None:
                return None  # a Python-side default only INSERT applies
        if not all(key in columns for key in keys):
            return None
        prep = self.dialect.identifier_preparer
        names = ", ".join(prep.quote(columns[key].name) for key in keys)
        return f"COPY {prep.format_table(self.table)} ({names}) FROM STDIN", keys


def _wait(fd: int, *, write: bool) -> None:
    """Block until the socket is readable (or, if asked, writable)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN | (select.POLLOUT if write else 0))
        poller.poll()
    else:  # pragma: no cover - Windows
        select.select([fd], [fd] if write else [], [])


class _Collect:
    """A psycopg COPY writer that keeps the formatted data instead of sending it."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: Any) -> None:
        self.parts.append(bytes(data))

    def finish(self, exc: BaseException | None = None) -> None:
        """Nothing to close."""


class CopyWire:
    """COPY batches on a session's psycopg connection, each in its own savepoint.

    ``format`` turns rows into COPY data (psycopg's own text format and the
    connection's adapters), ``send`` starts the batch and returns without
    waiting, ``finish`` waits for it and raises its error; ``load`` does all
    three. At most one batch is in flight; ``discard`` settles it after an
    unrelated error so that the connection can be used (or rolled back) again.
    """

    __slots__ = ("_conn", "_dialect", "_failure", "_raw", "_sql")

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._conn: Connection | None = None  # the connection of the batch in flight
        self._raw: Any = None  # its psycopg connection
        self._failure: Exception | None = None  # the batch failed before its data was sent
        self._sql = ""

    @staticmethod
    def format(conn: Connection, keys: Sequence[str], rows: Sequence[dict[str, Any]]) -> bytes:
        """The COPY text data of ``rows`` (values in the order of ``keys``)."""
        import psycopg  # noqa: PLC0415 - only reached with psycopg 3 installed

        raw: Any = conn.connection.dbapi_connection
        values: Callable[[dict[str, Any]], Any]
        if len(keys) == 1:
            key = keys[0]
            values = lambda row: (row[key],)  # noqa: E731 - itemgetter of one key gives no tuple
        else:
            values = itemgetter(*keys)
        sink: Any = _Collect()
        with raw.cursor() as cursor, psycopg.Copy(cursor, binary=False, writer=sink) as copy:
            write = copy.write_row
            for row in rows:
                write(values(row))
        return b"".join(sink.parts)

    def send(self, conn: Connection, sql: str, data: bytes) -> None:
        """Start one batch: savepoint, COPY, its data, release; do not wait for the result."""
        raw: Any = conn.connection.dbapi_connection
        pg = raw.pgconn
        self._sql = sql
        try:
            if pg.transaction_status == _status("IDLE"):
                # Let psycopg open the transaction (with the connection's settings).
                raw.execute(f"SAVEPOINT {_SAVEPOINT}")
                query = f"{sql}; RELEASE SAVEPOINT {_SAVEPOINT}"
            else:
                query = f"SAVEPOINT {_SAVEPOINT}; {sql}; RELEASE SAVEPOINT {_SAVEPOINT}"
            pg.send_query(query.encode(raw.info.encoding))
            self._conn, self._raw = conn, raw
            _flush(pg)
            self._failure = _until_copy_in(raw)
            if self._failure is not None:  # the COPY did not start (no such table, ...)
                return
            for start in range(0, len(data), _PIECE):
                piece = data[start : start + _PIECE] if len(data) > _PIECE else data
                while not pg.put_copy_data(piece):  # libpq's buffer is full
                    _make_room(pg)
            while not pg.put_copy_end(None):
                _make_room(pg)
            _flush(pg)
        except raw.Error as exc:
            self.discard()
            raise self._translate(conn, raw, exc) from exc

    def finish(self) -> None:
        """Wait for the batch in flight; on failure roll back to its savepoint and raise.

        Raises:
            sqlalchemy.exc.DBAPIError: The batch's error, as INSERT would raise
                it; the transaction is as it was before the batch. Or the error
                that broke the connection (which is then invalidated).
        """
        conn, raw = self._conn, self._raw
        if conn is None:
            return
        self._conn = self._raw = None
        failure, self._failure = self._failure, None
        try:
            failure = _drain(raw) or failure
            if failure is not None:
                _command(raw, f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}; RELEASE SAVEPOINT {_SAVEPOINT}")
        except raw.Error as exc:
            raise self._translate(conn, raw, exc) from exc
        if failure is not None:
            raise self._translate(conn, raw, failure) from failure

    def load(self, conn: Connection, sql: str, keys: Sequence[str], rows: Sequence[Any]) -> None:
        """Send one batch and wait for it (raises its error)."""
        self.send(conn, sql, self.format(conn, keys, rows))
        self.finish()

    def discard(self) -> None:
        """Settle a batch still in flight after another error, ignoring its outcome."""
        # The error that led here is the one to report, not this batch's outcome.
        with contextlib.suppress(Exception):
            self.finish()

    def _translate(self, conn: Connection, raw: Any, exc: Any) -> sa_exc.StatementError:
        """The SQLAlchemy exception an INSERT would have raised for ``exc`` (a psycopg error)."""
        return translate(self._dialect, conn, raw, self._sql, exc)


def translate(
    dialect: Dialect, conn: Connection, raw: Any, sql: str, exc: Any
) -> sa_exc.StatementError:
    """The SQLAlchemy exception for ``exc``, a psycopg error met outside SQLAlchemy's execute.

    A lost connection is also invalidated, as SQLAlchemy would do.
    """
    lost = dialect.is_disconnect(exc, raw, None)
    error: sa_exc.StatementError = sa_exc.DBAPIError.instance(
        sql,
        None,
        exc,
        type(raw).Error,
        connection_invalidated=lost,
        dialect=dialect,
    )
    if lost and not conn.invalidated:
        conn.invalidate(exc)
    return error


def _status(name: str) -> Any:
    from psycopg import pq  # noqa: PLC0415

    return pq.TransactionStatus[name]


def _make_room(pg: Any) -> None:
    """Wait until the socket takes more data, reading meanwhile so that the server never blocks."""
    _wait(pg.socket, write=True)
    pg.consume_input()
    pg.flush()


def _flush(pg: Any) -> None:
    """Send everything libpq buffered."""
    while pg.flush():
        _make_room(pg)


def _result(pg: Any) -> Any:
    """The next result of the query in flight (``None`` once it is complete)."""
    while pg.is_busy():
        _wait(pg.socket, write=False)
        pg.consume_input()
    return pg.get_result()


def _until_copy_in(raw: Any) -> Exception | None:
    """Read the results before the COPY; the error, as psycopg raises it, if one failed."""
    from psycopg import errors, pq  # noqa: PLC0415

    while True:
        result = _result(raw.pgconn)
        if result is None or result.status == pq.ExecStatus.COPY_IN:
            return None
        if result.status != pq.ExecStatus.COMMAND_OK:
            return errors.error_from_result(result, encoding=raw.info.encoding)


def _drain(raw: Any) -> Exception | None:
    """Read the remaining results of the query in flight; the first error, as psycopg raises it."""
    from psycopg import errors, pq  # noqa: PLC0415

    pg = raw.pgconn
    _flush(pg)  # what an interruption left in libpq's buffer
    failure: Exception | None = None
    while (result := _result(pg)) is not None:
        if result.status == pq.ExecStatus.COPY_IN:  # interrupted while sending: end the COPY
            while not pg.put_copy_end(b"abandoned by safe_bulk_insert"):
                _make_room(pg)
            _flush(pg)
        elif result.status == pq.ExecStatus.FATAL_ERROR and failure is None:
            failure = errors.error_from_result(result, encoding=raw.info.encoding)
    if pg.status != pq.ConnStatus.OK:
        msg = pg.error_message.decode(raw.info.encoding, "replace")
        raise raw.OperationalError(msg or "the connection was lost during COPY")
    return failure


def _command(raw: Any, sql: str) -> None:
    """Run ``sql`` (no results) on the raw connection; raise its error."""
    pg = raw.pgconn
    pg.send_query(sql.encode(raw.info.encoding))
    _flush(pg)
    failure = _drain(raw)
    if failure is not None:
        raise failure
