"""Support for the circuit breaker: settings validation, events, errors and block bookkeeping.

Kept apart from :mod:`recoverly.circuit_breaker` so that module stays the
driver and nothing else.
"""

from __future__ import annotations

import warnings
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from recoverly._breaker_state import CLOSED, HALF_OPEN, OPEN, BreakerConfig, Transition
from recoverly._core.bus import BUS
from recoverly._core.predicates import describe_filter
from recoverly._core.validate import Problems
from recoverly.errors import CircuitState
from recoverly.events import CircuitClosed, CircuitHalfOpened, CircuitOpened, CircuitStateChanged
from recoverly.stores import BreakerSnapshot

__all__ = [
    "KIND",
    "CircuitBreakerStatistics",
    "announce",
    "build_config",
    "describe",
    "pop_block",
    "push_block",
    "statistics_of",
]

#: The registry kind (and event ``strategy``) of circuit breakers.
KIND = "circuit_breaker"


@dataclass(frozen=True, slots=True)
class CircuitBreakerStatistics:
    """A snapshot of one :class:`CircuitBreaker`.

    Attributes:
        name: The breaker's name.
        state: The current state.
        failure_count: Consecutive counted failures (reset by a success).
        failure_threshold: Consecutive failures that open the breaker, or ``None``.
        failed_calls: Counted failures since creation.
        rejected_calls: Rejected calls since creation.
        consecutive_trips: Openings since the breaker was last closed.
        probes_in_flight: HALF_OPEN probe calls running now.
        window_calls: Calls in the sliding window (0 without a rate rule).
        failure_rate: Share of failures in the window, or ``None`` when empty.
        slow_call_rate: Share of slow calls in the window, or ``None`` when empty.
        retry_after: Seconds until the next probe while OPEN, else ``None``.

    .. versionadded:: 0.1
    """

    name: str
    state: CircuitState
    failure_count: int
    failure_threshold: int | None
    failed_calls: int
    rejected_calls: int
    consecutive_trips: int
    probes_in_flight: int
    window_calls: int
    failure_rate: float | None
    slow_call_rate: float | None
    retry_after: float | None


# Calls entered with `with breaker:` and not yet exited, innermost last. A
# ContextVar keeps them per thread and per task without threading.local.
_BLOCKS: ContextVar[tuple[tuple[object, int, float | None], ...]] = ContextVar(
    "recoverly_breaker_blocks", default=()
)


def push_block(breaker: object, permit: int, started: float | None) -> None:
    """Remember the permit of a block entered with ``with breaker:``."""
    _BLOCKS.set((*_BLOCKS.get(), (breaker, permit, started)))


def pop_block(breaker: object) -> tuple[int, float | None]:
    """Forget and return ``(permit, started)`` of ``breaker``'s innermost open block.

    Raises:
        RuntimeError: No block of ``breaker`` is open in this thread or task.
    """
    stack = _BLOCKS.get()
    for i in range(len(stack) - 1, -1, -1):
        if stack[i][0] is breaker:
            _BLOCKS.set(stack[:i] + stack[i + 1 :])
            return stack[i][1], stack[i][2]
    msg = "CircuitBreaker.__exit__ without a matching __enter__ in this thread or task"
    raise RuntimeError(msg)


