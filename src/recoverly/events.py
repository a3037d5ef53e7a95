"""Typed events that strategies emit, and how to listen to them.

Every strategy reports what it does as a frozen dataclass event through one
process-wide stream. Logging is just the default subscriber; Prometheus and
OpenTelemetry exporters subscribe the same way. Strategies check whether
anybody listens before they build an event, so an unobserved stream costs
next to nothing.

Example:
    >>> from recoverly import events
    >>> seen = []
    >>> events.subscribe(seen.append, events.RetryScheduled)
    >>> events.unsubscribe(seen.append)
    True

.. versionadded:: 0.1
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from recoverly._core.bus import BUS
from recoverly._core.callables import check_callable
from recoverly.errors import CircuitState

__all__ = [
    "BatchItemFailed",
    "BulkheadWaited",
    "CallFailed",
    "CallRejected",
    "CallSucceeded",
    "ChaosInjected",
    "CheckpointSaveFailed",
    "CheckpointSaved",
    "CircuitClosed",
    "CircuitHalfOpened",
    "CircuitOpened",
    "CircuitStateChanged",
    "CommitResolved",
    "ConnectionInvalidated",
    "DeadLettered",
    "Event",
    "FallbackUsed",
    "HedgeStarted",
    "PoolResized",
    "RateLimitDelayed",
    "RetryGaveUp",
    "RetryScheduled",
    "RetrySucceeded",
    "TimedOut",
    "TransactionRolledBack",
    "log_event",
    "subscribe",
    "subscribers",
    "unsubscribe",
]

logger = logging.getLogger("recoverly")


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of every event: ``name`` is the strategy instance's name."""

    name: str


# ---------------------------------------------------------------- retry
@dataclass(frozen=True, slots=True)
class RetryScheduled(Event):
    """An attempt failed and another one will run after ``delay`` seconds."""

    attempt: int
    exception: BaseException | None
    delay: float


@dataclass(frozen=True, slots=True)
class RetrySucceeded(Event):
    """A call succeeded after at least one retry (``attempt`` >= 2)."""

    attempt: int


@dataclass(frozen=True, slots=True)
class RetryGaveUp(Event):
    """Retrying stopped; the last exception (or result) goes back to the caller.

    ``reason`` is ``"attempts"``, ``"deadline"`` or ``"budget"``.
    """

    attempts: int
    exception: BaseException | None
    reason: str


# ---------------------------------------------------------------- circuit breaker
@dataclass(frozen=True, slots=True)
class CircuitStateChanged(Event):
    """A circuit breaker moved from ``previous`` to ``state``."""

    previous: CircuitState
    state: CircuitState


@dataclass(frozen=True, slots=True)
class CircuitOpened(CircuitStateChanged):
    """The breaker opened after ``failures`` counted failures; probes in ``retry_after`` s."""

    failures: int
    retry_after: float


@dataclass(frozen=True, slots=True)
class CircuitHalfOpened(CircuitStateChanged):
    """The recovery timeout passed; probe calls may go through."""


@dataclass(frozen=True, slots=True)
class CircuitClosed(CircuitStateChanged):
    """The breaker closed again: the service recovered (or it was reset)."""


@dataclass(frozen=True, slots=True)
class CallRejected(Event):
    """A strategy refused a call (``strategy`` is e.g. ``"circuit_breaker"``)."""

    strategy: str
    state: object
    retry_after: float | None


@dataclass(frozen=True, slots=True)
class CallSucceeded(Event):
    """A protected call returned (emitted only when somebody listens)."""

    strategy: str
    duration: float


@dataclass(frozen=True, slots=True)
class CallFailed(Event):
    """A protected call raised; ``counted`` says whether it counted as a failure."""

    strategy: str
    exception: BaseException
    duration: float
    counted: bool


# ---------------------------------------------------------------- bulkhead and rate limiter
@dataclass(frozen=True, slots=True)
class BulkheadWaited(Event):
    """A queued call got a bulkhead slot after waiting ``waited`` seconds.

    Rejections (no queue place, or the queue timeout passed) are
    :class:`CallRejected` events with ``strategy="bulkhead"`` and ``state``
    ``"full"`` or ``"queue_timeout"``.

    .. versionadded:: 0.2
    """

    waited: float


@dataclass(frozen=True, slots=True)
class RateLimitDelayed(Event):
    """A caller waits ``delay`` seconds for ``tokens`` tokens of bucket ``key``.

    Refusals are :class:`CallRejected` events with ``strategy="rate_limit"``,
    ``state="exhausted"`` and the ``retry_after`` the caller was told.

    .. versionadded:: 0.2
    """

    key: object
    tokens: int
    delay: float


