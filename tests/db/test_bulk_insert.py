"""safe_bulk_insert on real PostgreSQL, SQLite and MariaDB: bad rows isolated, good rows kept."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

sa = pytest.importorskip("sqlalchemy")

from sqlalchemy import event, select  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column  # noqa: E402

from recoverly.db._copy import CopyWire  # noqa: E402
from recoverly.db.bulk import DEFAULT_BATCH_SIZE, is_row_error, safe_bulk_insert  # noqa: E402
from recoverly.db.savepoint import enable_sqlite_savepoints  # noqa: E402


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    # SQLite would store 'abc' in an INTEGER column; the check makes it a type error there too
    __table_args__ = (sa.CheckConstraint("typeof(qty) = 'integer'").ddl_if(dialect="sqlite"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(sa.String(40), unique=True)
    qty: Mapped[int]


def _engine(request, name):
    engine = request.getfixturevalue(f"{name}_engine")
    if name == "sqlite":
        enable_sqlite_savepoints(engine)
    Base.metadata.create_all(engine)
    return engine


@pytest.fixture(params=["pg", "sqlite", "mysql"])
def engine(request):
    return _engine(request, request.param)


@pytest.fixture
def pg(request):
    return _engine(request, "pg")


def _codes(engine) -> list[str]:
    with Session(engine) as s:
        return sorted(s.scalars(select(Item.code)))


def _count_inserts(engine) -> list[str]:
    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def count(conn, cursor, statement, params, context, executemany):
        if statement.lstrip().upper().startswith("INSERT"):
            seen.append(statement)

    return seen


def _records(n: int, bad: dict[int, dict]) -> list[dict]:
    rows = [{"id": i, "code": f"c{i}", "qty": i} for i in range(n)]
    for i, change in bad.items():
        rows[i] = {**rows[i], **change}
    return rows


def test_scattered_bad_rows_only_good_rows_land(engine):
    """NOT NULL, unique (existing and within one batch) and type errors fail; the rest lands."""
    with Session(engine) as s:
        s.add(Item(id=10_000, code="taken", qty=1))
        s.commit()
    bad = {
        3: {"qty": None},  # NOT NULL
        17: {"code": "taken"},  # unique, against an existing row
        40: {"code": "c41"},  # duplicate of row 41, same batch: the later one (41) fails
        77: {"qty": "abc"},  # not an integer
        150: {"qty": None},
    }
    records = _records(160, bad)
    with Session(engine) as s:
        inserted, failed = safe_bulk_insert(s, Item, records, batch_size=64)

    failed_ids = sorted(r["id"] for r, _ in failed)
    # one of the two rows sharing a code fails: the later one with INSERT; with COPY
    # PostgreSQL checks unique indexes when its insert buffer flushes, so either
    assert [i for i in failed_ids if i not in (40, 41)] == [3, 17, 77, 150]
    assert len(set(failed_ids) & {40, 41}) == 1
    assert len(inserted) == 155
    assert all(r["id"] not in failed_ids for r in inserted)
    expected = sorted([r["code"] for r in records if r["id"] not in failed_ids] + ["taken"])
    assert _codes(engine) == expected
    errors = {r["id"]: e for r, e in failed}
    for i in (3, 17, 150, *(set(failed_ids) & {40, 41})):
        assert isinstance(errors[i], sa.exc.IntegrityError)
    assert isinstance(errors[77], sa.exc.DataError | sa.exc.IntegrityError)
    assert all(is_row_error(e) for _, e in failed)


def test_clean_records_take_one_insert_per_batch(pg):
    """Without bad rows every batch is one INSERT statement and everything lands."""
    inserts = _count_inserts(pg)
    with Session(pg) as s:
        inserted, failed = safe_bulk_insert(
            s, Item, _records(250, {}), batch_size=100, method="insert"
        )
    assert (len(inserted), failed) == (250, [])
    assert len(inserts) == 3
    assert len(_codes(pg)) == 250


@pytest.mark.parametrize(("n", "bad_ids"), [(1024, [517]), (1000, [5, 400, 999])])
def test_bisection_takes_logarithmic_round_trips(pg, n, bad_ids):
    """k bad rows in one batch of n cost about 1 + 2*k*log2(n) INSERTs, not n."""
    inserts = _count_inserts(pg)
    records = _records(n, {key: {"qty": None} for key in bad_ids})
    with Session(pg) as s:
        inserted, failed = safe_bulk_insert(s, Item, records, batch_size=n, method="insert")
    assert sorted(r["id"] for r, _ in failed) == bad_ids
    assert len(inserted) == n - len(bad_ids)
    bound = 1 + 2 * len(bad_ids) * math.ceil(math.log2(n))
    assert len(inserts) <= bound
    assert len(inserts) < n / 10
    assert len(_codes(pg)) == n - len(bad_ids)


def test_connection_loss_propagates_without_bisecting(pg, pg_kill):
    """A killed connection is not blamed on rows: it propagates, committed batches stay."""
    inserts = _count_inserts(pg)
    with Session(pg) as s:
        pid = s.execute(sa.text("SELECT pg_backend_pid()")).scalar()

        @event.listens_for(pg, "before_cursor_execute")
        def kill_on_second_batch(conn, cursor, statement, params, context, executemany):
            if statement.startswith("INSERT") and len(inserts) == 2:
                pg_kill(pid)

        with pytest.raises(sa.exc.OperationalError) as info:
            safe_bulk_insert(
                s, Item, _records(300, {}), batch_size=100, commit_every=100, method="insert"
            )
    assert info.value.connection_invalidated
    assert len(inserts) == 2  # the first batch, then the one that hit the dead connection
    assert len(_codes(pg)) == 100
    if sys.version_info >= (3, 11):
        assert "100 records were committed" in "".join(info.value.__notes__)


def test_statement_error_propagates_instead_of_blaming_every_row(pg):
    """A missing table is the statement's fault: one INSERT, then the error, no failed rows."""
    Item.__table__.drop(pg)
    inserts = _count_inserts(pg)
    with Session(pg) as s, pytest.raises(sa.exc.ProgrammingError):
        safe_bulk_insert(s, Item, _records(50, {}), batch_size=50, method="insert")
    assert len(inserts) == 1


