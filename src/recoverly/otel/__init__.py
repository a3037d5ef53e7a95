"""recoverly.otel: OpenTelemetry metrics and span events (extra ``recoverly[otel]``).

::

    import recoverly.otel

    telemetry = recoverly.otel.install()  # the global meter and tracer providers
    ...
    telemetry.uninstall()

**Metrics** mirror :mod:`recoverly.prometheus`: the same families, labels (as
attributes) and caps, named with a dot after the namespace
(``recoverly.retries``, ``recoverly.circuit_breaker_transitions``,
``recoverly.call_duration`` in seconds, ...), plus the observable gauge
``recoverly.circuit_breaker_state`` (1 for each breaker's current state, 0 for
the others). An OpenTelemetry Prometheus exporter turns them back into the
``recoverly_*`` names the Grafana dashboard uses.

**Span events** go on the current span when it is recording:
``recoverly.retry`` (attempt, delay, ``exception.type``, ``exception.message``),
``recoverly.retry.succeeded``, ``recoverly.retry.gave_up``,
``recoverly.circuit_breaker.state_change``, ``recoverly.rejected``,
``recoverly.fallback``, ``recoverly.timeout``, ``recoverly.transaction.rolled_back``,
``recoverly.batch.item_failed``, and ``recoverly.<snake_case_class>`` for any
other event. Attributes are the event's fields, prefixed ``recoverly.``. The
per-call ``CallSucceeded``/``CallFailed`` events are counted but not added to
spans. A breaker state change, a retry that gave up, a batch item failure or a
rollback that happens outside any recording span gets a span of its own from
``tracer_provider``, so it still reaches the trace backend.

.. versionadded:: 0.2
"""

from __future__ import annotations

try:
    from opentelemetry import metrics, trace
except ImportError as exc:  # pragma: no cover - exercised by the minimal install
    msg = "recoverly.otel needs opentelemetry-api: pip install 'recoverly[otel]'"
    raise ImportError(msg) from exc

import dataclasses
import enum
import functools
import logging
import re
import threading
from collections.abc import Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.trace import TracerProvider

from recoverly import events
from recoverly._core import telemetry
from recoverly._core.validate import Problems
from recoverly.errors import CircuitState
from recoverly.registry import breakers

__all__ = ["OtelExporter", "install"]

_log = logging.getLogger("recoverly.otel")
_FIXED_CAPS = {"event": 100, "strategy": 20, "reason": 20, "kind": 20, "verdict": 10, "method": 10}
_STATES = tuple(s.value for s in CircuitState)
_NOT_PER_CALL = telemetry.all_but(events.Event, (events.CallSucceeded, events.CallFailed))
_MAX_MESSAGE = 500

#: Known event classes -> span event name. Others get ``recoverly.<snake_case>``.
SPAN_EVENT_NAMES = {
    "RetryScheduled": "recoverly.retry",
    "RetrySucceeded": "recoverly.retry.succeeded",
    "RetryGaveUp": "recoverly.retry.gave_up",
    "CircuitStateChanged": "recoverly.circuit_breaker.state_change",
    "CallRejected": "recoverly.rejected",
    "FallbackUsed": "recoverly.fallback",
    "TimedOut": "recoverly.timeout",
    "TransactionRolledBack": "recoverly.transaction.rolled_back",
    "BatchItemFailed": "recoverly.batch.item_failed",
}
_NOT_ON_SPANS = frozenset({"CallSucceeded", "CallFailed"})
_OWN_SPAN = frozenset(
    {"CircuitStateChanged", "RetryGaveUp", "BatchItemFailed", "TransactionRolledBack"}
)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _classify(kind: type) -> tuple[str, bool, bool]:
    """Return (span event name, goes on spans, gets its own span when orphaned)."""
    for cls in kind.__mro__:
        if cls.__name__ in _NOT_ON_SPANS:
            return "", False, False
        known = SPAN_EVENT_NAMES.get(cls.__name__)
        if known is not None:
            return known, True, cls.__name__ in _OWN_SPAN
    return f"recoverly.{_snake(kind.__name__)}", True, False


