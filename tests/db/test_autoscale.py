"""PoolAutoscaler on real PostgreSQL and SQLite pools: grows under load, shrinks, loses nothing.

Decisions run on a ManualClock through ``tick()``; the load is real (threads or
tasks holding connections), and the outcomes are counted: checkouts that timed
out, backends on the server, rows, pids.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

sa = pytest.importorskip("sqlalchemy")

from sqlalchemy import text  # noqa: E402 - after the importorskip

from recoverly import events as ev  # noqa: E402
from recoverly._core.clock import SystemClock  # noqa: E402
from recoverly.db import (  # noqa: E402
    ConnectionPoolMonitor,
    PoolAutoscaler,
    _pool_limits,
)
from recoverly.testing import ManualClock  # noqa: E402

Outcome = tuple[str, int | None]


def _app(url: str) -> str:
    return str(sa.engine.make_url(url).query["application_name"])


@pytest.fixture
def backends(pg_url: str, pg_admin: Any) -> Callable[[], int]:
    """Return ``count()``: this test's backends on the PostgreSQL server right now."""
    app = _app(pg_url)

    def count() -> int:
        with pg_admin.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :a"),
                    {"a": app},
                ).scalar_one()
            )

    return count


@pytest.fixture
def resized() -> Iterator[list[ev.PoolResized]]:
    """Every PoolResized event emitted during the test."""
    seen: list[ev.PoolResized] = []
    ev.subscribe(seen.append, ev.PoolResized)
    yield seen
    ev.unsubscribe(seen.append)