@pytest.mark.parametrize("name", ["pg", "sqlite"])
def test_on_conflict_skip_accepts_existing_rows(request, name):
    """on_conflict='skip' treats unique collisions as done; other bad rows are still reported."""
    eng = _engine(request, name)
    with Session(eng) as s:
        s.add(Item(id=10_000, code="c5", qty=1))
        s.commit()
    records = _records(20, {9: {"qty": None}})
    with Session(eng) as s:
        inserted, failed = safe_bulk_insert(s, Item, records, batch_size=8, on_conflict="skip")
    assert [r["id"] for r, _ in failed] == [9]
    assert len(inserted) == 19  # record 5 collided and counts as present
    assert len(_codes(eng)) == 19  # 18 new rows plus the existing c5
    with Session(eng) as s:  # running the same load again changes nothing
        again, failed_again = safe_bulk_insert(s, Item, records, on_conflict="skip")
    assert (len(again), len(failed_again)) == (19, 1)
    assert len(_codes(eng)) == 19


def test_on_conflict_skip_is_refused_on_mariadb(request):
    """MariaDB has no DO NOTHING: asking for it is a ValueError naming the dialect."""
    eng = _engine(request, "mysql")
    with Session(eng) as s, pytest.raises(ValueError, match="'mysql'"):
        safe_bulk_insert(s, Item, _records(3, {}), on_conflict="skip")


def test_instances_and_unusable_records(pg):
    """Mapped instances are inserted; a record with an unknown key fails without being sent."""
    records = [Item(id=1, code="a", qty=1), {"id": 2, "code": "b", "qty": 2, "colour": "red"}, 7]
    with Session(pg) as s:
        inserted, failed = safe_bulk_insert(s, Item, records)
    assert inserted == [records[0]]
    assert [r for r, _ in failed] == [records[1], 7]
    assert all(isinstance(e, ValueError) for _, e in failed)
    assert "'colour'" in str(failed[0][1])
    assert _codes(pg) == ["a"]


def test_commit_false_leaves_the_transaction_to_the_caller(pg):
    """With commit=False nothing is committed: the caller's rollback removes every row."""
    with Session(pg) as s:
        inserted, failed = safe_bulk_insert(
            s, Item, _records(10, {2: {"qty": None}}), 4, commit=False
        )
        assert (len(inserted), len(failed)) == (9, 1)
        assert s.scalar(select(sa.func.count()).select_from(Item)) == 9
        s.rollback()
    assert _codes(pg) == []


