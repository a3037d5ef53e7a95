"""safe_bulk_insert's COPY path on real PostgreSQL: pipelined batches, bad rows anywhere in them."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

sa = pytest.importorskip("sqlalchemy")
pytest.importorskip("psycopg")

from sqlalchemy import event, select  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column  # noqa: E402

from recoverly.db._copy import CopyWire  # noqa: E402
from recoverly.db.bulk import safe_bulk_insert  # noqa: E402


class Base(DeclarativeBase):
    pass


class Parent(Base):
    __tablename__ = "copypipe_parents"
    id: Mapped[int] = mapped_column(primary_key=True)


class Row(Base):
    __tablename__ = "copypipe_rows"
    __table_args__ = (sa.CheckConstraint("qty >= 0", name="copypipe_qty_not_negative"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    code: Mapped[str] = mapped_column(sa.String(40), unique=True)
    qty: Mapped[int]
    parent_id: Mapped[int] = mapped_column(sa.ForeignKey("copypipe_parents.id"))
    note: Mapped[str | None] = mapped_column(sa.Text)


@pytest.fixture
def pg(pg_engine: Any) -> Any:
    Base.metadata.create_all(pg_engine)
    with Session(pg_engine) as s:
        s.add_all([Parent(id=1), Parent(id=2)])
        s.add(Row(id=-1, code="taken", qty=0, parent_id=1))
        s.commit()
    return pg_engine


# The kinds of bad row, and the SQLSTATE each one fails with.
KINDS = {
    "not_null": ({"qty": None}, "23502"),
    "check": ({"qty": -1}, "23514"),
    "unique": ({"code": "taken"}, "23505"),
    "foreign_key": ({"parent_id": 99}, "23503"),
    "bad_type": ({"qty": "many"}, "22P02"),
}


def _rows(n: int, bad: dict[int, str] | None = None) -> list[dict[str, Any]]:
    rows = [
        {"id": i, "code": f"c{i}", "qty": i % 50, "parent_id": 1 + i % 2, "note": None}
        for i in range(n)
    ]
    for i, kind in (bad or {}).items():
        rows[i] = {**rows[i], **KINDS[kind][0]}
    return rows


def _ids(engine: Any) -> list[int]:
    with Session(engine) as s:
        return sorted(s.scalars(select(Row.id).where(Row.id >= 0)))


def _sends(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Spy on the COPY batches sent: the ids of each batch, in the order of its lines."""
    seen: list[list[int]] = []
    send = CopyWire.send

    def spy(self: CopyWire, conn: Any, sql: str, data: bytes) -> None:
        seen.append([int(line.split(b"\t", 1)[0]) for line in data.splitlines()])
        send(self, conn, sql, data)

    monkeypatch.setattr(CopyWire, "send", spy)
    return seen


def _check(rows: list[dict[str, Any]], bad: dict[int, str], result: Any, engine: Any) -> None:
    """Exactly the good rows landed, in input order; every bad row failed with its own error."""
    inserted, failed = result
    errors = {record["id"]: exc for record, exc in failed}
    assert sorted(errors) == sorted(bad)
    for i, kind in bad.items():
        assert errors[i].orig.sqlstate == KINDS[kind][1], (i, kind, errors[i])
        expected = sa.exc.DataError if kind == "bad_type" else sa.exc.IntegrityError
        assert isinstance(errors[i], expected)
    good = [r["id"] for r in rows if r["id"] not in bad]
    assert [r["id"] for r in inserted] == good
    assert _ids(engine) == good


