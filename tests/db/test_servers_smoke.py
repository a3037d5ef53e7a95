"""The database fixtures give isolated, working databases."""

from __future__ import annotations

import pytest

sa = pytest.importorskip("sqlalchemy")


def test_pg_schema_is_isolated_and_writable(pg_engine):
    """A table created in the test's schema is visible through the same URL only."""
    with pg_engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (id int primary key)"))
        conn.execute(sa.text("INSERT INTO t VALUES (1), (2)"))
        schema = conn.execute(sa.text("SELECT current_schema()")).scalar()
    with pg_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM t")).scalar() == 2
    assert schema.startswith("t_")


def test_pg_kill_terminates_a_backend(pg_engine, pg_kill):
    """pg_kill ends a session's backend; the next statement on it fails with a disconnect."""
    with pg_engine.connect() as conn:
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        assert pg_kill(pid) is True
        with pytest.raises(sa.exc.OperationalError) as info:
            conn.execute(sa.text("SELECT 1"))
        assert info.value.connection_invalidated


def test_mysql_database_is_writable(mysql_engine):
    """The MariaDB fixture gives a database of its own."""
    with mysql_engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (id int primary key)"))
        conn.execute(sa.text("INSERT INTO t VALUES (1)"))
    with mysql_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM t")).scalar() == 1


def test_sqlite_file_database(sqlite_engine):
    """SQLite fixtures are file-backed."""
    with sqlite_engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (id int)"))
    assert sqlite_engine.url.database.endswith("test.db")
