"""retry: run a call again when it fails with a transient error.

One :class:`Retry` policy holds a frozen, validated configuration and
thread-safe counters. Decorating a function looks at it once and returns a
wrapper of the same kind (``async def`` stays a coroutine function). The first
attempt runs inline with nothing but a ``try``; everything else (deciding,
sleeping, reporting) happens only after a failure.

When attempts run out, the last exception is re-raised unchanged.

.. versionadded:: 0.1
"""

from __future__ import annotations

import functools
import logging
import random as _random
import threading
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast, overload

from recoverly._core.bus import BUS
from recoverly._core.callables import Kind, decoratable_kind, guess_name, wrap
from recoverly._core.clock import Clock, resolve
from recoverly._core.predicates import Predicate, compile_filter, describe_filter
from recoverly._core.validate import Duration, Problems
from recoverly._retry_config import adapt_hook, coerce_strategy, combine, retry_after_hint
from recoverly._retry_loop import call_async, call_sync, retry_async, retry_sync
from recoverly.backoff import RetryStrategy, compute_delay
from recoverly.budget import RetryBudget
from recoverly.events import RetryGaveUp, RetryScheduled, RetrySucceeded

__all__ = ["Retry", "RetryStatistics", "retry"]

P = ParamSpec("P")
T = TypeVar("T")

_log = logging.getLogger("recoverly")

#: What ``jitter=True`` means: each wait is spread over [50 %, 100 %] of its value.
DEFAULT_JITTER = 0.5


@dataclass(frozen=True, slots=True)
class RetryStatistics:
    """Counters of one :class:`Retry` policy, over all calls since it was created.

    Attributes:
        retries: Waits scheduled (attempts after the first).
        recovered: Calls that succeeded after at least one retry.
        gave_up: Calls that failed for good after at least one failed attempt
            that could have been retried (attempts, deadline or budget ran out).
    """

    retries: int
    recovered: int
    gave_up: int