# ---------------------------------------------------------------- configuration
def build_config(
    p: Problems,
    *,
    failure_threshold: Any,
    recovery_timeout: Any,
    half_open_max_calls: Any,
    failure_rate_threshold: Any,
    slow_call_duration: Any,
    slow_call_rate_threshold: Any,
    sliding_window: Any,
    sliding_window_size: Any,
    minimum_calls: Any,
    recovery_backoff: Any,
    max_recovery_timeout: Any,
    stacklevel: int = 2,
) -> BreakerConfig:
    """Validate the settings into ``p``; the config is meaningful only if ``p`` stays clean."""
    threshold = p.optional_int_at_least("failure_threshold", failure_threshold, 1)
    timeout = p.duration("recovery_timeout", recovery_timeout)
    rate = None
    if failure_rate_threshold is not None:
        rate = p.fraction("failure_rate_threshold", failure_rate_threshold, low_open=True)
    slow = p.optional_duration("slow_call_duration", slow_call_duration, positive=True)
    slow_rate = p.fraction("slow_call_rate_threshold", slow_call_rate_threshold, low_open=True)
    minimum = p.int_at_least("minimum_calls", minimum_calls, 1)
    size: float = 100
    if sliding_window == "count":
        size = p.int_at_least("sliding_window_size", sliding_window_size, 1)
        if minimum > size:
            p._bad(
                f"minimum_calls must be <= sliding_window_size ({size}) for a count window, "
                f"got {minimum!r}"
            )
    elif sliding_window == "time":
        size = p.duration("sliding_window_size", sliding_window_size, positive=True)
    else:
        p._bad(f"sliding_window must be 'count' or 'time', got {sliding_window!r}", kind=True)
    backoff = p.number_at_least("recovery_backoff", recovery_backoff, 1)
    cap = p.optional_duration("max_recovery_timeout", max_recovery_timeout)
    if cap is not None and cap < timeout:
        p._bad(
            f"max_recovery_timeout must be >= recovery_timeout ({timeout:g}), "
            f"got {max_recovery_timeout!r}"
        )
    if failure_threshold is None and rate is None and slow is None:
        p._bad(
            "failure_threshold must be an integer >= 1 when neither failure_rate_threshold "
            "nor slow_call_duration is set, got None"
        )
    if backoff > 1 and cap is None and max_recovery_timeout is None:
        warnings.warn(
            "recovery_backoff > 1 without max_recovery_timeout lets the OPEN duration "
            "grow without limit",
            UserWarning,
            stacklevel=stacklevel + 1,
        )
    return BreakerConfig(
        failure_threshold=threshold,
        recovery_timeout=timeout,
        half_open_max_calls=p.int_at_least("half_open_max_calls", half_open_max_calls, 1),
        failure_rate_threshold=rate,
        slow_call_duration=slow,
        slow_call_rate_threshold=slow_rate,
        window_type=sliding_window if sliding_window in ("count", "time") else "count",
        window_size=size,
        minimum_calls=minimum,
        recovery_backoff=backoff,
        max_recovery_timeout=cap,
    )


def announce(name: str, change: Transition) -> None:
    """Emit the event for one state change, if anybody listens."""
    state, previous = change.state, change.previous
    if state is OPEN:
        if BUS.wants(CircuitOpened):
            retry_after = change.retry_after if change.retry_after is not None else 0.0
            BUS.emit(CircuitOpened(name, previous, state, change.failures, retry_after))
    elif state is HALF_OPEN:
        if BUS.wants(CircuitHalfOpened):
            BUS.emit(CircuitHalfOpened(name, previous, state))
    elif state is CLOSED:
        if BUS.wants(CircuitClosed):
            BUS.emit(CircuitClosed(name, previous, state))
    elif BUS.wants(CircuitStateChanged):
        BUS.emit(CircuitStateChanged(name, previous, state))


def statistics_of(
    label: str, config: BreakerConfig, s: BreakerSnapshot, rejected: int
) -> CircuitBreakerStatistics:
    """Turn a store snapshot into the breaker's public statistics."""
    calls = s.window_calls
    return CircuitBreakerStatistics(
        name=label,
        state=s.state,
        failure_count=s.consecutive_failures,
        failure_threshold=config.failure_threshold,
        failed_calls=s.failed_calls,
        rejected_calls=rejected,
        consecutive_trips=s.trips,
        probes_in_flight=s.probes_in_flight,
        window_calls=calls,
        failure_rate=s.window_failures / calls if calls else None,
        slow_call_rate=s.window_slow_calls / calls if calls else None,
        retry_after=s.retry_after,
    )


def describe(
    label: str, config: BreakerConfig, s: CircuitBreakerStatistics, expected: object
) -> str:
    """Return the breaker's repr: ``<CircuitBreaker 'db' CLOSED failures=0/5 ...>``."""
    threshold = config.failure_threshold
    failures = f"{s.failure_count}/{threshold}" if threshold is not None else s.failure_count
    extra = ""
    if config.uses_window:
        rate = "-" if s.failure_rate is None else f"{s.failure_rate:.0%}"
        extra = f" window={s.window_calls} failure_rate={rate}"
    return (
        f"<CircuitBreaker {label!r} {s.state.name} failures={failures}{extra} "
        f"recovery_timeout={config.recovery_timeout:g}s "
        f"expected_exception={describe_filter(expected)}>"
    )