def test_inside_the_callers_savepoint_bad_rows_leave_it_usable(engine):
    """Batch savepoints nest inside the caller's own: rolling that back removes only the load."""
    with Session(engine) as s:
        s.add(Item(id=5000, code="before", qty=1))
        s.flush()
        outer = s.begin_nested()
        records = _from_one(600, {3: {"qty": None}, 250: {"code": "c1"}, 251: {"qty": None}})
        inserted, failed = safe_bulk_insert(s, Item, records, commit=False, method="insert")
        assert sorted(r["id"] for r, _ in failed) == [3, 250, 251]
        assert [r["id"] for r in inserted] == [i for i in range(1, 601) if i not in (3, 250, 251)]
        assert s.scalar(select(sa.func.count()).select_from(Item)) == 598
        outer.rollback()
        s.add(Item(id=5001, code="after", qty=2))
        s.commit()
    assert _codes(engine) == ["after", "before"]


def test_sqlite_without_the_savepoint_recipe_is_refused(sqlite_engine):
    """On plain pysqlite the call stops with the fix in the message before inserting anything."""
    Base.metadata.create_all(sqlite_engine)
    with Session(sqlite_engine) as s, pytest.raises(RuntimeError, match="enable_sqlite_savepoints"):
        safe_bulk_insert(s, Item, _records(5, {}))
    assert _codes(sqlite_engine) == []


def test_arguments_are_validated(sqlite_engine):
    """Bad batch_size, on_conflict and model_class are reported together, before any SQL."""
    with Session(sqlite_engine) as s:
        with pytest.raises(ValueError, match="batch_size") as info:
            safe_bulk_insert(s, Item, [], batch_size=0, on_conflict="replace")  # type: ignore[arg-type]
        assert "on_conflict" in str(info.value)
        with pytest.raises(TypeError, match="mapped ORM class"):
            safe_bulk_insert(s, dict, [])
    assert DEFAULT_BATCH_SIZE >= 100


def test_row_error_classification():
    """Transient and non-SQLAlchemy errors are never row errors; constraint errors are."""
    integrity = sa.exc.IntegrityError("INSERT", {}, Exception("dup"))
    assert is_row_error(integrity)
    assert not is_row_error(ValueError("x"))
    assert not is_row_error(sa.exc.OperationalError("INSERT", {}, Exception("gone")))


def _load_bench():
    path = Path(__file__).parents[2] / "benchmarks" / "bench_db_bulk.py"
    spec = importlib.util.spec_from_file_location("bench_db_bulk", path)
    assert spec is not None
    assert spec.loader is not None
    module = sys.modules.get("bench_db_bulk")
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_db_bulk"] = module  # SQLAlchemy resolves annotations through it
        spec.loader.exec_module(module)
    return module


def test_benchmark_smoke_on_sqlite(sqlite_url):
    """The bulk benchmark's cases run on 200 SQLite rows and land the right counts."""
    bench = _load_bench()
    counts = bench.smoke(sqlite_url, rows=200, bad_share=0.02)
    assert counts == {
        "clean": 196,
        "safe": 196,
        "row_by_row": 196,
        "row_by_row_commit": 196,
        "failed": 4,
    }


# ---------------------------------------------------------------- isolation by the error's hint
def _insert_sizes(engine) -> list[int]:
    """Rows per INSERT statement sent, in order (executemany counts its parameter sets)."""
    sizes: list[int] = []

    @event.listens_for(engine, "before_cursor_execute")
    def count(conn, cursor, statement, params, context, executemany):
        if statement.lstrip().upper().startswith("INSERT"):
            sizes.append(len(params) if executemany else 1)

    return sizes


def test_not_null_hint_isolates_bad_rows_in_one_pass(pg):
    """PostgreSQL names the NOT NULL column: the batch, each suspect alone, then the rest."""
    sizes = _insert_sizes(pg)
    records = _records(1024, {5: {"qty": None}, 150: {"qty": None}})
    with Session(pg) as s:
        inserted, failed = safe_bulk_insert(s, Item, records, batch_size=1024, method="insert")
    assert sorted(r["id"] for r, _ in failed) == [5, 150]
    assert [r["id"] for r in inserted] == [i for i in range(1024) if i not in (5, 150)]
    assert sizes[:4] == [200, 1, 1, 198]  # the first batch, each suspect, the rest
    assert sum(sizes) == 1024 + 200  # no other batch failed
    assert len(_codes(pg)) == 1024 - 2


