"""db_retry: retry a database call after a transient error; ensure_connection: ping first.

::

    @ensure_connection
    @db_retry(max_attempts=3, delay=0.5)
    def update_model_status(db: Session, model_id: int, status: str) -> None:
        with TransactionManager(db):
            db.get(Model, model_id).status = status

**What is retried.** An error that :func:`recoverly.db.is_retryable` accepts
(connection lost, serialization failure, deadlock, lock timeout, SQLite busy,
pool timeout; see :mod:`recoverly.db._classify`), or what ``exceptions=``
matches instead. Waits, jitter, deadline, budget and events are the core
:class:`recoverly.Retry` policy's. When attempts run out the last error
propagates unchanged.

**The session.** ``db_retry`` looks for the call's ``Session``,
``AsyncSession``, ``Connection``, ``AsyncConnection`` (or scoped session): the
parameter annotated with one of those types or named ``db``/``session``, else
any argument of those types, else ``self.db``/``self.session`` for a method.
After a retryable error it rolls that session back (emitting
:class:`~recoverly.events.TransactionRolledBack`) so the next attempt starts a
fresh transaction on a live connection. A function with no session argument
(one that opens its own session, like the seeds' ``update_progress``) is simply
called again.

**Whose transaction.** A retry re-runs only the decorated function, so it is
correct only if the function owns the whole transaction. If the session
already had a transaction in progress when the call started (the caller did
work on it first), a retryable error propagates at once, without rollback and
without retry: the caller's work is in that transaction and must be retried as
a whole (see ``run_transaction``). A transaction that ``ensure_connection``
began just for its ping does not count.

**Non-retryable errors** (constraint violations, bad data, bad SQL, anything
else) propagate at once; the session is left as it is for the caller (its
``TransactionManager`` or session scope decides).

**Lost commits.** If the connection broke while COMMIT was in flight, the
server may have committed. Re-running a non-idempotent write could apply it
twice, so ``db_retry`` raises :class:`~recoverly.db.CommitOutcomeUnknown`
(from the original error) unless ``idempotent=True`` (then it re-runs) or an
``idempotency_check`` is given. The check is called with the call's arguments
after the rollback (before the next attempt, after the usual wait): a falsy
result means "not committed", and the function runs again; a truthy result
means the earlier attempt committed, and the call returns that value (``None``
when the check returned exactly ``True``) without running the function again.
If the check itself keeps failing, ``CommitOutcomeUnknown`` is raised. How a
commit in flight is recognised: see :func:`recoverly.db._session.install_commit_tracking`.

**ensure_connection** pings the session's connection before the call (the
dialect's ``SELECT 1``) when no transaction is in progress, and discards a dead
connection so the call runs on a new one.

.. versionadded:: 0.1
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast, overload

from recoverly._core.callables import Kind, decoratable_kind, guess_name
from recoverly._core.clock import Clock
from recoverly._core.predicates import compile_filter
from recoverly._core.validate import Duration, Problems
from recoverly._retry_loop import retry_async, retry_sync
from recoverly.budget import RetryBudget
from recoverly.db._classify import is_retryable
from recoverly.db._ping import EnsureConnection, ensure_connection
from recoverly.db._session import (
    Committed,
    DbCall,
    Finder,
    commit_in_flight,
    install_commit_tracking,
    owns,
    session_finder,
)
from recoverly.db.errors import CommitOutcomeUnknown
from recoverly.retry import Retry, RetryStatistics

__all__ = ["DbRetry", "EnsureConnection", "db_retry", "ensure_connection"]

P = ParamSpec("P")
T = TypeVar("T")

_log = logging.getLogger("recoverly")


class DbRetry:
    """A database retry policy; apply it to functions as a decorator.

    Usually built with :func:`db_retry`, which describes the arguments.

    .. versionadded:: 0.1
    """

    __slots__ = ("exceptions", "idempotency_check", "idempotent", "name", "retry")

    def __init__(
        self,
        max_attempts: int | None = 3,
        delay: Duration = 0.5,
        backoff: float = 2.0,
        jitter: bool | float = False,
        exceptions: Any = None,
        max_delay: Duration | None = None,
        on_retry: Callable[..., object] | None = None,
        *,
        deadline: Duration | None = None,
        budget: RetryBudget | None = None,
        idempotent: bool = False,
        idempotency_check: Callable[..., object] | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        _stacklevel: int = 2,
    ) -> None:
        p = Problems()
        if not isinstance(cast("object", idempotent), bool):
            p._bad(f"idempotent must be a bool, got {idempotent!r}", kind=True)
        check = p.optional_callable("idempotency_check", idempotency_check)
        if idempotent is True and check is not None:
            p._bad("give idempotent=True or an idempotency_check, not both")
        try:
            matches = (
                is_retryable if exceptions is None else compile_filter("exceptions", exceptions)
            )
        except TypeError as exc:
            p._bad(str(exc), kind=True)
            matches = is_retryable
        p.raise_if_any()
        self.exceptions = exceptions
        self.idempotent = idempotent
        self.idempotency_check = check
        allow_unknown = idempotent or check is not None

        def retryable(exc: BaseException) -> bool:
            if isinstance(exc, CommitOutcomeUnknown):
                return False
            return matches(exc) or (allow_unknown and commit_in_flight(exc))

        self.retry = Retry(
            max_attempts,
            delay,
            backoff,
            jitter,
            retryable,
            max_delay=max_delay,
            on_retry=on_retry,
            deadline=deadline,
            budget=budget,
            name=name,
            clock=clock,
            _stacklevel=_stacklevel + 1,
        )
        self.name = name
        install_commit_tracking()

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate ``fn``; the wrapper keeps its kind (sync or ``async def``) and signature."""
        kind = decoratable_kind("db_retry", fn)
        label = self.name or guess_name(fn)
        find = session_finder(fn)
        policy = self.retry
        timed = policy.deadline is not None or policy.budget is not None
        if kind is Kind.ASYNC:
            return cast("Callable[P, T]", self._async_wrapper(fn, label, find, timed))

        @functools.wraps(fn)
        def db_retry_wrapper(*args: Any, **kwargs: Any) -> Any:
            db = find(args, kwargs)
            owned = db is None or owns(db)
            started = policy._started() if timed else None
            try:
                return fn(*args, **kwargs)
            except BaseException as exc:
                failure = exc
            # Outside the except block, so later errors do not chain onto this one.
            call = DbCall(self, label, db)
            call.judge_sync(failure, owned=owned)
            attempt = functools.partial(call.attempt_sync, fn)
            try:
                result = retry_sync(policy, label, attempt, args, kwargs, started, failure, None)
            except BaseException as exc:
                raise call._unknown(exc)  # noqa: B904 - the cause is set inside
            return result.value if isinstance(result, Committed) else result

        return cast("Callable[P, T]", db_retry_wrapper)

    def _async_wrapper(
        self,
        fn: Callable[..., Any],
        label: str,
        find: Finder,
        timed: bool,
    ) -> Callable[..., Any]:
        policy = self.retry
        afn = cast("Callable[..., Awaitable[Any]]", fn)

        @functools.wraps(fn)
        async def db_retry_async_wrapper(*args: Any, **kwargs: Any) -> Any:
            db = find(args, kwargs)
            owned = db is None or owns(db)
            started = policy._started() if timed else None
            try:
                return await afn(*args, **kwargs)
            except BaseException as exc:
                failure = exc
            call = DbCall(self, label, db)
            await call.judge_async(failure, owned=owned)
            attempt = functools.partial(call.attempt_async, afn)
            try:
                result = await retry_async(
                    policy, label, attempt, args, kwargs, started, failure, None
                )
            except BaseException as exc:
                raise call._unknown(exc)  # noqa: B904 - the cause is set inside
            return result.value if isinstance(result, Committed) else result

        return db_retry_async_wrapper

    def statistics(self) -> RetryStatistics:
        """Return the counters of the underlying :class:`recoverly.Retry` policy."""
        return self.retry.statistics()

    def __repr__(self) -> str:
        r, s = self.retry, self.retry.statistics()
        name = f" {self.name!r}" if self.name else ""
        check = "" if self.idempotency_check is None else " idempotency_check=yes"
        return (
            f"<DbRetry{name} max_attempts={r.max_attempts} delay={r.delay:g} "
            f"backoff={r.backoff:g} idempotent={self.idempotent}{check} "
            f"retries={s.retries} recovered={s.recovered} gave_up={s.gave_up}>"
        )


