"""Which database errors are worth retrying: one table, per dialect, by code.

Decisions are made from SQLSTATE (PostgreSQL), driver error numbers (MySQL and
MariaDB) and SQLite result codes, plus SQLAlchemy's ``connection_invalidated``
flag; message text is consulted only where a driver exposes no code (SQLite on
Python 3.10). ``IntegrityError``, ``DataError`` and ``ProgrammingError`` are never
retried: running the same statement again gives the same answer.

=====================  ==========================================  =====================
kind                   PostgreSQL (SQLSTATE)                        MySQL / MariaDB (errno)
=====================  ==========================================  =====================
``CONNECTION_LOST``    class 08 (08000, 08003, 08006, 08001, ...),  2006, 2013, 2003, 2055,
                       57P01, 57P02, 57P03, 25P03; and any          1927, 1053, 4031
                       ``connection_invalidated`` error
``SERIALIZATION``      40001                                         1020 (MariaDB record
                                                                     changed, snapshot)
``DEADLOCK``           40P01                                         1213
``LOCK_TIMEOUT``       55P03                                         1205
``BUSY``               53300 (too many connections)                  1040
``POOL_TIMEOUT``       SQLAlchemy's pool ``TimeoutError``            (same)
``COMMIT_UNKNOWN``     40003 (statement completion unknown)          --
=====================  ==========================================  =====================

SQLite: ``SQLITE_BUSY`` (5) and ``SQLITE_LOCKED`` (6), with their extended codes
("database is locked", "database table is locked"), are ``BUSY``.

Each kind maps to one :class:`Verdict`, the action it calls for:
``SERIALIZATION``/``DEADLOCK`` → ``RETRY_TRANSACTION``; ``LOCK_TIMEOUT``,
``BUSY``, ``POOL_TIMEOUT`` → ``RETRY_WITH_BACKOFF``; ``CONNECTION_LOST`` →
``RECONNECT_AND_RETRY`` (``RESOLVE_COMMIT`` when it happened during COMMIT);
``COMMIT_UNKNOWN`` → ``RESOLVE_COMMIT``; the rest → ``NEVER_RETRY``. The table is
the same for every driver: psycopg 3, psycopg2 and asyncpg on PostgreSQL,
PyMySQL (and mysqlclient, asyncmy, aiomysql by their errno) on MySQL/MariaDB,
sqlite3 and aiosqlite; ``tests/db/test_verdicts_real.py`` provokes each error on
the real servers through each driver installed.

.. versionadded:: 0.1
"""

from __future__ import annotations

import enum
import sqlite3
from dataclasses import dataclass

from sqlalchemy import exc as sa_exc

__all__ = ["DbFailure", "FailureKind", "Verdict", "classify", "is_retryable"]


class FailureKind(enum.Enum):
    """Why a database call failed, as far as retrying is concerned.

    .. versionadded:: 0.1
    """

    CONNECTION_LOST = "connection_lost"
    """The connection broke or the server went away: reconnect and run again."""
    SERIALIZATION = "serialization"
    """The transaction lost a serialization race: run the whole transaction again."""
    DEADLOCK = "deadlock"
    """The server chose this transaction as a deadlock victim: run it again."""
    LOCK_TIMEOUT = "lock_timeout"
    """A lock could not be had in time: wait and run again."""
    BUSY = "busy"
    """The server (or SQLite file) is busy: wait and run again."""
    POOL_TIMEOUT = "pool_timeout"
    """No pooled connection was free in time: wait and run again."""
    COMMIT_UNKNOWN = "commit_unknown"
    """The server could not say whether the transaction committed."""
    NOT_RETRYABLE = "not_retryable"
    """Running it again would fail the same way (constraint, bad data, bad SQL, ...)."""


class Verdict(enum.Enum):
    """What to do about a failure: the action each :class:`FailureKind` calls for.

    .. versionadded:: 0.2
    """

    RETRY_TRANSACTION = "retry_transaction"
    """Run the whole transaction again at once (serialization failure, deadlock)."""
    RETRY_WITH_BACKOFF = "retry_with_backoff"
    """Wait, then run it again (lock timeout, busy server or file, pool timeout)."""
    RECONNECT_AND_RETRY = "reconnect_and_retry"
    """Get a new connection, then run it again (disconnect, server shutting down)."""
    RESOLVE_COMMIT = "resolve_commit"
    """Find out whether it committed before doing anything (see run_transaction)."""
    NEVER_RETRY = "never_retry"
    """Running it again fails the same way (constraint, data, SQL errors)."""


_VERDICTS = {
    FailureKind.SERIALIZATION: Verdict.RETRY_TRANSACTION,
    FailureKind.DEADLOCK: Verdict.RETRY_TRANSACTION,
    FailureKind.LOCK_TIMEOUT: Verdict.RETRY_WITH_BACKOFF,
    FailureKind.BUSY: Verdict.RETRY_WITH_BACKOFF,
    FailureKind.POOL_TIMEOUT: Verdict.RETRY_WITH_BACKOFF,
    FailureKind.CONNECTION_LOST: Verdict.RECONNECT_AND_RETRY,
    FailureKind.COMMIT_UNKNOWN: Verdict.RESOLVE_COMMIT,
    FailureKind.NOT_RETRYABLE: Verdict.NEVER_RETRY,
}


@dataclass(frozen=True, slots=True)
class DbFailure:
    """The classification of one exception.

    Attributes:
        kind: The :class:`FailureKind`.
        code: The SQLSTATE, driver errno or SQLite code that decided it, if any.
        reason: A short human explanation.
    """

    kind: FailureKind
    code: str | None
    reason: str

    @property
    def verdict(self) -> Verdict:
        """The action this failure calls for.

        A connection lost during COMMIT calls for :attr:`Verdict.RESOLVE_COMMIT`
        too, but only the caller knows that it was a COMMIT.
        """
        return _VERDICTS[self.kind]

    @property
    def retryable(self) -> bool:
        """Whether running the work again may succeed."""
        return self.kind not in (FailureKind.NOT_RETRYABLE, FailureKind.COMMIT_UNKNOWN)


