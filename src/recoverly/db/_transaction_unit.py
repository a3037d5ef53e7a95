"""The pure parts of run_transaction shared by its sync and async drivers.

Checking the arguments, building the :class:`recoverly.Retry` policy, deciding
what is retried, detecting nesting, and the wording of the errors. No I/O here.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from recoverly._core.bus import BUS
from recoverly._core.clock import Clock
from recoverly._core.validate import Duration, Problems
from recoverly.db._classify import FailureKind, classify, is_retryable
from recoverly.db.commits import CommitMarkerResolver, Resolver, XactStatusResolver
from recoverly.db.errors import CommitOutcomeUnknown, NestedTransactionError
from recoverly.events import CommitResolved
from recoverly.retry import Retry

__all__ = [
    "RESOLVE_TIMEOUT",
    "Unit",
    "build",
    "check_not_nested",
    "enter",
    "is_lost_commit",
    "leave",
    "outer_transaction",
    "retry_args",
]

log = logging.getLogger("recoverly")
#: Longest wait for a lost COMMIT's answer (the deadline, if shorter, wins).
RESOLVE_TIMEOUT = 30.0
#: Name of the run_transaction whose unit of work runs in this thread or task.
_ACTIVE: ContextVar[str | None] = ContextVar("recoverly_db_run_transaction", default=None)
_LOST = (FailureKind.CONNECTION_LOST, FailureKind.COMMIT_UNKNOWN)


def is_lost_commit(exc: BaseException) -> bool:
    """Whether ``exc``, raised by the COMMIT call, leaves the outcome unknown."""
    return classify(exc).kind in _LOST


class Unit:
    """One call's settings, and the retry decision for its attempts."""

    __slots__ = (
        "approved",
        "check",
        "clock",
        "commit_marker",
        "decided",
        "factory",
        "idempotent",
        "isolation_level",
        "label",
        "resolve_commits",
        "resolve_timeout",
        "resolver",
    )

    def __init__(
        self,
        label: str,
        factory: Callable[[], object],
        isolation_level: str | None,
        idempotent: bool,
        check: Any,
        *,
        commit_marker: bool = False,
        resolve_commits: bool = True,
        clock: Clock | None = None,
        resolve_timeout: float = RESOLVE_TIMEOUT,
    ) -> None:
        self.label = label
        self.factory = factory
        self.isolation_level = isolation_level
        self.idempotent = idempotent
        self.check = check
        self.commit_marker = commit_marker
        self.resolve_commits = resolve_commits
        self.clock = clock
        self.resolve_timeout = resolve_timeout
        self.resolver: Resolver | None = None  # chosen at the first attempt
        self.decided = False
        self.approved: BaseException | None = None  # a lost commit cleared for a retry

    def choose(self, bind: object) -> Resolver | None:
        """Pick the lost-COMMIT resolver for the session's bind (first attempt only)."""
        if self.decided:
            return self.resolver
        self.decided = True
        if self.idempotent or self.check is not None:
            return None
        engine: Any = getattr(bind, "engine", bind)
        if self.commit_marker:
            self.resolver = CommitMarkerResolver(self.clock, self.resolve_timeout, engine)
        elif self.resolve_commits and getattr(engine, "dialect", None) is not None:
            dialect = engine.dialect.name
            if dialect == "postgresql":
                self.resolver = XactStatusResolver(self.clock, self.resolve_timeout)
        return self.resolver

    def retryable(self, exc: BaseException) -> bool:
        """Whether the attempt that raised ``exc`` is run again."""
        return exc is self.approved or is_retryable(exc)

    def retry_lost(self, exc: BaseException) -> BaseException:
        """Clear a lost commit for a retry and return it, to be raised."""
        self.approved = exc
        return exc

    def hook(self, *, sync: bool) -> Any:
        """What runs inside the transaction right before COMMIT, if anything."""
        before = getattr(self.check, "before_commit", None)
        if before is not None:
            return before
        if self.resolver is not None:
            return self.resolver.before_commit if sync else self.resolver.abefore_commit
        return None

    def committed(self) -> None:
        """After a COMMIT that succeeded: the resolver's housekeeping."""
        if self.resolver is not None:
            self.resolver.committed()

    def settle(self, lost: BaseException, verdict: bool | None, result: Any) -> Any:
        """Act on a resolver's verdict: return ``result``, retry, or raise unknown."""
        method = self.resolver.method if self.resolver is not None else "commit_check"
        word = {True: "committed", False: "aborted", None: "unknown"}[verdict]
        if BUS.wants(CommitResolved):
            BUS.emit(CommitResolved(self.label, word, method, lost))
        if verdict is True:
            return result
        if verdict is False:
            raise self.retry_lost(lost)
        raise self.unknown(lost, f"and {method} could not tell in time") from lost

    def unknown(self, exc: BaseException, why: str) -> CommitOutcomeUnknown:
        """The error for a lost commit that nothing could resolve."""
        return CommitOutcomeUnknown(
            f"run_transaction({self.label!r}): the connection was lost during COMMIT "
            f"({type(exc).__name__}); the transaction may or may not have committed, {why}. "
            "Pass idempotent=True if running it twice is safe, or a commit_check that "
            "looks for its effect"
        )

    def refusal(self, why: str) -> NestedTransactionError:
        """The error for a session that is inside a transaction we did not open."""
        return NestedTransactionError(
            f"run_transaction({self.label!r}) refuses to run: {why} that it did not open. It "
            "retries whole transactions, so it must open and commit its own; inside an outer "
            "transaction its COMMIT would commit nothing and a retry would run on top of "
            "aborted work. Call it at the outermost level, or call the function directly "
            "inside the outer transaction"
        )

    def ended_by_fn(self) -> RuntimeError:
        """The error for a unit of work that committed or rolled back by itself."""
        return RuntimeError(
            f"run_transaction({self.label!r}): the function committed or rolled back the "
            "session itself; run_transaction does that (raise an exception to roll back)"
        )

    def wrong_session(self, session: object, expected: type) -> TypeError:
        """The error for a factory that returned something else than a session."""
        return TypeError(
            f"run_transaction({self.label!r}): the session factory returned {session!r}, "
            f"not a {expected.__name__}"
        )


