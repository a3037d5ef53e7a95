"""Families read at scrape time: named bulkheads, rate limiters and connection pool monitors.

The event stream says what happened; these families say how things stand:
how full each named bulkhead is, how many acquisitions each named rate limiter
granted and refused, and each open ``recoverly.db.ConnectionPoolMonitor``'s
``status()`` (utilisation, leaks, checkout waits, invalidations). They are
read from :mod:`recoverly.registry` and from the registry's pool-monitor list
when Prometheus scrapes, so they cost nothing between scrapes. SQLAlchemy is
never imported here: a monitor lists itself when it is created.

Like ``circuit_breaker_state``, these are per process: in multiprocess mode
scrape them from each process, or not at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from recoverly._core import telemetry
from recoverly._core.registry import POOL_MONITOR, REGISTRY
from recoverly.registry import bulkheads, limiters

__all__ = ["StateCollector"]

_log = logging.getLogger("recoverly.prometheus")

#: (key, kind, labels, help): every family this collector reports, without namespace.
FAMILIES: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("bulkhead_active", "gauge", ("name",), "Calls running in each named bulkhead."),
    ("bulkhead_max_concurrent", "gauge", ("name",), "Slots of each named bulkhead."),
    ("bulkhead_queued", "gauge", ("name",), "Calls waiting for a slot in each named bulkhead."),
    (
        "bulkhead_requests",
        "counter",
        ("name", "outcome"),
        "Calls that asked a named bulkhead for a slot: admitted or rejected.",
    ),
    (
        "rate_limiter_requests",
        "counter",
        ("name", "outcome"),
        "Acquisitions asked of a named rate limiter: admitted or rejected.",
    ),
    ("pool_checked_out", "gauge", ("name",), "Connections checked out of a monitored pool."),
    (
        "pool_capacity",
        "gauge",
        ("name",),
        "pool_size + max_overflow of a monitored QueuePool (absent when unbounded).",
    ),
    (
        "pool_utilization",
        "gauge",
        ("name",),
        "checked_out / capacity of a monitored QueuePool (absent when unbounded).",
    ),
    (
        "pool_leaked_connections",
        "gauge",
        ("name",),
        "Connections out longer than the monitor's leak_timeout (absent when it is None).",
    ),
    (
        "pool_checkout_wait_seconds",
        "summary",
        ("name",),
        "Time checkouts of a monitored pool waited for a connection.",
    ),
    (
        "pool_invalidations",
        "counter",
        ("name", "in_use"),
        "Connections of a monitored pool invalidated, while checked out or idle.",
    ),
)

# The three family classes' add_metric signatures differ: the values are typed Any.
_Family = Any
_KINDS: dict[str, Callable[..., Metric]] = {
    "gauge": GaugeMetricFamily,
    "counter": CounterMetricFamily,
    "summary": SummaryMetricFamily,
}


class StateCollector(Collector):
    """Reports the :data:`FAMILIES` at scrape time."""

    def __init__(self, namespace: str, limiter: telemetry.LabelLimiter) -> None:
        self._namespace = namespace
        self._limiter = limiter

    def _families(self) -> dict[str, _Family]:
        return {
            key: _KINDS[kind](f"{self._namespace}_{key}", text, labels=labels)
            for key, kind, labels, text in FAMILIES
        }

    def describe(self) -> list[Metric]:
        """Return the families, empty (the registry checks their names)."""
        return list(self._families().values())

    def collect(self) -> Iterator[Metric]:
        """Read every named bulkhead, rate limiter and open pool monitor now."""
        families = self._families()
        seen: set[tuple[str, str]] = set()

        def first(kind: str, name: str) -> str | None:
            """The label for ``name``; ``None`` if another instance already took it."""
            label = self._limiter("name", name)
            if (kind, label) in seen:  # two names folded into "_other": keep the first
                return None
            seen.add((kind, label))
            return label

        for name, bulkhead in _read(bulkheads):
            label = first("bulkhead", name)
            if label is None:
                continue
            s = bulkhead.statistics()
            families["bulkhead_active"].add_metric((label,), s.active)
            families["bulkhead_max_concurrent"].add_metric((label,), s.max_concurrent)
            families["bulkhead_queued"].add_metric((label,), s.queued)
            families["bulkhead_requests"].add_metric((label, "admitted"), s.admitted)
            families["bulkhead_requests"].add_metric((label, "rejected"), s.rejected)
        for name, limiter in _read(limiters):
            label = first("rate_limiter", name)
            if label is None:
                continue
            try:
                s = limiter.statistics()  # a Redis-backed limiter reads its bucket
            except Exception:
                _log.debug("could not read rate limiter %s", name, exc_info=True)
                continue
            families["rate_limiter_requests"].add_metric((label, "admitted"), s.admitted)
            families["rate_limiter_requests"].add_metric((label, "rejected"), s.rejected)
        for name, monitor in _read(lambda: REGISTRY.live(POOL_MONITOR)):
            label = first("pool", name)
            if label is not None:
                _add_pool(families, label, monitor)
        yield from families.values()


def _read(source: Callable[[], dict[str, Any]]) -> list[tuple[str, Any]]:
    try:
        return list(source().items())
    except Exception:  # pragma: no cover - the registry does not raise
        _log.debug("could not list instances", exc_info=True)
        return []


def _add_pool(families: dict[str, _Family], label: str, monitor: Any) -> None:
    try:
        # Also reports (logs, once each) connections out longer than leak_timeout.
        status: dict[str, Any] = monitor.status()
    except Exception:
        _log.debug("could not read pool monitor %s", label, exc_info=True)
        return
    families["pool_checked_out"].add_metric((label,), status["checked_out"])
    if status["capacity"] is not None:
        families["pool_capacity"].add_metric((label,), status["capacity"])
        families["pool_utilization"].add_metric((label,), status["utilization"])
    if monitor.leak_timeout is not None:
        families["pool_leaked_connections"].add_metric((label,), status["leaks"])
    wait = status["checkout_wait"]
    summary = families["pool_checkout_wait_seconds"]
    summary.add_metric((label,), count_value=wait["count"], sum_value=wait["total"])
    families["pool_invalidations"].add_metric((label, "true"), status["invalidated_in_use"])
    families["pool_invalidations"].add_metric((label, "false"), status["invalidated_idle"])