_PG_CONNECTION = {"57P01", "57P02", "57P03", "25P03"}
_PG = {
    "40001": FailureKind.SERIALIZATION,
    "40P01": FailureKind.DEADLOCK,
    "55P03": FailureKind.LOCK_TIMEOUT,
    "53300": FailureKind.BUSY,
    "40003": FailureKind.COMMIT_UNKNOWN,
}
_MYSQL = {
    2006: FailureKind.CONNECTION_LOST,  # server has gone away
    2013: FailureKind.CONNECTION_LOST,  # lost connection during query
    2003: FailureKind.CONNECTION_LOST,  # can't connect
    2055: FailureKind.CONNECTION_LOST,  # lost connection (system error)
    1927: FailureKind.CONNECTION_LOST,  # MariaDB: connection was killed
    1053: FailureKind.CONNECTION_LOST,  # server shutdown in progress
    4031: FailureKind.CONNECTION_LOST,  # MySQL 8: disconnected by the server (idle)
    1213: FailureKind.DEADLOCK,
    1205: FailureKind.LOCK_TIMEOUT,
    1040: FailureKind.BUSY,  # too many connections
    1020: FailureKind.SERIALIZATION,  # MariaDB: record changed since last read
}
_SQLITE_BUSY_CODES = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED (primary codes)
_SQLITE_BUSY_TEXT = ("database is locked", "database table is locked", "database is busy")
_NEVER = (sa_exc.IntegrityError, sa_exc.DataError, sa_exc.ProgrammingError)
_NOT = DbFailure(FailureKind.NOT_RETRYABLE, None, "not a transient database error")


def _driver_error(exc: BaseException) -> BaseException:
    return exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc


def _sqlstate(err: BaseException) -> str | None:
    code = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
    return code if isinstance(code, str) else None


def _mysql_errno(err: BaseException) -> int | None:
    module = type(err).__module__
    if not module.startswith(("pymysql", "MySQLdb", "mysql", "mariadb", "asyncmy", "aiomysql")):
        return None
    errno = getattr(err, "errno", None)
    if isinstance(errno, int):
        return errno
    args = getattr(err, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _sqlite_busy(err: BaseException) -> str | None:
    if not isinstance(err, sqlite3.OperationalError):
        return None
    code = getattr(err, "sqlite_errorcode", None)  # Python 3.11+
    if isinstance(code, int):
        return str(code) if code & 0xFF in _SQLITE_BUSY_CODES else None
    text = str(err).lower()
    return "SQLITE_BUSY" if any(t in text for t in _SQLITE_BUSY_TEXT) else None


def _by_sqlalchemy(exc: BaseException) -> DbFailure | None:
    """What SQLAlchemy's own exception says, before any code is read."""
    if isinstance(exc, _NEVER) and exc.connection_invalidated:
        # The dialect says the connection is gone, whatever class the driver chose
        # (SQLite's "Cannot operate on a closed database" is a ProgrammingError).
        state = _sqlstate(_driver_error(exc))
        return DbFailure(FailureKind.CONNECTION_LOST, state, "connection invalidated")
    if isinstance(exc, _NEVER):
        return DbFailure(
            FailureKind.NOT_RETRYABLE, _sqlstate(_driver_error(exc)), type(exc).__name__
        )
    if isinstance(exc, sa_exc.TimeoutError):
        return DbFailure(FailureKind.POOL_TIMEOUT, None, "connection pool timed out")
    if isinstance(exc, sa_exc.DisconnectionError):
        return DbFailure(FailureKind.CONNECTION_LOST, None, "disconnected")
    return None


def classify(exc: BaseException) -> DbFailure:  # noqa: PLR0911 - one branch per source of truth
    """Classify ``exc`` (a SQLAlchemy or driver exception) for retrying.

    Args:
        exc: The exception raised by a database call.

    Returns:
        A :class:`DbFailure`; ``failure.retryable`` says whether to retry.

    .. versionadded:: 0.1
    """
    decided = _by_sqlalchemy(exc)
    if decided is not None:
        return decided
    invalidated = isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated
    err = _driver_error(exc)
    # MySQL drivers carry a SQLSTATE too (1213 deadlock is 40001 there): the errno
    # is the more precise answer, so it is read first.
    errno = _mysql_errno(err)
    if errno is not None and errno in _MYSQL:
        return DbFailure(_MYSQL[errno], str(errno), f"MySQL error {errno}")
    state = _sqlstate(err)
    if state is not None:
        if state in _PG:
            return DbFailure(_PG[state], state, f"SQLSTATE {state}")
        if state.startswith("08") or state in _PG_CONNECTION:
            return DbFailure(FailureKind.CONNECTION_LOST, state, f"SQLSTATE {state}")
    busy = _sqlite_busy(err)
    if busy is not None:
        return DbFailure(FailureKind.BUSY, busy, "SQLite database is locked")
    if invalidated:
        return DbFailure(FailureKind.CONNECTION_LOST, state, "connection invalidated")
    return _NOT


def is_retryable(exc: BaseException) -> bool:
    """Return whether ``exc`` is a transient database error worth retrying.

    See :func:`classify` and the table in this module's documentation.

    .. versionadded:: 0.1
    """
    return classify(exc).retryable


for _obj in (FailureKind, Verdict, DbFailure, classify, is_retryable):
    _obj.__module__ = "recoverly.db"
del _obj
