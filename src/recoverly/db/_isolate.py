"""One safe_bulk_insert call: its statements, the failed records, isolating bad rows.

A batch is one COPY or one bulk INSERT in a savepoint (see
:mod:`recoverly.db.bulk`). When it fails because of its data, :class:`BulkRun`
finds the bad rows: by the line a COPY names, by the error's hint, else by
bisection; every other row is inserted again and lands.
"""

from __future__ import annotations

import math
from typing import Any, cast

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapper, Session
from sqlalchemy.sql.schema import Table

from recoverly.db import _pipelined
from recoverly.db._bulk_support import is_row_error, quiet_pipeline, statement
from recoverly.db._copy import CopyPlan, CopyWire
from recoverly.db._suspects import copy_line, null_column, suspects

__all__ = ["COPY_STATEMENT_ROWS", "BulkRun"]

#: What one more COPY statement costs, in rows' worth of loading (measured with
#: ``benchmarks/bench_db_copy.py`` at 0.1-10 % bad rows).
COPY_STATEMENT_ROWS = 100
_PRIOR_ROWS = 1000  # how much the load's share of bad rows counts against one batch's

# None means NULL (not "omit the column"), so every row of a batch has the same
# columns and the batch stays one statement.
_OPTIONS = {"render_nulls": True}


