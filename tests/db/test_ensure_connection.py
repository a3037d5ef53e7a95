"""ensure_connection: dead connections are replaced before the call, pings are rate-limited."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest

sa = pytest.importorskip("sqlalchemy")
from sqlalchemy.orm import Session  # noqa: E402

from recoverly.db._ping import EnsureConnection  # noqa: E402
from recoverly.db.retry import ensure_connection  # noqa: E402


def pid_of(db: Any) -> int:
    """Return the backend pid of ``db``'s connection."""
    return int(db.execute(sa.text("SELECT pg_backend_pid()")).scalar())


@pytest.fixture
def pings(sqlite_engine: Any) -> Iterator[list[object]]:
    """Record every ping the SQLite engine's dialect performs."""
    seen: list[object] = []
    original = sqlite_engine.dialect.do_ping

    def counting(dbapi_connection: object) -> bool:
        seen.append(dbapi_connection)
        return bool(original(dbapi_connection))

    sqlite_engine.dialect.do_ping = counting
    yield seen
    del sqlite_engine.dialect.do_ping


def test_bare_and_called_forms_keep_the_signature() -> None:
    """@ensure_connection and @ensure_connection() both return signature-preserving wrappers."""

    def f(db: Session, x: int) -> int:
        return x

    assert inspect.signature(ensure_connection(f)) == inspect.signature(f)
    policy = ensure_connection(ping_interval=5.0)
    assert isinstance(policy, EnsureConnection)
    assert "ping_interval=5" in repr(policy)
    assert inspect.signature(policy(f)) == inspect.signature(f)


def test_negative_ping_interval_is_refused() -> None:
    """ping_interval must be a duration >= 0."""
    with pytest.raises(ValueError, match="ping_interval"):
        ensure_connection(ping_interval=-1)


def test_every_checkout_during_the_call_is_pinged_once(
    sqlite_engine: Any, pings: list[object]
) -> None:
    """A session's connection is pinged when the call starts its transaction, and only then."""

    @ensure_connection
    def count(db: Session) -> int:
        db.execute(sa.text("SELECT 1"))
        return int(db.execute(sa.text("SELECT 2")).scalar())

    with Session(sqlite_engine) as s:
        assert count(s) == 2
        s.rollback()
        count(s)
    assert len(pings) == 2


def test_no_ping_outside_the_call_or_inside_a_transaction_in_progress(
    sqlite_engine: Any, pings: list[object]
) -> None:
    """A session that already holds its connection is not pinged; other code is untouched."""

    @ensure_connection
    def read(db: Session) -> int:
        return int(db.execute(sa.text("SELECT 3")).scalar())

    with Session(sqlite_engine) as s:
        s.execute(sa.text("SELECT 1"))  # transaction in progress, outside any call
        assert read(s) == 3
    assert pings == []


def test_session_begin_inside_the_call_still_works(sqlite_engine: Any) -> None:
    """The ping begins no transaction, so the call may use session.begin() itself."""

    @ensure_connection
    def write(db: Session) -> int:
        with db.begin():
            return int(db.execute(sa.text("SELECT 4")).scalar())

    with Session(sqlite_engine) as s:
        assert write(s) == 4


def test_ping_interval_rate_limits_per_connection(
    sqlite_engine: Any, pings: list[object], recoverly_clock: Any
) -> None:
    """With ping_interval=5 a pooled connection is pinged again only after 5 s."""

    @ensure_connection(ping_interval=5.0)
    def read(db: Session) -> int:
        return int(db.execute(sa.text("SELECT 1")).scalar())

    for advance in (0, 1, 1, 4):
        recoverly_clock.advance(advance)
        with Session(sqlite_engine) as s:
            read(s)
    assert len(pings) == 2


@pytest.mark.anyio
async def test_async_wrapper_pings_the_checkouts_of_its_call(
    sqlite_engine: Any, pings: list[object]
) -> None:
    """An async def with a sync session is covered too."""

    @ensure_connection
    async def read(db: Session) -> int:
        return int(db.execute(sa.text("SELECT 1")).scalar())

    with Session(sqlite_engine) as s:
        assert await read(db=s) == 1
    assert len(pings) == 1


def test_a_connection_argument_is_pinged_before_the_call(
    sqlite_engine: Any, pings: list[object]
) -> None:
    """A Connection with no transaction in progress is pinged directly."""

    @ensure_connection
    def read(conn: Any) -> int:
        return int(conn.execute(sa.text("SELECT 5")).scalar())

    with sqlite_engine.connect() as conn:
        assert read(conn) == 5
    assert len(pings) == 1


# ---------------------------------------------------------------- real PostgreSQL
@pytest.mark.integration
def test_session_call_after_pg_terminate_backend_succeeds_on_its_own(
    pg_engine: Any, pg_kill: Callable[[int], bool]
) -> None:
    """The pooled connection's backend is gone; the call runs on a new one without retry."""
    with pg_engine.connect() as conn:
        dead = pid_of(conn)
    pg_kill(dead)

    @ensure_connection
    def current_pid(db: Session) -> int:
        return pid_of(db)

    with Session(pg_engine) as s:
        assert current_pid(s) != dead


@pytest.mark.integration
def test_connection_argument_after_pg_terminate_backend_reconnects(
    pg_engine: Any, pg_kill: Callable[[int], bool]
) -> None:
    """A Connection whose backend died is invalidated by the ping and reconnects."""

    @ensure_connection
    def current_pid(conn: Any) -> int:
        return pid_of(conn)

    with pg_engine.connect() as conn:
        dead = pid_of(conn)
        conn.rollback()
        pg_kill(dead)
        assert current_pid(conn) != dead


@pytest.mark.integration
@pytest.mark.anyio
async def test_async_session_after_pg_terminate_backend_reconnects(
    pg_url: str, pg_kill: Callable[[int], bool], anyio_backend: str
) -> None:
    """An AsyncSession (psycopg async) gets a live connection after its backend was killed."""
    if anyio_backend != "asyncio":
        pytest.skip("psycopg's async connections run on asyncio here")
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(pg_url)

    @ensure_connection
    async def current_pid(db: AsyncSession) -> int:
        return int((await db.execute(sa.text("SELECT pg_backend_pid()"))).scalar())

    try:
        async with AsyncSession(engine) as s:
            dead = await current_pid(s)
            await s.rollback()
        pg_kill(dead)
        async with AsyncSession(engine) as s:
            assert await current_pid(s) != dead
    finally:
        await engine.dispose()
