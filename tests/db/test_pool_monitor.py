"""ConnectionPoolMonitor on real PostgreSQL and SQLite pools: utilisation, exhaustion, leaks."""

from __future__ import annotations

import inspect
import logging
import threading
from contextlib import ExitStack

import pytest

sa = pytest.importorskip("sqlalchemy")

from sqlalchemy.orm import Session  # noqa: E402 - after the importorskip

from recoverly.db.pool import ConnectionPoolMonitor, PoolLeak  # noqa: E402
from recoverly.testing import ManualClock  # noqa: E402


def _line_below() -> int:
    """The line number just below the caller's line."""
    frame = inspect.currentframe()
    assert frame is not None
    assert frame.f_back is not None
    return frame.f_back.f_lineno + 1


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "recoverly" and r.levelno == logging.WARNING
    ]


def _infos(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "recoverly" and r.levelno == logging.INFO
    ]


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A URL on real PostgreSQL (per-test schema) or a file-backed SQLite database."""
    return str(request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url"))


@pytest.fixture
def small_engine(db_url):
    """A QueuePool engine with room for 5 connections (4 pooled + 1 overflow)."""
    engine = sa.create_engine(db_url, pool_size=4, max_overflow=1, pool_timeout=1)
    yield engine
    engine.dispose()


def test_exhaustion_warning_is_logged_once_per_crossing(small_engine, caplog):
    """4 of 5 connections out logs one WARNING, not repeated; dropping below logs an INFO."""
    caplog.set_level(logging.INFO, logger="recoverly")
    monitor = ConnectionPoolMonitor(small_engine, warn_threshold=0.8, name="orders")
    with ExitStack() as stack:
        for _ in range(3):
            stack.enter_context(small_engine.connect())
        assert _warnings(caplog) == []
        fourth = small_engine.connect()
        (warning,) = _warnings(caplog)
        assert warning.startswith("Connection pool orders is 80% used (4 of 5 connections")
        fifth = small_engine.connect()
        assert monitor.status()["utilization"] == 1.0
        assert len(_warnings(caplog)) == 1  # still above: no repeat
        fifth.close()
        assert _infos(caplog) == []  # 4 of 5 is still at the threshold
        fourth.close()
        assert _infos(caplog) == [
            "Connection pool orders is back below 80% (3 of 5 connections checked out)"
        ]
        again = small_engine.connect()
        assert len(_warnings(caplog)) == 2  # a new crossing warns again
        again.close()
    monitor.close()


def test_status_reports_queue_pool_figures(small_engine):
    """status() gives size, checked_out, checked_in, overflow and utilization from the pool."""
    monitor = ConnectionPoolMonitor(small_engine, name="orders")
    with ExitStack() as stack:
        for _ in range(5):
            stack.enter_context(small_engine.connect())
        status = monitor.status()
        assert {k: status[k] for k in ("size", "max_overflow", "capacity")} == {
            "size": 4,
            "max_overflow": 1,
            "capacity": 5,
        }
        assert (status["checked_out"], status["checked_in"], status["overflow"]) == (5, 0, 1)
        assert status["utilization"] == 1.0
    status = monitor.status()
    # the overflow connection was closed on return; the pool keeps its 4
    assert (status["checked_out"], status["checked_in"], status["overflow"]) == (0, 4, 0)
    assert status["utilization"] == 0.0
    assert status["unavailable"] == []
    assert status["note"] is None
    assert (status["name"], status["pool"], status["leaks"]) == ("orders", "QueuePool", 0)
    monitor.close()


def test_fresh_pool_reports_zero_overflow_not_a_negative_count(sqlite_url):
    """Before any connection opens, overflow is 0 (QueuePool's own counter is -size)."""
    engine = sa.create_engine(sqlite_url, pool_size=3, max_overflow=2)
    monitor = ConnectionPoolMonitor(engine)
    status = monitor.status()
    assert (status["overflow"], status["checked_out"], status["checked_in"]) == (0, 0, 0)
    monitor.close()
    engine.dispose()


def test_leaked_connection_is_reported_with_the_line_that_checked_it_out(small_engine, caplog):
    """A connection kept past leak_timeout is logged once, with a stack naming this test's line."""
    clock = ManualClock()
    monitor = ConnectionPoolMonitor(small_engine, leak_timeout=30, clock=clock, name="orders")
    line = _line_below()
    leaked = small_engine.connect()  # the leak, on purpose
    try:
        clock.advance(29)
        assert monitor.status()["leaks"] == 0
        assert _warnings(caplog) == []
        clock.advance(2)
        assert monitor.status()["leaks"] == 1
        (leak,) = monitor.leaks()
        assert isinstance(leak, PoolLeak)
        assert leak.age == pytest.approx(31)
        assert leak.thread == threading.current_thread().name
        assert f"line {line}, in test_leaked_connection_is_reported" in leak.stack
        assert "leaked = small_engine.connect()" in leak.stack
        assert "sqlalchemy" not in leak.stack  # library frames are left out
        assert leak.connection_id == id(leaked.connection.dbapi_connection)
        (warning,) = _warnings(caplog)
        assert warning.startswith(
            f"Connection pool orders: connection 0x{leak.connection_id:x} has been checked "
            "out for 31.0 s (leak_timeout 30.0 s)"
        )
        assert f"line {line}, in test_leaked_connection" in warning
        clock.advance(100)
        assert [x.age for x in monitor.check()] == [pytest.approx(131)]
        assert len(_warnings(caplog)) == 1  # reported once per checkout
    finally:
        leaked.close()
    assert monitor.leaks() == []
    monitor.close()


def test_session_left_open_is_a_leak_pointing_at_the_query(sqlite_engine):
    """An ORM Session holding its connection is reported at the line of its first query."""
    clock = ManualClock()
    monitor = ConnectionPoolMonitor(sqlite_engine, leak_timeout=5, clock=clock)
    session = Session(sqlite_engine)
    line = _line_below()
    session.execute(sa.text("SELECT 1"))
    clock.advance(6)
    (leak,) = monitor.check()
    assert f"line {line}, in test_session_left_open" in leak.stack
    session.close()
    assert monitor.check() == []
    monitor.close()


def test_returned_connections_are_not_leaks(small_engine):
    """Connections checked in before leak_timeout, or out for less, are never reported."""
    clock = ManualClock()
    monitor = ConnectionPoolMonitor(small_engine, leak_timeout=10, clock=clock)
    with small_engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    clock.advance(60)
    young = small_engine.connect()
    clock.advance(9)
    assert monitor.leaks() == []
    assert monitor.status()["leaks"] == 0
    young.close()
    clock.advance(60)
    assert monitor.check() == []
    monitor.close()


def test_no_stack_is_recorded_without_leak_timeout(small_engine):
    """With leak_timeout=None nothing is ever a leak (and no stack is captured)."""
    clock = ManualClock()
    monitor = ConnectionPoolMonitor(small_engine, clock=clock)
    conn = small_engine.connect()
    clock.advance(10_000)
    assert monitor.leaks() == []
    assert monitor.status()["leaks"] == 0
    (seen,) = monitor._out.values()
    assert seen.frames is None
    conn.close()
    monitor.close()


def test_null_pool_degrades_clearly_and_still_finds_leaks(sqlite_url, caplog):
    """NullPool: pool-only fields are None and listed, checkouts are counted, leaks still found."""
    engine = sa.create_engine(sqlite_url, poolclass=sa.pool.NullPool)
    clock = ManualClock()
    monitor = ConnectionPoolMonitor(engine, warn_threshold=0.1, leak_timeout=1, clock=clock)
    conns = [engine.connect() for _ in range(3)]
    status = monitor.status()
    assert status["pool"] == "NullPool"
    assert status["checked_out"] == 3
    assert status["unavailable"] == [
        "size",
        "max_overflow",
        "capacity",
        "checked_in",
        "overflow",
        "utilization",
    ]
    assert all(status[k] is None for k in status["unavailable"])
    assert "NullPool does not report" in status["note"]
    assert _warnings(caplog) == []  # no capacity, so no exhaustion warning
    clock.advance(2)
    assert len(monitor.check()) == 3
    for conn in conns:
        conn.close()
    assert monitor.status()["checked_out"] == 0
    assert monitor.leaks() == []
    monitor.close()
    engine.dispose()


@pytest.mark.parametrize("poolclass", ["StaticPool", "SingletonThreadPool"])
def test_other_pools_report_what_they_can(poolclass):
    """StaticPool and SingletonThreadPool: checkouts counted, the rest marked unavailable."""
    engine = sa.create_engine("sqlite://", poolclass=getattr(sa.pool, poolclass))
    monitor = ConnectionPoolMonitor(engine)
    with engine.connect():
        status = monitor.status()
        assert (status["pool"], status["checked_out"], status["utilization"]) == (
            poolclass,
            1,
            None,
        )
    assert monitor.status()["checked_out"] == 0
    assert "unavailable" in status
    monitor.close()
    engine.dispose()


def test_unbounded_queue_pool_has_no_utilization(sqlite_url, caplog):
    """max_overflow=-1 means no capacity: utilization is None and nothing warns."""
    engine = sa.create_engine(sqlite_url, pool_size=1, max_overflow=-1)
    monitor = ConnectionPoolMonitor(engine, warn_threshold=0.5)
    with engine.connect(), engine.connect():
        status = monitor.status()
    assert (status["size"], status["max_overflow"], status["capacity"]) == (1, None, None)
    assert status["unavailable"] == ["max_overflow", "capacity", "utilization"]
    assert "no upper bound" in status["note"]
    assert _warnings(caplog) == []
    monitor.close()
    engine.dispose()


def test_close_detaches_the_listeners(small_engine):
    """After close() (idempotent) the pool has no monitor listener and checkouts go unseen."""
    pool = small_engine.pool
    before = (len(pool.dispatch.checkout), len(pool.dispatch.checkin))
    monitor = ConnectionPoolMonitor(small_engine, leak_timeout=1)
    assert (len(pool.dispatch.checkout), len(pool.dispatch.checkin)) == (
        before[0] + 1,
        before[1] + 1,
    )
    monitor.close()
    monitor.remove()
    assert monitor.closed
    assert (len(pool.dispatch.checkout), len(pool.dispatch.checkin)) == before
    with small_engine.connect():
        assert monitor._out == {}
    assert "closed" in repr(monitor)


def test_listeners_follow_dispose_and_are_removed_from_the_new_pool(small_engine, caplog):
    """engine.dispose() swaps the pool: the monitor reads the new one and close() cleans both."""
    caplog.set_level(logging.INFO, logger="recoverly")
    old = small_engine.pool
    with ConnectionPoolMonitor(small_engine, warn_threshold=0.4) as monitor:
        small_engine.dispose()
        assert small_engine.pool is not old
        with small_engine.connect(), small_engine.connect():
            assert monitor.status()["checked_out"] == 2
            assert len(_warnings(caplog)) == 1  # the new pool's checkouts are seen
    assert monitor.closed
    assert len(old.dispatch.checkout) == len(small_engine.pool.dispatch.checkout) == 0


def test_monitor_started_with_connections_out_counts_them(small_engine, caplog):
    """Connections already out when the monitor starts count, and the start can warn at once."""
    conns = [small_engine.connect() for _ in range(4)]
    monitor = ConnectionPoolMonitor(small_engine, warn_threshold=0.8)
    assert monitor.status()["checked_out"] == 4
    assert len(_warnings(caplog)) == 1
    for conn in conns:
        conn.close()
    assert monitor.status()["checked_out"] == 0
    monitor.close()


def test_threads_checking_out_concurrently_keep_the_counts_exact(pg_url, caplog):
    """8 threads churning connections: warnings and recoveries alternate, and all end checked in."""
    caplog.set_level(logging.INFO, logger="recoverly")
    engine = sa.create_engine(pg_url, pool_size=4, max_overflow=4, pool_timeout=10)
    monitor = ConnectionPoolMonitor(engine, warn_threshold=0.75, leak_timeout=60)
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        for _ in range(15):
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    status = monitor.status()
    assert (status["checked_out"], status["leaks"]) == (0, 0)
    assert monitor._out == {}
    # only this monitor's lines: background threads of other tests may log too
    levels = [
        r.levelno
        for r in caplog.records
        if r.name == "recoverly" and r.getMessage().startswith("Connection pool")
    ]
    assert levels.count(logging.WARNING) == levels.count(logging.INFO)
    assert levels[::2] == [logging.WARNING] * (len(levels) // 2)  # strictly alternating
    monitor.close()
    engine.dispose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_async_engine_is_monitored_through_its_sync_pool(tmp_path):
    """An AsyncEngine (aiosqlite) is accepted; its AsyncAdaptedQueuePool reports fully."""
    pytest.importorskip("greenlet", reason="SQLAlchemy's asyncio layer needs greenlet")
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", pool_size=2)
    monitor = ConnectionPoolMonitor(engine)
    async with engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))
        status = monitor.status()
    assert (status["pool"], status["checked_out"], status["capacity"]) == (
        "AsyncAdaptedQueuePool",
        1,
        12,
    )
    assert monitor.status()["checked_out"] == 0
    monitor.close()
    await engine.dispose()


