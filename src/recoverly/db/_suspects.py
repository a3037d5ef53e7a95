"""Which rows of a failed multi-row INSERT probably caused the error.

The database usually says: PostgreSQL's diagnostics name the NOT NULL column or
the duplicate key, MySQL/MariaDB and SQLite say the same in their messages. The
answer is only a *hint*: :func:`recoverly.db.safe_bulk_insert` tries each
suspect row on its own and the rest as one batch, so a wrong hint costs time,
never correctness; with no hint it falls back to bisection.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

__all__ = ["copy_line", "null_column", "suspects"]

_KEY = re.compile(r"Key \((?P<cols>.+?)\)=\((?P<vals>.*)\) (?:already exists|is not present)")
_QUOTED = re.compile(r'"(?P<val>[^"]*)"\s*$')
_NOT_NULL_TEXT = (
    re.compile(r"NOT NULL constraint failed: [\w.]*?\.?(?P<col>\w+)$"),  # SQLite
    re.compile(r"Column '(?P<col>\w+)' cannot be null"),  # MySQL 1048
)
_DUPLICATE_TEXT = re.compile(r"Duplicate entry '(?P<val>.*)' for key")  # MySQL 1062
_COPY_LINE = re.compile(r"^COPY [^,]+, line (?P<line>\d+)")  # PostgreSQL's COPY error context
_MAX_SHARE = 0.5  # more suspects than this share of the batch: bisect instead


def _null_in(rows: Sequence[dict[str, Any]], col: str) -> list[int]:
    return [i for i, row in enumerate(rows) if col in row and row[col] is None]


def _equal_in(rows: Sequence[dict[str, Any]], cols: list[str], vals: list[str]) -> list[int]:
    return [
        i
        for i, row in enumerate(rows)
        if all(col in row and str(row[col]) == val for col, val in zip(cols, vals, strict=True))
    ]


def _any_equal(rows: Sequence[dict[str, Any]], val: str) -> list[int]:
    return [i for i, row in enumerate(rows) if any(str(v) == val for v in row.values())]


def _state(err: Any) -> Any:
    """The SQLSTATE of a PostgreSQL error: ``sqlstate`` (psycopg 3) or ``pgcode`` (psycopg2)."""
    return getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)


def _from_postgres(err: Any, rows: Sequence[dict[str, Any]]) -> list[int]:
    state = _state(err)
    diag = getattr(err, "diag", None)
    if diag is None or not isinstance(state, str):
        return []
    line = _COPY_LINE.match(diag.context or "")
    if line and 0 < int(line["line"]) <= len(rows):  # COPY names the row itself
        return [int(line["line"]) - 1]
    if state == "23502" and diag.column_name:  # not_null_violation
        return _null_in(rows, diag.column_name)
    match = _KEY.search(diag.message_detail or "")
    if match:  # unique / foreign key / exclusion: "Key (a, b)=(1, x) ..."
        cols = [c.strip() for c in match["cols"].split(",")]
        vals = [v.strip() for v in match["vals"].split(",")] if len(cols) > 1 else [match["vals"]]
        return _equal_in(rows, cols, vals) if len(vals) == len(cols) else []
    quoted = _QUOTED.search(diag.message_primary or "")
    if state.startswith("22") and quoted:  # invalid input syntax: '... integer: "abc"'
        return _any_equal(rows, quoted["val"])
    return []


def _from_message(text: str, rows: Sequence[dict[str, Any]]) -> list[int]:
    for pattern in _NOT_NULL_TEXT:
        match = pattern.search(text)
        if match:
            return _null_in(rows, match["col"])
    match = _DUPLICATE_TEXT.search(text)
    return _any_equal(rows, match["val"]) if match else []


def copy_line(error: BaseException, rows: Sequence[dict[str, Any]]) -> int | None:
    """The index of the row a failed COPY names (``COPY t, line N``), if it names one.

    Unlike the other hints this one is certain: the server rejected exactly that
    row (NOT NULL, CHECK, a unique key, a value it could not parse).
    """
    diag = getattr(error, "diag", None)
    line = _COPY_LINE.match(getattr(diag, "context", None) or "")
    if line and 0 < int(line["line"]) <= len(rows):
        return int(line["line"]) - 1
    return None


def null_column(error: BaseException) -> str | None:
    """The column a NOT NULL violation names (PostgreSQL, MySQL/MariaDB, SQLite), if any."""
    diag = getattr(error, "diag", None)
    if _state(error) == "23502" and diag is not None:
        column = getattr(diag, "column_name", None)
        return column if isinstance(column, str) and column else None
    text = str(error)
    for pattern in _NOT_NULL_TEXT:
        match = pattern.search(text)
        if match:
            return match["col"]
    return None


def suspects(error: BaseException, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Return the indexes of the rows the error points at (empty: no usable hint).

    Args:
        error: The driver error (``exc.orig`` of the SQLAlchemy exception).
        rows: The parameter rows of the failed statement.

    Returns:
        Indexes into ``rows``; empty when the error names nothing usable or names
        too much of the batch to be a useful hint.
    """
    found = _from_postgres(error, rows) or _from_message(str(error), rows)
    return found if len(found) <= max(1, int(len(rows) * _MAX_SHARE)) else []