def span_attributes(event: object) -> dict[str, Any]:
    """Return the span-event attributes of ``event``: its fields, names prefixed ``recoverly.``."""
    attributes: dict[str, Any] = {}
    if not dataclasses.is_dataclass(event):
        return attributes
    for field in dataclasses.fields(event):
        value = getattr(event, field.name, None)
        if isinstance(value, BaseException):
            attributes["exception.type"] = type(value).__name__
            attributes["exception.message"] = str(value)[:_MAX_MESSAGE]
        elif isinstance(value, enum.Enum):
            attributes[f"recoverly.{field.name}"] = str(value.value)
        elif isinstance(value, (str, bool, int, float)):
            attributes[f"recoverly.{field.name}"] = value
    return attributes


class _Exporter:
    """The subscriber: instruments from one meter, spans from one tracer."""

    def __init__(
        self,
        meter_provider: MeterProvider | None,
        tracer_provider: TracerProvider | None,
        max_names: int,
        max_errors: int,
        calls: bool,
    ) -> None:
        from recoverly import __version__  # noqa: PLC0415 - lazy metadata lookup

        # The providers are kept so that their ids (the keys of _INSTALLED) stay theirs.
        self.providers = (meter_provider, tracer_provider)
        self.settings = (id(tracer_provider), max_names, max_errors, bool(calls))
        self.users = 0

        meter = metrics.get_meter("recoverly", __version__, meter_provider)
        self.tracer = trace.get_tracer("recoverly", __version__, tracer_provider)
        self.limiter = telemetry.LabelLimiter(
            max_names, {"name": max_names, "error": max_errors, **_FIXED_CAPS}
        )
        self.states = telemetry.BreakerStates(max_names)
        self._warned = False
        self.instruments: dict[str, Any] = {}
        for metric in telemetry.METRICS:
            if metric.kind == "counter":
                self.instruments[metric.key] = meter.create_counter(
                    f"recoverly.{metric.key}", description=metric.help
                )
            else:
                self.instruments[metric.key] = meter.create_histogram(
                    f"recoverly.{metric.key.removesuffix('_seconds')}",
                    unit="s",
                    description=metric.help,
                    explicit_bucket_boundaries_advisory=metric.buckets,
                )
        self.overflow = meter.create_counter(
            "recoverly.label_overflow",
            description=telemetry.OVERFLOW_HELP,
        )
        # A meter keeps the first callback of an instrument name: this one asks
        # whichever exporter is installed on the meter provider now.
        meter.create_observable_gauge(
            "recoverly.circuit_breaker_state",
            callbacks=[functools.partial(_observe_states, id(meter_provider))],
            description=telemetry.STATE_HELP,
        )
        self._kinds: dict[type, tuple[str, bool, bool]] = {}
        self._attributes: dict[tuple[str, tuple[str, ...]], dict[str, str]] = {}
        self._kinds_lock = threading.Lock()

    def observe_states(self) -> list[Observation]:
        """Return one observation per breaker and state (1 for the current one)."""
        states = self.states.snapshot()
        try:
            for name, breaker in breakers().items():
                states[self.limiter("name", name)] = breaker.state.value
        except Exception:
            _log.debug("could not read breaker states", exc_info=True)
        return [
            Observation(1 if state == current else 0, {"name": name, "state": state})
            for name, current in sorted(states.items())
            for state in _STATES
        ]

    def __call__(self, event: object) -> None:
        """Record ``event``; never raises."""
        try:
            self._record(event)
        except Exception:
            if not self._warned:
                self._warned = True
                _log.exception("recoverly.otel could not record %r", event)

    def _record(self, event: object) -> None:
        limiter = self.limiter
        before = dict(limiter.overflowed)
        cache = self._attributes
        for metric, labels, value in telemetry.measure(event, limiter):
            attributes = cache.get((metric.key, labels))
            if attributes is None:
                # Bounded: the label caps bound the distinct label tuples.
                attributes = cache[metric.key, labels] = dict(
                    zip(metric.labels, labels, strict=True)
                )
            instrument = self.instruments[metric.key]
            if metric.kind == "counter":
                instrument.add(value, attributes)
            else:
                instrument.record(value, attributes)
        for label, count in limiter.overflowed.items():
            if count != before.get(label, 0):
                self.overflow.add(count - before.get(label, 0), {"label": label})
        if telemetry.is_state_change(type(event)):
            self.states.update(event)
        self._annotate(event)

    def _annotate(self, event: object) -> None:
        """Add ``event`` to the current span (or to a span of its own if it is notable)."""
        kind = type(event)
        shape = self._kinds.get(kind)
        if shape is None:
            shape = _classify(kind)
            with self._kinds_lock:
                self._kinds[kind] = shape
        span_name, on_spans, own_span = shape
        if not on_spans:
            return
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(span_name, span_attributes(event))
        elif own_span:
            with self.tracer.start_as_current_span(span_name) as orphan:
                orphan.add_event(span_name, span_attributes(event))


