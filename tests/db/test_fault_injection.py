"""recoverly.db.testing: real faults on demand, on PostgreSQL and MariaDB."""

from __future__ import annotations

from typing import Any

import pytest

sa = pytest.importorskip("sqlalchemy")

from sqlalchemy import text  # noqa: E402 - after the importorskip
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from recoverly.db import classify, run_transaction  # noqa: E402
from recoverly.db._classify import FailureKind  # noqa: E402
from recoverly.db.testing import Fault, FaultInjector, inject_fault  # noqa: E402

pytest_plugins = ["recoverly.db.testing"]


def _table(engine: Any) -> Any:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE items (id int PRIMARY KEY, note varchar(20) NOT NULL)"))
    return engine


@pytest.fixture(params=["pg", "mysql"])
def db(request: Any) -> Any:
    return _table(request.getfixturevalue(f"{request.param}_engine"))


def _items(engine: Any) -> list[int]:
    with engine.connect() as conn:
        return conn.execute(text("SELECT id FROM items ORDER BY id")).scalars().all()


def _insert(n: int) -> Any:
    def unit(session: Session) -> int:
        session.execute(text("INSERT INTO items VALUES (:i, 'x')"), {"i": n})
        return n

    return unit


@pytest.mark.parametrize(
    ("fault", "kinds"),
    [
        (Fault.SERIALIZATION, {FailureKind.SERIALIZATION, FailureKind.DEADLOCK}),
        (Fault.DEADLOCK, {FailureKind.DEADLOCK}),
        (Fault.LOCK_TIMEOUT, {FailureKind.LOCK_TIMEOUT}),
        (Fault.DISCONNECT, {FailureKind.CONNECTION_LOST}),
    ],
)
def test_each_statement_fault_is_a_real_server_error_of_its_kind(db, fault, kinds):
    """The chosen statement fails with the server's own error, classified as that kind."""
    with inject_fault(db, fault, at=2) as injector, db.connect() as conn:
        conn.execute(text("SELECT 1"))
        with pytest.raises(sa.exc.DBAPIError) as info:
            conn.execute(text("SELECT 2"))
    assert classify(info.value).kind in kinds
    assert (injector.seen, injector.injected, injector.installed) == (2, 1, False)


def test_run_transaction_survives_every_fault_exactly_once(db):
    """Each fault, at COMMIT or before a statement: run_transaction lands the unit exactly once."""
    factory = sessionmaker(db)
    options = {"commit_marker": True} if db.dialect.name != "postgresql" else {}
    for n, fault in enumerate(Fault, start=1):
        with (
            inject_fault(db, fault, at=1, match="INSERT INTO items")
            if fault
            not in (
                Fault.COMMIT_LOST_BEFORE,
                Fault.COMMIT_LOST_AFTER,
            )
            else inject_fault(db, fault, at=1) as injector
        ):
            assert run_transaction(factory, _insert(n), delay=0, **options) == n
        assert injector.injected == 1, fault
    assert _items(db) == list(range(1, len(Fault) + 1))


def test_commit_lost_after_leaves_the_row_committed(db):
    """COMMIT_LOST_AFTER: the COMMIT raises a connection error, yet the row is there."""
    with inject_fault(db, "commit_lost_after", at=1), Session(db) as s:
        s.execute(text("INSERT INTO items VALUES (1, 'x')"))
        with pytest.raises(sa.exc.DBAPIError) as info:
            s.commit()
    assert classify(info.value).kind is FailureKind.CONNECTION_LOST
    assert _items(db) == [1]


def test_commit_lost_before_leaves_nothing(db):
    """COMMIT_LOST_BEFORE: the server died before the COMMIT: the row is not there."""
    with inject_fault(db, Fault.COMMIT_LOST_BEFORE, at=1), Session(db) as s:
        s.execute(text("INSERT INTO items VALUES (1, 'x')"))
        with pytest.raises(sa.exc.DBAPIError):
            s.commit()
    assert _items(db) == []


def _select_ok(conn: Any, i: int) -> bool:
    try:
        conn.execute(text("SELECT :i"), {"i": i})
    except sa.exc.DBAPIError:
        conn.rollback()
        return False
    return True


def _failing_selects(engine: Any, n: int) -> list[int]:
    with engine.connect() as conn:
        return [i for i in range(n) if not _select_ok(conn, i)]


def test_probability_and_seed_are_reproducible(pg_engine):
    """The same seed picks the same statements; times caps the injections."""
    picks = []
    for _ in range(2):
        with inject_fault(pg_engine, "deadlock", probability=0.3, seed=5, times=None):
            picks.append(_failing_selects(pg_engine, 20))
    assert picks[0] == picks[1]
    assert 0 < len(picks[0]) < 20
    with inject_fault(pg_engine, "deadlock", probability=1.0, times=2) as capped:
        assert _failing_selects(pg_engine, 5) == [0, 1]
    assert capped.injected == 2


def test_db_faults_fixture_removes_its_injectors(pg_engine, db_faults):
    """The pytest fixture hands out installed injectors."""
    injector = db_faults(pg_engine, "serialization", at=1)
    assert injector.installed
    with pg_engine.connect() as conn, pytest.raises(sa.exc.OperationalError):
        conn.execute(text("SELECT 1"))


def test_bad_settings_are_reported_together(sqlite_engine):
    """Every bad setting is named in one ValueError; SQLite is refused."""
    with pytest.raises(ValueError, match="fault must be") as info:
        FaultInjector(sqlite_engine, "meteor", at=0, probability=2.0)
    message = str(info.value)
    for part in ("exactly one of at= and probability=", "PostgreSQL or MySQL"):
        assert part in message