# ---------------------------------------------------------------- others
@dataclass(frozen=True, slots=True)
class FallbackUsed(Event):
    """The primary failed with ``exception``; a fallback alternative is being used."""

    exception: BaseException
    strategy: str = "fallback"


@dataclass(frozen=True, slots=True)
class TimedOut(Event):
    """A call exceeded its timeout of ``seconds``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class TransactionRolledBack(Event):
    """A transaction was rolled back because of ``exception`` (``None``: by hand)."""

    exception: BaseException | None


@dataclass(frozen=True, slots=True)
class BatchItemFailed(Event):
    """Item number ``index`` failed for good after ``attempts`` attempts."""

    index: int
    exception: BaseException
    attempts: int


@dataclass(frozen=True, slots=True)
class CheckpointSaved(Event):
    """A checkpoint of ``step`` was committed in ``duration`` seconds (``size`` bytes).

    .. versionadded:: 0.2
    """

    step: int
    duration: float
    size: int | None


@dataclass(frozen=True, slots=True)
class CheckpointSaveFailed(Event):
    """Saving the checkpoint of ``step`` failed with ``exception``.

    .. versionadded:: 0.2
    """

    step: int
    exception: BaseException


@dataclass(frozen=True, slots=True)
class CommitResolved(Event):
    """A COMMIT whose connection was lost was resolved by asking the database.

    ``verdict`` is ``"committed"``, ``"aborted"`` (the unit runs again) or
    ``"unknown"``; ``method`` is ``"xact_status"`` or ``"commit_marker"``.

    .. versionadded:: 0.2
    """

    verdict: str
    method: str
    exception: BaseException


@dataclass(frozen=True, slots=True)
class ConnectionInvalidated(Event):
    """A pooled connection was invalidated (lost, or discarded after an error).

    ``in_use``: it was checked out at the time. ``exception``: why, if known.

    .. versionadded:: 0.2
    """

    in_use: bool
    exception: BaseException | None


@dataclass(frozen=True, slots=True)
class PoolResized(Event):
    """A ``PoolAutoscaler`` changed how many connections its pool may have out at once.

    ``old`` and ``new`` are that capacity before and after. ``reason`` is
    ``"busy"`` (utilisation stayed at or above ``grow_at``), ``"idle"`` (it
    stayed at or below ``shrink_at``) or ``"limits"`` (brought within
    ``min_size`` / ``max_size`` when the autoscaler started).
    ``utilization`` is demand over the old capacity when it decided.

    .. versionadded:: 0.2
    """

    old: int
    new: int
    reason: str
    utilization: float


# ---------------------------------------------------------------- subscription
def subscribe(
    fn: Callable[[Any], object],
    kinds: type[Event] | tuple[type[Event], ...] | None = None,
) -> None:
    """Call ``fn(event)`` for every event, or only for events of ``kinds``.

    Args:
        fn: The subscriber. If it raises, the error is logged and ignored.
        kinds: An event class or a tuple of them; ``None`` means all events.

    Raises:
        TypeError: ``fn`` is not callable or ``kinds`` is not event classes.

    .. versionadded:: 0.1
    """
    check_callable("fn", fn)
    wanted: tuple[object, ...] | None = None
    if kinds is not None:
        wanted = kinds if isinstance(kinds, tuple) else (kinds,)
        if not all(_is_event_class(k) for k in wanted):
            msg = f"kinds must be Event subclasses or None, got {kinds!r}"
            raise TypeError(msg)
    BUS.subscribe(fn, cast("tuple[type, ...] | None", wanted))


def _is_event_class(value: object) -> bool:
    return inspect.isclass(value) and issubclass(value, Event)


def unsubscribe(fn: Callable[[Any], object]) -> bool:
    """Stop calling ``fn``; return ``True`` if it was subscribed.

    .. versionadded:: 0.1
    """
    return BUS.unsubscribe(fn)


def subscribers() -> tuple[Callable[[Any], object], ...]:
    """Return the current subscribers in subscription order.

    .. versionadded:: 0.1
    """
    return BUS.subscribers()


# ---------------------------------------------------------------- default subscriber
def _exc_text(exc: BaseException | None) -> str:
    if exc is None:
        return "unacceptable result"
    return f"{type(exc).__name__} - {exc}"


def log_event(event: Event) -> None:  # noqa: C901, PLR0912 - one flat dispatch table
    """Log ``event`` to ``logging.getLogger("recoverly")``.

    It is subscribed when recoverly is imported; ``unsubscribe(log_event)`` turns
    it off. Messages follow the wording of the original recovery module, e.g.
    ``Retry attempt 1 failed: ConnectionError - Connection timeout``.

    .. versionadded:: 0.1
    """
    if isinstance(event, RetryScheduled):
        logger.warning(
            "Retry attempt %d failed: %s (%s; retrying in %.3gs)",
            event.attempt,
            _exc_text(event.exception),
            event.name,
            event.delay,
        )
    elif isinstance(event, RetrySucceeded):
        logger.info("Retry successful on attempt %d (%s)", event.attempt, event.name)
    elif isinstance(event, RetryGaveUp):
        logger.error(
            "Retry gave up after %d attempts (%s): %s [%s]",
            event.attempts,
            event.name,
            _exc_text(event.exception),
            event.reason,
        )
    elif isinstance(event, CircuitOpened):
        logger.critical(
            "Circuit breaker OPENED for %s after %d failures", event.name, event.failures
        )
    elif isinstance(event, CircuitHalfOpened):
        logger.info("Circuit breaker HALF_OPEN, attempting recovery (%s)", event.name)
    elif isinstance(event, CircuitClosed):
        logger.info("Circuit breaker CLOSED, service recovered (%s)", event.name)
    elif isinstance(event, CircuitStateChanged):
        logger.warning(
            "Circuit breaker %s: %s -> %s",
            event.name,
            event.previous.name,
            event.state.name,
        )
    elif isinstance(event, FallbackUsed):
        logger.warning(
            "%s failed: %s; using %s", event.name, _exc_text(event.exception), event.strategy
        )
    elif isinstance(event, TimedOut):
        logger.warning("%s timed out after %.3gs", event.name, event.seconds)
    elif isinstance(event, TransactionRolledBack):
        if event.exception is None:
            logger.info("Transaction rolled back (%s)", event.name)
        else:
            logger.warning(
                "Transaction rolled back (%s): %s", event.name, _exc_text(event.exception)
            )
    elif isinstance(event, BatchItemFailed):
        logger.error(
            "Batch item %d failed after %d attempts (%s): %s",
            event.index,
            event.attempts,
            event.name,
            _exc_text(event.exception),
        )
    elif isinstance(event, CallRejected):
        logger.debug("%s rejected a call (%s)", event.name, event.state)
    elif isinstance(event, CommitResolved):
        logger.warning(
            "Connection lost during COMMIT (%s): resolved as %s by %s",
            event.name,
            event.verdict,
            event.method,
        )
    elif isinstance(event, PoolResized):
        logger.info(
            "Connection pool %s %s from %d to %d connections (%s; %.0f%% used)",
            event.name,
            "grown" if event.new > event.old else "shrunk",
            event.old,
            event.new,
            event.reason,
            100 * event.utilization,
        )
    elif isinstance(event, RateLimitDelayed):
        logger.debug("%s: waiting %.3gs for %d token(s)", event.name, event.delay, event.tokens)
    elif isinstance(event, BulkheadWaited):
        logger.debug("%s: got a slot after %.3gs in the queue", event.name, event.waited)


# The default subscriber: listens to everything but the per-call success and
# failure events, which exist for metrics.
_LOGGED = (
    RetryScheduled,
    RetrySucceeded,
    RetryGaveUp,
    CircuitStateChanged,
    FallbackUsed,
    TimedOut,
    TransactionRolledBack,
    BatchItemFailed,
    CommitResolved,
    PoolResized,
)
# CallRejected is left out on purpose: an outage rejects many calls, and the
# rejection path must stay cheap. Subscribe to it explicitly to see them.
BUS.subscribe(log_event, _LOGGED)


# ---------------------------------------------------------------- hedge and chaos
# Not logged by default (like CallRejected): subscribe to them explicitly.
@dataclass(frozen=True, slots=True)
class HedgeStarted(Event):
    """A hedged call had not answered after ``delay`` s; extra attempt ``attempt`` started.

    .. versionadded:: 0.2
    """

    attempt: int
    delay: float


@dataclass(frozen=True, slots=True)
class ChaosInjected(Event):
    """A chaos part injected into a call; ``kind`` is ``"fault"``, ``"latency"`` or ``"outcome"``.

    .. versionadded:: 0.2
    """

    kind: str


@dataclass(frozen=True, slots=True)
class DeadLettered(Event):
    """A task was moved to the dead letter after ``losses`` deliveries never finished.

    ``name`` is the task's name; ``key`` its idempotency key (never a metric
    label). Sent by :mod:`recoverly.celery`, which logs it at ERROR itself.

    .. versionadded:: 0.2
    """

    key: str
    losses: int