def _from_one(n: int, bad: dict[int, dict]) -> list[dict]:
    """``_records`` with ids 1..n: MySQL turns an explicit id 0 into the next AUTO_INCREMENT."""
    return _records(n + 1, bad)[1:]


def test_column_that_refused_null_sends_later_nulls_alone(engine):
    """After a NOT NULL violation, later rows with None there go alone: no other batch fails."""
    sizes = _insert_sizes(engine)
    bad_ids = [5, 400, 999, 1000]
    records = _from_one(1024, {key: {"qty": None} for key in bad_ids})
    with Session(engine) as s:
        inserted, failed = safe_bulk_insert(s, Item, records, method="insert")
    assert [r["id"] for r, _ in failed] == bad_ids
    assert all(isinstance(exc, sa.exc.IntegrityError) for _, exc in failed)
    assert [r["id"] for r in inserted] == [i for i in range(1, 1025) if i not in bad_ids]
    assert sizes.count(1) == len(bad_ids)
    if engine.dialect.name != "mysql":  # MySQL's insertmanyvalues pages: more statements
        assert sum(sizes) == 1024 + 200  # only the first batch failed and went again
    assert len(_codes(engine)) == 1024 - len(bad_ids)


@pytest.mark.parametrize("bad", [{"qty": None}, {"code": "c1"}])
def test_psycopg2_errors_give_hints_too(pg_url, bad):
    """psycopg2 names the SQLSTATE ``pgcode``: its NOT NULL and duplicate-key hints are read too."""
    pytest.importorskip("psycopg2")
    made = sa.engine.make_url(pg_url).set(drivername="postgresql+psycopg2")
    engine = sa.create_engine(made.render_as_string(hide_password=False))
    try:
        Base.metadata.create_all(engine)
        sizes = _insert_sizes(engine)
        records = _records(1000, {500: bad, 900: bad})
        with Session(engine) as s:
            inserted, failed = safe_bulk_insert(s, Item, records, batch_size=400)
        assert [r["id"] for r, _ in failed] == [500, 900]
        assert [r["id"] for r in inserted] == [i for i in range(1000) if i not in (500, 900)]
        # the hint names the row: no bisection (which would send halves of the batch)
        assert len(sizes) <= 10
        assert len(_codes(engine)) == 998
    finally:
        engine.dispose()


def test_row_sent_alone_for_a_null_still_lands_when_a_trigger_fills_it(pg):
    """Setting a row aside is a guess: a trigger that fills the column in makes it land."""
    with pg.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE FUNCTION items_fill_qty() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN IF NEW.qty IS NULL AND NEW.id >= 500 THEN NEW.qty := -1; END IF; "
                "RETURN NEW; END $$"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TRIGGER items_fill BEFORE INSERT ON items "
                "FOR EACH ROW EXECUTE FUNCTION items_fill_qty()"
            )
        )
    records = _records(1000, {5: {"qty": None}, 600: {"qty": None}, 700: {"qty": None}})
    with Session(pg) as s:
        inserted, failed = safe_bulk_insert(s, Item, records, method="insert")
    assert [r["id"] for r, _ in failed] == [5]
    assert [r["id"] for r in inserted] == [i for i in range(1000) if i != 5]
    with Session(pg) as s:
        filled = s.scalars(select(Item.id).where(Item.qty == -1).order_by(Item.id)).all()
    assert filled == [600, 700]


def test_clean_insert_batches_double_up_to_batch_size(engine):
    """Clean rows: INSERT batches start at 200 rows and double, up to batch_size."""
    sizes = _insert_sizes(engine)
    with Session(engine) as s:
        inserted, failed = safe_bulk_insert(s, Item, _from_one(3700, {}), method="insert")
    assert (len(inserted), failed) == (3700, [])
    if engine.dialect.name != "mysql":  # MySQL's insertmanyvalues pages: more statements
        assert sizes == [200, 400, 800, 1600, 700]
    with Session(engine) as s:
        safe_bulk_insert(s, Item, _from_one(5000, {})[3700:], batch_size=300, method="insert")
    if engine.dialect.name != "mysql":
        assert sizes[5:] == [200, 300, 300, 300, 200]
    assert len(_codes(engine)) == 5000


