"""Finding the session among a call's arguments, and noticing a COMMIT that broke.

Two helpers for :mod:`recoverly.db.retry`:

* :func:`session_finder` looks at a function's signature once, when it is
  decorated, and returns ``find(args, kwargs)``, which returns the
  ``Session``, ``AsyncSession``, ``Connection``, ``AsyncConnection`` or
  ``scoped_session`` a call was given, or ``None``. Where it looks, in order:

  1. the parameter annotated with one of those types (a string annotation
     naming them counts), else the parameter named ``db`` or ``session``, at
     its position or by keyword;
  2. every positional argument, then every keyword argument, by type;
  3. for a method (first parameter ``self`` or ``cls``): ``self.db`` then
     ``self.session``.

* :func:`install_commit_tracking` adds process-wide SQLAlchemy event listeners
  that mark an error raised while COMMIT was in flight on a connection that
  broke (see :func:`commit_in_flight`).

.. versionadded:: 0.1
"""

from __future__ import annotations

import inspect
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_scoped_session
from sqlalchemy.orm import Session, scoped_session

from recoverly._core.bus import BUS
from recoverly._core.predicates import is_control_flow
from recoverly.db._classify import FailureKind, classify
from recoverly.db.errors import CommitOutcomeUnknown
from recoverly.events import TransactionRolledBack

if TYPE_CHECKING:
    from recoverly.db.retry import DbRetry

__all__ = [
    "ASYNC_TYPES",
    "SESSION_TYPES",
    "Committed",
    "DbCall",
    "Finder",
    "commit_in_flight",
    "install_commit_tracking",
    "owns",
    "session_finder",
]

SESSION_TYPES: tuple[type, ...] = (
    Session,
    AsyncSession,
    Connection,
    AsyncConnection,
    scoped_session,
    async_scoped_session,
)
"""What counts as "the session" of a call."""

ASYNC_TYPES: tuple[type, ...] = (AsyncSession, AsyncConnection, async_scoped_session)
"""The session types whose methods are coroutines."""

_log = logging.getLogger("recoverly")

_TYPE_NAMES = frozenset(t.__name__ for t in SESSION_TYPES)
_PARAM_NAMES = ("db", "session")
_SELF_ATTRS = ("db", "session")

Finder = Callable[[tuple[Any, ...], dict[str, Any]], Any]


def _annotated_as_session(annotation: object) -> bool:
    if isinstance(annotation, str):
        # "Session", "orm.Session", "Session | None", "Optional[AsyncSession]"...
        words = annotation.replace("[", " ").replace("]", " ").replace("|", " ").split()
        return any(w.rpartition(".")[2] in _TYPE_NAMES for w in words)
    if isinstance(annotation, type):
        return issubclass(annotation, SESSION_TYPES)
    return any(_annotated_as_session(a) for a in getattr(annotation, "__args__", ()))


def _preferred(fn: Callable[..., Any]) -> tuple[int | None, str | None, bool]:
    """Return (position, name, is_method) of the parameter that should hold the session."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None, None, False
    is_method = bool(params) and params[0].name in ("self", "cls")
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    chosen = next((p for p in params if _annotated_as_session(p.annotation)), None)
    if chosen is None:
        chosen = next((p for p in params if p.name in _PARAM_NAMES), None)
    if chosen is None:
        return None, None, is_method
    index = params.index(chosen) if chosen.kind in positional else None
    name = None if chosen.kind is inspect.Parameter.POSITIONAL_ONLY else chosen.name
    return index, name, is_method


def _scan(args: tuple[Any, ...], kwargs: dict[str, Any], *, is_method: bool) -> Any:
    """Look for a session in every argument, then in ``self.db``/``self.session``."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, SESSION_TYPES):
            return value
    if is_method and args:
        for attr in _SELF_ATTRS:
            value = getattr(args[0], attr, None)
            if isinstance(value, SESSION_TYPES):
                return value
    return None


