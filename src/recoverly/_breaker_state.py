"""The circuit breaker's state machine, free of locks, threads and user code.

:class:`BreakerCore` decides (admit or reject a call) and records outcomes
(success, counted failure, released probe slot). It returns the state changes
it made as :class:`Transition` values and never calls hooks or emits events:
the breaker does that after the store has released its lock. The in-memory
store wraps one core in a lock; a shared store (Redis) runs the same rules in
a server-side script.

Every admitted call gets a *permit*: the generation number of the state it was
admitted in. Each state change starts a new generation, so an outcome that
arrives after the state moved on (a slow call admitted before the breaker
opened, a probe that lost the race with another probe) is recognised as stale
and does not move the breaker again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from recoverly._core.clock import MAX_SLEEP
from recoverly._core.windows import CountWindow, TimeWindow, Window
from recoverly.errors import CircuitState

__all__ = ["NOT_OPEN", "REJECTED", "Admission", "BreakerConfig", "BreakerCore", "Transition"]

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
FORCED_OPEN = CircuitState.FORCED_OPEN
DISABLED = CircuitState.DISABLED

#: The permit of a rejected call.
REJECTED = -1

#: ``reject_until`` while the breaker is neither OPEN nor FORCED_OPEN.
NOT_OPEN = -math.inf


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """The validated settings a store needs to run the state machine.

    Attributes:
        failure_threshold: Consecutive counted failures that open the breaker
            (``None``: this rule is off).
        recovery_timeout: Seconds the breaker stays OPEN after its first trip.
        half_open_max_calls: Probe calls admitted at a time in HALF_OPEN.
        failure_rate_threshold: Share of failures in the window that opens the
            breaker (``None``: this rule is off).
        slow_call_duration: Calls slower than this many seconds are slow
            (``None``: durations are not measured).
        slow_call_rate_threshold: Share of slow calls in the window that opens the breaker.
        window_type: ``"count"`` or ``"time"``.
        window_size: Calls (count window) or seconds (time window).
        minimum_calls: Calls the window must hold before a rate rule can trip.
        recovery_backoff: Factor applied to the open duration on each consecutive trip.
        max_recovery_timeout: Cap on the open duration (``None``: no cap).

    .. versionadded:: 0.1
    """

    failure_threshold: int | None = 5
    recovery_timeout: float = 60.0
    half_open_max_calls: int = 1
    failure_rate_threshold: float | None = None
    slow_call_duration: float | None = None
    slow_call_rate_threshold: float = 1.0
    window_type: str = "count"
    window_size: float = 100
    minimum_calls: int = 10

    recovery_backoff: float = 1.0
    max_recovery_timeout: float | None = None

    @property
    def uses_window(self) -> bool:
        """Whether outcomes are recorded in a sliding window (a rate rule is on)."""
        return self.failure_rate_threshold is not None or self.slow_call_duration is not None

    @property
    def measures(self) -> bool:
        """Whether a call's outcome needs the clock (slow calls or a time window)."""
        return self.slow_call_duration is not None or (
            self.uses_window and self.window_type == "time"
        )

    def open_duration(self, trips: int) -> float:
        """Seconds to stay OPEN after the ``trips``-th consecutive trip (1-based).

        Grows by ``recovery_backoff`` per trip, up to ``max_recovery_timeout``,
        and saturates at ``MAX_SLEEP`` instead of overflowing.
        """
        duration = self.recovery_timeout
        exponent = trips - 1
        if self.recovery_backoff > 1.0 and exponent > 0:
            if exponent * math.log(self.recovery_backoff) > _MAX_EXPONENT:
                duration = MAX_SLEEP
            else:
                duration = min(duration * self.recovery_backoff**exponent, MAX_SLEEP)
        cap = self.max_recovery_timeout
        return duration if cap is None or duration < cap else cap

    def new_window(self) -> Window | None:
        """Return an empty window of the configured shape, or ``None`` if unused."""
        if not self.uses_window:
            return None
        if self.window_type == "time":
            return TimeWindow(float(self.window_size))
        return CountWindow(int(self.window_size))


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change made by a store.

    Attributes:
        previous: The state before.
        state: The state after.
        failures: Failures that caused an opening (consecutive or in the window).
        retry_after: For OPEN, seconds until the first probe; otherwise ``None``.

    .. versionadded:: 0.1
    """

    previous: CircuitState
    state: CircuitState
    failures: int = 0
    retry_after: float | None = None


#: ``(permit, state, retry_after, transitions)`` returned by ``acquire``:
#: ``permit >= 0`` admits the call (report it back with its outcome);
#: ``REJECTED`` refuses it, ``retry_after`` then being the seconds until a probe
#: may pass (``None`` when unknown). A plain tuple: the rejection path is hot.
Admission = tuple[int, CircuitState, float | None, tuple[Transition, ...]]

_NONE: tuple[Transition, ...] = ()
_MAX_EXPONENT = math.log(MAX_SLEEP)


class BreakerCore:
    """The breaker's state and rules; the caller serialises access.

    Args:
        config: The settings.
        monotonic: Returns the current monotonic time; read only when needed.
    """

    __slots__ = (
        "_monotonic",
        "config",
        "consecutive",
        "failed_calls",
        "fast",
        "generation",
        "in_flight",
        "open_until",
        "opened_at",
        "reject_until",
        "state",
        "trips",
        "window",
    )

    def __init__(self, config: BreakerConfig, monotonic: Callable[[], float]) -> None:
        self.config = config
        self._monotonic = monotonic
        self.state = CLOSED
        self.generation = 0
        self.consecutive = 0
        self.window = config.new_window()
        self.open_until = 0.0
        self.opened_at: float | None = None
        self.trips = 0
        self.in_flight = 0
        self.failed_calls = 0
        self.fast = 0
        self.reject_until = NOT_OPEN
        self._update_fast()

    def _update_fast(self) -> None:
        """Publish the hints read without a lock: ``fast`` and ``reject_until``."""
        state = self.state
        if state is OPEN:
            self.reject_until = self.open_until
        elif state is FORCED_OPEN:
            self.reject_until = math.inf
        else:
            self.reject_until = NOT_OPEN
        quiet = state is DISABLED or (
            state is CLOSED and self.consecutive == 0 and self.window is None
        )
        self.fast = self.generation if quiet else -1

    def _move(self, state: CircuitState) -> CircuitState:
        previous = self.state
        self.state = state
        self.generation += 1
        self.in_flight = 0
        return previous

    def _open(self, now: float, failures: int) -> tuple[Transition, ...]:
        self.trips += 1
        duration = self.config.open_duration(self.trips)
        self.opened_at = now
        self.open_until = now + duration
        previous = self._move(OPEN)
        self._update_fast()
        return (Transition(previous, OPEN, failures, duration),)

    def _close(self) -> tuple[Transition, ...]:
        previous = self._move(CLOSED)
        self.consecutive = 0
        self.trips = 0
        self.opened_at = None
        if self.window is not None:
            self.window.reset()
        self._update_fast()
        return (Transition(previous, CLOSED),) if previous is not CLOSED else _NONE

    def _half_open(self, now: float) -> tuple[Transition, ...]:
        if self.state is OPEN and now >= self.open_until:
            previous = self._move(HALF_OPEN)
            self._update_fast()
            return (Transition(previous, HALF_OPEN),)
        return _NONE

    # ------------------------------------------------------------ decisions
    def acquire(self) -> Admission:
        """Admit or reject one call."""
        state = self.state
        if state is CLOSED or state is DISABLED:
            return self.generation, state, None, _NONE
        if state is FORCED_OPEN:
            return REJECTED, state, None, _NONE
        changes = _NONE
        if state is OPEN:
            now = self._monotonic()
            changes = self._half_open(now)
            if not changes:
                return REJECTED, OPEN, max(0.0, self.open_until - now), _NONE
        if self.in_flight < self.config.half_open_max_calls:
            self.in_flight += 1
            return self.generation, HALF_OPEN, None, changes
        return REJECTED, HALF_OPEN, None, changes

    def poll(self) -> tuple[CircuitState, tuple[Transition, ...]]:
        """Return the current state, moving OPEN to HALF_OPEN when its time is up."""
        if self.state is OPEN:
            changes = self._half_open(self._monotonic())
            return self.state, changes
        return self.state, _NONE

    def _is_slow(self, duration: float) -> bool:
        limit = self.config.slow_call_duration
        return limit is not None and duration >= limit

    def _rate_trips(self, now: float) -> int | None:
        """Return the failures to report if a rate rule trips, else ``None``."""
        config, window = self.config, self.window
        if window is None:  # pragma: no cover - callers check
            return None
        calls, failures, slow = window.totals(now)
        if calls < config.minimum_calls:
            return None
        rate = config.failure_rate_threshold
        if rate is not None and failures >= rate * calls:
            return failures
        if (
            config.slow_call_duration is not None
            and slow >= config.slow_call_rate_threshold * calls
        ):
            return failures
        return None

    def success(self, permit: int, duration: float) -> tuple[Transition, ...]:
        """Record a successful call admitted with ``permit``."""
        if permit != self.generation:
            return _NONE
        state = self.state
        if state is CLOSED:
            self.consecutive = 0
            if self.window is not None:
                now = self._monotonic() if self.config.window_type == "time" else 0.0
                self.window.record(failed=False, slow=self._is_slow(duration), now=now)
                tripped = self._rate_trips(now)
                if tripped is not None:
                    return self._open(self._monotonic(), tripped)
            self._update_fast()
            return _NONE
        if state is HALF_OPEN:
            return self._close()
        return _NONE

    def failure(self, permit: int, duration: float) -> tuple[Transition, ...]:
        """Record a counted failure of a call admitted with ``permit``."""
        state = self.state
        if state is DISABLED:
            return _NONE
        self.failed_calls += 1
        if permit != self.generation:
            return _NONE
        if state is HALF_OPEN:
            self.consecutive += 1
            return self._open(self._monotonic(), self.consecutive)
        if state is not CLOSED:  # pragma: no cover - other states admit no calls
            return _NONE
        self.consecutive += 1
        tripped = None
        if self.window is not None:
            now = self._monotonic()
            self.window.record(failed=True, slow=self._is_slow(duration), now=now)
            tripped = self._rate_trips(now)
        threshold = self.config.failure_threshold
        if tripped is None and threshold is not None and self.consecutive >= threshold:
            tripped = self.consecutive
        if tripped is not None:
            return self._open(self._monotonic(), tripped)
        self._update_fast()
        return _NONE

    def release(self, permit: int) -> None:
        """Give back a probe slot whose call ended without a counted outcome."""
        if permit == self.generation and self.state is HALF_OPEN and self.in_flight > 0:
            self.in_flight -= 1

    def reconfigure(self, config: BreakerConfig) -> None:
        """Use ``config`` from now on, keeping the state, counts and current OPEN period.

        The sliding window is kept when its shape (rule on or off, type, size)
        is unchanged, and replaced by an empty one otherwise.
        """
        old = self.config
        self.config = config
        shape = (config.uses_window, config.window_type, config.window_size)
        if shape != (old.uses_window, old.window_type, old.window_size):
            self.window = config.new_window()
        self._update_fast()

    def force(self, state: CircuitState) -> tuple[Transition, ...]:
        """Move to CLOSED (reset), FORCED_OPEN or DISABLED by hand."""
        if state is CLOSED:
            return self._close()
        previous = self._move(state)
        self.opened_at = self._monotonic() if state is FORCED_OPEN else None
        self._update_fast()
        return (Transition(previous, state),) if previous is not state else _NONE
