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
- ``recoverly_commit_resolutions_total{name, verdict, method}``: lost COMMITs
  resolved by asking the database (``CommitResolved``)
- ``recoverly_pool_resizes_total{name, direction, reason}``: capacity changes
  of a :class:`recoverly.db.PoolAutoscaler` (``PoolResized``)
- ``recoverly_events_total{event, name}``: every event, by class name, including
  classes this module does not know (``DeadLettered`` counts Celery dead letters)
- ``recoverly_label_overflow_total{label}`` and ``recoverly_exporter_errors_total``

Read at scrape time from the named instances (see ``_collectors.py``):

- ``recoverly_bulkhead_active``, ``_max_concurrent``, ``_queued`` and
  ``recoverly_bulkhead_requests_total{name, outcome}`` (``admitted``, ``rejected``)
- ``recoverly_rate_limiter_requests_total{name, outcome}``
- from each open ``recoverly.db.ConnectionPoolMonitor``: ``recoverly_pool_checked_out``,
  ``_capacity``, ``_utilization``, ``_leaked_connections``,
  ``recoverly_pool_checkout_wait_seconds`` (a summary) and
  ``recoverly_pool_invalidations_total{name, in_use}``

:func:`alert_rules` returns Prometheus alerting and recording rules for these
families (also shipped as ``rules/recoverly-alerts.yml``).

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

import contextlib
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from recoverly import events
from recoverly._core import telemetry
from recoverly._core.validate import Problems
from recoverly.errors import CircuitState
from recoverly.prometheus._collectors import StateCollector
from recoverly.prometheus.alerts import ALERT_THRESHOLDS as ALERT_THRESHOLDS
from recoverly.prometheus.alerts import alert_rules as alert_rules
from recoverly.prometheus.alerts import alert_rules_path as alert_rules_path
from recoverly.registry import breakers

__all__ = ["ALERT_THRESHOLDS", "PrometheusExporter", "alert_rules", "alert_rules_path", "install"]

_log = logging.getLogger("recoverly.prometheus")
_NAMESPACE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_FIXED_CAPS = {"event": 100, "strategy": 20, "reason": 20, "kind": 20, "verdict": 10, "method": 10}
_STATES = tuple(s.value for s in CircuitState)
_NOT_PER_CALL = telemetry.all_but(events.Event, (events.CallSucceeded, events.CallFailed))


class _BreakerStateCollector(Collector):
    """Reports ``<ns>_circuit_breaker_state{name, state}`` at scrape time."""

    def __init__(
        self, name: str, known: telemetry.BreakerStates, limiter: telemetry.LabelLimiter
    ) -> None:
        self._name = name
        self._known = known
        self._limiter = limiter

    def describe(self) -> list[Metric]:
        return [self._family()]

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            self._name,
            telemetry.STATE_HELP,
            labels=("name", "state"),
        )

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        states = self._known.snapshot()
        try:
            for name, breaker in breakers().items():
                # Reading the state moves an OPEN breaker whose timeout passed to HALF_OPEN,
                # exactly as a health check or the next call would.
                states[self._limiter("name", name)] = breaker.state.value
        except Exception:  # a Redis-backed store may be unreachable: keep the event view
            _log.debug("could not read breaker states", exc_info=True)
        for name in sorted(states):
            current = states[name]
            for state in _STATES:
                family.add_metric((name, state), 1.0 if state == current else 0.0)
        yield family


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
        self.states = telemetry.BreakerStates(max_names)
        self._warned = False
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        self.families: dict[str, Counter | Histogram] = {}
        self.collectors: list[Collector] = []
        created: list[Collector] = []
        try:
            for metric in telemetry.METRICS:
                family: Counter | Histogram
                if metric.kind == "counter":
                    family = Counter(
                        metric.key, metric.help, metric.labels, namespace=namespace, registry=None
                    )
                else:
                    family = Histogram(
                        metric.key,
                        metric.help,
                        metric.labels,
                        namespace=namespace,
                        registry=None,
                        buckets=metric.buckets,
                    )
                self.families[metric.key] = family
                created.append(family)
            self.overflow = Counter(
                "label_overflow",
                telemetry.OVERFLOW_HELP,
                ("label",),
                namespace=namespace,
                registry=None,
            )
            self.errors = Counter(
                "exporter_errors",
                "Events the exporter failed to record (it never raises into the call).",
                namespace=namespace,
                registry=None,
            )
            created += [self.overflow, self.errors]
            created.append(
                _BreakerStateCollector(
                    f"{namespace}_circuit_breaker_state", self.states, self.limiter
                )
            )
            created.append(StateCollector(namespace, self.limiter))
            for collector in created:
                registry.register(collector)
                self.collectors.append(collector)
        except Exception:
            for collector in self.collectors:
                registry.unregister(collector)
            raise

    def __call__(self, event: object) -> None:
        """Record ``event``; never raises."""
        try:
            limiter = self.limiter
            before = dict(limiter.overflowed) if limiter.overflowed else None
            children = self._children
            for metric, labels, value in telemetry.measure(event, limiter):
                child: Any = children.get((metric.key, labels))
                if child is None:
                    child = self.families[metric.key].labels(*labels)
                    # Bounded: the label caps bound the distinct label tuples.
                    children[metric.key, labels] = child
                if metric.kind == "counter":
                    child.inc(value)
                else:
                    child.observe(value)
            if telemetry.is_state_change(type(event)):
                self.states.update(event)
            if limiter.overflowed and limiter.overflowed != before:
                for label, count in limiter.overflowed.items():
                    grew = count - (before or {}).get(label, 0)
                    if grew:
                        self.overflow.labels(label).inc(grew)
        except Exception:
            self.errors.inc()
            if not self._warned:
                self._warned = True
                _log.exception("recoverly.prometheus could not record %r", event)

    def close(self) -> None:
        """Unsubscribe and remove the metrics from the registry."""
        events.unsubscribe(self)
        for collector in self.collectors:
            with contextlib.suppress(KeyError):  # removed by hand already
                self.registry.unregister(collector)


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
