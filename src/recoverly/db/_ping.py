"""ensure_connection: ping the connections a call is about to use, replace dead ones.

The ping rides on SQLAlchemy's ``engine_connect`` event, installed once per
process on the ``Engine`` class: while a decorated call runs (a context
variable says so, per thread and per task), every ``Connection`` an engine
hands out, which is what a ``Session`` does when it starts a transaction, has
its DBAPI connection pinged with the dialect's ``do_ping`` (as
``pool_pre_ping`` does). A dead one is invalidated, and SQLAlchemy reconnects
it at its first statement. Nothing else is touched: no transaction is begun, so
``session.begin()`` inside the call still works.

.. versionadded:: 0.1
"""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast, overload

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection

from recoverly._core.callables import Kind, decoratable_kind
from recoverly._core.clock import Clock, resolve
from recoverly._core.validate import Duration, Problems
from recoverly.db._classify import FailureKind, classify
from recoverly.db._session import session_finder

__all__ = ["EnsureConnection", "ensure_connection", "ping"]

P = ParamSpec("P")
T = TypeVar("T")
_log = logging.getLogger("recoverly")
_install_lock = threading.Lock()

_PINGED_AT = "recoverly.pinged_at"
_ENSURING: contextvars.ContextVar[EnsureConnection | None] = contextvars.ContextVar(
    "recoverly_ensure_connection", default=None
)


def _lost(dialect: Any, err: BaseException, dbapi_connection: Any) -> bool:
    if classify(err).kind is FailureKind.CONNECTION_LOST:
        return True
    try:
        return bool(dialect.is_disconnect(err, dbapi_connection, None))
    except Exception:
        return False


def ping(conn: Connection, policy: EnsureConnection) -> bool:
    """Ping ``conn``'s DBAPI connection unless it was pinged within the policy's interval.

    A dead connection is invalidated (its next use reconnects) and logged.

    Returns:
        ``False`` when the connection was found dead, else ``True``.
    """
    info = conn.info
    interval = policy.ping_interval
    now = 0.0
    if interval:
        now = resolve(policy.clock).monotonic()
        last = info.get(_PINGED_AT)
        if last is not None and now - last < interval:
            return True
    dbapi_connection = conn.connection.dbapi_connection
    if dbapi_connection is None:  # already invalidated: it reconnects at first use
        return False
    try:
        conn.dialect.do_ping(dbapi_connection)
    except Exception as err:
        if not _lost(conn.dialect, err, dbapi_connection):
            raise
        _log.warning(
            "Database connection lost (found by the ping of %s): %s; reconnecting",
            policy.name or "ensure_connection",
            err,
        )
        conn.invalidate(err)
        return False
    if interval:
        info[_PINGED_AT] = now
    return True


def _on_engine_connect(conn: Connection) -> None:
    policy = _ENSURING.get()
    if policy is not None and not conn.invalidated:
        ping(conn, policy)


class EnsureConnection:
    """Ping the connections a call is about to use; usually built with :func:`ensure_connection`.

    .. versionadded:: 0.1
    """

    __slots__ = ("clock", "name", "ping_interval")

    def __init__(
        self,
        ping_interval: Duration = 0.0,
        *,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        p = Problems()
        self.ping_interval = p.duration("ping_interval", ping_interval)
        self.name = p.optional_name("name", name)
        p.raise_if_any()
        self.clock = clock
        _install_ping()

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate ``fn``; the wrapper keeps its kind (sync or ``async def``) and signature."""
        kind = decoratable_kind("ensure_connection", fn)
        find = session_finder(fn)
        if kind is Kind.ASYNC:
            afn = cast("Callable[..., Awaitable[Any]]", fn)

            @functools.wraps(fn)
            async def ensure_connection_async_wrapper(*args: Any, **kwargs: Any) -> Any:
                token = _ENSURING.set(self)
                try:
                    db = find(args, kwargs)
                    if isinstance(db, AsyncConnection) and not db.in_transaction():
                        await db.run_sync(ping, self)
                    elif isinstance(db, Connection) and not db.in_transaction():
                        ping(db, self)
                    return await afn(*args, **kwargs)
                finally:
                    _ENSURING.reset(token)

            return cast("Callable[P, T]", ensure_connection_async_wrapper)

        @functools.wraps(fn)
        def ensure_connection_wrapper(*args: Any, **kwargs: Any) -> Any:
            token = _ENSURING.set(self)
            try:
                db = find(args, kwargs)
                if isinstance(db, Connection) and not db.in_transaction():
                    ping(db, self)
                return fn(*args, **kwargs)
            finally:
                _ENSURING.reset(token)

        return cast("Callable[P, T]", ensure_connection_wrapper)

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return f"<EnsureConnection{name} ping_interval={self.ping_interval:g}>"


def _install_ping() -> None:
    global _ping_installed  # noqa: PLW0603 - one-time, process-wide installation
    with _install_lock:
        if not _ping_installed:
            event.listen(Engine, "engine_connect", _on_engine_connect)
            _ping_installed = True


_ping_installed = False


@overload
def ensure_connection(fn: Callable[P, T], /) -> Callable[P, T]: ...


@overload
def ensure_connection(
    *, ping_interval: Duration = 0.0, name: str | None = None, clock: Clock | None = None
) -> EnsureConnection: ...


def ensure_connection(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    ping_interval: Duration = 0.0,
    name: str | None = None,
    clock: Clock | None = None,
) -> Any:
    """Check that a call's database connections are alive before the call uses them.

    Use it bare, ``@ensure_connection``, or with options,
    ``@ensure_connection(ping_interval=5.0)``, on plain and ``async def``
    functions. During the call, every connection a SQLAlchemy ``Session``
    (sync or async) or engine checks out of its pool is pinged first with the
    dialect's ``do_ping`` (``SELECT 1``, as ``pool_pre_ping`` does); a
    ``Connection``/``AsyncConnection`` argument that has no transaction in
    progress is pinged before the call. A dead connection is invalidated, so
    the call runs on a new one: a call after a server restart or
    ``pg_terminate_backend`` succeeds without any retry.

    A session that already has a transaction in progress keeps its connection
    and is not pinged: replacing the connection would silently drop the
    transaction's work (an error then surfaces at the first statement, for
    ``db_retry`` or the caller). A function that opens its own session (takes
    none) is covered too: its checkouts happen during the call.

    Args:
        fn: The function, when used bare.
        ping_interval: Ping a given pooled connection at most once per this
            many seconds (``0``: on every checkout). The ping is the only
            round trip ``ensure_connection`` adds.
        name: Name used in logs.
        clock: Time source for ``ping_interval`` (default: the process clock).

    Returns:
        The wrapper (bare use) or an :class:`EnsureConnection` decorator.

    Raises:
        ValueError: ``ping_interval`` is negative or ``name`` is empty.
        TypeError: A setting has the wrong type, or the decorated callable is a
            generator function.

    .. versionadded:: 0.1
    """
    policy = EnsureConnection(ping_interval, name=name, clock=clock)
    return policy if fn is None else policy(fn)


EnsureConnection.__module__ = "recoverly.db"
ensure_connection.__module__ = "recoverly.db"
