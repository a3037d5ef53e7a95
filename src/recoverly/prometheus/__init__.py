"""recoverly.prometheus: Prometheus metrics from the event stream (extra ``recoverly[prometheus]``).

::

    import recoverly.prometheus

    exporter = recoverly.prometheus.install()  # the default prometheus_client registry
    ...
    exporter.uninstall()

:func:`install` subscribes one function to every recoverly event and turns
each into counter and histogram samples; a custom collector reports each
circuit breaker's state at scrape time. The families (names shown with the
default ``recoverly`` namespace):

- ``recoverly_retries_total{name, error}``: retries scheduled (``RetryScheduled``)
- ``recoverly_retry_outcomes_total{name, outcome, reason}``: calls that needed
  retries, ``succeeded`` (``RetrySucceeded``) or ``gave_up`` (``RetryGaveUp``)
- ``recoverly_retry_delay_seconds{name}``: histogram of the waits before retries
- ``recoverly_db_retries_total{name, error, kind}``: retries after a SQLAlchemy
  error, with :func:`recoverly.db.classify`'s kind (``busy``, ``deadlock``, ...)
- ``recoverly_circuit_breaker_state{name, state}``: 1 for each breaker's current
  state, 0 for the others (read from :func:`recoverly.breakers` at scrape time,
  and from events for unnamed breakers)
- ``recoverly_circuit_breaker_transitions_total{name, from_state, to_state}``
- ``recoverly_calls_total{strategy, name, outcome}`` and
  ``recoverly_call_duration_seconds{strategy, name}``: protected calls
  (``success``, ``failure``, ``ignored``), from ``CallSucceeded``/``CallFailed``
- ``recoverly_rejections_total{strategy, name, reason}``: calls refused by a
  breaker, bulkhead or rate limiter (``CallRejected``; reason = its state)
- ``recoverly_fallbacks_total{name, strategy, error}``
- ``recoverly_timeouts_total{name}``
- ``recoverly_transactions_rolled_back_total{name, error}``
- ``recoverly_batch_item_failures_total{name, error}``
- ``recoverly_bulkhead_wait_seconds{name}`` (``BulkheadWaited``) and
  ``recoverly_rate_limit_delay_seconds{name}`` (``RateLimitDelayed``)
- ``recoverly_checkpoint_saves_total{name, outcome}`` and
  ``recoverly_checkpoint_save_duration_seconds{name}`` (``CheckpointSaved``,
  ``CheckpointSaveFailed``)
- ``recoverly_events_total{event, name}``: every event, by class name, including
  classes this module does not know
- ``recoverly_label_overflow_total{label}`` and ``recoverly_exporter_errors_total``

Events are matched by class name (a subclass counts as its nearest known
ancestor) and read by attribute, so event types defined elsewhere are counted
as soon as they are emitted.

**Bounded cardinality.** Labels carry names only: strategy names, exception
*class* names, states and reasons; never messages, ids, keys or arguments. Each
label takes at most a fixed number of distinct values, counted from the first
one seen: ``name`` ``max_names`` (default 100), ``error`` ``max_errors``
(default 30), ``event`` 100, ``strategy``, ``reason`` and ``kind`` 20 each.
Later newcomers are counted under the value ``"_other"`` and in
``recoverly_label_overflow_total{label=...}``. Label values are cut to 120
characters.

The subscriber never raises into the protected call: any error in it is
counted in ``recoverly_exporter_errors_total`` and logged once.

.. versionadded:: 0.2
"""

from __future__ import annotations

try:
    import prometheus_client
except ImportError as exc:  # pragma: no cover - exercised by the minimal install
    msg = "recoverly.prometheus needs prometheus-client: pip install 'recoverly[prometheus]'"
    raise ImportError(msg) from exc

import bisect
import contextlib
import itertools
import logging
import re
import threading
from collections.abc import Iterator
from typing import cast

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from recoverly import events
from recoverly._core import telemetry
from recoverly._core.validate import Problems
from recoverly.errors import CircuitState
from recoverly.registry import breakers

__all__ = ["PrometheusExporter", "install"]

_log = logging.getLogger("recoverly.prometheus")
_NAMESPACE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_FIXED_CAPS = {"event": 100, "strategy": 20, "reason": 20, "kind": 20}
_STATES = tuple(s.value for s in CircuitState)
_NOT_PER_CALL = telemetry.all_but(events.Event, (events.CallSucceeded, events.CallFailed))