def _observe_states(key: int, options: CallbackOptions) -> Iterable[Observation]:
    del options
    exporter = _INSTALLED.get(key)
    return [] if exporter is None else exporter.observe_states()


_LOCK = threading.Lock()
#: id(meter provider) (that of ``None`` for the global one) -> its exporter.
_INSTALLED: dict[int, _Exporter] = {}


class OtelExporter:
    """The handle :func:`install` returns; :meth:`uninstall` stops recording.

    Installing twice on the same meter provider shares one subscriber;
    recording stops when the last handle is uninstalled.

    .. versionadded:: 0.2
    """

    __slots__ = ("_exporter", "_installed")

    def __init__(self, exporter: _Exporter) -> None:
        self._exporter = exporter
        self._installed = True

    @property
    def installed(self) -> bool:
        """Whether this handle is still installed.

        .. versionadded:: 0.2
        """
        return self._installed

    def uninstall(self) -> None:
        """Release this handle; the last one unsubscribes and the state gauge goes quiet.

        OpenTelemetry instruments cannot be removed from a meter; they simply
        stop receiving measurements. Calling it again does nothing.

        .. versionadded:: 0.2
        """
        with _LOCK:
            if not self._installed:
                return
            self._installed = False
            exporter = self._exporter
            exporter.users -= 1
            if exporter.users:
                return
            _INSTALLED.pop(id(exporter.providers[0]), None)
        events.unsubscribe(exporter)

    def __repr__(self) -> str:
        state = "installed" if self._installed else "uninstalled"
        return f"<OtelExporter {state}>"


def install(
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
    *,
    max_names: int = 100,
    max_errors: int = 30,
    calls: bool = True,
) -> OtelExporter:
    """Record recoverly's events as OpenTelemetry metrics and span events.

    Args:
        meter_provider: Where the metrics go (default: the global meter provider).
        tracer_provider: Where the spans of events outside any recording span go
            (default: the global tracer provider).
        max_names: Distinct values the ``name`` attribute may take; more become ``"_other"``.
        max_errors: Distinct exception class names the ``error`` attribute may take.
        calls: Record every protected call (``CallSucceeded``/``CallFailed``: the
            ``calls`` and ``call_duration`` metrics). ``False`` keeps the circuit
            breaker's success path free of events.

    Returns:
        A handle whose :meth:`~OtelExporter.uninstall` stops recording.

    Raises:
        ValueError: A cap is below 1, or the exporter is already installed on
            this meter provider with other settings.

    .. versionadded:: 0.2
    """
    p = Problems()
    max_names = p.int_at_least("max_names", max_names, 1)
    max_errors = p.int_at_least("max_errors", max_errors, 1)
    p.raise_if_any()
    key = id(meter_provider)
    settings = (id(tracer_provider), max_names, max_errors, bool(calls))
    with _LOCK:
        exporter = _INSTALLED.get(key)
        if exporter is None:
            exporter = _Exporter(meter_provider, tracer_provider, max_names, max_errors, calls)
            _INSTALLED[key] = exporter
        elif exporter.settings != settings:
            msg = (
                "recoverly.otel is already installed on this meter provider with another "
                "tracer provider or other caps; uninstall it first"
            )
            raise ValueError(msg)
        if exporter not in events.subscribers():
            # Subscribed again if somebody cleared the bus (test isolation does).
            events.subscribe(exporter, events.Event if calls else _NOT_PER_CALL)
        exporter.users += 1
        return OtelExporter(exporter)