def _until(predicate: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Wait (real time, bounded) until ``predicate()``: a synchronisation point, not a timing."""
    done = threading.Event()
    for _ in range(int(limit / 0.005)):
        if predicate():
            return
        done.wait(0.005)
    pytest.fail(f"timed out waiting for {what}")


def _pg_load(
    engine: Any, workers: int, hold: float
) -> tuple[list[threading.Thread], list[Outcome]]:
    """Start threads that each check out a connection and hold it in pg_sleep."""
    outcomes: list[Outcome] = []

    def work() -> None:
        try:
            with engine.connect() as conn:
                pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
                conn.execute(text("SELECT pg_sleep(:s)"), {"s": hold})
                outcomes.append(("ok", pid))
        except sa.exc.TimeoutError:
            outcomes.append(("timeout", None))

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    return threads, outcomes


# ---------------------------------------------------------------- under real load
@pytest.mark.realtime
@pytest.mark.parametrize("autoscale", [False, True], ids=["fixed", "autoscaled"])
def test_pool_grows_under_load_where_a_fixed_pool_times_out(pg_url, backends, resized, autoscale):
    """6 threads holding 1.5 s on a pool of 2 (timeout 1 s): fixed 4 time out, autoscaled none."""
    engine = sa.create_engine(pg_url, pool_size=2, max_overflow=0, pool_timeout=1.0)
    clock = ManualClock()
    monitor = ConnectionPoolMonitor(engine, clock=clock)
    scaler = (
        PoolAutoscaler(
            engine,
            max_size=8,
            grow_after=1,
            shrink_after=30,
            interval=None,
            monitor=monitor,
            clock=clock,
        )
        if autoscale
        else None
    )
    threads, outcomes = _pg_load(engine, workers=6, hold=1.5)
    _until(lambda: monitor.status()["pending"] == 4, "4 checkouts waiting")
    if scaler is not None:
        clock.advance(1)  # busy (6 wanted of 2) for grow_after
        assert scaler.tick() == 8  # ceil(6 / 0.65) = 10, capped at max_size
        _until(lambda: monitor.status()["checked_out"] == 6, "the waiters served")
        assert backends() == 6
    for t in threads:
        t.join()
    timeouts = sum(kind == "timeout" for kind, _ in outcomes)
    if scaler is None:
        assert (timeouts, len(outcomes)) == (4, 6)
    else:
        assert (timeouts, len(outcomes)) == (0, 6)
        assert len({pid for _, pid in outcomes}) == 6
        assert [(e.old, e.new, e.reason) for e in resized] == [(2, 8, "busy")]
        # Back: SQLAlchemy closed the connections beyond pool_size as they returned.
        _until(lambda: backends() == 2, "the backends beyond pool_size to exit")
        assert monitor.status()["capacity"] == 8
        clock.advance(30)  # idle (0 of 8) for shrink_after
        assert scaler.tick() == 2
        assert monitor.status()["capacity"] == 2
        assert [(e.old, e.new, e.reason) for e in resized][1:] == [(8, 2, "idle")]
        scaler.close()
    monitor.close()
    engine.dispose()
    _until(lambda: backends() == 0, "the backends to exit")


def test_checked_out_connections_survive_growth_and_shrink(pg_url, backends, resized):
    """Transactions open across a growth and a shrink keep their backend and their rows."""
    engine = sa.create_engine(pg_url, pool_size=2, max_overflow=0, pool_timeout=0.5)
    clock = ManualClock()
    scaler = PoolAutoscaler(
        engine, max_size=6, grow_after=1, shrink_after=10, cooldown=0, interval=None, clock=clock
    )

    def open_unit(n: int) -> tuple[Any, int]:
        conn = engine.connect()
        conn.execute(text("CREATE TEMP TABLE unit (n int)"))
        conn.execute(text("INSERT INTO unit VALUES (:n)"), {"n": n})
        return conn, conn.execute(text("SELECT pg_backend_pid()")).scalar_one()

    units = [open_unit(n) for n in range(2)]  # the whole pool, in transactions
    clock.advance(1)
    assert scaler.tick() == 4  # busy 2 of 2: ceil(2 / 0.65)
    units += [open_unit(n) for n in range(2, 4)]  # would time out without the growth
    assert backends() == 4
    for conn, _ in units[1:]:
        conn.rollback()
        conn.close()
    assert scaler.capacity == 4
    clock.advance(10)  # 1 of 4 out: idle for shrink_after
    assert scaler.tick() == 2  # max(min_size 2, 1 out, ceil(1 / 0.65) = 2)
    conn, pid = units[0]
    assert conn.execute(text("SELECT n FROM unit")).scalars().all() == [0]
    assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == pid
    conn.commit()
    conn.close()
    status = scaler.status()
    assert (status["checked_out"], status["leaks"], status["capacity"]) == (0, 0, 2)
    assert status["checked_in"] == 2
    _until(lambda: backends() == 2, "2 backends: nothing open outside the pool")
    assert scaler.monitor._out == {}
    assert [(e.old, e.new) for e in resized] == [(2, 4), (4, 2)]
    scaler.close()
    engine.dispose()


def test_shrink_keeps_room_for_the_connections_out(sqlite_url, resized):
    """8 of 10 out, then 5 for a quiet spell: it shrinks to 6 and the 5 keep working."""
    engine = sa.create_engine(sqlite_url, pool_size=1, max_overflow=9)
    clock = ManualClock()
    scaler = PoolAutoscaler(
        engine,
        min_size=1,
        max_size=10,
        grow_at=0.95,
        shrink_at=0.9,  # target 0.925: a quiet spell at 5 of 10 fits ceil(5/0.925) = 6
        shrink_after=5,
        cooldown=0,
        interval=None,
        clock=clock,
    )
    conns = [engine.connect() for _ in range(8)]
    for conn in conns[5:]:
        conn.close()
    conns = conns[:5]
    clock.advance(5)
    assert scaler.tick() == 6
    assert all(c.execute(text("SELECT 1")).scalar_one() == 1 for c in conns)
    for conn in conns:
        conn.close()
    scaler.close()
    engine.dispose()


def test_sqlite_pool_grows_hands_over_and_every_checkout_finishes(sqlite_url):
    """Threads blocked on a full SQLite pool each get a new connection right after the growth."""
    engine = sa.create_engine(sqlite_url, pool_size=2, max_overflow=0, pool_timeout=30)
    clock = ManualClock()
    scaler = PoolAutoscaler(engine, max_size=10, grow_after=1, interval=None, clock=clock)
    release = threading.Event()
    seen: list[int] = []

    def work(n: int) -> None:
        with engine.connect() as conn:
            seen.append(conn.execute(text("SELECT :n"), {"n": n}).scalar_one())
            release.wait(30)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(7)]
    for t in threads:
        t.start()
    _until(lambda: scaler.status()["pending"] == 5, "5 checkouts waiting")
    clock.advance(1)
    assert scaler.tick() == 10  # ceil(7 / 0.65) = 11, capped
    # pool_timeout is 30 s: only the hand-over can serve the 5 waiters this soon
    _until(lambda: len(seen) == 7, "all 7 checkouts served", limit=5)
    release.set()
    for t in threads:
        t.join()
    assert sorted(seen) == list(range(7))
    status = scaler.status()
    assert (status["checked_out"], status["checked_in"]) == (0, 2)
    scaler.close()
    engine.dispose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_async_engine_grows_and_serves_waiting_tasks(pg_url, backends, resized):
    """AsyncEngine (psycopg async): 6 tasks on a pool of 2 all finish within the pool_timeout."""
    pytest.importorskip("greenlet", reason="SQLAlchemy's asyncio layer needs greenlet")
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(pg_url, pool_size=2, max_overflow=0, pool_timeout=5)
    clock = ManualClock()
    scaler = PoolAutoscaler(engine, max_size=8, grow_after=1, interval=None, clock=clock)
    release = asyncio.Event()
    pids: list[int] = []

    async def work() -> None:
        async with engine.connect() as conn:
            pids.append((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            await release.wait()

    tasks = [asyncio.ensure_future(work()) for _ in range(6)]
    for _ in range(2000):
        if scaler.status()["pending"] == 4:
            break
        await asyncio.sleep(0.005)
    assert scaler.status()["pending"] == 4
    clock.advance(1)
    assert scaler.tick() == 8
    for _ in range(2000):  # the hand-over runs on this loop; pool_timeout would be 5 s
        if len(pids) == 6:
            break
        await asyncio.sleep(0.005)
    assert len(set(pids)) == 6
    assert backends() == 6
    release.set()
    await asyncio.gather(*tasks)
    status = scaler.status()
    assert (status["checked_out"], status["pool"]) == (0, "AsyncAdaptedQueuePool")
    assert [(e.old, e.new, e.reason) for e in resized] == [(2, 8, "busy")]
    scaler.close()
    await engine.dispose()
    _until(lambda: backends() == 0, "the backends to exit")  # they exit after the socket closes


@pytest.mark.realtime
def test_background_thread_decides_without_ticks(sqlite_url, resized):
    """With interval set, growth and the later shrink happen with nobody calling tick()."""
    engine = sa.create_engine(sqlite_url, pool_size=1, max_overflow=0, pool_timeout=10)
    scaler = PoolAutoscaler(
        engine,
        max_size=4,
        grow_after=0.05,
        shrink_after=0.2,
        cooldown=0,
        interval=0.02,
        clock=SystemClock(),  # the tests' default clock is a ManualClock
    )
    release = threading.Event()

    def work() -> None:
        with engine.connect():
            release.wait(10)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    _until(lambda: scaler.status()["checked_out"] == 3, "3 connections out")
    release.set()
    for t in threads:
        t.join()
    _until(lambda: scaler.capacity == 1, "the shrink back to 1")
    reasons = [e.reason for e in resized]
    assert reasons[0] == "busy"
    assert set(reasons[1:]) == {"idle"}  # one or two steps down, as the load's tail fell
    scaler.close()
    assert not scaler._thread.is_alive()
    engine.dispose()


# ---------------------------------------------------------------- limits and settings
def test_start_brings_the_capacity_within_bounds(sqlite_url, resized):
    """A pool of 5 + 10 is lowered to max_size 8; a pool of 2 + 0 is raised to min_size 4."""
    big = sa.create_engine(sqlite_url, pool_size=5, max_overflow=10)
    with PoolAutoscaler(big, max_size=8, interval=None) as scaler:
        assert scaler.capacity == 8
        assert scaler.config.min_size == 5
    small = sa.create_engine(sqlite_url, pool_size=2, max_overflow=0)
    with PoolAutoscaler(small, min_size=4, max_size=8, interval=None) as scaler:
        assert scaler.capacity == 4
        assert scaler.status()["last_resize"]["reason"] == "limits"
    assert [(e.old, e.new, e.reason) for e in resized] == [(15, 8, "limits"), (2, 4, "limits")]
    big.dispose()
    small.dispose()


def test_engine_dispose_keeps_the_capacity_and_the_autoscaler_follows(sqlite_url):
    """engine.dispose() builds a new pool with the resized limit; decisions apply to it."""
    engine = sa.create_engine(sqlite_url, pool_size=2, max_overflow=0)
    clock = ManualClock()
    scaler = PoolAutoscaler(engine, max_size=6, grow_after=1, interval=None, clock=clock)
    conns = [engine.connect() for _ in range(2)]
    clock.advance(1)
    assert scaler.tick() == 4
    old = engine.pool
    engine.dispose()
    assert engine.pool is not old
    assert _pool_limits.capacity(engine.pool) == 4
    for conn in conns:
        conn.close()
    clock.advance(60)
    assert scaler.tick() == 2  # idle since the checkins, on the new pool
    assert _pool_limits.capacity(engine.pool) == 2
    assert _pool_limits.capacity(old) == 4  # the old pool is left alone
    scaler.close()
    engine.dispose()


def test_server_limit_auto_lowers_max_size_on_postgresql(pg_url, pg_admin, caplog):
    """The server's limit less server_headroom caps max_size, with a WARNING saying so."""
    with pg_admin.connect() as conn:
        most = int(conn.execute(text("SHOW max_connections")).scalar_one())
        reserved = int(conn.execute(text("SHOW superuser_reserved_connections")).scalar_one())
    engine = sa.create_engine(pg_url, pool_size=2, max_overflow=0)
    headroom = most - reserved - 5
    scaler = PoolAutoscaler(
        engine, max_size=50, server_limit="auto", server_headroom=headroom, interval=None
    )
    assert scaler.server_limit == most - reserved
    assert scaler.config.max_size == 5
    assert scaler.status()["max_size"] == 5
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == (
        f"PoolAutoscaler: max_size 50 lowered to 5 (the server allows {most - reserved} "
        f"connections, server_headroom {headroom})"
    )
    scaler.close()
    with pytest.raises(ValueError, match="leaves 1, below min_size 2"):
        PoolAutoscaler(
            engine, max_size=50, server_limit="auto", server_headroom=headroom + 4, interval=None
        )
    engine.dispose()


def test_server_limit_given_as_a_number_and_unknown_for_sqlite(sqlite_url):
    """server_limit=12 with headroom 2 caps at 10; "auto" on SQLite finds no limit."""
    engine = sa.create_engine(sqlite_url, pool_size=2, max_overflow=0)
    with PoolAutoscaler(
        engine, max_size=30, server_limit=12, server_headroom=2, interval=None
    ) as scaler:
        assert (scaler.server_limit, scaler.config.max_size) == (12, 10)
    with PoolAutoscaler(engine, max_size=30, server_limit="auto", interval=None) as scaler:
        assert (scaler.server_limit, scaler.config.max_size) == (None, 30)
    engine.dispose()


def test_server_connection_limit_reads_mariadb(mysql_url):
    """MariaDB: @@max_connections (no per-user limit set on the test server)."""
    from recoverly.db import server_connection_limit

    engine = sa.create_engine(mysql_url)
    with engine.connect() as conn:
        expected = int(conn.execute(text("SELECT @@max_connections")).scalar_one())
        per_user = int(conn.execute(text("SELECT @@max_user_connections")).scalar_one())
        assert server_connection_limit(conn) == (
            min(expected, per_user) if per_user > 0 else expected
        )
    engine.dispose()


def test_bad_arguments_are_reported_together(sqlite_url):
    """Every bad argument is named in one error, with its value."""
    engine = sa.create_engine(sqlite_url, pool_size=2, max_overflow=0)
    with pytest.raises(ValueError) as info:
        PoolAutoscaler(
            engine,
            max_size=0,
            grow_at=0,
            shrink_at=1.5,
            grow_after=-1,
            cooldown=float("nan"),
            interval=0,
            server_limit=0,
            server_headroom=-1,
        )
    text_ = str(info.value)
    for part in (
        "max_size must be an integer >= 1, got 0",
        "grow_at must be a number in (0, 1], got 0",
        "shrink_at must be a number in [0, 1], got 1.5",
        "grow_after must be a finite number of seconds >= 0, got -1",
        "cooldown must be a finite number of seconds >= 0, got nan",
        "interval must be a finite number of seconds > 0, got 0",
        "server_limit must be an integer >= 1, got 0",
        "server_headroom must be an integer >= 0, got -1",
    ):
        assert part in text_
    with pytest.raises(ValueError, match=r"shrink_at must be < grow_at \(0.5\), got 0.5"):
        PoolAutoscaler(engine, max_size=4, grow_at=0.5, shrink_at=0.5)
    with pytest.raises(ValueError, match=r"min_size must be >= the pool's pool_size \(2\), got 1"):
        PoolAutoscaler(engine, min_size=1, max_size=4)
    with pytest.raises(ValueError, match=r"min_size must be <= max_size \(3\), got 4"):
        PoolAutoscaler(engine, min_size=4, max_size=3)
    with pytest.raises(TypeError, match="server_limit must be None, 'auto' or an integer >= 1"):
        PoolAutoscaler(engine, max_size=4, server_limit="all")  # type: ignore[arg-type]
    engine.dispose()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"poolclass": sa.pool.NullPool}, TypeError, "got NullPool"),
        ({"pool_size": 0}, ValueError, r"no limit \(pool_size=0, max_overflow=-1\)"),
        ({"max_overflow": -1}, ValueError, r"no limit \(pool_size=5, max_overflow=-1\)"),
    ],
)
def test_pools_without_a_limit_to_resize_are_refused(sqlite_url, kwargs, error, message):
    """NullPool has no limit at all; pool_size=0 or max_overflow=-1 mean no limit."""
    engine = sa.create_engine(sqlite_url, **kwargs)
    with pytest.raises(error, match=message):
        PoolAutoscaler(engine, max_size=10)
    engine.dispose()