class _Collector(Collector):
    """Every recoverly family of one exporter, built from plain dictionaries at scrape time.

    Events update the dictionaries under one lock (one acquisition per event,
    whatever the number of samples); a scrape copies them under the same lock
    and builds the families outside it.
    """

    def __init__(self, namespace: str, limiter: telemetry.LabelLimiter, max_names: int) -> None:
        self.namespace = namespace
        self.limiter = limiter
        self.states = telemetry.BreakerStates(max_names)
        self.lock = threading.Lock()
        #: family key -> label values -> value
        self.counters: dict[str, dict[tuple[str, ...], float]] = {}
        #: family key -> label values -> [count per bucket (last: +Inf)..., sum]
        self.histograms: dict[str, dict[tuple[str, ...], list[float]]] = {}
        for metric in telemetry.METRICS:
            table = self.counters if metric.kind == "counter" else self.histograms
            table[metric.key] = {}
        self.errors = 0

    def record(self, samples: list[telemetry.Sample]) -> None:
        """Add ``samples`` (label values already capped: the tables stay bounded)."""
        with self.lock:
            for metric, labels, value in samples:
                if metric.kind == "counter":
                    table = self.counters[metric.key]
                    table[labels] = table.get(labels, 0.0) + value
                else:
                    row = self.histograms[metric.key].get(labels)
                    if row is None:
                        row = self.histograms[metric.key][labels] = [0.0] * (
                            len(metric.buckets) + 2
                        )
                    row[bisect.bisect_left(metric.buckets, value)] += 1
                    row[-1] += value

    def describe(self) -> list[Metric]:
        return list(self._families({}, {}, {}, 0))

    def collect(self) -> Iterator[Metric]:
        states = self.states.snapshot()
        try:
            for name, breaker in breakers().items():
                # Reading the state moves an OPEN breaker whose timeout passed to HALF_OPEN,
                # exactly as a health check or the next call would.
                states[self.limiter("name", name)] = breaker.state.value
        except Exception:  # a Redis-backed store may be unreachable: keep the event view
            _log.debug("could not read breaker states", exc_info=True)
        with self.lock:
            counters = {key: dict(table) for key, table in self.counters.items()}
            histograms = {
                key: {labels: list(row) for labels, row in table.items()}
                for key, table in self.histograms.items()
            }
            errors = self.errors
        families = self._families(counters, histograms, states, errors)
        yield from families

    def _families(
        self,
        counters: dict[str, dict[tuple[str, ...], float]],
        histograms: dict[str, dict[tuple[str, ...], list[float]]],
        states: dict[str, str],
        errors: int,
    ) -> Iterator[Metric]:
        ns = self.namespace
        for metric in telemetry.METRICS:
            if metric.kind == "counter":
                counter = CounterMetricFamily(
                    f"{ns}_{metric.key}", metric.help, labels=metric.labels
                )
                for labels, value in sorted(counters.get(metric.key, {}).items()):
                    counter.add_metric(labels, value)
                yield counter
                continue
            histogram = HistogramMetricFamily(
                f"{ns}_{metric.key}", metric.help, labels=metric.labels
            )
            bounds = [*(repr(float(b)) for b in metric.buckets), "+Inf"]
            for labels, row in sorted(histograms.get(metric.key, {}).items()):
                cumulative = list(itertools.accumulate(row[:-1]))
                histogram.add_metric(labels, list(zip(bounds, cumulative, strict=True)), row[-1])
            yield histogram
        gauge = GaugeMetricFamily(
            f"{ns}_circuit_breaker_state", telemetry.STATE_HELP, labels=("name", "state")
        )
        for name in sorted(states):
            for state in _STATES:
                gauge.add_metric((name, state), 1.0 if state == states[name] else 0.0)
        yield gauge
        overflow = CounterMetricFamily(
            f"{ns}_label_overflow", telemetry.OVERFLOW_HELP, labels=("label",)
        )
        for label, count in sorted(dict(self.limiter.overflowed).items()):
            overflow.add_metric((label,), float(count))
        yield overflow
        yield CounterMetricFamily(
            f"{ns}_exporter_errors",
            "Events the exporter failed to record (it never raises into the call).",
            value=float(errors),
        )