def test_batches_are_pipelined_and_grow_while_no_row_is_bad(pg, monkeypatch):
    """Clean rows: one COPY per batch, batches double from 250 up to batch_size, all rows land."""
    sends = _sends(monkeypatch)
    calls: list[str] = []
    for name in ("format", "finish"):
        real = getattr(CopyWire, name)

        def spy(*args: Any, _real: Any = real, _name: str = name) -> Any:
            calls.append(_name)
            return _real(*args)

        monkeypatch.setattr(CopyWire, name, staticmethod(spy) if name == "format" else spy)
    rows = _rows(6000)
    with Session(pg) as s:
        result = safe_bulk_insert(s, Row, rows, batch_size=2000)
    _check(rows, {}, result, pg)
    # the next batch is formatted while the server loads the one in flight
    assert calls[:4] == ["format", "format", "finish", "format"]
    assert calls.count("format") == calls.count("finish") == len(sends)
    sizes = [len(batch) for batch in sends]
    assert sizes[:2] == [250, 250]  # the second batch is cut before the first one's outcome
    assert max(sizes) == 2000
    assert sizes == sorted(sizes[:-1]) + sizes[-1:]  # never shrinks without a bad row
    assert sum(sizes) == 6000


def test_bad_rows_on_the_first_and_last_line_of_a_long_batch(pg, monkeypatch):
    """A bad row opening and one closing the longest COPY of the load: only they fail."""
    probe = _sends(monkeypatch)
    with Session(pg) as s:
        safe_bulk_insert(s, Row, _rows(12_000), batch_size=4000, commit=False)
        s.rollback()
    longest = max(probe, key=len)
    assert len(longest) == 4000
    bad = {longest[0]: "unique", longest[-1]: "not_null"}
    rows = _rows(12_000, bad)
    with Session(pg) as s:
        result = safe_bulk_insert(s, Row, rows, batch_size=4000)
    _check(rows, bad, result, pg)


def test_several_bad_rows_of_every_kind_in_one_batch(pg, monkeypatch):
    """Ten bad rows of five kinds in one batch of 200: all reported, a bounded number of COPYs."""
    sends = _sends(monkeypatch)
    kinds = list(KINDS)
    bad = {i: kinds[k % len(kinds)] for k, i in enumerate(range(3, 200, 20))}
    rows = _rows(200, bad)
    with Session(pg) as s:
        result = safe_bulk_insert(s, Row, rows, batch_size=200)
    _check(rows, bad, result, pg)
    assert len(sends) <= 1 + 3 * len(bad)  # about one COPY per bad row, a few more for keys


def test_bad_rows_at_a_commit_boundary(pg, monkeypatch):
    """Bad rows closing one transaction and opening the next: commits still every 300 rows."""
    commits: list[int] = []
    event.listen(pg, "commit", lambda conn: commits.append(len(_ids(pg))))
    bad = {299: "check", 300: "bad_type", 599: "foreign_key"}
    rows = _rows(900, bad)
    with Session(pg) as s:
        result = safe_bulk_insert(s, Row, rows, batch_size=100, commit_every=300)
    _check(rows, bad, result, pg)
    # each commit found the rows of the transactions before it (seen from another connection)
    assert commits == [0, 299, 597]


def test_a_long_batch_of_bad_rows_is_isolated_without_recursion(pg, monkeypatch):
    """Every row of two batches longer than the recursion limit is bad: all found, in a loop."""
    sends = _sends(monkeypatch)
    limit = sys.getrecursionlimit() + 500
    clean = 2 * (250 + 500 + 1000)  # the batches grow to `limit` while no row is bad
    n = clean + 2 * limit
    bad = dict.fromkeys(range(clean, n), "not_null")
    rows = _rows(n, bad)
    with Session(pg) as s:
        result = safe_bulk_insert(s, Row, rows, batch_size=limit)
    assert [len(batch) for batch in sends].count(limit) == 2  # two batches entirely bad
    _check(rows, bad, result, pg)