class Retry:
    """A retry policy; apply it to functions as a decorator.

    Usually built with :func:`retry`. Arguments are described there.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_clock",
        "_gave_up",
        "_lock",
        "_on_retry",
        "_random",
        "_recovered",
        "_retries",
        "_retryable",
        "backoff",
        "budget",
        "deadline",
        "delay",
        "exceptions",
        "giveup",
        "jitter",
        "max_attempts",
        "max_delay",
        "name",
        "on_retry",
        "retry_on_result",
        "strategy",
    )

    def __init__(
        self,
        max_attempts: int | None = 3,
        delay: Duration = 1.0,
        backoff: float = 2.0,
        jitter: bool | float = False,
        exceptions: Any = (Exception,),
        strategy: RetryStrategy | str = RetryStrategy.EXPONENTIAL,
        max_delay: Duration | None = None,
        on_retry: Callable[..., object] | None = None,
        *,
        retry_on_result: Callable[[Any], bool] | None = None,
        giveup: Callable[[BaseException], bool] | None = None,
        deadline: Duration | None = None,
        budget: RetryBudget | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        random: Callable[[], float] | None = None,
        _stacklevel: int = 2,
    ) -> None:
        p = Problems()
        self.max_attempts = p.optional_int_at_least("max_attempts", max_attempts, 1)
        self.delay = p.duration("delay", delay)
        self.backoff = p.number_at_least("backoff", backoff, 1)
        self.max_delay = p.optional_duration("max_delay", max_delay)
        self.deadline = p.optional_duration("deadline", deadline, positive=True)
        if isinstance(jitter, bool):
            self.jitter = DEFAULT_JITTER if jitter else 0.0
        else:
            self.jitter = p.fraction("jitter", jitter)
        self.strategy = coerce_strategy(p, strategy)
        self.on_retry = p.optional_callable("on_retry", on_retry)
        self.retry_on_result = p.optional_callable("retry_on_result", retry_on_result)
        self.giveup = p.optional_callable("giveup", giveup)
        self.name = p.optional_name("name", name)
        self.budget = p.optional_instance("budget", budget, RetryBudget)
        rand = p.optional_callable("random", random)
        try:
            matches = compile_filter("exceptions", exceptions)
        except TypeError as exc:
            p._bad(str(exc), kind=True)
            matches = compile_filter("exceptions", ())
        p.raise_if_any()
        self.exceptions = exceptions
        self._retryable: Predicate = combine(matches, self.giveup)
        self._on_retry = adapt_hook(self.on_retry)
        self._clock = clock
        self._random: Callable[[], float] = rand or _random.random
        self._lock = threading.Lock()
        self._retries = self._recovered = self._gave_up = 0
        if self.max_attempts is None and self.deadline is None:
            warnings.warn(
                "retry with max_attempts=None and no deadline retries forever",
                UserWarning,
                stacklevel=_stacklevel,
            )
        if self.max_delay is not None and self.max_delay < self.delay:
            warnings.warn(
                f"max_delay={self.max_delay:g} is shorter than delay={self.delay:g}; "
                "every wait will be max_delay",
                UserWarning,
                stacklevel=_stacklevel,
            )

    # ------------------------------------------------------------ decisions (no I/O)
    def _next_delay(
        self, n: int, exc: BaseException | None, started: float | None, previous: float
    ) -> float | str:
        """Return the wait before retry ``n``, or the reason to give up."""
        if self.max_attempts is not None and n >= self.max_attempts:
            return "attempts"
        wait = compute_delay(
            self.strategy,
            n,
            delay=self.delay,
            backoff=self.backoff,
            max_delay=self.max_delay,
            jitter=self.jitter,
            previous=previous,
            rand=self._random,
        )
        hint = retry_after_hint(exc)
        if hint is not None and hint > wait:
            wait = hint
        if started is not None and self.deadline is not None:
            left = started + self.deadline - resolve(self._clock).monotonic()
            if wait > left:
                return "deadline"
        if self.budget is not None and not self.budget.try_withdraw():
            return "budget"
        return wait

    def _scheduled(self, label: str, n: int, exc: BaseException | None, wait: float) -> None:
        with self._lock:
            self._retries += 1
        if BUS.wants(RetryScheduled):
            BUS.emit(RetryScheduled(label, n, exc, wait))
        if self._on_retry is not None:
            try:
                self._on_retry(n, exc, wait)
            except Exception:
                _log.exception("on_retry hook of %s failed", label)

    def _finished(self, label: str, n: int, exc: BaseException | None, reason: str | None) -> None:
        with self._lock:
            if reason is None:
                self._recovered += 1
            else:
                self._gave_up += 1
        if reason is None:
            if BUS.wants(RetrySucceeded):
                BUS.emit(RetrySucceeded(label, n))
        elif BUS.wants(RetryGaveUp):
            BUS.emit(RetryGaveUp(label, n, exc, reason))

    def _bad_result(self, result: object) -> bool:
        check = self.retry_on_result
        return check is not None and bool(check(result))

    def _started(self) -> float | None:
        if self.budget is not None:
            self.budget.deposit()
        return None if self.deadline is None else resolve(self._clock).monotonic()

    # ------------------------------------------------------------ public API
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate ``fn``; the wrapper has the same kind and signature."""
        kind = decoratable_kind("retry", fn)
        label = self.name or guess_name(fn)
        if self.budget is not None or self.deadline is not None or self.retry_on_result:
            # These need work before the first attempt or after every result.
            drivers = functools.partial(call_sync, self), functools.partial(call_async, self)
            return cast("Callable[P, T]", wrap(fn, kind, label, *drivers))
        # The fast wrappers run the first attempt inline: nothing but a `try`.
        retryable = self._retryable

        if kind is Kind.ASYNC:
            afn = cast("Callable[..., Awaitable[Any]]", fn)

            @functools.wraps(fn)
            async def fast_async_wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await afn(*args, **kwargs)
                except BaseException as exc:
                    if not retryable(exc):
                        raise
                    failure = exc
                return await retry_async(self, label, afn, args, kwargs, None, failure, None)

            return cast("Callable[P, T]", fast_async_wrapper)

        @functools.wraps(fn)
        def fast_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except BaseException as exc:
                if not retryable(exc):
                    raise
                failure = exc
            # Outside the except block, so later errors do not chain onto this one.
            return retry_sync(self, label, fn, args, kwargs, None, failure, None)

        return cast("Callable[P, T]", fast_wrapper)

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` under this policy (sync callables only).

        For ``async def`` functions use ``await policy.acall(fn, ...)``.
        """
        return call_sync(self, self.name or guess_name(fn), fn, args, kwargs)

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args, **kwargs)`` under this policy."""
        return await call_async(self, self.name or guess_name(fn), fn, args, kwargs)

    def statistics(self) -> RetryStatistics:
        """Return a snapshot of this policy's counters."""
        with self._lock:
            return RetryStatistics(self._retries, self._recovered, self._gave_up)

    def __repr__(self) -> str:
        s = self.statistics()
        name = f" {self.name!r}" if self.name else ""
        return (
            f"<Retry{name} max_attempts={self.max_attempts} strategy={self.strategy.name} "
            f"delay={self.delay:g} backoff={self.backoff:g} max_delay={self.max_delay} "
            f"jitter={self.jitter:g} exceptions={describe_filter(self.exceptions)} "
            f"retries={s.retries} recovered={s.recovered} gave_up={s.gave_up}>"
        )


@overload
def retry(fn: Callable[P, T], /) -> Callable[P, T]: ...


@overload
def retry(
    max_attempts: int | None = 3,
    delay: Duration = 1.0,
    backoff: float = 2.0,
    jitter: bool | float = False,
    exceptions: Any = (Exception,),
    strategy: RetryStrategy | str = RetryStrategy.EXPONENTIAL,
    max_delay: Duration | None = None,
    on_retry: Callable[..., object] | None = None,
    *,
    retry_on_result: Callable[[Any], bool] | None = None,
    giveup: Callable[[BaseException], bool] | None = None,
    deadline: Duration | None = None,
    budget: RetryBudget | None = None,
    name: str | None = None,
    clock: Clock | None = None,
    random: Callable[[], float] | None = None,
) -> Retry: ...


def retry(
    max_attempts: Any = 3,
    delay: Duration = 1.0,
    backoff: float = 2.0,
    jitter: bool | float = False,
    exceptions: Any = (Exception,),
    strategy: RetryStrategy | str = RetryStrategy.EXPONENTIAL,
    max_delay: Duration | None = None,
    on_retry: Callable[..., object] | None = None,
    *,
    retry_on_result: Callable[[Any], bool] | None = None,
    giveup: Callable[[BaseException], bool] | None = None,
    deadline: Duration | None = None,
    budget: RetryBudget | None = None,
    name: str | None = None,
    clock: Clock | None = None,
    random: Callable[[], float] | None = None,
) -> Any:
    """Retry a function when it raises one of ``exceptions``.

    Use it with arguments, ``@retry(max_attempts=3, delay=1.0)``, or bare,
    ``@retry``. It works on plain functions, methods and ``async def``
    functions. Waits grow by ``strategy`` (see :mod:`recoverly.backoff`).

    Args:
        max_attempts: Attempts in all, including the first. ``None``: no limit
            (then set a ``deadline``).
        delay: Base wait in seconds (or a ``timedelta``).
        backoff: Growth factor for ``EXPONENTIAL`` (``>= 1``).
        jitter: ``True`` spreads each wait over [50 %, 100 %] of its value; a
            float in [0, 1] sets the spread. Applied after ``max_delay``.
        exceptions: What to retry: an exception class, a tuple of them, or a
            predicate ``(exc) -> bool``. Anything else propagates at once.
        strategy: A :class:`~recoverly.RetryStrategy` (or its value as a string).
        max_delay: Cap on each computed wait, in seconds; ``None``: no cap.
        on_retry: Called as ``on_retry(attempt, exception, delay)`` before each
            wait, where ``attempt`` is the number of the attempt that just
            failed and ``exception`` is ``None`` when a result was rejected. A
            two-argument ``on_retry(attempt, exception)`` is accepted too.
        retry_on_result: Predicate on the return value; ``True`` retries. When
            attempts run out, the last result is returned.
        giveup: Predicate on a matching exception; ``True`` stops at once.
        deadline: Seconds for the whole call, all attempts and waits included:
            a wait that would end past it is not started; the last error is
            raised instead.
        budget: A shared :class:`~recoverly.RetryBudget`.
        name: Name used in events and logs (default: the function's name).
        clock: Time source (default: the process clock; see recoverly.testing).
        random: Source of floats in [0, 1) for jitter (default ``random.random``).

    Returns:
        A :class:`Retry` policy to use as a decorator (or, bare, the wrapper).

    Raises:
        ValueError: A setting is out of range (every bad setting is listed).
        TypeError: A setting has the wrong type, or the decorated callable is a
            generator function.

    A ``retry_after`` attribute on the exception (seconds or a ``timedelta``,
    e.g. from an HTTP ``Retry-After`` header) lengthens the next wait to at
    least that much.

    .. versionadded:: 0.1
    """
    if callable(max_attempts) and not isinstance(max_attempts, int):
        return Retry(_stacklevel=3)(max_attempts)
    return Retry(
        max_attempts,
        delay,
        backoff,
        jitter,
        exceptions,
        strategy,
        max_delay,
        on_retry,
        retry_on_result=retry_on_result,
        giveup=giveup,
        deadline=deadline,
        budget=budget,
        name=name,
        clock=clock,
        random=random,
        _stacklevel=3,
    )


Retry.__module__ = "recoverly"
RetryStatistics.__module__ = "recoverly"
retry.__module__ = "recoverly"
