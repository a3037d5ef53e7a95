"""One table from events to metric samples, shared by the Prometheus and OpenTelemetry exporters.

Events are recognised by the names of the classes in their MRO and read by
attribute, not imported: this module sits below :mod:`recoverly.events`, and an
event class added later (by an extension, or a newer recoverly) is still
counted under ``events_total`` and, if it follows a known shape, under its own
family.

Labels are bounded: each label takes at most a fixed number of distinct values
(:class:`LabelLimiter`); later newcomers are folded into ``"_other"``. Only
names go into labels (strategy names, exception class names, states), never
exception messages, ids, keys or arguments.
"""

from __future__ import annotations

import enum
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "MAX_VALUE_LENGTH",
    "METRICS",
    "OTHER",
    "OVERFLOW_HELP",
    "STATE_HELP",
    "BreakerStates",
    "LabelLimiter",
    "Metric",
    "Sample",
    "all_but",
    "error_label",
    "handler_for",
    "is_state_change",
    "measure",
    "state_label",
]

#: The value a label takes once its cap of distinct values is reached.
OTHER = "_other"
#: Longest label value kept; longer ones are cut (names are short in practice).
MAX_VALUE_LENGTH = 120

Kind = Literal["counter", "histogram"]

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric family: ``key`` is its name without namespace and without ``_total``."""

    key: str
    kind: Kind
    labels: tuple[str, ...]
    help: str
    buckets: tuple[float, ...] = ()


RETRIES = Metric("retries", "counter", ("name", "error"), "Retries scheduled, by error class.")
RETRY_OUTCOMES = Metric(
    "retry_outcomes",
    "counter",
    ("name", "outcome", "reason"),
    "Calls that needed retries: succeeded after retrying, or gave up (reason).",
)
RETRY_DELAY = Metric(
    "retry_delay_seconds", "histogram", ("name",), "Waits before retries.", WAIT_BUCKETS
)
DB_RETRIES = Metric(
    "db_retries",
    "counter",
    ("name", "error", "kind"),
    "Retries after a database error, by error class and recoverly.db failure kind.",
)
TRANSITIONS = Metric(
    "circuit_breaker_transitions",
    "counter",
    ("name", "from_state", "to_state"),
    "Circuit breaker state changes.",
)
CALLS = Metric(
    "calls",
    "counter",
    ("strategy", "name", "outcome"),
    "Protected calls by outcome (success, failure, ignored failure).",
)
CALL_DURATION = Metric(
    "call_duration_seconds",
    "histogram",
    ("strategy", "name"),
    "Duration of protected calls.",
    DURATION_BUCKETS,
)
REJECTIONS = Metric(
    "rejections",
    "counter",
    ("strategy", "name", "reason"),
    "Calls refused without running (breaker open, bulkhead full, rate limit exhausted).",
)
FALLBACKS = Metric(
    "fallbacks", "counter", ("name", "strategy", "error"), "Fallbacks used, by error class."
)
TIMEOUTS = Metric("timeouts", "counter", ("name",), "Calls that exceeded their timeout.")
ROLLBACKS = Metric(
    "transactions_rolled_back",
    "counter",
    ("name", "error"),
    "Transactions rolled back, by error class (``none``: rolled back by hand).",
)
COMMIT_RESOLUTIONS = Metric(
    "commit_resolutions",
    "counter",
    ("name", "verdict", "method"),
    "COMMITs whose connection was lost, resolved by asking the database "
    "(committed, aborted, unknown).",
)
BATCH_FAILURES = Metric(
    "batch_item_failures", "counter", ("name", "error"), "Batch items that failed for good."
)
BULKHEAD_WAIT = Metric(
    "bulkhead_wait_seconds",
    "histogram",
    ("name",),
    "Time queued calls waited for a bulkhead slot.",
    WAIT_BUCKETS,
)
RATE_LIMIT_DELAY = Metric(
    "rate_limit_delay_seconds",
    "histogram",
    ("name",),
    "Time callers waited for rate-limit tokens.",
    WAIT_BUCKETS,
)
CHECKPOINT_SAVES = Metric(
    "checkpoint_saves", "counter", ("name", "outcome"), "Checkpoint saves (saved, failed)."
)
CHECKPOINT_DURATION = Metric(
    "checkpoint_save_duration_seconds",
    "histogram",
    ("name",),
    "Time to write a checkpoint.",
    WAIT_BUCKETS,
)
POOL_RESIZES = Metric(
    "pool_resizes",
    "counter",
    ("name", "direction", "reason"),
    "Connection pool capacity changes made by a PoolAutoscaler (grow, shrink).",
)
EVENTS = Metric("events", "counter", ("event", "name"), "Every recoverly event, by class.")

#: Every family :func:`measure` can produce, in documentation order.
METRICS: tuple[Metric, ...] = (
    RETRIES,
    RETRY_OUTCOMES,
    RETRY_DELAY,
    DB_RETRIES,
    TRANSITIONS,
    CALLS,
    CALL_DURATION,
    REJECTIONS,
    FALLBACKS,
    TIMEOUTS,
    ROLLBACKS,
    COMMIT_RESOLUTIONS,
    BATCH_FAILURES,
    BULKHEAD_WAIT,
    RATE_LIMIT_DELAY,
    CHECKPOINT_SAVES,
    CHECKPOINT_DURATION,
    POOL_RESIZES,
    EVENTS,
)

OVERFLOW_HELP = "Times a label value was folded into '_other' because the label's cap was reached."
STATE_HELP = "Circuit breaker state: 1 for the current state, 0 for the others."

#: (family, label values, value): one observation for the exporters.
Sample = tuple[Metric, tuple[str, ...], float]


class LabelLimiter:
    """Caps the distinct values each label may take; newcomers past the cap become ``"_other"``.

    ``caps`` maps a label name to its cap; labels not listed use ``default``.
    ``overflowed`` counts the values folded, per label, so an exporter can
    report that the cap was reached.
    """

    __slots__ = ("_lock", "_seen", "caps", "default", "overflowed")

    def __init__(self, default: int, caps: dict[str, int] | None = None) -> None:
        self.default = default
        self.caps = dict(caps or {})
        self._seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self.overflowed: dict[str, int] = {}

    def __call__(self, label: str, value: str) -> str:
        """Return ``value`` if ``label`` may take it, else ``"_other"``."""
        seen = self._seen.get(label)
        if seen is not None and value in seen:  # the hot path: a value seen before
            return value
        value = value[:MAX_VALUE_LENGTH]
        with self._lock:
            seen = self._seen.setdefault(label, set())
            if value in seen:
                return value
            if len(seen) < self.caps.get(label, self.default):
                seen.add(value)
                return value
            self.overflowed[label] = self.overflowed.get(label, 0) + 1
        return OTHER

    def distinct(self, label: str) -> int:
        """Return how many distinct values ``label`` has taken (``"_other"`` excluded)."""
        return len(self._seen.get(label, ()))


def error_label(exc: object) -> str:
    """Return the class name of ``exc`` (``"result"`` for a rejected result, ``None``)."""
    return "result" if exc is None else type(exc).__name__


def state_label(state: object) -> str:
    """Return a label for a strategy state: an enum's value, a string, or a type name."""
    if isinstance(state, enum.Enum):
        return str(state.value)
    if isinstance(state, str):
        return state
    return type(state).__name__