def test_sqlalchemy_without_the_attribute_fails_clearly(sqlite_url):
    """A QueuePool lacking _max_overflow (another SQLAlchemy) is a RuntimeError naming it."""
    engine = sa.create_engine(sqlite_url, pool_size=2)
    del engine.pool._max_overflow
    with pytest.raises(RuntimeError, match=r"SQLAlchemy 2\.\S+'s QueuePool has no integer "):
        PoolAutoscaler(engine, max_size=10)


def test_async_engine_cannot_read_the_server_limit_synchronously():
    """server_limit="auto" with an AsyncEngine says how to read it instead."""
    pytest.importorskip("greenlet", reason="SQLAlchemy's asyncio layer needs greenlet")
    pytest.importorskip("aiosqlite")
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(
        "sqlite+aiosqlite:///:memory:", poolclass=sa.pool.AsyncAdaptedQueuePool
    )
    with pytest.raises(TypeError, match=r"run_sync\(server_connection_limit\)"):
        PoolAutoscaler(engine, max_size=10, server_limit="auto")


def test_a_monitor_of_another_pool_is_refused(sqlite_url, tmp_path):
    """monitor= must watch the same pool."""
    engine = sa.create_engine(sqlite_url, pool_size=2, max_overflow=0)
    other = sa.create_engine(f"sqlite:///{tmp_path / 'other.db'}", pool_size=2)
    monitor = ConnectionPoolMonitor(other)
    with pytest.raises(TypeError, match="monitor must watch the same pool as engine"):
        PoolAutoscaler(engine, max_size=4, monitor=monitor)
    monitor.close()
    engine.dispose()
    other.dispose()