class _Exporter:
    """The shared state of every :func:`install` into one registry and namespace."""

    def __init__(
        self,
        registry: CollectorRegistry,
        namespace: str,
        max_names: int,
        max_errors: int,
        calls: bool,
    ) -> None:
        self.registry = registry
        self.namespace = namespace
        self.settings = (max_names, max_errors, calls)
        self.users = 0
        self.limiter = telemetry.LabelLimiter(
            max_names, {"name": max_names, "error": max_errors, **_FIXED_CAPS}
        )
        self.collector = _Collector(namespace, self.limiter, max_names)
        self._warned = False
        registry.register(self.collector)

    def __call__(self, event: object) -> None:
        """Record ``event``; never raises."""
        try:
            self.collector.record(telemetry.measure(event, self.limiter))
            if telemetry.is_state_change(type(event)):
                self.collector.states.update(event)
        except Exception:
            with self.collector.lock:
                self.collector.errors += 1
            if not self._warned:
                self._warned = True
                _log.exception("recoverly.prometheus could not record %r", event)

    def close(self) -> None:
        """Unsubscribe and remove the metrics from the registry."""
        events.unsubscribe(self)
        with contextlib.suppress(KeyError):  # removed by hand already
            self.registry.unregister(self.collector)


_LOCK = threading.Lock()
_INSTALLED: dict[tuple[int, str], _Exporter] = {}


class PrometheusExporter:
    """The handle :func:`install` returns.

    Installing twice into the same registry and namespace shares one set of
    metrics; they leave the registry (and the subscriber leaves the event bus)
    when the last handle is uninstalled.

    .. versionadded:: 0.2
    """

    __slots__ = ("_exporter", "_installed")

    def __init__(self, exporter: _Exporter) -> None:
        self._exporter = exporter
        self._installed = True

    @property
    def registry(self) -> CollectorRegistry:
        """The registry the metrics are in.

        .. versionadded:: 0.2
        """
        return self._exporter.registry

    @property
    def namespace(self) -> str:
        """The metric name prefix.

        .. versionadded:: 0.2
        """
        return self._exporter.namespace

    @property
    def installed(self) -> bool:
        """Whether this handle is still installed.

        .. versionadded:: 0.2
        """
        return self._installed

    def uninstall(self) -> None:
        """Release this handle; the last one unsubscribes and unregisters the metrics.

        Calling it again does nothing.

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
            _INSTALLED.pop((id(exporter.registry), exporter.namespace), None)
        exporter.close()

    def __repr__(self) -> str:
        state = "installed" if self._installed else "uninstalled"
        return f"<PrometheusExporter namespace={self.namespace!r} {state}>"


def install(
    registry: CollectorRegistry | None = None,
    *,
    namespace: str = "recoverly",
    max_names: int = 100,
    max_errors: int = 30,
    calls: bool = True,
) -> PrometheusExporter:
    """Export recoverly's events as Prometheus metrics in ``registry``.

    Args:
        registry: Where the metrics go (default: ``prometheus_client.REGISTRY``).
        namespace: Prefix of every metric name.
        max_names: Distinct values the ``name`` label may take; more become ``"_other"``.
        max_errors: Distinct exception class names the ``error`` label may take.
        calls: Record every protected call (``CallSucceeded``/``CallFailed``: the
            ``calls`` and ``call_duration`` families). ``False`` keeps the circuit
            breaker's success path free of events.

    Returns:
        A handle whose :meth:`~PrometheusExporter.uninstall` removes the metrics.

    Raises:
        TypeError: ``registry`` is not a ``CollectorRegistry``.
        ValueError: ``namespace`` is not a valid metric name, a cap is below 1, or
            the exporter is already installed there with other settings.

    .. versionadded:: 0.2
    """
    p = Problems()
    if registry is None:
        registry = prometheus_client.REGISTRY
    elif not isinstance(cast("object", registry), CollectorRegistry):
        p._bad(f"registry must be a CollectorRegistry or None, got {registry!r}", kind=True)
    if not isinstance(cast("object", namespace), str) or not _NAMESPACE.match(namespace):
        p._bad(f"namespace must match [a-zA-Z_][a-zA-Z0-9_]*, got {namespace!r}")
    max_names = p.int_at_least("max_names", max_names, 1)
    max_errors = p.int_at_least("max_errors", max_errors, 1)
    p.raise_if_any()
    key = (id(registry), namespace)
    settings = (max_names, max_errors, bool(calls))
    with _LOCK:
        exporter = _INSTALLED.get(key)
        if exporter is None:
            exporter = _Exporter(registry, namespace, *settings)
            _INSTALLED[key] = exporter
        elif exporter.settings != settings:
            msg = (
                f"recoverly.prometheus is already installed in this registry with namespace "
                f"{namespace!r} and max_names, max_errors, calls = {exporter.settings}, "
                f"not {settings}; uninstall it first"
            )
            raise ValueError(msg)
        if exporter not in events.subscribers():
            # Subscribed again if somebody cleared the bus (test isolation does).
            events.subscribe(exporter, events.Event if calls else _NOT_PER_CALL)
        exporter.users += 1
        return PrometheusExporter(exporter)
