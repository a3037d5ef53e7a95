"""with_savepoint: run part of a transaction so that only that part rolls back on failure.

::

    with TransactionManager(db) as tx:
        db.add(model)
        db.flush()

        @with_savepoint                     # decorator: finds the session among the arguments
        def add_dataset(db: Session) -> Dataset:
            db.add(Dataset(**data))
            db.flush()

        try:
            add_dataset(db)
        except IntegrityError:
            pass                            # only the savepoint was rolled back: model survives

    with with_savepoint(db):                # context manager form
        ...
    async with with_savepoint(async_session):   # AsyncSession / AsyncConnection
        ...

The work runs in ``session.begin_nested()`` (``SAVEPOINT``). A clean exit
releases the savepoint; an exception rolls back to it, and the *original*
exception propagates (if the rollback itself fails, that failure is logged and
added as a note). The outer transaction is never committed or rolled back here.

**SQLite.** Python's ``sqlite3`` module (pysqlite, and aiosqlite on top of it)
starts transactions lazily, just before the first INSERT/UPDATE/DELETE. A
``SAVEPOINT`` sent before that opens the transaction itself, and its
``RELEASE`` then commits everything, so savepoints silently misbehave. The fix
is SQLAlchemy's documented recipe: let the driver do nothing and emit
``BEGIN`` ourselves. :func:`enable_sqlite_savepoints` installs it on an engine;
``with_savepoint`` checks for it on SQLite and raises a ``RuntimeError`` that
names the fix instead of running a savepoint that would not isolate anything.

.. versionadded:: 0.1
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast, overload

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from recoverly._core.bus import BUS
from recoverly._core.callables import is_async_callable
from recoverly.events import TransactionRolledBack

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Savepoint", "check_savepoints", "enable_sqlite_savepoints", "find_db", "with_savepoint"]

P = ParamSpec("P")
T = TypeVar("T")

_log = logging.getLogger("recoverly")

SyncDb = Session | Connection
AsyncDb = AsyncSession | AsyncConnection
_DB_TYPES = (Session, Connection, AsyncSession, AsyncConnection)
_NAME = "savepoint"


# ---------------------------------------------------------------- SQLite recipe
def _sqlite_connect(dbapi_connection: Any, _record: object) -> None:
    dbapi_connection.isolation_level = None


def _sqlite_begin(conn: Connection) -> None:
    raw = conn.connection.dbapi_connection
    if raw is not None and raw.isolation_level is not None:  # pooled before the recipe
        raw.isolation_level = None
    conn.exec_driver_sql("BEGIN")


def enable_sqlite_savepoints(engine: Engine | AsyncEngine) -> None:
    """Make SAVEPOINT work on a SQLite engine (pysqlite or aiosqlite).

    Applies SQLAlchemy's documented recipe: the driver's own transaction
    handling is switched off (``isolation_level = None`` on every connection)
    and ``BEGIN`` is emitted whenever SQLAlchemy begins a transaction. Call it
    once, right after ``create_engine``; calling it again does nothing.

    Args:
        engine: A SQLite ``Engine`` or ``AsyncEngine``.

    Raises:
        ValueError: ``engine`` is not a SQLite engine.
        TypeError: ``engine`` is not an engine.

    .. versionadded:: 0.1
    """
    sync = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    if not isinstance(cast("object", sync), Engine):
        msg = f"engine must be a SQLAlchemy Engine or AsyncEngine, got {engine!r}"
        raise TypeError(msg)
    if sync.dialect.name != "sqlite":
        msg = f"enable_sqlite_savepoints() is for SQLite engines, got {sync.dialect.name!r}"
        raise ValueError(msg)
    if not event.contains(sync, "connect", _sqlite_connect):
        event.listen(sync, "connect", _sqlite_connect)
    if not event.contains(sync, "begin", _sqlite_begin):
        event.listen(sync, "begin", _sqlite_begin)


def check_savepoints(conn: Connection) -> None:
    """Raise ``RuntimeError`` when ``conn`` is SQLite without working savepoints.

    Savepoints work when the driver leaves transactions to SQLAlchemy
    (:func:`enable_sqlite_savepoints`) and a transaction is open, or when the
    Python 3.12+ ``autocommit=False`` mode is used. Other dialects always pass.

    .. versionadded:: 0.1
    """
    if conn.dialect.name != "sqlite":
        return
    raw = conn.connection.dbapi_connection
    if getattr(raw, "autocommit", None) is False:  # Python 3.12+: always in a transaction
        return
    if getattr(raw, "isolation_level", "") is None and getattr(raw, "in_transaction", True):
        return
    msg = (
        "SAVEPOINT does not work on this SQLite engine: the sqlite3 driver begins "
        "transactions lazily, so RELEASE would commit the outer work. Call "
        "recoverly.db.enable_sqlite_savepoints(engine) once after create_engine()."
    )
    raise RuntimeError(msg)


# ---------------------------------------------------------------- the savepoint block
def _rolled_back(exc: BaseException) -> None:
    if BUS.wants(TransactionRolledBack):
        BUS.emit(TransactionRolledBack(_NAME, exc))


def rollback_failed(exc: BaseException, failure: Exception) -> None:
    """Log that a rollback failed while ``exc`` propagates, and note it on ``exc``."""
    _log.error(
        "Rollback to savepoint failed while handling %s; the original error propagates",
        type(exc).__name__,
        exc_info=failure,
    )
    if sys.version_info >= (3, 11):
        exc.add_note(f"recoverly: rollback to the savepoint also failed: {failure!r}")


class Savepoint:
    """A ``SAVEPOINT`` block on a session or connection (made by :func:`with_savepoint`).

    Use ``with`` for ``Session``/``Connection`` and ``async with`` for
    ``AsyncSession``/``AsyncConnection``. One object is one block; it may be
    entered again after the block ended.

    .. versionadded:: 0.1
    """

    __slots__ = ("_nested", "db")

    def __init__(self, db: SyncDb | AsyncDb) -> None:
        if not isinstance(cast("object", db), _DB_TYPES):
            msg = (
                "with_savepoint() needs a Session, Connection, AsyncSession or "
                f"AsyncConnection, got {db!r}"
            )
            raise TypeError(msg)
        self.db = db
        self._nested: Any = None

    def __repr__(self) -> str:
        state = "active" if self._nested is not None else "idle"
        return f"<Savepoint {state} on {type(self.db).__name__}>"

    def __enter__(self) -> Self:
        db = self.db
        if isinstance(db, AsyncSession | AsyncConnection):
            msg = f"{type(db).__name__} needs `async with with_savepoint(...)`"
            raise TypeError(msg)
        check_savepoints(db.connection() if isinstance(db, Session) else db)
        self._nested = db.begin_nested()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        nested, self._nested = self._nested, None
        if exc is None:
            nested.commit()
            return
        try:
            nested.rollback()
        except Exception as failure:
            rollback_failed(exc, failure)
        else:
            _rolled_back(exc)

    async def __aenter__(self) -> Self:
        db = self.db
        if not isinstance(db, AsyncSession | AsyncConnection):
            msg = f"{type(db).__name__} needs a plain `with with_savepoint(...)`"
            raise TypeError(msg)
        conn = await db.connection() if isinstance(db, AsyncSession) else db
        check_savepoints(conn.sync_connection)  # type: ignore[arg-type]
        self._nested = await db.begin_nested()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        nested, self._nested = self._nested, None
        if exc is None:
            await nested.commit()
            return
        try:
            await nested.rollback()
        except Exception as failure:
            rollback_failed(exc, failure)
        else:
            _rolled_back(exc)


def find_db(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Return the session/connection among a call's arguments (``db=`` first).

    Raises:
        TypeError: None of the arguments is a session or connection.
    """
    for key in ("db", "session"):
        if isinstance(kwargs.get(key), _DB_TYPES):
            return kwargs[key]
    for value in (*args, *kwargs.values()):
        if isinstance(value, _DB_TYPES):
            return value
    msg = (
        "@with_savepoint found no Session, Connection, AsyncSession or AsyncConnection "
        "among the arguments"
    )
    raise TypeError(msg)


