"""The circuit breaker's engine: admission, rejection, outcomes, hooks and events.

:class:`BreakerEngine` is the base of :class:`~recoverly.CircuitBreaker`: it
turns the store's decisions into raised errors, fired hooks and emitted
events, and holds the slow-path drivers shared by the decorator and
``call``/``acall``. The hot-path wrappers and the public surface live in
:mod:`recoverly.circuit_breaker`.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from recoverly._breaker_support import KIND, announce
from recoverly._core.bus import BUS
from recoverly._core.clock import DEFAULT_CLOCK, Clock, resolve
from recoverly._core.predicates import Predicate
from recoverly.errors import CircuitBreakerError, CircuitState
from recoverly.events import CallFailed, CallRejected, CallSucceeded
from recoverly.stores import BreakerConfig, BreakerStore, Transition

__all__ = ["BreakerEngine"]

T = TypeVar("T")

_log = logging.getLogger("recoverly")
_OPEN, _HALF_OPEN, _CLOSED = CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED
_FORCED_OPEN = CircuitState.FORCED_OPEN
_new_error = CircuitBreakerError.__new__
_INF = math.inf
_PER_CALL = (CallSucceeded, CallFailed, CallRejected)


class BreakerEngine:
    """Shared machinery of :class:`~recoverly.CircuitBreaker` (not public)."""

    __slots__ = (
        "_clock",
        "_counts",
        "_label",
        "_quiet",
        "_rejected",
        "_rejections",
        "_routes",
        "_store",
        "config",
        "on_close",
        "on_half_open",
        "on_open",
    )

    config: BreakerConfig
    on_open: Callable[..., Any] | None
    on_close: Callable[..., Any] | None
    on_half_open: Callable[..., Any] | None
    _clock: Clock | None
    _counts: Predicate
    _label: str

    def _start_engine(self, store: BreakerStore) -> None:
        """Set the engine's own state and bind ``store`` (settings already validated)."""
        self._quiet: object = None
        self._routes: object = None
        self._rejections = False
        self._rejected = itertools.count()  # next() is atomic: exact without a lock
        self._store = store
        store.bind(self.config, self._clock)
        self._listen()

    def _listen(self) -> bool:
        """Check who listens for per-call events; return whether calls must be timed.

        The bus replaces its ``routes`` dict whenever subscriptions change, so
        remembering that dict lets the hot paths know, by one identity check,
        that nothing changed since. The answers are read from that same dict
        (routing the kinds first if needed), so they can never be older than it.
        """
        while True:
            routes = BUS.routes
            succeeded = routes.get(CallSucceeded)
            failed = routes.get(CallFailed)
            rejected = routes.get(CallRejected)
            if succeeded is not None and failed is not None and rejected is not None:
                break
            for kind in _PER_CALL:
                BUS.wants(kind)
        calls = bool(succeeded) or bool(failed)
        self._rejections = bool(rejected)
        self._routes = routes
        self._quiet = None if calls else routes
        return calls

    def _admit(self) -> tuple[int, float | None]:
        permit, state, retry_after, changes = self._store.acquire()
        if permit < 0:
            raise self._rejection(state, retry_after, changes)
        return permit, self._begin(changes)

    def _begin(self, changes: tuple[Transition, ...]) -> float | None:
        """Fire state changes made by an admission; return the start time if calls are timed."""
        if changes:
            self._fire(changes)
        timed = self._listen() or self.config.measures
        return resolve(self._clock).monotonic() if timed else None

    def _rejection(
        self, state: CircuitState, retry_after: float | None, changes: tuple[Transition, ...]
    ) -> CircuitBreakerError:
        """Build the error for a rejected call (the OPEN path: keep it lean)."""
        if changes:
            self._fire(changes)
        label = self._label
        next(self._rejected)
        if BUS.routes is not self._routes:
            self._listen()
        if self._rejections:
            BUS.emit(CallRejected(label, KIND, state, retry_after))
        # Built without __init__ and worded only if someone reads str(exc): the
        # OPEN path stays cheap.
        return _new_error(CircuitBreakerError, None, label, state, retry_after)

    def _early_rejection(self) -> CircuitBreakerError | None:
        """Return the error if the store's hint says the breaker is still OPEN (no lock).

        This is the whole OPEN path, in one frame on purpose: it runs for every
        call an outage rejects.
        """
        until = self._store.reject_until
        if until == _INF:
            state, left = _FORCED_OPEN, None
        else:
            clock = self._clock
            left = until - (DEFAULT_CLOCK[0] if clock is None else clock).monotonic()
            if left <= 0:
                return None
            state = _OPEN
        next(self._rejected)
        if BUS.routes is not self._routes:
            self._listen()
        if self._rejections:
            BUS.emit(CallRejected(self._label, KIND, state, left))
        return _new_error(CircuitBreakerError, None, self._label, state, left)

    def _elapsed(self, started: float | None) -> float:
        return 0.0 if started is None else resolve(self._clock).monotonic() - started

    def _succeeded(self, permit: int, started: float | None) -> None:
        duration = self._elapsed(started)
        store = self._store
        if permit != store.fast:
            changes = store.on_success(permit, duration)
            if changes:
                self._fire(changes)
        if started is not None and BUS.wants(CallSucceeded):
            BUS.emit(CallSucceeded(self._label, KIND, duration))

    def _failed(self, permit: int, started: float | None, exc: BaseException) -> None:
        duration = self._elapsed(started)
        counted = self._counts(exc)
        if counted:
            changes = self._store.on_failure(permit, duration)
            if changes:
                self._fire(changes)
        else:
            self._store.release(permit)
        if started is not None and BUS.wants(CallFailed):
            BUS.emit(CallFailed(self._label, KIND, exc, duration, counted))

    def _fire(self, changes: tuple[Transition, ...]) -> None:
        """Emit events and run hooks for state changes (no lock is held here)."""
        for change in changes:
            announce(self._label, change)
            hook = None
            if change.state is _OPEN:
                hook = self.on_open
            elif change.state is _HALF_OPEN:
                hook = self.on_half_open
            elif change.state is _CLOSED:
                hook = self.on_close
            if hook is not None:
                try:
                    hook(self)
                except Exception:
                    _log.exception("%s hook of circuit breaker %s failed", hook, self._label)

    # ------------------------------------------------------------ drivers
    def _call_sync(self, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        permit, state, retry_after, changes = self._store.acquire()
        if permit < 0:
            raise self._rejection(state, retry_after, changes)
        started = self._begin(changes)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._failed(permit, started, exc)
            raise
        self._succeeded(permit, started)
        return result

    async def _call_async(self, fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any) -> T:
        permit, state, retry_after, changes = self._store.acquire()
        if permit < 0:
            raise self._rejection(state, retry_after, changes)
        started = self._begin(changes)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._failed(permit, started, exc)
            raise
        self._succeeded(permit, started)
        return result

    def _fast_failure(self, permit: int, exc: BaseException) -> None:
        if self._counts(exc):
            changes = self._store.on_failure(permit, 0.0)
            if changes:
                self._fire(changes)