def _number(event: object, *names: str) -> float | None:
    for attr in names:
        value = getattr(event, attr, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _text(event: object, attr: str, default: str = "") -> str:
    value = getattr(event, attr, default)
    return value if isinstance(value, str) else default


def _db_kind(exc: object) -> str | None:
    """Return recoverly.db's failure kind for a database error, or ``None`` if it is not one.

    Only looks at modules already imported: the exporters never import
    SQLAlchemy themselves.
    """
    if not isinstance(exc, BaseException):
        return None
    sa_exc = sys.modules.get("sqlalchemy.exc")
    base = getattr(sa_exc, "SQLAlchemyError", None)
    if base is None or not isinstance(exc, base):
        return None
    db = sys.modules.get("recoverly.db")
    classify: Callable[[BaseException], object] | None = getattr(db, "classify", None)
    if classify is None:
        return "unknown"
    try:
        return state_label(getattr(classify(exc), "kind", None))
    except Exception:
        return "unknown"


def _retry_scheduled(event: object, name: str, lim: LabelLimiter) -> list[Sample]:
    exc = getattr(event, "exception", None)
    error = lim("error", error_label(exc))
    out: list[Sample] = [(RETRIES, (name, error), 1.0)]
    delay = _number(event, "delay")
    if delay is not None:
        out.append((RETRY_DELAY, (name,), delay))
    kind = _db_kind(exc)
    if kind is not None:
        out.append((DB_RETRIES, (name, error, lim("kind", kind)), 1.0))
    return out


def _retry_succeeded(event: object, name: str, lim: LabelLimiter) -> list[Sample]:
    del event, lim
    return [(RETRY_OUTCOMES, (name, "succeeded", ""), 1.0)]


def _retry_gave_up(event: object, name: str, lim: LabelLimiter) -> list[Sample]:
    return [(RETRY_OUTCOMES, (name, "gave_up", lim("reason", _text(event, "reason"))), 1.0)]


def _state_changed(event: object, name: str, lim: LabelLimiter) -> list[Sample]:
    del lim
    before = state_label(getattr(event, "previous", None))
    after = state_label(getattr(event, "state", None))
    return [(TRANSITIONS, (name, before, after), 1.0)]


def _call(event: object, name: str, lim: LabelLimiter, outcome: str) -> list[Sample]:
    strategy = lim("strategy", _text(event, "strategy", "unknown"))
    duration = _number(event, "duration")
    if duration is None:
        return [(CALLS, (strategy, name, outcome), 1.0)]
    return [(CALLS, (strategy, name, outcome), 1.0), (CALL_DURATION, (strategy, name), duration)]


def _call_succeeded(event: object, name: str, lim: LabelLimiter) -> list[Sample]:
    return _call(event, name, lim, "success")


def _call_failed(event: object, name: str, lim: LabelLimiter) -> list[Sample]:
    return _call(event, name, lim, "failure" if getattr(event, "counted", True) else "ignored")


def _rejected(event: object, name: str, lim: LabelLimiter) -> list[Sample]:
    strategy = lim("strategy", _text(event, "strategy", "unknown"))
    reason = lim("reason", state_label(getattr(event, "state", None)))
    return [(REJECTIONS, (strategy, name, reason), 1.0)]


def _fallback(event: object, name: str, lim: LabelLimiter) -> list[Sample]:
    strategy = lim("strategy", _text(event, "strategy", "fallback"))
    error = lim("error", error_label(getattr(event, "exception", None)))
    return [(FALLBACKS, (name, strategy, error), 1.0)]


def _timed_out(event: object, name: str, lim: LabelLimiter) -> list[Sample]:
    del event, lim
    return [(TIMEOUTS, (name,), 1.0)]


def _rolled_back(event: object, name: str, lim: LabelLimiter) -> list[Sample]:
    exc = getattr(event, "exception", None)
    return [(ROLLBACKS, (name, "none" if exc is None else lim("error", error_label(exc))), 1.0)]


def _commit_resolved(event: object, name: str, lim: LabelLimiter) -> list[Sample]:
    verdict = lim("verdict", _text(event, "verdict", "unknown"))
    return [(COMMIT_RESOLUTIONS, (name, verdict, lim("method", _text(event, "method"))), 1.0)]


def _batch_item(event: object, name: str, lim: LabelLimiter) -> list[Sample]:
    error = lim("error", error_label(getattr(event, "exception", None)))
    return [(BATCH_FAILURES, (name, error), 1.0)]


def _bulkhead_waited(event: object, name: str, lim: LabelLimiter) -> list[Sample]:
    del lim
    waited = _number(event, "waited", "duration")
    return [] if waited is None else [(BULKHEAD_WAIT, (name,), waited)]


def _rate_delayed(event: object, name: str, lim: LabelLimiter) -> list[Sample]:
    del lim
    delay = _number(event, "delay", "duration")
    return [] if delay is None else [(RATE_LIMIT_DELAY, (name,), delay)]


def _checkpoint_saved(event: object, name: str, lim: LabelLimiter) -> list[Sample]:
    del lim
    out: list[Sample] = [(CHECKPOINT_SAVES, (name, "saved"), 1.0)]
    duration = _number(event, "duration", "seconds", "elapsed")
    if duration is not None:
        out.append((CHECKPOINT_DURATION, (name,), duration))
    return out


def _checkpoint_failed(event: object, name: str, lim: LabelLimiter) -> list[Sample]:
    del event, lim
    return [(CHECKPOINT_SAVES, (name, "failed"), 1.0)]


def _pool_resized(event: object, name: str, lim: LabelLimiter) -> list[Sample]:
    old, new = _number(event, "old"), _number(event, "new")
    if old is None or new is None:
        return []
    direction = "grow" if new > old else "shrink"
    reason = lim("reason", _text(event, "reason", "unknown"))
    return [(POOL_RESIZES, (name, direction, reason), 1.0)]


Handler = Callable[[object, str, LabelLimiter], list[Sample]]

#: Event class name -> what it adds besides ``events_total``. A subclass of a
#: listed class is handled as its nearest listed ancestor.
HANDLERS: dict[str, Handler] = {
    "RetryScheduled": _retry_scheduled,
    "RetrySucceeded": _retry_succeeded,
    "RetryGaveUp": _retry_gave_up,
    "CircuitStateChanged": _state_changed,
    "CallSucceeded": _call_succeeded,
    "CallFailed": _call_failed,
    "CallRejected": _rejected,
    "FallbackUsed": _fallback,
    "TimedOut": _timed_out,
    "TransactionRolledBack": _rolled_back,
    "CommitResolved": _commit_resolved,
    "BatchItemFailed": _batch_item,
    "BulkheadWaited": _bulkhead_waited,
    "RateLimitDelayed": _rate_delayed,
    "CheckpointSaved": _checkpoint_saved,
    "CheckpointSaveFailed": _checkpoint_failed,
    "PoolResized": _pool_resized,
}


_HANDLER_OF: dict[type, Handler | None] = {}


def handler_for(kind: type) -> Handler | None:
    """Return the handler of ``kind``'s nearest listed class in its MRO, if any."""
    try:
        return _HANDLER_OF[kind]
    except KeyError:
        pass
    found = next((HANDLERS[c.__name__] for c in kind.__mro__ if c.__name__ in HANDLERS), None)
    _HANDLER_OF[kind] = found  # one entry per event class: bounded by the program
    return found


def measure(event: object, limiter: LabelLimiter) -> list[Sample]:
    """Return the samples ``event`` adds: its own family's, then one ``events_total``."""
    kind = type(event)
    raw = getattr(event, "name", None)
    name = limiter("name", raw if isinstance(raw, str) and raw else "unnamed")
    handler = handler_for(kind)
    samples = handler(event, name, limiter) if handler is not None else []
    samples.append((EVENTS, (limiter("event", kind.__name__), name), 1.0))
    return samples


class BreakerStates:
    """The last state each breaker reported through its events, by name (bounded)."""

    __slots__ = ("_lock", "limit", "states")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.states: dict[str, str] = {}
        self._lock = threading.Lock()

    def update(self, event: object) -> None:
        """Record the new state of a ``CircuitStateChanged``-like event."""
        name = _text(event, "name", "") or "unnamed"
        state = state_label(getattr(event, "state", None))
        with self._lock:
            if name in self.states or len(self.states) < self.limit:
                self.states[name] = state

    def snapshot(self) -> dict[str, str]:
        """Return a copy of the known states."""
        with self._lock:
            return dict(self.states)


_STATE_CHANGE: dict[type, bool] = {}


def all_but(base: type, excluded: tuple[type, ...]) -> type:
    """Return a subclass of ``base`` that ``issubclass`` treats as "``base`` but not ``excluded``".

    Subscribing to it receives every event class derived from ``base``,
    including classes defined later, except ``excluded`` ones; the strategies
    then see nobody listening for those and skip building them.
    """

    class _Selector(type(base)):  # type: ignore[misc]
        def __subclasscheck__(cls, sub: type) -> bool:
            return issubclass(sub, base) and not issubclass(sub, excluded)

        def __instancecheck__(cls, obj: object) -> bool:
            return cls.__subclasscheck__(type(obj))

    name = f"{base.__name__}ExceptPerCall"
    return _Selector(name, (base,), {"__slots__": (), "__module__": __name__})


def is_state_change(kind: type) -> bool:
    """Return whether ``kind`` is (a subclass of) ``CircuitStateChanged``."""
    known = _STATE_CHANGE.get(kind)
    if known is None:
        known = any(cls.__name__ == "CircuitStateChanged" for cls in kind.__mro__)
        _STATE_CHANGE[kind] = known  # one entry per event class: bounded by the program
    return known
