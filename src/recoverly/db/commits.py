"""Resolving a lost COMMIT: did the transaction commit or not?

When the connection breaks while COMMIT is in flight, the client only knows
that it does not know. :func:`~recoverly.db.run_transaction` asks the database
instead of giving up:

**PostgreSQL: the transaction id.** Right before COMMIT, a writing transaction's
id is read with ``pg_current_xact_id_if_assigned()`` (one round trip; a
read-only transaction has none and needs no answer: nothing was written). After
a lost COMMIT a new connection asks ``pg_xact_status(xid)``:

* ``committed``: the unit's result is returned as a success;
* ``aborted``: the whole unit is retried, as after any transient failure;
* ``in progress``: the old backend has not finished yet; the question is asked
  again, with growing pauses, until it resolves or ``resolve_timeout`` passes;
* ``NULL`` (the xid is older than the server still remembers) or no answer
  within the time: :class:`~recoverly.db.CommitOutcomeUnknown`.

Limits: the answer comes from the server the new connection reaches. Behind a
proxy or after a fail-over to a replica, that may be another server (its
``pg_xact_status`` knows nothing of the old primary's transaction, or an
asynchronous replica has not seen it yet). With ``synchronous_commit = off`` a
transaction reported committed can still be lost by a server crash, like any
other. Transaction ids are remembered for about two billion transactions
(``autovacuum_freeze_max_age`` bounds it in practice): an answer is needed within
minutes, not months.

**Any database: commit markers** (``run_transaction(..., commit_marker=True)``).
The unit writes one row with a random token into ``recoverly_commit_marker``
inside its own transaction. After a lost COMMIT, the resolver first waits until
the old server-side session is gone (MySQL/MariaDB: its ``CONNECTION_ID()`` has
left the process list; PostgreSQL: its backend pid has left
``pg_stat_activity``), because until then its transaction may still commit, and
then looks the token up: found means committed, absent means rolled back. The
table is created on first use, or by :func:`install_commit_markers`; old tokens
are removed by :func:`prune_commit_markers`, which ``run_transaction`` also calls
on its own about once every 1 000 committed units per engine.

.. versionadded:: 0.2
"""

from __future__ import annotations

import logging
import secrets
import threading
import weakref
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from recoverly._core.clock import Clock, resolve
from recoverly.db._classify import is_retryable

__all__ = [
    "MARKER_TABLE",
    "CommitMarkerResolver",
    "Resolver",
    "XactStatusResolver",
    "install_commit_markers",
    "prune_commit_markers",
]

log = logging.getLogger("recoverly")

#: The table that holds commit markers.
MARKER_TABLE: Final = "recoverly_commit_marker"
_META = sa.MetaData()
_MARKERS = sa.Table(
    MARKER_TABLE,
    _META,
    sa.Column("token", sa.String(32), primary_key=True),
    sa.Column("created_at", sa.DateTime(), nullable=False),
)
_PENDING: Final = object()  # "ask again": the old session still runs
_PRUNE_EVERY = 1000
_PRUNE_AGE = timedelta(days=1)
_SERVER_ID = "recoverly_server_session_id"