def test_bad_arguments_are_reported_together():
    """Every bad argument is named in one error; a non-engine is a TypeError."""
    with pytest.raises(TypeError) as info:
        ConnectionPoolMonitor(object(), warn_threshold=0, leak_timeout=-1, name="")
    text = str(info.value)
    for part in ("engine must be", "warn_threshold must be", "leak_timeout must be", "name must"):
        assert part in text
    engine = sa.create_engine("sqlite://")
    with pytest.raises(ValueError, match=r"warn_threshold must be a number in \(0, 1\], got 1.5"):
        ConnectionPoolMonitor(engine, 1.5)


def test_repr_and_default_name(sqlite_url):
    """repr shows the name (URL without password), pool class, checked-out count and config."""
    engine = sa.create_engine(sqlite_url)
    monitor = ConnectionPoolMonitor(engine.pool, leak_timeout=5)
    assert monitor.name == "QueuePool"
    named = ConnectionPoolMonitor(engine)
    assert named.name == sqlite_url
    assert repr(named) == (
        f"<ConnectionPoolMonitor {sqlite_url!r} QueuePool 0 checked out "
        "warn_threshold=0.8 leak_timeout=None>"
    )
    monitor.close()
    named.close()
    pg = sa.create_engine("postgresql+psycopg://user:secret@127.0.0.1/db")
    assert "secret" not in ConnectionPoolMonitor(pg).name
