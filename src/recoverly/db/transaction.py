"""run_transaction: retry a whole unit of work, COMMIT included, with a fresh session each time.

::

    def transfer(session: Session) -> None:
        src = session.get(Account, 1)
        src.balance -= 10
        session.get(Account, 2).balance += 10

    run_transaction(Session, transfer, isolation_level="SERIALIZABLE")
    await arun_transaction(AsyncSessionLocal, atransfer)      # the async twin

Each attempt opens a session from the factory, begins, sets the isolation level,
runs ``fn(session)``, flushes and COMMITs, then closes the session. A retryable
failure anywhere in that attempt, COMMIT included (a serialization failure
under SERIALIZABLE often surfaces only at COMMIT), rolls back, closes, waits
(backoff with jitter through :class:`recoverly.Retry`, which also emits the
``RetryScheduled`` / ``RetrySucceeded`` / ``RetryGaveUp`` events) and runs the
*whole* unit again in a new session. What is retryable is decided by
:func:`recoverly.db.is_retryable`, nowhere else. Anything else propagates at
once, after the rollback. ``fn`` must not commit or roll back the session itself.

**The lost COMMIT.** When the connection breaks while COMMIT is in flight (the
commit call fails with a connection-loss error, or SQLSTATE 40003), the server
may have committed. Running the unit again could apply it twice, so by default
:class:`~recoverly.db.CommitOutcomeUnknown` is raised, with the driver error as
its ``__cause__``. Two ways out:

* ``idempotent=True``: running the unit twice is harmless (it checks an
  idempotency key itself, or only sets absolute values): it is simply retried.
* ``commit_check=check``: after a lost commit, ``check(session)`` runs in a fresh
  session and answers ``True`` (it committed: ``fn``'s result is returned, the
  unit is not run again), ``False`` (it did not: the unit is retried) or
  ``None`` (cannot tell: ``CommitOutcomeUnknown``). A check that fails counts as
  ``None``. This is the seam for automatic resolution: if the check object
  also has a ``before_commit(session)`` method, it is called inside the
  transaction right before COMMIT, e.g. to record ``pg_current_xact_id()`` for a
  later ``pg_xact_status()`` lookup.

**Never inside someone else's transaction.** ``NestedTransactionError`` is
raised, before anything runs, when the factory hands out a session that is
already in a transaction (a ``scoped_session`` in use), when the session is
bound to a ``Connection`` with a transaction in progress (the test pattern
``Session(bind=connection)`` after ``connection.begin()``; the session would
only join it, its COMMIT would commit nothing and a retry would run on top of an
aborted transaction), and when ``run_transaction`` is called from inside the
unit of work of another ``run_transaction`` in the same thread or task (the
inner unit would commit on its own, be repeated whenever the outer one retries,
and can wait forever on locks the outer one holds). Tasks and ``to_thread``
calls started inside a unit inherit that context and are refused too.

A failure while closing the session (the connection is already gone) is
logged, never raised: it must not turn a COMMIT that succeeded into an error.

.. versionadded:: 0.1
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from recoverly._core.callables import guess_name
from recoverly._core.clock import Clock
from recoverly._core.validate import Duration
from recoverly.db._transaction_unit import (
    Unit,
    build,
    enter,
    is_lost_commit,
    leave,
    log,
    outer_transaction,
    retry_args,
)
from recoverly.db.commits import CommitMarkerResolver, aensure_markers, ensure_markers

__all__ = ["arun_transaction", "run_transaction"]

T = TypeVar("T")
SessionSource = Callable[[], Session] | Engine | Connection
AsyncSessionSource = Callable[[], AsyncSession] | AsyncEngine | AsyncConnection


def _close(session: Session, label: str) -> None:
    try:
        session.close()
    except Exception:
        log.warning("run_transaction(%r): closing the session failed", label, exc_info=True)


async def _aclose(session: AsyncSession, label: str) -> None:
    try:
        await session.close()
    except Exception:
        log.warning("run_transaction(%r): closing the session failed", label, exc_info=True)


# ------------------------------------------------------------------ sync driver
def _attempt(unit: Unit, fn: Callable[[Session], T]) -> T:
    """One attempt: fresh session, begin, fn, flush, COMMIT, close."""
    session = unit.factory()
    if not isinstance(session, Session):
        raise unit.wrong_session(session, Session)
    why = outer_transaction(session)
    if why is not None:
        raise unit.refusal(why)  # not ours: leave it open
    resolver = unit.choose(_bind(session))
    if isinstance(resolver, CommitMarkerResolver):
        ensure_markers(resolver.engine)  # before the unit's transaction: DDL may commit
    hook = unit.hook(sync=True)
    token = enter(unit.label)
    lost: BaseException | None = None
    try:
        tx = session.begin()
        if unit.isolation_level is not None:
            session.connection(execution_options={"isolation_level": unit.isolation_level})
        result = fn(session)
        if session.get_transaction() is not tx:
            raise unit.ended_by_fn()
        session.flush()  # a failing flush is an ordinary error, not a lost commit
        if hook is not None:
            hook(session)
        try:
            session.commit()
        except Exception as exc:
            if not is_lost_commit(exc):
                raise
            lost = exc
    finally:
        leave(token)
        _close(session, unit.label)
    if lost is None:
        unit.committed()
        return result
    return _resolve(unit, lost, result)


def _bind(session: Session) -> object:
    try:
        return session.get_bind()
    except Exception:  # several binds and no mapper to choose: no automatic resolution
        return None


def _resolve(unit: Unit, lost: BaseException, result: T) -> T:
    """After a lost COMMIT: retry, return ``result``, or raise CommitOutcomeUnknown."""
    if unit.idempotent:
        raise unit.retry_lost(lost)
    if unit.resolver is not None:
        return cast("T", unit.settle(lost, unit.resolver.resolve(unit.factory), result))
    if unit.check is None:
        raise unit.unknown(lost, "and the work was not marked idempotent") from lost
    verdict = None
    session = cast("Session", unit.factory())
    try:
        verdict = unit.check(session)
    except Exception:
        log.warning("run_transaction(%r): commit_check failed", unit.label, exc_info=True)
    finally:
        _close(session, unit.label)
    if verdict is True:
        return result
    if verdict is False:
        raise unit.retry_lost(lost)
    raise unit.unknown(lost, "and commit_check could not tell") from lost


def run_transaction(
    sessions: SessionSource,
    fn: Callable[[Session], T],
    *,
    isolation_level: str | None = None,
    idempotent: bool = False,
    commit_check: Callable[[Session], bool | None] | None = None,
    commit_marker: bool = False,
    resolve_commits: bool = True,
    max_attempts: int | None = 10,
    delay: Duration = 0.05,
    backoff: float = 2.0,
    max_delay: Duration | None = 2.0,
    jitter: bool | float = 1.0,
    deadline: Duration | None = None,
    name: str | None = None,
    clock: Clock | None = None,
    random: Callable[[], float] | None = None,
) -> T:
    """Run ``fn(session)`` as one transaction, retrying the whole unit on transient errors.

    See the module documentation for the attempt cycle, the lost-COMMIT rules
    and what counts as nesting.

    Args:
        sessions: A ``sessionmaker`` (or any callable returning a new
            ``Session``), or an ``Engine`` / ``Connection`` to bind new sessions to.
        fn: The unit of work; it gets the attempt's session and must not commit.
        isolation_level: Isolation level for each attempt, e.g. ``"SERIALIZABLE"``.
        idempotent: Running the unit twice is harmless, so a lost COMMIT is retried.
        commit_check: Called with a fresh session after a lost COMMIT: ``True``
            committed, ``False`` did not, ``None`` unknown.
        commit_marker: Resolve a lost COMMIT on any database by a token row
            written in the transaction (see :mod:`recoverly.db.commits`).
        resolve_commits: On PostgreSQL, resolve a lost COMMIT through
            ``pg_xact_status`` (one extra round trip per writing transaction;
            the default). Not used with ``idempotent`` or ``commit_check``.
        max_attempts: Attempts in all (``None``: no limit; then set ``deadline``).
        delay: First wait in seconds.
        backoff: Growth factor of the waits.
        max_delay: Cap on each wait (``None``: no cap).
        jitter: Spread of each wait: 1.0 (the default) picks in [0 %, 100 %].
        deadline: Seconds for all attempts and waits (``None``: no limit).
        name: Name in events and logs (default: ``fn``'s name).
        clock: Time source (default: the process clock).
        random: Source of floats in [0, 1) for the jitter.

    Returns:
        What ``fn`` returned in the attempt that committed.

    Raises:
        NestedTransactionError: It would run inside a transaction it did not open.
        CommitOutcomeUnknown: The connection was lost during COMMIT and nothing
            could say whether it committed.
        ValueError: A setting is out of range (every bad setting is listed).
        TypeError: A setting has the wrong type.

    When retries run out, the last database error is raised unchanged.

    .. versionadded:: 0.1
    """
    label = name or guess_name(fn)
    args = retry_args(max_attempts, delay, backoff, max_delay, jitter, deadline, clock, random)
    unit, policy = build(
        sessions,
        label,
        isolation_level,
        idempotent,
        commit_check,
        args,
        sync=True,
        commit_marker=commit_marker,
        resolve_commits=resolve_commits,
    )
    return cast("T", policy.call(_attempt, unit, fn))


# ------------------------------------------------------------------ async driver
async def _aattempt(unit: Unit, fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Async twin of :func:`_attempt`."""
    session = unit.factory()
    if not isinstance(session, AsyncSession):
        raise unit.wrong_session(session, AsyncSession)
    why = outer_transaction(session.sync_session)
    if why is not None:
        raise unit.refusal(why)
    resolver = unit.choose(session.bind)
    if isinstance(resolver, CommitMarkerResolver):
        await aensure_markers(resolver.engine)
    hook = unit.hook(sync=False)
    token = enter(unit.label)
    lost: BaseException | None = None
    try:
        await session.begin()
        tx = session.sync_session.get_transaction()
        if unit.isolation_level is not None:
            await session.connection(execution_options={"isolation_level": unit.isolation_level})
        result = await fn(session)
        if session.sync_session.get_transaction() is not tx:
            raise unit.ended_by_fn()
        await session.flush()
        if hook is not None:
            await hook(session)
        try:
            await session.commit()
        except Exception as exc:
            if not is_lost_commit(exc):
                raise
            lost = exc
    finally:
        leave(token)
        await _aclose(session, unit.label)
    if lost is None:
        return result
    return await _aresolve(unit, lost, result)


async def _aresolve(unit: Unit, lost: BaseException, result: T) -> T:
    """Async twin of :func:`_resolve`."""
    if unit.idempotent:
        raise unit.retry_lost(lost)
    if unit.resolver is not None:
        return cast("T", unit.settle(lost, await unit.resolver.aresolve(unit.factory), result))
    if unit.check is None:
        raise unit.unknown(lost, "and the work was not marked idempotent") from lost
    verdict = None
    session = cast("AsyncSession", unit.factory())
    try:
        verdict = await unit.check(session)
    except Exception:
        log.warning("run_transaction(%r): commit_check failed", unit.label, exc_info=True)
    finally:
        await _aclose(session, unit.label)
    if verdict is True:
        return result
    if verdict is False:
        raise unit.retry_lost(lost)
    raise unit.unknown(lost, "and commit_check could not tell") from lost


async def arun_transaction(
    sessions: AsyncSessionSource,
    fn: Callable[[AsyncSession], Awaitable[T]],
    *,
    isolation_level: str | None = None,
    idempotent: bool = False,
    commit_check: Callable[[AsyncSession], Awaitable[bool | None]] | None = None,
    commit_marker: bool = False,
    resolve_commits: bool = True,
    max_attempts: int | None = 10,
    delay: Duration = 0.05,
    backoff: float = 2.0,
    max_delay: Duration | None = 2.0,
    jitter: bool | float = 1.0,
    deadline: Duration | None = None,
    name: str | None = None,
    clock: Clock | None = None,
    random: Callable[[], float] | None = None,
) -> T:
    """Async twin of :func:`run_transaction` for ``async_sessionmaker`` / ``AsyncSession``.

    ``fn`` and ``commit_check`` (and its ``before_commit``) are ``async``
    callables; waits go through the clock's ``asleep``. SQLAlchemy's asyncio
    extension needs an asyncio event loop.

    Args:
        sessions: An ``async_sessionmaker`` (or any callable returning a new
            ``AsyncSession``), or an ``AsyncEngine`` / ``AsyncConnection``.
        fn: The unit of work, ``async def fn(session)``; it must not commit.
        isolation_level: As for :func:`run_transaction`.
        idempotent: As for :func:`run_transaction`.
        commit_check: ``async def check(session) -> bool | None``, as for
            :func:`run_transaction`.
        commit_marker: As for :func:`run_transaction`.
        resolve_commits: As for :func:`run_transaction`.
        max_attempts: As for :func:`run_transaction`.
        delay: As for :func:`run_transaction`.
        backoff: As for :func:`run_transaction`.
        max_delay: As for :func:`run_transaction`.
        jitter: As for :func:`run_transaction`.
        deadline: As for :func:`run_transaction`.
        name: As for :func:`run_transaction`.
        clock: As for :func:`run_transaction`.
        random: As for :func:`run_transaction`.

    Returns:
        What ``fn`` returned in the attempt that committed.

    Raises:
        NestedTransactionError: It would run inside a transaction it did not open.
        CommitOutcomeUnknown: The connection was lost during COMMIT and nothing
            could say whether it committed.
        ValueError: A setting is out of range (every bad setting is listed).
        TypeError: A setting has the wrong type.

    .. versionadded:: 0.1
    """
    label = name or guess_name(fn)
    args = retry_args(max_attempts, delay, backoff, max_delay, jitter, deadline, clock, random)
    unit, policy = build(
        sessions,
        label,
        isolation_level,
        idempotent,
        commit_check,
        args,
        sync=False,
        commit_marker=commit_marker,
        resolve_commits=resolve_commits,
    )
    return cast("T", await policy.acall(_aattempt, unit, fn))


for _obj in (run_transaction, arun_transaction):
    _obj.__module__ = "recoverly.db"
del _obj