def test_duplicate_key_hint_finds_the_clashing_row(pg):
    """A unique violation names the key; only rows with that value are tried alone."""
    with Session(pg) as s:
        s.add(Item(id=10_000, code="c7", qty=1))
        s.commit()
    sizes = _insert_sizes(pg)
    with Session(pg) as s:
        inserted, failed = safe_bulk_insert(
            s, Item, _records(300, {}), batch_size=300, method="insert"
        )
    assert [r["id"] for r, _ in failed] == [7]
    assert len(inserted) == 299
    assert isinstance(failed[0][1], sa.exc.IntegrityError)
    assert sizes == [200, 1, 199, 100]  # the first batch, the clashing row, the rest; the next
    assert len(_codes(pg)) == 300  # 299 new rows plus the one that was there


def test_misleading_hint_still_keeps_every_good_row(pg):
    """A hint that also matches good rows only costs extra statements, never rows."""
    # PostgreSQL quotes the bad value ("abc"); another, good row holds "abc" as its code.
    records = _records(50, {3: {"qty": "abc"}, 20: {"code": "abc"}})
    with Session(pg) as s:
        inserted, failed = safe_bulk_insert(s, Item, records, batch_size=50)
    assert [r["id"] for r, _ in failed] == [3]
    assert [r["id"] for r in inserted] == [i for i in range(50) if i != 3]  # input order kept
    assert "abc" in _codes(pg)


def test_suspects_reads_mysql_and_sqlite_messages():
    """The MySQL and SQLite message forms give hints too; unusable errors give none."""
    from recoverly.db._suspects import suspects

    rows = [{"id": 1, "qty": 1}, {"id": 2, "qty": None}, {"id": 3, "qty": 3}]
    assert suspects(Exception("NOT NULL constraint failed: items.qty"), rows) == [1]
    assert suspects(Exception("(1048, \"Column 'qty' cannot be null\")"), rows) == [1]
    dup = [{"code": "a"}, {"code": "b"}, {"code": "b"}, {"code": "c"}, {"code": "d"}]
    assert suspects(Exception("(1062, \"Duplicate entry 'b' for key 'code'\")"), dup) == [1, 2]
    assert suspects(Exception("CHECK constraint failed: positive"), rows) == []
    # a hint naming most of the batch is no help: bisect instead
    nulls = [{"qty": None}] * 4
    assert suspects(Exception("NOT NULL constraint failed: items.qty"), nulls) == []


def _count_commits(engine) -> list[int]:
    seen: list[int] = []

    @event.listens_for(engine, "commit")
    def count(conn):
        seen.append(1)

    return seen


def test_rows_are_committed_every_commit_every_rows(pg):
    """Commits happen once commit_every rows were sent (whole batches), plus one at the end."""
    commits = _count_commits(pg)
    with Session(pg) as s:
        inserted, failed = safe_bulk_insert(
            s, Item, _records(650, {5: {"qty": None}}), batch_size=100, commit_every=250
        )
    assert (len(inserted), [r["id"] for r, _ in failed]) == (649, [5])
    assert len(commits) == 3  # after 300 rows, after 600, and the last 50
    assert len(_codes(pg)) == 649


def test_error_loses_only_the_uncommitted_transaction(pg, pg_kill):
    """Rows of the interrupted transaction are rolled back and reported in neither list."""
    inserts = _count_inserts(pg)
    with Session(pg) as s:
        pid = s.execute(sa.text("SELECT pg_backend_pid()")).scalar()

        @event.listens_for(pg, "before_cursor_execute")
        def kill_on_fourth_batch(conn, cursor, statement, params, context, executemany):
            if statement.startswith("INSERT") and len(inserts) == 4:
                pg_kill(pid)

        with pytest.raises(sa.exc.OperationalError) as info:
            safe_bulk_insert(
                s, Item, _records(500, {}), batch_size=100, commit_every=200, method="insert"
            )
    assert len(_codes(pg)) == 200  # the first transaction; batch 3 died with its transaction
    if sys.version_info >= (3, 11):
        assert "200 records were committed" in "".join(info.value.__notes__)


