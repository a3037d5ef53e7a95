"""Where a circuit breaker keeps its state: the store interface and the in-memory store.

A :class:`~recoverly.CircuitBreaker` never reads or writes state fields one by
one. It asks its store to perform whole *transitions*, each of which must be
atomic when several threads (or processes) share the state:

``acquire()``
    admit or reject one call; in OPEN, move to HALF_OPEN once the recovery
    timeout has passed and take a probe slot, in one step.
``on_failure(permit, duration)``
    count a failure and open the breaker if a rule trips, in one step.
``on_success(permit, duration)``
    clear the consecutive-failure count, or close a HALF_OPEN breaker.
``release(permit)``
    give back a probe slot whose call ended without a counted outcome
    (cancelled, or an exception the breaker does not count).
``poll()``, ``force(state)``, ``snapshot()``
    read the state (moving OPEN to HALF_OPEN when due), set it by hand, inspect it.

Every admitted call gets a *permit*, the generation number of the state it was
admitted in; outcomes are reported with it, so a store can ignore outcomes that
arrive after the state has moved on. Each method returns the
:class:`Transition` values it made; the breaker fires hooks and events for them
after the call returns, so a store never runs user code while it holds a lock.

The hot path reads one plain attribute, :attr:`BreakerStore.fast`: the current
generation while the breaker is CLOSED with nothing to record, else ``-1``. A
call admitted on that path whose success leaves ``fast`` unchanged reports
nothing at all: no lock, no round trip.

This shape fits a shared store such as Redis: each method is one Lua script
(``EVALSHA``) over one hash, using the server's ``TIME`` rather than the local
monotonic clock, and ``fast`` is a locally cached copy of the shared generation
while it is CLOSED with no failures, so the CLOSED success path needs no round
trip.

A :class:`~recoverly.RateLimiter` keeps its buckets in a
:class:`LimiterStore` the same way: one atomic operation, ``take(key, tokens,
now, interval, burst) -> (admitted, retry_after)``, over one theoretical
arrival time per key (GCRA). :class:`InMemoryLimiterStore` is the default.

.. versionadded:: 0.1
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from recoverly._breaker_state import (
    NOT_OPEN,
    REJECTED,
    Admission,
    BreakerConfig,
    BreakerCore,
    Transition,
)
from recoverly._core.clock import Clock, resolve
from recoverly._rate_store import InMemoryLimiterStore, LimiterStore
from recoverly.errors import CircuitState

__all__ = [
    "NOT_OPEN",
    "REJECTED",
    "Admission",
    "BreakerConfig",
    "BreakerSnapshot",
    "BreakerStore",
    "InMemoryBreakerStore",
    "InMemoryLimiterStore",
    "LimiterStore",
    "Transition",
]


_OPEN = CircuitState.OPEN
_FORCED_OPEN = CircuitState.FORCED_OPEN


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """What a store reports about one breaker's state.

    Attributes:
        state: The current state.
        generation: Incremented on every state change.
        consecutive_failures: Counted failures since the last success (or opening).
        failed_calls: Counted failures since the breaker was created.
        trips: Consecutive openings without a successful probe in between.
        probes_in_flight: HALF_OPEN probe calls still running.
        window_calls: Calls in the sliding window (0 without a rate rule).
        window_failures: Counted failures in the window.
        window_slow_calls: Slow calls in the window.
        retry_after: Seconds until the next probe while OPEN, else ``None``.

    .. versionadded:: 0.1
    """

    state: CircuitState
    generation: int
    consecutive_failures: int
    failed_calls: int
    trips: int
    probes_in_flight: int
    window_calls: int
    window_failures: int
    window_slow_calls: int
    retry_after: float | None


@runtime_checkable
class BreakerStore(Protocol):
    """The operations a circuit breaker needs from its state, each one atomic.

    Attributes:
        fast: The current generation while the breaker is CLOSED (or DISABLED)
            and a success has nothing to record; ``-1`` otherwise. Read without
            a lock on every call, so it must be a plain attribute.
        reject_until: While the breaker is OPEN, the monotonic time before which
            calls are rejected without asking the store; ``math.inf`` while
            FORCED_OPEN; :data:`NOT_OPEN` (``-inf``) otherwise. Also a plain
            attribute. A shared store keeps a local estimate, so an OPEN
            breaker rejects without a round trip.

    .. versionadded:: 0.1
    """

    fast: int
    reject_until: float

    def bind(self, config: BreakerConfig, clock: Clock | None) -> None:
        """Attach the store to one breaker's settings and clock (called once)."""
        ...

    def acquire(self) -> Admission:
        """Admit or reject a call: ``(permit, state, retry_after, transitions)``."""
        ...

    def on_success(self, permit: int, duration: float) -> tuple[Transition, ...]:
        """Record a success of a call admitted with ``permit`` (``duration`` in seconds)."""
        ...

    def on_failure(self, permit: int, duration: float) -> tuple[Transition, ...]:
        """Record a counted failure of a call admitted with ``permit``."""
        ...

    def release(self, permit: int) -> None:
        """Give back the probe slot of a call that ended without a counted outcome."""
        ...

    def poll(self) -> tuple[CircuitState, tuple[Transition, ...]]:
        """Return the state, moving OPEN to HALF_OPEN when the timeout has passed."""
        ...

    def force(self, state: CircuitState) -> tuple[Transition, ...]:
        """Move to CLOSED (a reset), FORCED_OPEN or DISABLED by hand."""
        ...

    def snapshot(self) -> BreakerSnapshot:
        """Return the current state and counters."""
        ...