class Resolver:
    """Base of the lost-COMMIT resolvers: captures before COMMIT, answers after.

    A resolver belongs to one ``run_transaction`` call, whose attempts run one
    after the other, so it keeps the last attempt's facts in plain attributes.
    """

    __slots__ = ("clock", "timeout")
    method = "resolver"

    def __init__(self, clock: Clock | None, timeout: float) -> None:
        self.clock = resolve(clock)
        self.timeout = timeout

    def prepare(self, conn: Connection) -> None:
        """Record what the answer needs, inside the transaction, right before COMMIT."""
        raise NotImplementedError

    def ask(self, conn: Connection) -> object:
        """One look: ``True`` committed, ``False`` not, ``None`` unknown, or ``_PENDING``."""
        raise NotImplementedError

    def committed(self) -> None:
        """Called after a COMMIT that succeeded (housekeeping)."""

    # ---------------------------------------------------------------- drivers
    def before_commit(self, session: Session) -> None:
        """Sync hook: capture through the session's connection."""
        self.prepare(session.connection())

    async def abefore_commit(self, session: AsyncSession) -> None:
        """Async hook: capture through the session's connection."""
        conn = await session.connection()
        await conn.run_sync(self.prepare)

    def resolve(self, factory: Callable[[], object]) -> bool | None:
        """Ask, in fresh sessions, until there is an answer or the time is up."""
        deadline = self.clock.monotonic() + self.timeout
        pause = 0.01
        while True:
            verdict = self._once(factory)
            if verdict is not _PENDING:
                return verdict  # type: ignore[return-value]
            left = deadline - self.clock.monotonic()
            if left <= 0:
                return None
            self.clock.sleep(min(pause, left))
            pause = min(pause * 2, 0.5)

    async def aresolve(self, factory: Callable[[], object]) -> bool | None:
        """Async twin of :meth:`resolve`."""
        deadline = self.clock.monotonic() + self.timeout
        pause = 0.01
        while True:
            verdict = await self._aonce(factory)
            if verdict is not _PENDING:
                return verdict  # type: ignore[return-value]
            left = deadline - self.clock.monotonic()
            if left <= 0:
                return None
            await self.clock.asleep(min(pause, left))
            pause = min(pause * 2, 0.5)

    def _once(self, factory: Callable[[], object]) -> object:
        session = factory()
        if not isinstance(session, Session):
            return None
        try:
            with session:
                return self.ask(session.connection())
        except Exception as exc:
            return self._failed(exc)

    async def _aonce(self, factory: Callable[[], object]) -> object:
        session = factory()
        if not isinstance(session, AsyncSession):
            return None
        try:
            async with session:
                conn = await session.connection()
                return await conn.run_sync(self.ask)
        except Exception as exc:
            return self._failed(exc)

    def _failed(self, exc: Exception) -> object:
        if is_retryable(exc):  # the server is not reachable yet: ask again
            return _PENDING
        log.warning("recoverly: resolving a lost COMMIT failed", exc_info=exc)
        return None


class XactStatusResolver(Resolver):
    """PostgreSQL: capture the transaction id, ask ``pg_xact_status`` after a loss."""

    __slots__ = ("xid",)
    method = "xact_status"

    def __init__(self, clock: Clock | None, timeout: float) -> None:
        super().__init__(clock, timeout)
        self.xid: str | None = None

    def prepare(self, conn: Connection) -> None:
        """Read this transaction's id (``None`` when it wrote nothing)."""
        modern = (conn.dialect.server_version_info or (13,)) >= (13,)
        sql = (
            "SELECT pg_current_xact_id_if_assigned()::text"
            if modern
            else "SELECT txid_current_if_assigned()::text"
        )
        self.xid = conn.exec_driver_sql(sql).scalar()

    def ask(self, conn: Connection) -> object:
        """``pg_xact_status`` of the captured id."""
        if self.xid is None:
            return False  # a transaction that wrote nothing: running it again is safe
        modern = (conn.dialect.server_version_info or (13,)) >= (13,)
        sql = (
            "SELECT pg_xact_status(CAST(:x AS xid8))"
            if modern
            else "SELECT txid_status(CAST(:x AS bigint))"
        )
        status = conn.execute(sa.text(sql), {"x": self.xid}).scalar()
        if status == "committed":
            return True
        if status == "aborted":
            return False
        if status == "in progress":
            return _PENDING
        return None  # too old to know