def _factory(p: Problems, sessions: object, *, sync: bool) -> Callable[[], object]:
    engine, connection, session = (
        (Engine, Connection, Session) if sync else (AsyncEngine, AsyncConnection, AsyncSession)
    )
    if isinstance(sessions, (engine, connection)):
        new: Any = session
        return functools.partial(new, bind=sessions)
    if callable(sessions) and not isinstance(sessions, (Session, AsyncSession)):
        return sessions
    p._bad(
        f"sessions must be a {'' if sync else 'async_'}sessionmaker (or a callable returning "
        f"a new {session.__name__}), an {engine.__name__} or a {connection.__name__}, got "
        f"{sessions!r}; a session is opened per attempt, so a Session itself will not do",
        kind=True,
    )
    return session


def build(
    sessions: object,
    label: str,
    isolation_level: object,
    idempotent: object,
    commit_check: object,
    retry_args: dict[str, Any],
    *,
    sync: bool,
    commit_marker: object = False,
    resolve_commits: object = True,
) -> tuple[Unit, Retry]:
    """Check every argument (one error lists them all); return the unit and its policy."""
    p = Problems()
    for flag, value in (("commit_marker", commit_marker), ("resolve_commits", resolve_commits)):
        if not isinstance(value, bool):
            p._bad(f"{flag} must be a bool, got {value!r}", kind=True)
    if commit_marker is True and commit_check is not None:
        p._bad(
            "commit_marker=True and commit_check both say how to resolve a lost COMMIT; pick one"
        )
    factory = _factory(p, sessions, sync=sync)
    if isolation_level is not None and (
        not isinstance(isolation_level, str) or isolation_level.upper() == "AUTOCOMMIT"
    ):
        p._bad(f"isolation_level must be a transaction isolation level, got {isolation_level!r}")
    if not isinstance(idempotent, bool):
        p._bad(f"idempotent must be a bool, got {idempotent!r}", kind=True)
    p.optional_callable("commit_check", commit_check)
    deadline = retry_args.get("deadline")
    timeout = RESOLVE_TIMEOUT
    if isinstance(deadline, int | float) and 0 < deadline < timeout:
        timeout = float(deadline)
    unit = Unit(
        label,
        factory,
        isolation_level,  # type: ignore[arg-type]
        idempotent is True,
        commit_check,
        commit_marker=commit_marker is True,
        resolve_commits=resolve_commits is True,
        clock=retry_args.get("clock"),
        resolve_timeout=timeout,
    )
    policy: Any = None
    try:
        policy = Retry(exceptions=unit.retryable, name=label, _stacklevel=4, **retry_args)
    except (TypeError, ValueError) as exc:
        p._bad(str(exc), kind=isinstance(exc, TypeError))
    p.raise_if_any()
    check_not_nested(label)
    return unit, policy


def retry_args(
    max_attempts: int | None,
    delay: Duration,
    backoff: float,
    max_delay: Duration | None,
    jitter: bool | float,
    deadline: Duration | None,
    clock: Clock | None,
    random: Callable[[], float] | None,
) -> dict[str, Any]:
    """Bundle the settings handed to :class:`recoverly.Retry`."""
    return {
        "max_attempts": max_attempts,
        "delay": delay,
        "backoff": backoff,
        "max_delay": max_delay,
        "jitter": jitter,
        "deadline": deadline,
        "clock": clock,
        "random": random,
    }


def check_not_nested(label: str) -> None:
    """Refuse a run_transaction called inside another one's unit of work."""
    outer = _ACTIVE.get()
    if outer is not None:
        msg = (
            f"run_transaction({label!r}) was called inside the unit of work of "
            f"run_transaction({outer!r}); it would commit on its own and run again every time "
            "the outer unit retries. Do the work in the outer unit with its session, or run "
            "it after the outer unit returns"
        )
        raise NestedTransactionError(msg)


def enter(label: str) -> Any:
    """Mark this thread/task as running ``label``'s unit of work; return the reset token."""
    return _ACTIVE.set(label)


def leave(token: Any) -> None:
    """Undo :func:`enter`."""
    _ACTIVE.reset(token)


def outer_transaction(session: Session) -> str | None:
    """Say why ``session`` would run inside a transaction it did not open, if it would."""
    if session.in_transaction():
        return "the session it was given is already in a transaction"
    # SQLAlchemy 2.1 exposes Session.binds; 2.0 keeps them name-mangled.
    binds = getattr(session, "binds", None) or getattr(session, "_Session__binds", None) or {}
    for bind in (session.bind, *binds.values()):
        if isinstance(bind, Connection) and bind.in_transaction():
            return "the session is bound to a Connection with a transaction in progress"
    return None