def test_values_with_tabs_newlines_and_backslashes_keep_line_numbers(pg):
    """Text with COPY's special characters lands as it is; the bad row after it is the one named."""
    rows = _rows(40, {20: "check"})
    rows[10]["note"] = "tab\there\nnew line \\N back\\slash\r\n"
    rows[11]["note"] = ""  # an empty string is not NULL
    rows[12]["note"] = "ünïcödé ✓"
    with Session(pg) as s:
        result = safe_bulk_insert(s, Row, rows, batch_size=40)
    _check(rows, {20: "check"}, result, pg)
    with Session(pg) as s:
        notes = dict(s.execute(select(Row.id, Row.note).where(Row.id.in_([10, 11, 12, 13]))).all())
    assert notes == {10: rows[10]["note"], 11: "", 12: "ünïcödé ✓", 13: None}


def test_batches_naming_keys_in_another_order_load_the_right_columns(pg):
    """The same keys in a different order in a later batch still land in their own columns."""
    first = [{"id": i, "code": f"c{i}", "qty": i, "parent_id": 1} for i in range(3)]
    later = [{"parent_id": 2, "qty": 100 + i, "code": f"d{i}", "id": 10 + i} for i in range(3)]
    with Session(pg) as s:
        inserted, failed = safe_bulk_insert(s, Row, first + later, batch_size=3, method="copy")
    assert (len(inserted), failed) == (6, [])
    with Session(pg) as s:
        got = s.execute(select(Row.id, Row.code, Row.qty, Row.parent_id).where(Row.id >= 10))
        assert sorted(got.all()) == [(10 + i, f"d{i}", 100 + i, 2) for i in range(3)]


def test_lost_connection_during_copy_propagates_and_keeps_committed_rows(pg, pg_kill, monkeypatch):
    """A backend killed between batches: OperationalError, connection invalidated, no isolation."""
    sends = _sends(monkeypatch)
    send = CopyWire.send  # the spy

    def kill_before_fourth(self: CopyWire, conn: Any, sql: str, data: bytes) -> None:
        if len(sends) == 3:
            pg_kill(conn.connection.dbapi_connection.info.backend_pid)
        send(self, conn, sql, data)

    monkeypatch.setattr(CopyWire, "send", kill_before_fourth)
    with Session(pg) as s, pytest.raises(sa.exc.OperationalError) as info:
        safe_bulk_insert(s, Row, _rows(1000), batch_size=100, commit_every=200)
    assert info.value.connection_invalidated
    assert len(sends) == 4  # no isolation: the error is not the rows'
    # batches 1-2 were committed; batch 3 had landed, uncommitted, and died with the backend
    assert _ids(pg) == list(range(200))
    if sys.version_info >= (3, 11):
        assert "200 records were committed" in "".join(info.value.__notes__)
    with Session(pg) as s:  # the pool hands out a working connection again
        assert s.scalar(select(sa.func.count()).select_from(Row)) == 201


def test_copy_of_a_missing_table_propagates_after_one_attempt(pg, monkeypatch):
    """A COPY that cannot start is the statement's fault: one attempt, the error, no failed rows."""
    Row.__table__.drop(pg)
    sends = _sends(monkeypatch)
    with Session(pg) as s, pytest.raises(sa.exc.ProgrammingError) as info:
        safe_bulk_insert(s, Row, _rows(50), batch_size=50, method="copy")
    assert info.value.orig.sqlstate == "42P01"
    assert len(sends) == 1


def _failing_after(rows: list[dict[str, Any]], n: int) -> Iterator[dict[str, Any]]:
    for i, row in enumerate(rows):
        if i == n:
            msg = "source broke"
            raise RuntimeError(msg)
        yield row


def test_source_error_while_a_copy_is_in_flight_leaves_a_usable_session(pg):
    """The records' iterator fails with a COPY in flight: its error propagates, commits stay."""
    with Session(pg) as s:
        with pytest.raises(RuntimeError, match="source broke"):
            records = _failing_after(_rows(700), 650)
            safe_bulk_insert(s, Row, records, batch_size=100, commit_every=200)
        # two transactions of 200 rows were committed; the third (rows 400-599 landed,
        # 600-649 not sent yet) was rolled back with the error
        assert s.scalar(select(sa.func.count()).select_from(Row)) == 1 + 400
    assert _ids(pg) == list(range(400))