def test_records_naming_different_attributes_keep_column_defaults(pg):
    """A batch mixing key sets still inserts; an omitted attribute takes its column default."""
    Item.__table__.drop(pg)
    meta = sa.MetaData()
    sa.Table(
        "items",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("code", sa.String(40), unique=True),
        sa.Column("qty", sa.Integer, nullable=False, server_default="7"),
    ).create(pg)
    records = [{"id": 1, "code": "a", "qty": 1}, {"id": 2, "code": "b"}, {"id": 3, "code": "c"}]
    with Session(pg) as s:
        inserted, failed = safe_bulk_insert(s, Item, records)
    assert (len(inserted), failed) == (3, [])
    with Session(pg) as s:
        assert sorted(s.execute(sa.text("SELECT id, qty FROM items")).all()) == [
            (1, 1),
            (2, 7),
            (3, 7),
        ]


def test_psycopg_pipeline_warning_is_not_logged_for_handled_batches(pg, caplog):
    """The driver's 'error ignored terminating' warning for a handled bad batch is filtered."""
    with caplog.at_level("WARNING", logger="psycopg"), Session(pg) as s:
        inserted, failed = safe_bulk_insert(s, Item, _records(50, {10: {"qty": None}}))
    assert (len(inserted), len(failed)) == (49, 1)
    assert not [r for r in caplog.records if "error ignored" in r.getMessage()]


# ------------------------------------------------------------------ COPY (PostgreSQL, psycopg 3)
class Parent(Base):
    __tablename__ = "parents"
    id: Mapped[int] = mapped_column(primary_key=True)