class InMemoryBreakerStore:
    """The default store: one :class:`BreakerCore` behind a ``threading.Lock``.

    Safe for threads and asyncio tasks alike: the lock is held only for the few
    operations of one transition, never while a protected call runs.

    .. versionadded:: 0.1
    """

    __slots__ = ("_clock", "_core", "_lock", "fast", "reject_until")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._core: BreakerCore | None = None
        self._clock: Clock | None = None
        self.fast = -1
        self.reject_until = NOT_OPEN

    def _publish(self, core: BreakerCore) -> None:
        self.fast = core.fast
        self.reject_until = core.reject_until

    def _monotonic(self) -> float:
        return resolve(self._clock).monotonic()

    def bind(self, config: BreakerConfig, clock: Clock | None) -> None:
        """Attach the store to a breaker's settings and clock.

        Raises:
            RuntimeError: The store is already bound to another breaker.
        """
        with self._lock:
            if self._core is not None:
                msg = "this InMemoryBreakerStore already belongs to another CircuitBreaker"
                raise RuntimeError(msg)
            self._clock = clock
            self._core = BreakerCore(config, self._monotonic)
            self._publish(self._core)

    def _reconfigure(self, config: BreakerConfig) -> None:
        """Switch to new settings, keeping the state (see ``BreakerCore.reconfigure``)."""
        core = self._bound()
        with self._lock:
            core.reconfigure(config)
            self._publish(core)

    def _bound(self) -> BreakerCore:
        core = self._core
        if core is None:
            msg = "InMemoryBreakerStore is not bound to a CircuitBreaker yet"
            raise RuntimeError(msg)
        return core

    def acquire(self) -> Admission:
        """Admit or reject one call."""
        core = self._bound()
        until = self.reject_until
        # Rejections while OPEN or FORCED_OPEN need no lock: only a locked
        # transition ends those states, and OPEN ends no earlier than its
        # `reject_until`, so a call seen before then may be rejected at once.
        if until != NOT_OPEN:
            if until == math.inf:
                return REJECTED, _FORCED_OPEN, None, ()
            left = until - self._monotonic()
            if left > 0:
                return REJECTED, _OPEN, left, ()
        with self._lock:
            admission = core.acquire()
            self._publish(core)
        return admission

    def on_success(self, permit: int, duration: float) -> tuple[Transition, ...]:
        """Record a success."""
        core = self._bound()
        with self._lock:
            changes = core.success(permit, duration)
            self._publish(core)
        return changes

    def on_failure(self, permit: int, duration: float) -> tuple[Transition, ...]:
        """Record a counted failure."""
        core = self._bound()
        with self._lock:
            changes = core.failure(permit, duration)
            self._publish(core)
        return changes

    def release(self, permit: int) -> None:
        """Give back a probe slot."""
        core = self._bound()
        if core.state is not CircuitState.HALF_OPEN:
            return  # generations only grow: a later HALF_OPEN is not this permit's
        with self._lock:
            core.release(permit)

    def poll(self) -> tuple[CircuitState, tuple[Transition, ...]]:
        """Return the state, moving OPEN to HALF_OPEN when due."""
        core = self._bound()
        if core.state is CircuitState.CLOSED:  # a plain read: nothing can be due
            return core.state, ()
        with self._lock:
            result = core.poll()
            self._publish(core)
        return result

    def force(self, state: CircuitState) -> tuple[Transition, ...]:
        """Move to CLOSED, FORCED_OPEN or DISABLED."""
        core = self._bound()
        with self._lock:
            changes = core.force(state)
            self._publish(core)
        return changes

    def snapshot(self) -> BreakerSnapshot:
        """Return the current state and counters."""
        core = self._bound()
        with self._lock:
            calls = failures = slow = 0
            if core.window is not None:
                now = self._monotonic() if core.config.window_type == "time" else 0.0
                calls, failures, slow = core.window.totals(now)
            retry_after = None
            if core.state is CircuitState.OPEN:
                retry_after = max(0.0, core.open_until - self._monotonic())
            return BreakerSnapshot(
                state=core.state,
                generation=core.generation,
                consecutive_failures=core.consecutive,
                failed_calls=core.failed_calls,
                trips=core.trips,
                probes_in_flight=core.in_flight,
                window_calls=calls,
                window_failures=failures,
                window_slow_calls=slow,
                retry_after=retry_after,
            )

    def __repr__(self) -> str:
        core = self._core
        if core is None:
            return "<InMemoryBreakerStore unbound>"
        return f"<InMemoryBreakerStore {core.state.name} generation={core.generation}>"


for _cls in (
    BreakerSnapshot,
    BreakerStore,
    InMemoryBreakerStore,
    InMemoryLimiterStore,
    LimiterStore,
):
    _cls.__module__ = "recoverly.stores"
del _cls