def test_commit_false_after_a_failed_batch_leaves_the_transaction_usable(pg):
    """commit=False: the caller's transaction stays usable after bad rows, with the good ones."""
    rows = _rows(300, {5: "not_null", 250: "foreign_key"})
    with Session(pg) as s:
        s.add(Parent(id=3))
        with s.begin_nested():
            inserted, failed = safe_bulk_insert(s, Row, rows, batch_size=100, commit=False)
        assert (len(inserted), len(failed)) == (298, 2)
        assert s.scalar(select(sa.func.count()).select_from(Row)) == 1 + 298
        s.rollback()
    assert _ids(pg) == []
    with Session(pg) as s:
        assert s.get(Parent, 3) is None  # the caller's own pending work was rolled back too


@pytest.mark.parametrize("when", ["before the data", "before the end of the data"])
def test_interrupt_while_sending_a_batch_leaves_a_usable_connection(pg, monkeypatch, when):
    """Ctrl-C half way through sending a COPY: it propagates, the COPY is settled, commits stay."""
    from recoverly.db import _copy

    flush = _copy._flush
    calls = 0
    # send() flushes after the query (1) and after the data (2); finish() flushes once (3).
    # Batch 1 takes calls 1-3, then batch 2 is sent: interrupt at its call 4 or 5.
    target = 4 if when == "before the data" else 5

    def interrupted(pg_conn: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == target:
            raise KeyboardInterrupt
        flush(pg_conn)

    monkeypatch.setattr(_copy, "_flush", interrupted)
    with Session(pg) as s:
        with pytest.raises(KeyboardInterrupt):
            safe_bulk_insert(s, Row, _rows(300), batch_size=100, commit_every=100)
        assert s.scalar(select(sa.func.count()).select_from(Row)) == 1 + 100
    assert _ids(pg) == list(range(100))  # batch 1 was committed before the interruption


def test_unique_checked_at_the_end_of_the_statement_is_found_by_its_key(pg):
    """A DEFERRABLE unique key names no line (checked after the COPY): its key finds the row."""
    with pg.begin() as conn:
        conn.execute(
            sa.text(
                "ALTER TABLE copypipe_rows DROP CONSTRAINT copypipe_rows_code_key, "
                "ADD CONSTRAINT copypipe_rows_code_key UNIQUE (code) DEFERRABLE INITIALLY IMMEDIATE"
            )
        )
    bad = {30: "unique", 70: "check"}
    rows = _rows(100, bad)
    with Session(pg) as s:
        result = safe_bulk_insert(s, Row, rows, batch_size=100)
    _check(rows, bad, result, pg)
    unique = next(exc for record, exc in result[1] if record["id"] == 30)
    assert "line" not in (unique.orig.diag.context or "")  # found by its key, not by a line


def test_foreign_key_deferred_to_commit_fails_the_commit(pg):
    """A key deferred to COMMIT fails the commit: that error propagates, earlier commits stay."""
    with pg.begin() as conn:
        conn.execute(
            sa.text(
                "ALTER TABLE copypipe_rows DROP CONSTRAINT copypipe_rows_parent_id_fkey, "
                "ADD CONSTRAINT copypipe_rows_parent_id_fkey FOREIGN KEY (parent_id) "
                "REFERENCES copypipe_parents (id) DEFERRABLE INITIALLY DEFERRED"
            )
        )
    rows = _rows(300, {150: "foreign_key"})
    with Session(pg) as s, pytest.raises(sa.exc.IntegrityError) as info:
        safe_bulk_insert(s, Row, rows, batch_size=100, commit_every=100)
    assert info.value.orig.sqlstate == "23503"
    assert _ids(pg) == list(range(100))
    if sys.version_info >= (3, 11):
        assert "100 records were committed" in "".join(info.value.__notes__)