# ---------------------------------------------------------------- reporting
def test_resize_event_is_logged_and_reported_in_status(sqlite_url, caplog):
    """The default subscriber logs each resize at INFO; status() and repr show the state."""
    caplog.set_level(logging.INFO, logger="recoverly")
    engine = sa.create_engine(sqlite_url, pool_size=2, max_overflow=0)
    clock = ManualClock()
    scaler = PoolAutoscaler(
        engine, max_size=6, grow_after=2, cooldown=7, interval=None, name="orders", clock=clock
    )
    assert repr(scaler) == "<PoolAutoscaler 'orders' capacity=2 min_size=2 max_size=6 steady>"
    conns = [engine.connect() for _ in range(2)]
    clock.advance(1)
    status = scaler.status()
    assert (status["spell"], status["spell_seconds"], status["resizes"]) == ("busy", 1.0, 0)
    clock.advance(1)
    assert scaler.tick() == 4
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "Connection pool orders grown from 2 to 4 connections (busy; 100% used)" in infos
    clock.advance(3)
    status = scaler.status()
    assert status["last_resize"] == {
        "old": 2,
        "new": 4,
        "reason": "busy",
        "utilization": 1.0,
        "seconds_ago": 3.0,
    }
    assert (status["capacity"], status["min_size"], status["max_size"]) == (4, 2, 6)
    assert (status["cooldown_left"], status["resizes"], status["server_limit"]) == (4.0, 1, None)
    for conn in conns:
        conn.close()
    scaler.close()
    scaler.close()
    assert scaler.closed
    assert repr(scaler).endswith("closed>")
    assert scaler.monitor.closed  # the autoscaler's own monitor is closed with it
    engine.dispose()


def test_closing_leaves_a_given_monitor_running(sqlite_url):
    """A monitor passed in keeps working after the autoscaler closes; it sees no more resizes."""
    engine = sa.create_engine(sqlite_url, pool_size=2, max_overflow=0)
    clock = ManualClock()
    monitor = ConnectionPoolMonitor(engine, clock=clock)
    scaler = PoolAutoscaler(
        engine, max_size=6, grow_after=1, interval=None, monitor=monitor, clock=clock
    )
    scaler.close()
    conns = [engine.connect() for _ in range(2)]
    clock.advance(5)
    assert scaler.tick() is None
    assert monitor.status()["capacity"] == 2
    assert not monitor.closed
    for conn in conns:
        conn.close()
    monitor.close()
    engine.dispose()