def _decorate(fn: Callable[P, T]) -> Callable[P, T]:
    if is_async_callable(fn):
        afn = cast("Callable[..., Any]", fn)

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            async with Savepoint(find_db(args, kwargs)):
                return await afn(*args, **kwargs)

        return cast("Callable[P, T]", async_wrapper)

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with Savepoint(find_db(args, kwargs)):
            return fn(*args, **kwargs)

    return wrapper


@overload
def with_savepoint(target: SyncDb | AsyncDb, /) -> Savepoint: ...
@overload
def with_savepoint(target: Callable[P, T], /) -> Callable[P, T]: ...
@overload
def with_savepoint(target: None = None, /) -> Callable[[Callable[P, T]], Callable[P, T]]: ...
def with_savepoint(target: Any = None, /) -> Any:
    """Run a function or a block inside a savepoint (``session.begin_nested()``).

    Three spellings:

    * ``@with_savepoint`` (or ``@with_savepoint()``) on a function taking a
      ``Session``/``Connection`` (or ``AsyncSession``/``AsyncConnection`` for
      ``async def``): the session is found among the arguments (``db=`` or
      ``session=`` keyword first, then the first argument of a session type).
    * ``with with_savepoint(session):`` / ``async with with_savepoint(async_session):``.

    On a clean exit the savepoint is released (the outer transaction keeps the
    work, still uncommitted). On an exception only the savepoint is rolled
    back, a :class:`~recoverly.events.TransactionRolledBack` event is emitted
    (name ``"savepoint"``) and the original exception propagates.

    Args:
        target: The function to decorate, the session/connection for the block
            form, or nothing (decorator factory).

    Returns:
        The wrapped function, a :class:`Savepoint` block, or a decorator.

    Raises:
        TypeError: ``target`` is neither callable nor a session/connection; at
            call time, no session among the arguments, or a sync block on an
            async session (and the reverse).
        RuntimeError: On entry, a SQLite engine without working savepoints
            (call :func:`enable_sqlite_savepoints`).

    .. versionadded:: 0.1
    """
    if target is None:
        return _decorate
    if isinstance(target, _DB_TYPES):
        return Savepoint(target)
    if callable(target):
        return _decorate(target)
    msg = f"with_savepoint() takes a function or a session/connection, got {target!r}"
    raise TypeError(msg)


for _obj in (enable_sqlite_savepoints, with_savepoint, Savepoint):
    _obj.__module__ = "recoverly.db"
del _obj
