"""The COPY path of safe_bulk_insert on PostgreSQL with psycopg 3.

``COPY table (columns) FROM STDIN`` moves rows several times faster than any
INSERT. It is used for a batch only when it inserts exactly what the INSERT
would have: the driver is psycopg 3, every column of the batch passes its
Python value to the driver unchanged (no bind processor: JSON, enums and
custom types go through INSERT), no omitted column has a Python-side default
(COPY applies only server defaults), and there is no ``on_conflict``.

A failing COPY names the bad row itself (``COPY items, line 57``) for row-level
checks (NOT NULL, CHECK, unique, a value the column cannot parse); the
isolation step then tries that row alone and the rest as one batch. Foreign
keys are checked at the end of the statement and say only which key was
missing, which the isolation step also reads. Errors are raised as the same
SQLAlchemy exception classes an INSERT would raise.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.schema import Table

__all__ = ["CopyPlan"]


class CopyPlan:
    """Decides, per set of columns, whether COPY inserts exactly what INSERT would."""

    __slots__ = ("_decided", "dialect", "table")

    def __init__(self, table: Table, dialect: Dialect) -> None:
        self.table = table
        self.dialect = dialect
        self._decided: dict[frozenset[str], str | None] = {}

    @staticmethod
    def possible(dialect: Dialect) -> bool:
        """Whether the dialect can COPY at all (PostgreSQL through psycopg 3)."""
        return dialect.name == "postgresql" and dialect.driver == "psycopg"

    def statement(self, keys: Any) -> str | None:
        """The COPY statement for rows with these keys, or ``None`` (use INSERT)."""
        key_set = frozenset(keys)
        if key_set not in self._decided:
            self._decided[key_set] = self._plan(list(keys), key_set)
        return self._decided[key_set]

    def _plan(self, keys: list[str], key_set: frozenset[str]) -> str | None:
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
        return f"COPY {prep.format_table(self.table)} ({names}) FROM STDIN"


def copy_rows(conn: Connection, sql: str, rows: list[dict[str, Any]]) -> None:
    """Send ``rows`` with one COPY on ``conn`` (inside the caller's savepoint)."""
    raw: Any = conn.connection.dbapi_connection
    keys = list(rows[0])
    try:
        with raw.cursor() as cursor, cursor.copy(sql) as copy:
            write = copy.write_row
            for row in rows:
                write([row[key] for key in keys])
    except raw.Error as exc:
        raise sa_exc.DBAPIError.instance(sql, None, exc, raw.Error) from exc