def session_finder(fn: Callable[..., Any]) -> Finder:
    """Return ``find(args, kwargs)`` giving the session a call of ``fn`` was passed, or ``None``.

    The signature is read once, here; see the module documentation for the lookup order.
    """
    index, name, is_method = _preferred(fn)
    types = SESSION_TYPES

    def find(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if index is not None and index < len(args):
            value = args[index]
            if isinstance(value, types):
                return value
        elif name is not None and name in kwargs:
            value = kwargs[name]
            if isinstance(value, types):
                return value
        return _scan(args, kwargs, is_method=is_method)

    return find


def owns(db: Any) -> bool:
    """Return whether a call given ``db`` starts it with no transaction in progress."""
    return not db.in_transaction()


# ---------------------------------------------------------------- lost commits
_COMMIT_TAG = "_recoverly_commit_in_flight"
_committing: weakref.WeakSet[Connection] = weakref.WeakSet()
_installed = False
_install_lock = threading.Lock()


def _on_commit(conn: Connection, *_: object) -> None:
    _committing.add(conn)


def _on_transaction_start_or_end(conn: Connection, *_: object) -> None:
    _committing.discard(conn)


def _on_error(ctx: ExceptionContext) -> None:
    conn = ctx.connection
    # A statement error has its statement; COMMIT errors come from the dialect's
    # do_commit() with none.
    if conn is None or ctx.statement is not None or conn not in _committing:
        return
    _committing.discard(conn)
    kind = classify(ctx.original_exception).kind
    if ctx.is_disconnect or kind in (FailureKind.CONNECTION_LOST, FailureKind.COMMIT_UNKNOWN):
        for err in (ctx.sqlalchemy_exception, ctx.original_exception):
            if err is not None:
                setattr(err, _COMMIT_TAG, True)


def install_commit_tracking() -> None:
    """Add the listeners that tag errors raised while COMMIT was in flight (once per process).

    ``commit`` (and ``commit_twophase``) marks the :class:`~sqlalchemy.engine.Connection`
    just before the DBAPI ``commit()``; ``begin`` and ``rollback`` clear the mark;
    ``handle_error`` sees an error with no statement on a marked connection (so the
    error came from ``commit()`` itself) and, when the connection broke (the dialect
    says it is a disconnect, or the error classifies as connection loss or 40003),
    tags the exception. A COMMIT the server answered with an error (a deferred
    constraint, a serialization failure) is not tagged: the server said it did
    not commit.
    """
    global _installed  # noqa: PLW0603 - one-time, process-wide installation
    with _install_lock:
        if _installed:
            return
        event.listen(Engine, "commit", _on_commit)
        event.listen(Engine, "commit_twophase", _on_commit)
        event.listen(Engine, "begin", _on_transaction_start_or_end)
        event.listen(Engine, "rollback", _on_transaction_start_or_end)
        event.listen(Engine, "handle_error", _on_error)
        _installed = True


def commit_in_flight(exc: BaseException) -> bool:
    """Return whether ``exc`` says the connection broke while COMMIT was in flight.

    True for an error tagged by the listeners of :func:`install_commit_tracking`
    and for SQLSTATE 40003 (statement completion unknown).
    """
    if getattr(exc, _COMMIT_TAG, False):
        return True
    return classify(exc).kind is FailureKind.COMMIT_UNKNOWN


# ---------------------------------------------------------------- one db_retry call
class Committed:
    """The idempotency check said the earlier attempt committed; ``value`` is returned."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = None if value is True else value


class DbCall:
    """The state of one call that failed once: its session and a pending idempotency check."""

    __slots__ = ("db", "label", "owner", "pending_check")

    def __init__(self, owner: DbRetry, label: str, db: Any) -> None:
        self.owner = owner
        self.label = label
        self.db = db
        self.pending_check = False

    # ------------------------------------------------------------ decisions (no I/O)
    def _decide(self, exc: BaseException, owned: bool) -> BaseException | None:
        """Return the error to raise now, or ``None`` to roll back and retry."""
        if is_control_flow(exc):
            return exc
        owner = self.owner
        if commit_in_flight(exc):
            if owned and (owner.idempotent or owner.idempotency_check is not None):
                self.pending_check = owner.idempotency_check is not None
                return None
            error = CommitOutcomeUnknown(
                f"{self.label}: the connection broke while COMMIT was in flight; the "
                "transaction may have committed, so the call is not run again "
                "(mark it idempotent=True or give an idempotency_check)"
            )
            error.__cause__ = exc
            return error
        if not owner.retry._retryable(exc) or not owned:
            return exc
        return None

    def _unknown(self, exc: BaseException) -> BaseException:
        if not self.pending_check or is_control_flow(exc):
            return exc
        error = CommitOutcomeUnknown(
            f"{self.label}: the connection broke while COMMIT was in flight and the "
            "idempotency check could not tell whether it committed"
        )
        error.__cause__ = exc
        return error

    def _rolled_back(self, exc: BaseException) -> None:
        if BUS.wants(TransactionRolledBack):
            BUS.emit(TransactionRolledBack(self.label, exc))

    def _rollback_failed(self, exc: BaseException, failure: Exception) -> None:
        _log.warning(
            "Rollback of the session of %s failed after %s; retrying anyway",
            self.label,
            type(exc).__name__,
            exc_info=failure,
        )

    # ------------------------------------------------------------ sync
    def judge_sync(self, exc: BaseException, *, owned: bool) -> None:
        """Roll back and return if ``exc`` is to be retried; raise otherwise."""
        verdict = self._decide(exc, owned)
        if self.db is not None and (verdict is None or verdict is not exc):
            self.rollback_sync(exc)
        if verdict is not None:
            raise verdict

    def rollback_sync(self, exc: BaseException) -> None:
        """Roll the session back after ``exc`` (async sessions cannot be, from sync code)."""
        if isinstance(self.db, ASYNC_TYPES):
            return
        try:
            self.db.rollback()
        except Exception as failure:
            self._rollback_failed(exc, failure)
        else:
            self._rolled_back(exc)

    def attempt_sync(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One retry: run the pending idempotency check, then the function."""
        try:
            if self.pending_check:
                check = cast("Callable[..., object]", self.owner.idempotency_check)
                done = check(*args, **kwargs)
                if done:
                    return Committed(done)
                self.pending_check = False
            return fn(*args, **kwargs)
        except BaseException as exc:
            failure = exc
        self.judge_sync(failure, owned=True)
        raise failure

    # ------------------------------------------------------------ async
    async def judge_async(self, exc: BaseException, *, owned: bool) -> None:
        """Async twin of :meth:`judge_sync`."""
        verdict = self._decide(exc, owned)
        if self.db is not None and (verdict is None or verdict is not exc):
            await self.rollback_async(exc)
        if verdict is not None:
            raise verdict

    async def rollback_async(self, exc: BaseException) -> None:
        """Roll the session back, awaiting it for async sessions."""
        try:
            db: Any = self.db
            if isinstance(db, ASYNC_TYPES):
                await cast("Any", db).rollback()
            else:
                db.rollback()
        except Exception as failure:
            self._rollback_failed(exc, failure)
        else:
            self._rolled_back(exc)

    async def attempt_async(
        self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> Any:
        """Async twin of :meth:`attempt_sync` (the check may be sync or ``async def``)."""
        try:
            if self.pending_check:
                check = cast("Callable[..., object]", self.owner.idempotency_check)
                done = check(*args, **kwargs)
                if isinstance(done, Awaitable):
                    done = await done
                if done:
                    return Committed(done)
                self.pending_check = False
            return await fn(*args, **kwargs)
        except BaseException as exc:
            failure = exc
        await self.judge_async(failure, owned=True)
        raise failure