class Child(Base):
    __tablename__ = "children"
    __table_args__ = (sa.CheckConstraint("qty >= 0", name="qty_not_negative"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(sa.String(40), unique=True)
    qty: Mapped[int]
    parent_id: Mapped[int] = mapped_column(sa.ForeignKey("parents.id"))


class Doc(Base):
    __tablename__ = "docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[dict] = mapped_column(sa.JSON)
    kind: Mapped[str] = mapped_column(sa.String(10), default="plain")


def _count_copies(monkeypatch) -> list[str]:
    """COPY runs on the raw connection, below SQLAlchemy's statement events: count the sends."""
    seen: list[str] = []
    send = CopyWire.send

    def counting(self, conn, sql, data):
        seen.append(sql)
        return send(self, conn, sql, data)

    monkeypatch.setattr(CopyWire, "send", counting)
    return seen


def test_copy_loads_each_batch_with_one_copy(pg, monkeypatch):
    """method='auto' on psycopg 3: no INSERT statement, one COPY per batch."""
    inserts, copies = _count_inserts(pg), _count_copies(monkeypatch)
    with Session(pg) as s:
        inserted, failed = safe_bulk_insert(s, Item, _records(250, {}), batch_size=100)
    assert (len(inserted), failed, inserts, len(copies)) == (250, [], [], 3)
    assert len(_codes(pg)) == 250


def test_copy_isolates_every_kind_of_bad_row(pg, monkeypatch):
    """NOT NULL, CHECK, unique, foreign key and type errors under COPY: exactly the good rows."""
    with Session(pg) as s:
        s.add(Parent(id=1))
        s.commit()
        s.add(Child(id=10_000, code="taken", qty=1, parent_id=1))
        s.commit()
    rows = [{"id": i, "code": f"c{i}", "qty": i, "parent_id": 1} for i in range(300)]
    bad = {
        5: {"qty": None},  # NOT NULL
        60: {"qty": -1},  # CHECK
        110: {"code": "taken"},  # unique, against an existing row
        170: {"parent_id": 99},  # foreign key: checked at the end of the statement
        230: {"qty": "many"},  # not an integer
    }
    for i, change in bad.items():
        rows[i] = {**rows[i], **change}
    copies = _count_copies(monkeypatch)
    with Session(pg) as s:
        inserted, failed = safe_bulk_insert(s, Child, rows, batch_size=100, method="copy")
    errors = {r["id"]: e for r, e in failed}
    assert sorted(errors) == sorted(bad)
    assert len(inserted) == 295
    states = {i: e.orig.sqlstate for i, e in errors.items()}
    assert states == {5: "23502", 60: "23514", 110: "23505", 170: "23503", 230: "22P02"}
    assert errors[60].orig.diag.constraint_name == "qty_not_negative"
    assert errors[5].orig.diag.column_name == "qty"
    assert isinstance(errors[170], sa.exc.IntegrityError)
    assert isinstance(errors[230], sa.exc.DataError)
    with Session(pg) as s:
        ids = sorted(s.scalars(select(Child.id)))
    assert ids == sorted([r["id"] for r in rows if r["id"] not in bad] + [10_000])
    assert len(copies) < 3 + 3 * len(bad)  # each bad row: about one re-send, not bisection


def test_copy_is_not_used_where_it_would_differ_from_insert(pg):
    """A JSON column and a Python-side default go through INSERT; method='copy' refuses them."""
    inserts = _count_inserts(pg)
    with Session(pg) as s:
        inserted, failed = safe_bulk_insert(s, Doc, [{"id": 1, "body": {"a": [1, 2]}}])
    assert (len(inserted), failed, len(inserts)) == (1, [], 1)
    with Session(pg) as s:
        doc = s.get(Doc, 1)
        assert (doc.body, doc.kind) == ({"a": [1, 2]}, "plain")
    with Session(pg) as s, pytest.raises(ValueError, match="method='copy' cannot load"):
        safe_bulk_insert(s, Doc, [{"id": 2, "body": {}}], method="copy")


def test_method_copy_is_refused_where_copy_does_not_exist(sqlite_engine):
    """SQLite has no COPY: method='copy' says so; 'auto' quietly uses INSERT."""
    enable_sqlite_savepoints(sqlite_engine)
    Base.metadata.create_all(sqlite_engine)
    with Session(sqlite_engine) as s, pytest.raises(ValueError, match="PostgreSQL through psycopg"):
        safe_bulk_insert(s, Item, _records(3, {}), method="copy")
    with Session(sqlite_engine) as s:
        inserted, _ = safe_bulk_insert(s, Item, _records(3, {}))
    assert len(inserted) == 3
    with Session(sqlite_engine) as s, pytest.raises(ValueError, match="method must be"):
        safe_bulk_insert(s, Item, [], method="fast")


def test_batches_shrink_while_many_rows_are_bad_and_every_good_row_lands(pg):
    """At 20 % bad rows the batches drop well below batch_size; the good rows still all land.

    The bad rows clash on a unique key (a NOT NULL column that refused a NULL
    once would have later NULLs set aside instead of failing their batches).
    """
    sizes: list[int] = []

    @event.listens_for(pg, "before_cursor_execute")
    def record(conn, cursor, statement, params, context, executemany):
        if statement.startswith("INSERT") and executemany:
            sizes.append(len(params))

    with Session(pg) as s:
        s.add(Item(id=10_000, code="dup", qty=0))
        s.commit()
    bad = {i: {"code": "dup"} for i in range(0, 2000, 5)}
    with Session(pg) as s:
        inserted, failed = safe_bulk_insert(
            s, Item, _records(2000, bad), batch_size=200, method="insert"
        )
    assert sorted(r["id"] for r, _ in failed) == sorted(bad)
    assert len(inserted) == 1600
    assert sizes[0] == 200
    assert max(sizes[len(sizes) // 2 :]) < 100  # sqrt(100 / 0.2) is about 22
    assert len(_codes(pg)) == 1601  # and the row that was there


def test_mariadb_check_and_strict_mode_errors_are_row_errors(request):
    """MariaDB reports a failed CHECK as OperationalError 4025: still the row's fault, isolated."""
    engine = _engine(request, "mysql")
    with Session(engine) as s:
        s.add(Parent(id=1))
        s.commit()
    rows = [{"id": i, "code": f"c{i}", "qty": i, "parent_id": 1} for i in range(1, 101)]
    rows[10] = {**rows[10], "qty": -1}  # CHECK
    rows[20] = {**rows[20], "parent_id": 9}  # foreign key
    rows[30] = {**rows[30], "qty": "many"}  # strict mode: incorrect integer value
    with Session(engine) as s:
        inserted, failed = safe_bulk_insert(s, Child, rows, batch_size=50)
    assert sorted(r["id"] for r, _ in failed) == [11, 21, 31]
    assert len(inserted) == 97
    with Session(engine) as s:
        assert s.scalar(select(sa.func.count()).select_from(Child)) == 97