class BulkRun:
    """The statements of one load, the records that failed, and the isolation of bad rows.

    ``uniform`` (every row of the batch names the same keys) is passed along
    with each batch: a batch of rows with different keys goes through the
    ORM's INSERT, which fills in each row's omitted columns.
    """

    __slots__ = (
        "bad_share",
        "copy",
        "core",
        "db",
        "dialect",
        "failed",
        "force_copy",
        "isolations",
        "mapper",
        "orm",
        "pipelined",
        "refuse_null",
        "wire",
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
        self.dialect = db.get_bind(mapper).dialect
        # Core batches and their savepoints in one round trip (psycopg 3).
        self.pipelined = self.core is not None and _pipelined.possible(self.dialect)
        self.copy: CopyPlan | None = None
        self.wire: CopyWire | None = None
        self.force_copy = method == "copy"
        if method != "insert":
            dialect = self.dialect
            usable = plain and on_conflict is None and CopyPlan.possible(dialect)
            if usable:
                self.copy = CopyPlan(cast("Table", mapper.local_table), dialect)
                self.wire = CopyWire(dialect)
            elif self.force_copy:
                msg = (
                    "method='copy' needs PostgreSQL through psycopg 3, a mapper over one "
                    f"table and no on_conflict; got {dialect.name}+{dialect.driver}"
                )
                raise ValueError(msg)
        self.failed: list[tuple[Any, BaseException]] = []
        self.isolations = 0
        self.bad_share = 0.0  # the load's recent share of bad rows
        # Keys of the columns that refused a NULL in this load: a later row with
        # None there goes on its own instead of failing its whole batch.
        self.refuse_null: tuple[str, ...] = ()

    def connection(self) -> Connection:
        """The session's connection for the mapper (begins a transaction if none is open)."""
        return self.db.connection(bind_arguments={"mapper": self.mapper})

    def copy_plan(
        self, rows: list[dict[str, Any]], *, uniform: bool
    ) -> tuple[str, tuple[str, ...]] | None:
        """The COPY statement and key order for this batch, or ``None`` to INSERT it.

        Raises:
            ValueError: ``method="copy"`` and COPY would not insert exactly what
                INSERT would.
        """
        if self.copy is None or not (uniform or len(rows) == 1):
            return None
        plan = self.copy.statement(rows[0].keys())
        if plan is None and self.force_copy:
            msg = (
                f"method='copy' cannot load the columns {sorted(rows[0])} exactly: one "
                "converts its values in SQLAlchemy (JSON, enum, custom type) or an "
                "omitted one has a Python-side default; use method='auto'"
            )
            raise ValueError(msg)
        return plan

    def execute(self, rows: list[dict[str, Any]], *, uniform: bool) -> None:
        """One COPY (or bulk INSERT) of ``rows`` in a savepoint of the session's transaction."""
        plan = self.copy_plan(rows, uniform=uniform)
        if plan is not None:
            sql, keys = plan
            cast("CopyWire", self.wire).load(self.connection(), sql, keys, rows)
            return
        if self.core is not None and (uniform or len(rows) == 1):
            conn = self.connection()
            if self.pipelined:
                with quiet_pipeline():
                    _pipelined.insert_batch(self.dialect, conn, self.core, rows)
                return
            with quiet_pipeline(), conn.begin_nested():
                conn.execute(self.core, rows)
        else:
            with quiet_pipeline(), self.db.begin_nested():
                self.db.execute(self.orm, rows, execution_options=_OPTIONS)

    def insert_batch(
        self, records: list[Any], rows: list[dict[str, Any]], done: list[Any], *, uniform: bool
    ) -> int:
        """Insert one batch; rows with None where the table refused NULL before go first, alone.

        Such a row would almost certainly fail its batch again, and a failed
        batch costs about one re-send of all its rows; alone it costs one short
        statement (and still lands if a trigger fills the column in). Returns
        how many of those rows failed.
        """
        columns = self.refuse_null
        if not columns:
            self.insert(records, rows, done, uniform=uniform)
            return 0
        aside = [i for i, row in enumerate(rows) if any(row.get(key, 0) is None for key in columns)]
        if not aside:
            self.insert(records, rows, done, uniform=uniform)
            return 0
        self.isolations += 1  # rows may land out of input order
        failed_before = len(self.failed)
        for i in aside:
            self.insert([records[i]], [rows[i]], done, uniform=True)
        failed = len(self.failed) - failed_before
        chosen = set(aside)
        rest = [i for i in range(len(rows)) if i not in chosen]
        self.insert([records[i] for i in rest], [rows[i] for i in rest], done, uniform=uniform)
        return failed

    def insert(
        self, records: list[Any], rows: list[dict[str, Any]], done: list[Any], *, uniform: bool
    ) -> None:
        """Insert ``rows`` (isolating bad rows); append landed records to ``done``."""
        if not rows:
            return
        try:
            self.execute(rows, uniform=uniform)
        except Exception as exc:
            self.recover(records, rows, done, exc, uniform=uniform)
            return
        done.extend(records)

    def recover(
        self,
        records: list[Any],
        rows: list[dict[str, Any]],
        done: list[Any],
        exc: Exception,
        *,
        uniform: bool,
    ) -> None:
        """After ``rows`` failed with ``exc``: re-raise it, or isolate its bad rows.

        Raises:
            Exception: ``exc`` itself when it is not the rows' fault.
        """
        if not is_row_error(exc):
            raise exc
        if len(rows) == 1:
            self.failed.append((records[0], exc))
            return
        self.isolate(records, rows, done, exc, uniform=uniform)

    def isolate(
        self,
        records: list[Any],
        rows: list[dict[str, Any]],
        done: list[Any],
        exc: Exception,
        *,
        uniform: bool,
    ) -> None:
        """Find the bad rows of a failed batch: by the line COPY names, the error's hint, bisection.

        Rows another error points at are tried one by one and the others go back
        as one batch, so a bad row usually costs one resend of its batch instead
        of about two with bisection.

        Raises:
            Exception: An error that is not the rows' fault, from a later attempt.
        """
        self.isolations += 1
        left = self.by_line(records, rows, done, exc, uniform=uniform)
        if left is None:
            return
        records, rows, exc = left
        error = getattr(exc, "orig", None) or exc
        column = null_column(error)
        if column is not None and column not in self.refuse_null:
            self.refuse_null = (*self.refuse_null, column)
        hint = suspects(error, rows)
        if not hint:
            self.split(records, rows, done, uniform=uniform)
            return
        chosen = set(hint)
        rest = [i for i in range(len(rows)) if i not in chosen]
        for i in hint:
            self.insert([records[i]], [rows[i]], done, uniform=True)
        self.insert([records[i] for i in rest], [rows[i] for i in rest], done, uniform=uniform)

    def by_line(
        self,
        records: list[Any],
        rows: list[dict[str, Any]],
        done: list[Any],
        exc: Exception,
        *,
        uniform: bool,
    ) -> tuple[list[Any], list[dict[str, Any]], Exception] | None:
        """Take out the rows a failing COPY names by line until the rest lands.

        A row named by its line is certainly bad: it is reported and the rest of
        the batch goes back as one COPY, again until it lands (a loop, not a
        recursion: a batch may hold many bad rows). Returns ``None`` when done,
        or the rows left and their error when it names no line (a foreign key,
        checked at the end of the statement; INSERT errors).

        Raises:
            Exception: An error that is not the rows' fault, from a later attempt.
        """
        error = getattr(exc, "orig", None) or exc
        seen = scanned = 0  # bad rows named in this batch, rows the server went through
        while (line := copy_line(error, rows)) is not None:
            self.failed.append((records[line], exc))
            seen, scanned = seen + 1, scanned + line + 1
            # The share of bad rows to expect further on: this batch's, weighed
            # against the load's recent share as if that came from _PRIOR_ROWS rows.
            share = (seen + _PRIOR_ROWS * self.bad_share) / (scanned + _PRIOR_ROWS)
            records, rows = self.without(records, rows, line, share, done, uniform=uniform)
            piece = round(math.sqrt(COPY_STATEMENT_ROWS / share))
            if len(rows) > 2 * piece:
                # Far more rows than a batch should hold at this share of bad
                # rows: send them in batches of that size instead.
                for start in range(0, len(rows), piece):
                    end = start + piece
                    self.insert(records[start:end], rows[start:end], done, uniform=uniform)
                return None
            if not rows:
                return None
            try:
                self.execute(rows, uniform=uniform)
            except Exception as again:
                if not is_row_error(again) or len(rows) == 1:
                    self.recover(records, rows, done, again, uniform=uniform)
                    return None
                exc, error = again, getattr(again, "orig", None) or again
                continue
            done.extend(records)
            return None
        return records, rows, exc

    def without(
        self,
        records: list[Any],
        rows: list[dict[str, Any]],
        line: int,
        share: float,
        done: list[Any],
        *,
        uniform: bool,
    ) -> tuple[list[Any], list[dict[str, Any]]]:
        """The batch without its bad row at ``line``, to be sent again.

        When more bad rows are likely further on, the rows before ``line``
        (which passed the checks made row by row, unless a unique key checked
        later fails) are inserted on their own first: one more statement, but
        the server does not load and roll them back again at the next bad row.
        """
        if line * share * (len(rows) - line) >= COPY_STATEMENT_ROWS:
            self.insert(records[:line], rows[:line], done, uniform=uniform)
            return records[line + 1 :], rows[line + 1 :]
        return records[:line] + records[line + 1 :], rows[:line] + rows[line + 1 :]

    def split(
        self, records: list[Any], rows: list[dict[str, Any]], done: list[Any], *, uniform: bool
    ) -> None:
        """Insert the two halves of a failed batch, each in its own savepoint."""
        mid = len(rows) // 2
        self.insert(records[:mid], rows[:mid], done, uniform=uniform)
        self.insert(records[mid:], rows[mid:], done, uniform=uniform)