class CommitMarkerResolver(Resolver):
    """Any database: a token row written in the transaction, looked up after a loss."""

    __slots__ = ("engine", "server_id", "token")
    method = "commit_marker"

    def __init__(self, clock: Clock | None, timeout: float, engine: Any = None) -> None:
        super().__init__(clock, timeout)
        self.engine = engine  # the Engine or AsyncEngine whose markers these are
        self.token: str | None = None
        self.server_id: int | None = None

    def committed(self) -> None:
        """Every 1 000th committed unit on this engine prunes day-old markers (sync only)."""
        if isinstance(self.engine, Engine) and count_commit(self.engine):
            prune_quietly(self.engine)

    def prepare(self, conn: Connection) -> None:
        """Insert a fresh token; remember the server-side session id (once per connection)."""
        self.token = secrets.token_hex(16)
        conn.execute(
            _MARKERS.insert(),
            {"token": self.token, "created_at": datetime.now(timezone.utc).replace(tzinfo=None)},
        )
        info = conn.connection.info
        if _SERVER_ID not in info:
            info[_SERVER_ID] = _server_session_id(conn)
        self.server_id = info[_SERVER_ID]

    def ask(self, conn: Connection) -> object:
        """Wait for the old session to end, then look for the token."""
        if self.server_id is not None and _session_alive(conn, self.server_id):
            return _PENDING
        found = conn.execute(
            sa.select(_MARKERS.c.token).where(_MARKERS.c.token == self.token)
        ).first()
        return found is not None


def _server_session_id(conn: Connection) -> int | None:
    name = conn.dialect.name
    if name == "postgresql":
        return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
    if name in ("mysql", "mariadb"):
        return int(conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one())
    return None  # SQLite and others: no server session outlives the client


def _session_alive(conn: Connection, server_id: int) -> bool:
    name = conn.dialect.name
    if name == "postgresql":
        sql = "SELECT count(*) FROM pg_stat_activity WHERE pid = :i"
    elif name in ("mysql", "mariadb"):
        sql = "SELECT count(*) FROM information_schema.processlist WHERE id = :i"
    else:
        return False
    return bool(conn.execute(sa.text(sql), {"i": server_id}).scalar())


# ---------------------------------------------------------------- table management
_installed: weakref.WeakSet[Any] = weakref.WeakSet()
_commits: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def install_commit_markers(engine: Engine) -> None:
    """Create the ``recoverly_commit_marker`` table if it does not exist.

    ``run_transaction(..., commit_marker=True)`` calls it on first use; call it
    yourself where the application's database user may not create tables at
    run time (e.g. from a migration).

    Args:
        engine: The engine of the database that will hold the markers.

    .. versionadded:: 0.2
    """
    _META.create_all(engine, checkfirst=True)
    _installed.add(engine)


def prune_commit_markers(engine: Engine, older_than: timedelta = _PRUNE_AGE) -> int:
    """Delete commit markers older than ``older_than``; return how many.

    A marker is only needed until the unit that wrote it has returned, so a day
    (the default) is generous.

    Args:
        engine: The engine of the database that holds the markers.
        older_than: Age of the markers to delete.

    Returns:
        The number of markers deleted.

    .. versionadded:: 0.2
    """
    with engine.begin() as conn:
        return prune_on(conn, older_than)


def prune_on(conn: Connection, older_than: timedelta = _PRUNE_AGE) -> int:
    """Delete markers older than ``older_than`` through ``conn``; return how many."""
    cutoff = datetime.now(timezone.utc).replace(tzinfo=None) - older_than
    result = conn.execute(_MARKERS.delete().where(_MARKERS.c.created_at < cutoff))
    return int(result.rowcount or 0)


def ensure_markers(engine: Engine) -> None:
    """Install the marker table once per engine and process."""
    if engine in _installed:
        return
    with _lock:
        if engine not in _installed:
            install_commit_markers(engine)


async def aensure_markers(engine: AsyncEngine) -> None:
    """Async twin of :func:`ensure_markers`."""
    if engine.sync_engine in _installed:
        return
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: _META.create_all(c, checkfirst=True))
    _installed.add(engine.sync_engine)


def count_commit(engine: Engine) -> bool:
    """Count a committed unit on ``engine``; ``True`` every 1 000th (time to prune)."""
    with _lock:
        n = _commits.get(engine, 0) + 1
        _commits[engine] = n
    return n % _PRUNE_EVERY == 0


def prune_quietly(engine: Engine) -> None:
    """Prune old markers, logging (never raising) a failure."""
    try:
        prune_commit_markers(engine)
    except Exception:
        log.warning("recoverly: pruning old commit markers failed", exc_info=True)


for _obj in (install_commit_markers, prune_commit_markers):
    _obj.__module__ = "recoverly.db"
del _obj
