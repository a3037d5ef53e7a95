"""CircuitBreaker: stop calling a service that keeps failing, and probe for its recovery.

The breaker is a thin driver over a :class:`~recoverly.stores.BreakerStore`
that performs each transition atomically (admit or reject, record a success,
record a failure). The protected call never runs under a lock, and hooks and
events fire only after the store has released its lock.

The CLOSED success path does no locking, no clock reading and no allocation:
it reads the store's ``fast`` generation before and after the call and reports
nothing when neither changed.

.. versionadded:: 0.1
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from recoverly._breaker_engine import BreakerEngine
from recoverly._breaker_support import (
    KIND,
    CircuitBreakerStatistics,
    build_config,
    describe,
    pop_block,
    push_block,
    statistics_of,
)
from recoverly._core.bus import BUS
from recoverly._core.callables import Kind, decoratable_kind, guess_name
from recoverly._core.clock import Clock
from recoverly._core.predicates import Predicate, compile_filter
from recoverly._core.registry import REGISTRY
from recoverly._core.validate import Problems
from recoverly.errors import CircuitState
from recoverly.stores import NOT_OPEN, BreakerConfig, BreakerStore, InMemoryBreakerStore

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["KIND", "CircuitBreaker", "CircuitBreakerStatistics"]

P = ParamSpec("P")
T = TypeVar("T")

_CLOSED = CircuitState.CLOSED


class CircuitBreaker(BreakerEngine):
    """Fail fast while a dependency is down; let a probe through to detect recovery.

    CLOSED: calls pass; ``failure_threshold`` consecutive counted failures open
    the breaker. OPEN: calls are rejected with :class:`~recoverly.CircuitBreakerError`
    until ``recovery_timeout`` has passed; reading :attr:`state` (or the next call)
    then moves it to HALF_OPEN. HALF_OPEN: ``half_open_max_calls`` probes pass at a
    time and the rest are rejected; a probe's success closes the breaker, its
    failure opens it again for another (possibly longer) timeout.

    Use it as ``@breaker`` (sync or ``async def``), ``with breaker:``,
    ``async with breaker:``, ``breaker.call(fn, ...)`` or ``await breaker.acall(fn, ...)``.

    Exceptions that ``expected_exception`` does not match propagate without being
    counted; they do not reset the consecutive count either (they say nothing
    about the dependency's health). ``KeyboardInterrupt``, ``SystemExit`` and
    cancellation never count, and a cancelled probe gives its slot back.

    One breaker may be shared by any number of threads and tasks. The protected
    call never runs under a lock: the store's lock is held only to admit a call
    and to record its outcome, and hooks and events run after it is released.

    Args:
        failure_threshold: Consecutive counted failures that open the breaker;
            ``None`` turns this rule off (use a rate rule then).
        recovery_timeout: Seconds (or a ``timedelta``) to stay OPEN before probing.
        expected_exception: What counts as a failure: an exception class, a tuple
            of them, or a predicate ``(exc) -> bool``.
        on_open: Called as ``on_open(breaker)`` when the breaker opens.
        on_close: Called as ``on_close(breaker)`` when it closes (recovery or reset).
        on_half_open: Called as ``on_half_open(breaker)`` when probing starts.
        name: Name for logs, events, errors and :func:`recoverly.registry.breakers`.
            Only named breakers are registered; a name already held by another
            live breaker warns and the new breaker replaces it in the registry.
            Unnamed breakers are labelled after the first function they decorate.
        half_open_max_calls: Probe calls allowed at a time in HALF_OPEN.
        failure_rate_threshold: Opens the breaker when this share (in (0, 1]) of
            the calls in the sliding window failed; ``None``: rule off. Both rules
            apply when both are set.
        slow_call_duration: Calls taking at least this many seconds are slow;
            ``None``: durations are not measured.
        slow_call_rate_threshold: Opens the breaker when this share of the calls
            in the window were slow (needs ``slow_call_duration``).
        sliding_window: ``"count"`` (the last N calls) or ``"time"`` (the last N seconds).
        sliding_window_size: N for the window: calls or seconds.
        minimum_calls: Calls the window must hold before a rate rule can trip.
        recovery_backoff: Factor (``>= 1``) by which the OPEN duration grows on
            each consecutive trip without a successful probe.
        max_recovery_timeout: Cap on the grown OPEN duration; ``None``: no cap.
        store: Where the state lives (default: a new in-memory store).
        clock: Time source (default: the process clock).

    Raises:
        ValueError: A setting is out of range (every bad setting is listed).
        TypeError: A setting has the wrong type.

    .. versionadded:: 0.1
    """

    __slots__ = ("__weakref__", "expected_exception", "name")

    def __init__(
        self,
        failure_threshold: int | None = 5,
        recovery_timeout: Any = 60,
        expected_exception: Any = Exception,
        on_open: Callable[[CircuitBreaker], object] | None = None,
        on_close: Callable[[CircuitBreaker], object] | None = None,
        on_half_open: Callable[[CircuitBreaker], object] | None = None,
        name: str | None = None,
        *,
        half_open_max_calls: int = 1,
        failure_rate_threshold: float | None = None,
        slow_call_duration: Any = None,
        slow_call_rate_threshold: float = 1.0,
        sliding_window: str = "count",
        sliding_window_size: float = 100,
        minimum_calls: int = 10,
        recovery_backoff: float = 1.0,
        max_recovery_timeout: Any = None,
        store: BreakerStore | None = None,
        clock: Clock | None = None,
    ) -> None:
        p = Problems()
        self.config: BreakerConfig = build_config(
            p,
            failure_threshold=failure_threshold,
            recovery_timeout=recovery_timeout,
            half_open_max_calls=half_open_max_calls,
            failure_rate_threshold=failure_rate_threshold,
            slow_call_duration=slow_call_duration,
            slow_call_rate_threshold=slow_call_rate_threshold,
            sliding_window=sliding_window,
            sliding_window_size=sliding_window_size,
            minimum_calls=minimum_calls,
            recovery_backoff=recovery_backoff,
            max_recovery_timeout=max_recovery_timeout,
            stacklevel=2,
        )
        self.on_open = p.optional_callable("on_open", on_open)
        self.on_close = p.optional_callable("on_close", on_close)
        self.on_half_open = p.optional_callable("on_half_open", on_half_open)
        self.name = p.optional_name("name", name)
        if store is not None and not isinstance(cast("object", store), BreakerStore):
            p._bad(f"store must be a BreakerStore or None, got {store!r}", kind=True)
        try:
            self._counts: Predicate = compile_filter("expected_exception", expected_exception)
        except TypeError as exc:
            p._bad(str(exc), kind=True)
        p.raise_if_any()
        self.expected_exception = expected_exception
        self._clock = clock
        self._label = self.name or "CircuitBreaker"
        self._start_engine(store if store is not None else InMemoryBreakerStore())
        if self.name is not None and REGISTRY.register(KIND, self.name, self) is not None:
            warnings.warn(
                f"another live CircuitBreaker is named {self.name!r}; "
                "recoverly.registry.breakers() now lists this one",
                UserWarning,
                stacklevel=2,
            )

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate ``fn``; the wrapper keeps its kind (sync or async) and signature.

        Raises:
            TypeError: ``fn`` is a generator or async generator function.
        """
        kind = decoratable_kind("CircuitBreaker", fn)
        if self.name is None and self._label == "CircuitBreaker":
            self._label = guess_name(fn)
        if kind is Kind.ASYNC:
            return cast("Callable[P, T]", self._async_wrapper(cast("Callable[..., Any]", fn)))
        return self._sync_wrapper(fn)

    # The two wrappers below are the hot path. While the store's `fast` generation
    # is published (CLOSED, nothing counted) and nobody listens for per-call
    # events, a call costs two attribute reads before and one after.
    def _sync_wrapper(self, fn: Callable[P, T]) -> Callable[P, T]:
        store, slow, failed, me = self._store, self._call_sync, self._fast_failure, self
        bus = BUS

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            gen = store.fast
            if gen < 0 or bus.routes is not me._quiet:
                if store.reject_until != NOT_OPEN:
                    error = me._early_rejection()
                    if error is not None:
                        raise error
                return slow(fn, args, kwargs)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                failed(gen, exc)
                raise
            if store.fast != gen:
                me._succeeded(gen, None)
            return result

        return wrapper

    def _async_wrapper(self, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        store, slow, failed, me = self._store, self._call_async, self._fast_failure, self
        bus = BUS

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> T:
            gen = store.fast
            if gen < 0 or bus.routes is not me._quiet:
                if store.reject_until != NOT_OPEN:
                    error = me._early_rejection()
                    if error is not None:
                        raise error
                return await slow(fn, args, kwargs)
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                failed(gen, exc)
                raise
            if store.fast != gen:
                me._succeeded(gen, None)
            return result

        return async_wrapper

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` through the breaker (sync callables).

        Raises:
            CircuitBreakerError: The breaker rejected the call; ``fn`` did not run.
        """
        return self._call_sync(fn, args, kwargs)

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` through the breaker.

        Raises:
            CircuitBreakerError: The breaker rejected the call; ``fn`` did not run.
        """
        return await self._call_async(fn, args, kwargs)

    # ------------------------------------------------------------ block forms
    def __enter__(self) -> Self:
        permit, started = self._admit()
        push_block(self, permit, started)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        permit, started = pop_block(self)
        if exc is None:
            self._succeeded(permit, started)
        else:
            self._failed(permit, started, exc)

    async def __aenter__(self) -> Self:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    # ------------------------------------------------------------ control and inspection
    @property
    def state(self) -> CircuitState:
        """The current state; reading it moves OPEN to HALF_OPEN once the timeout passed."""
        state, changes = self._store.poll()
        if changes:
            self._fire(changes)
        return state

    @property
    def failure_count(self) -> int:
        """Consecutive counted failures (reset by a success or by closing)."""
        return self._store.snapshot().consecutive_failures

    @property
    def store(self) -> BreakerStore:
        """The store holding this breaker's state."""
        return self._store

    def reset(self) -> None:
        """Close the breaker and clear its counts (fires ``on_close`` if it was not CLOSED)."""
        self._fire(self._store.force(_CLOSED))

    def force_open(self) -> None:
        """Reject every call until :meth:`reset` (state ``FORCED_OPEN``)."""
        self._fire(self._store.force(CircuitState.FORCED_OPEN))

    def disable(self) -> None:
        """Let every call through and count nothing until :meth:`reset` (state ``DISABLED``)."""
        self._fire(self._store.force(CircuitState.DISABLED))

    def _adopt_settings(self, other: CircuitBreaker) -> None:
        """Take ``other``'s settings, failure filter and hooks; keep this breaker's state.

        The state, counts and a running OPEN period stay (a new
        ``recovery_timeout`` applies from the next opening); the clock, name
        and store stay this breaker's. Only stores that can change settings in
        place (the in-memory store) support this.

        Raises:
            TypeError: The store cannot change settings in place.
        """
        reconfigure = getattr(self._store, "_reconfigure", None)
        if reconfigure is None:
            msg = f"the store of circuit breaker {self._label!r} cannot change settings in place"
            raise TypeError(msg)
        self.expected_exception = other.expected_exception
        self._counts = other._counts
        self.on_open, self.on_close = other.on_open, other.on_close
        self.on_half_open = other.on_half_open
        reconfigure(other.config)
        self.config = other.config

    def statistics(self) -> CircuitBreakerStatistics:
        """Return a snapshot of the state and counters."""
        rejected = int(repr(self._rejected)[6:-1])  # "count(N)": read without consuming
        return statistics_of(self._label, self.config, self._store.snapshot(), rejected)

    def __repr__(self) -> str:
        return describe(self._label, self.config, self.statistics(), self.expected_exception)


CircuitBreaker.__module__ = "recoverly"
CircuitBreakerStatistics.__module__ = "recoverly"