@overload
def db_retry(fn: Callable[P, T], /) -> Callable[P, T]: ...


@overload
def db_retry(
    max_attempts: int | None = 3,
    delay: Duration = 0.5,
    backoff: float = 2.0,
    jitter: bool | float = False,
    exceptions: Any = None,
    max_delay: Duration | None = None,
    on_retry: Callable[..., object] | None = None,
    *,
    deadline: Duration | None = None,
    budget: RetryBudget | None = None,
    idempotent: bool = False,
    idempotency_check: Callable[..., object] | None = None,
    name: str | None = None,
    clock: Clock | None = None,
) -> DbRetry: ...


def db_retry(
    max_attempts: Any = 3,
    delay: Duration = 0.5,
    backoff: float = 2.0,
    jitter: bool | float = False,
    exceptions: Any = None,
    max_delay: Duration | None = None,
    on_retry: Callable[..., object] | None = None,
    *,
    deadline: Duration | None = None,
    budget: RetryBudget | None = None,
    idempotent: bool = False,
    idempotency_check: Callable[..., object] | None = None,
    name: str | None = None,
    clock: Clock | None = None,
) -> Any:
    """Retry a database call after a transient error, rolling its session back in between.

    Use it with arguments, ``@db_retry(max_attempts=3, delay=0.5)``, or bare,
    ``@db_retry``, on plain and ``async def`` functions. The module
    documentation states exactly what is retried, which session is rolled
    back, and what happens when the connection breaks during COMMIT.

    Args:
        max_attempts: Attempts in all, including the first (``None``: no limit;
            then set a ``deadline``).
        delay: First wait in seconds (or a ``timedelta``).
        backoff: Growth factor of the waits (``>= 1``).
        jitter: ``True`` spreads each wait over [50 %, 100 %] of its value; a
            float in [0, 1] sets the spread.
        exceptions: What to retry instead of :func:`recoverly.db.is_retryable`:
            an exception class, a tuple of them or a predicate ``(exc) -> bool``.
        max_delay: Cap on each wait, in seconds.
        on_retry: Called as ``on_retry(attempt, exception, delay)`` before each wait.
        deadline: Seconds for the whole call, waits included.
        budget: A shared :class:`~recoverly.RetryBudget`.
        idempotent: The function may safely run again even if its COMMIT may
            have landed: re-run it after a lost commit.
        idempotency_check: ``check(*args, **kwargs)`` called after a lost
            commit: falsy means it did not commit (run again); truthy means it
            did (return that value, ``None`` for ``True``, without running again).
        name: Name used in events and logs (default: the function's name).
        clock: Time source for the waits (default: the process clock).

    Returns:
        A :class:`DbRetry` policy to use as a decorator (or, bare, the wrapper).

    Raises:
        ValueError: A setting is out of range, or both ``idempotent=True`` and
            ``idempotency_check`` were given.
        TypeError: A setting has the wrong type, or the decorated callable is a
            generator function.
        CommitOutcomeUnknown: (from a decorated call) The connection broke
            during COMMIT and the call is neither idempotent nor checkable.

    .. versionadded:: 0.1
    """
    if callable(max_attempts) and not isinstance(max_attempts, int):
        return DbRetry(_stacklevel=3)(max_attempts)
    return DbRetry(
        max_attempts,
        delay,
        backoff,
        jitter,
        exceptions,
        max_delay,
        on_retry,
        deadline=deadline,
        budget=budget,
        idempotent=idempotent,
        idempotency_check=idempotency_check,
        name=name,
        clock=clock,
        _stacklevel=3,
    )


DbRetry.__module__ = "recoverly.db"
db_retry.__module__ = "recoverly.db"
