"""TransactionManager: one transaction per block, for anything with commit() and rollback().

::

    with TransactionManager(db) as tx:      # a SQLAlchemy Session, a DB-API connection, ...
        db.add(row)
        db.flush()
        return row                          # a clean exit (return included) commits

    async with TransactionManager(async_session) as tx:
        async_session.add(row)              # commit()/rollback() coroutines are awaited

The rules, in one place:

* **Clean exit** (falling off the end, ``return``, ``break``): with
  ``auto_commit=True`` the manager calls ``commit()``. With
  ``auto_commit=False`` it calls ``rollback()``: nothing is kept unless you
  called ``tx.commit()``, so a half-finished unit of work never rides along
  with somebody else's later commit and never holds locks after the block.
* **Exception** (any ``BaseException``, cancellation included): the manager
  calls ``rollback()`` and the *original* exception propagates unchanged. If
  ``rollback()`` itself fails, that failure is logged and (on Python 3.11+)
  added as a note to the original exception, which still propagates. (In
  ``async with`` under Trio, a rollback awaited inside an already cancelled
  scope is cancelled too; asyncio lets it run once the block was cancelled.)
* **commit() fails on a clean exit**: the manager rolls back (the transaction
  is in an unknown state) and the commit error propagates.
* **tx.commit() / tx.rollback() inside the block** are checkpoints: they end
  the current transaction and the block carries on with a fresh one, to which
  the exit rule above applies. After ``tx.rollback()`` a clean exit therefore
  commits whatever was done *after* the rollback (nothing, usually: then the
  commit is a no-op). In ``async with``, use ``await tx.acommit()`` /
  ``await tx.arollback()``.
* **Reuse**: a manager may be entered again after its block ended (each block
  is one transaction), but not while it is active: nesting the same manager
  raises ``RuntimeError`` (use a savepoint for nested work). A manager is not
  meant to be shared between threads, just like the session it wraps.

Every rollback performed through the manager emits
:class:`~recoverly.events.TransactionRolledBack` (``exception`` is ``None`` for
a rollback by hand or by ``auto_commit=False``).

.. versionadded:: 0.1
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from recoverly._core.bus import BUS
from recoverly._core.callables import guess_name, is_async_callable
from recoverly._core.validate import Problems
from recoverly.events import TransactionRolledBack

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["TransactionManager", "TransactionStatistics"]

_log = logging.getLogger("recoverly")

_IDLE, _ACTIVE, _COMMITTED, _ROLLED_BACK = "idle", "active", "committed", "rolled back"


@dataclass(frozen=True, slots=True)
class TransactionStatistics:
    """Counters of one :class:`TransactionManager` since it was created.

    Attributes:
        blocks: ``with``/``async with`` blocks entered.
        commits: Successful ``commit()`` calls (by hand or on exit).
        rollbacks: Successful ``rollback()`` calls (by hand, on error or on exit).
        rollback_failures: ``rollback()`` calls that raised.

    .. versionadded:: 0.1
    """

    blocks: int
    commits: int
    rollbacks: int
    rollback_failures: int


class TransactionManager:
    """Run a block as one transaction on ``db``: commit on success, roll back on error.

    On an exception the block's own exception always propagates, even if the
    rollback fails too. ``tx.commit()``/``tx.rollback()`` (``await
    tx.acommit()``/``tx.arollback()`` in ``async with``) are checkpoints inside
    the block. A manager can be used for several blocks in a row, never nested.
    The module documentation lists the exact rules.

    Args:
        db: Anything with ``commit()`` and ``rollback()`` methods: a SQLAlchemy
            ``Session`` or ``AsyncSession``, a DB-API connection (``sqlite3``,
            psycopg, ...). Methods that return awaitables need ``async with``.
        auto_commit: ``True``: commit on a clean exit. ``False``: only
            ``tx.commit()`` keeps work; anything uncommitted is rolled back when
            the block ends.
        name: Name used in events and logs (default: the type of ``db``).

    Raises:
        TypeError: ``db`` lacks a callable ``commit`` or ``rollback``, or
            ``auto_commit`` is not a bool, or ``name`` is not a string.
        ValueError: ``name`` is empty.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_async",
        "_blocks",
        "_commits",
        "_db",
        "_rollback_failures",
        "_rollbacks",
        "_state",
        "auto_commit",
        "name",
    )

    def __init__(self, db: Any, auto_commit: bool = True, *, name: str | None = None) -> None:
        p = Problems()
        missing = [m for m in ("commit", "rollback") if not callable(getattr(db, m, None))]
        if missing:
            p._bad(
                f"db must have callable commit() and rollback() methods "
                f"(missing {', '.join(missing)}), got {db!r}",
                kind=True,
            )
        if not isinstance(cast("object", auto_commit), bool):
            p._bad(f"auto_commit must be a bool, got {auto_commit!r}", kind=True)
        self.name = p.optional_name("name", name) or guess_name(db)
        p.raise_if_any()
        self._db = db
        self.auto_commit = auto_commit
        self._async = is_async_callable(db.commit) or is_async_callable(db.rollback)
        self._state = _IDLE
        self._blocks = self._commits = self._rollbacks = self._rollback_failures = 0

    # ------------------------------------------------------------ state
    @property
    def state(self) -> str:
        """``"idle"``, ``"active"``, ``"committed"`` or ``"rolled back"`` (the last block's end)."""
        return self._state

    @property
    def active(self) -> bool:
        """Whether a block is running."""
        return self._state == _ACTIVE

    def statistics(self) -> TransactionStatistics:
        """Return a snapshot of this manager's counters."""
        return TransactionStatistics(
            self._blocks, self._commits, self._rollbacks, self._rollback_failures
        )

    def __repr__(self) -> str:
        return (
            f"<TransactionManager {self.name!r} {self._state} auto_commit={self.auto_commit} "
            f"commits={self._commits} rollbacks={self._rollbacks}>"
        )

    # ------------------------------------------------------------ shared logic (no I/O)
    def _begin(self, *, in_async: bool) -> None:
        if self._state == _ACTIVE:
            msg = f"TransactionManager {self.name!r} is already active; it cannot be nested"
            raise RuntimeError(msg)
        if self._async and not in_async:
            msg = (
                f"the commit()/rollback() of {self.name} are coroutine functions: "
                "use `async with TransactionManager(...)`"
            )
            raise TypeError(msg)
        self._state = _ACTIVE
        self._blocks += 1

    def _check_active(self, what: str) -> None:
        if self._state != _ACTIVE:
            msg = f"{what}() may only be called inside the TransactionManager block"
            raise RuntimeError(msg)

    def _rolled_back(self, exc: BaseException | None) -> None:
        self._rollbacks += 1
        if BUS.wants(TransactionRolledBack):
            BUS.emit(TransactionRolledBack(self.name, exc))

    def _rollback_failed(self, exc: BaseException, failure: Exception) -> None:
        """Log ``failure`` of the rollback; ``exc`` stays the error that propagates."""
        self._rollback_failures += 1
        _log.error(
            "Rollback of %s failed while handling %s; the original error propagates",
            self.name,
            type(exc).__name__,
            exc_info=failure,
        )
        if sys.version_info >= (3, 11):
            exc.add_note(f"recoverly: rollback of {self.name} also failed: {failure!r}")

    # ------------------------------------------------------------ sync
    def _invoke(self, method: Callable[[], object]) -> None:
        result = method()
        if inspect.isawaitable(result):
            close = getattr(result, "close", None)
            if close is not None:
                close()
            msg = (
                f"{self.name} returned an awaitable from commit()/rollback(): use "
                "`async with` and `await tx.acommit()` / `await tx.arollback()`"
            )
            raise TypeError(msg)

    def commit(self) -> None:
        """Commit the work so far; the block continues with a new transaction.

        Raises:
            RuntimeError: Called outside the block.
            TypeError: ``db`` is asynchronous (use ``await tx.acommit()``).
        """
        self._check_active("commit")
        self._invoke(self._db.commit)
        self._commits += 1

    def rollback(self) -> None:
        """Discard the work so far; the block continues with a new transaction.

        Raises:
            RuntimeError: Called outside the block.
            TypeError: ``db`` is asynchronous (use ``await tx.arollback()``).
        """
        self._check_active("rollback")
        self._invoke(self._db.rollback)
        self._rolled_back(None)

    def _rollback_keeping(self, exc: BaseException | None) -> None:
        try:
            self._invoke(self._db.rollback)
        except Exception as failure:
            if exc is None:
                raise
            self._rollback_failed(exc, failure)
        else:
            self._rolled_back(exc)

    def __enter__(self) -> Self:
        self._begin(in_async=False)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = _ROLLED_BACK
        if exc is not None or not self.auto_commit:
            self._rollback_keeping(exc)
            return
        try:
            self._invoke(self._db.commit)
        except BaseException as commit_error:
            self._rollback_keeping(commit_error)
            raise
        self._commits += 1
        self._state = _COMMITTED

    # ------------------------------------------------------------ async
    async def _ainvoke(self, method: Callable[[], object]) -> None:
        result = method()
        if inspect.isawaitable(result):
            await result

    async def acommit(self) -> None:
        """Commit the work so far, awaiting ``db.commit()`` if it is a coroutine.

        Raises:
            RuntimeError: Called outside the block.
        """
        self._check_active("acommit")
        await self._ainvoke(self._db.commit)
        self._commits += 1

    async def arollback(self) -> None:
        """Discard the work so far, awaiting ``db.rollback()`` if it is a coroutine.

        Raises:
            RuntimeError: Called outside the block.
        """
        self._check_active("arollback")
        await self._ainvoke(self._db.rollback)
        self._rolled_back(None)

    async def _arollback_keeping(self, exc: BaseException | None) -> None:
        try:
            await self._ainvoke(self._db.rollback)
        except Exception as failure:
            if exc is None:
                raise
            self._rollback_failed(exc, failure)
        else:
            self._rolled_back(exc)

    async def __aenter__(self) -> Self:
        self._begin(in_async=True)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = _ROLLED_BACK
        if exc is not None or not self.auto_commit:
            await self._arollback_keeping(exc)
            return
        try:
            await self._ainvoke(self._db.commit)
        except BaseException as commit_error:
            await self._arollback_keeping(commit_error)
            raise
        self._commits += 1
        self._state = _COMMITTED


TransactionManager.__module__ = "recoverly"
TransactionStatistics.__module__ = "recoverly"
