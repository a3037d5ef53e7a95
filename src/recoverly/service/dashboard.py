"""The operator's dashboard: training runs, circuit breakers, transitions and retries, live.

Two routers for a FastAPI app::

    from recoverly.service.dashboard import dashboard_router, metrics_router

    app.include_router(dashboard_router(list_runs))  # /dashboard, /dashboard/data
    app.include_router(metrics_router())              # /metrics (Prometheus text format)

``/dashboard`` is a plain HTML page whose small script polls ``/dashboard/data``
(JSON) about once a second and redraws: each run's progress bar and checkpoint
history, each named breaker's state, the latest breaker transitions, and retry
counts per callable. The page builds its DOM with ``textContent`` only (run
names come from clients), loads nothing from other origins, and is served with
a ``Content-Security-Policy`` that forbids inline script.

Run data comes from the ``runs`` provider you pass: a callable returning
:class:`DashboardRun` objects, or mappings shaped like the service's model
view (``id``, ``name``, ``status``, ``progress`` ``{epoch, step, total_steps}``,
``checkpoints`` ``[{step, metrics}]``, ``resumes``). If it raises (the database
is down), the page still shows breakers and retries, with the error in place of
the runs. Breakers come from :func:`recoverly.breakers`; transitions and retry
counts from a :class:`DashboardFeed` subscribed to the event stream.

.. versionadded:: 0.2
"""

from __future__ import annotations

import collections
import datetime as dt
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol, cast

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from recoverly import events
from recoverly._core.telemetry import LabelLimiter, state_label
from recoverly._core.validate import Problems
from recoverly.registry import breakers

__all__ = [
    "DashboardCheckpoint",
    "DashboardFeed",
    "DashboardRun",
    "RunsProvider",
    "dashboard_router",
    "metrics_router",
]

_STATIC = "static"
_ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'"
)
_MAX_ERROR = 300


@dataclass(frozen=True, slots=True)
class DashboardCheckpoint:
    """One committed checkpoint of a run.

    Attributes:
        step: The training step it holds.
        metrics: Metrics recorded with it (e.g. ``{"loss": 0.31}``).
        saved_at: When it was saved (seconds since the epoch), if known.

    .. versionadded:: 0.2
    """

    step: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    saved_at: float | None = None


@dataclass(frozen=True, slots=True)
class DashboardRun:
    """One training run as the dashboard shows it.

    Attributes:
        id: The run's id.
        name: A short human name.
        status: ``"queued"``, ``"running"``, ``"completed"``, ``"failed"``, ...
        step: Steps done.
        total_steps: Steps planned, if known (the progress bar needs it).
        epoch: The current epoch.
        metrics: The newest metrics.
        checkpoints: Committed checkpoints, oldest first.
        resumes: How many times the run resumed from a checkpoint.
        error: Why the run failed, if it did.

    .. versionadded:: 0.2
    """

    id: int | str
    name: str
    status: str
    step: int = 0
    total_steps: int | None = None
    epoch: int = 0
    metrics: Mapping[str, float] = field(default_factory=dict)
    checkpoints: Sequence[DashboardCheckpoint] = ()
    resumes: int = 0
    error: str | None = None


class RunsProvider(Protocol):
    """Returns the runs to show, newest first: :class:`DashboardRun` objects or mappings.

    .. versionadded:: 0.2
    """

    def __call__(self) -> Iterable[DashboardRun | Mapping[str, Any]]:
        """Return the runs to show."""
        ...  # pragma: no cover


class DashboardFeed:
    """Bounded memory of what the event stream said: breaker transitions and retry counts.

    It subscribes when created and keeps the newest ``max_transitions``
    transitions and the counts of at most ``max_names`` callables (later
    names are counted under ``"_other"``). :meth:`close` unsubscribes.

    Args:
        max_transitions: Transitions kept (a ring buffer).
        max_names: Distinct names counted.
        clock: Wall-clock time source, seconds since the epoch.

    Raises:
        ValueError: A bound is below 1.

    .. versionadded:: 0.2
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_counts",
        "_limiter",
        "_lock",
        "_states",
        "_subscriber",
        "_totals",
        "transitions",
    )

    def __init__(
        self,
        max_transitions: int = 50,
        max_names: int = 100,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        p = Problems()
        max_transitions = p.int_at_least("max_transitions", max_transitions, 1)
        max_names = p.int_at_least("max_names", max_names, 1)
        clock = p.optional_callable("clock", clock) or time.time
        p.raise_if_any()
        self._clock = clock
        self._lock = threading.Lock()
        self._limiter = LabelLimiter(max_names)
        #: Newest last: ``(wall time, name, from, to)``.
        self.transitions: collections.deque[tuple[float, str, str, str]] = collections.deque(
            maxlen=max_transitions
        )
        self._states: dict[str, str] = {}
        self._counts: dict[str, collections.Counter[str]] = {}
        self._totals: collections.Counter[str] = collections.Counter()
        # The bus holds only a weak reference to the feed: a feed nobody uses
        # any more (an app that was dropped) leaves the bus at the next event.
        self._subscriber = _WeakSubscriber(self)
        events.subscribe(self._subscriber, _FEED_EVENTS)

    def __call__(self, event: events.Event) -> None:
        """Record one event (the bus calls this)."""
        name = self._limiter("name", event.name)
        with self._lock:
            if isinstance(event, events.CircuitStateChanged):
                before, after = state_label(event.previous), state_label(event.state)
                self.transitions.append((self._clock(), name, before, after))
                self._states[name] = after
                return
            kind = {
                events.RetryScheduled: "retries",
                events.RetrySucceeded: "recovered",
                events.RetryGaveUp: "gave_up",
                events.CallRejected: "rejections",
                events.FallbackUsed: "fallbacks",
                events.TimedOut: "timeouts",
            }.get(type(event))
            if kind is None:  # a subclass: find its listed ancestor
                kind = _kind_of(event)
            self._totals[kind] += 1
            if kind in {"retries", "recovered", "gave_up"}:
                self._counts.setdefault(name, collections.Counter())[kind] += 1

    def close(self) -> None:
        """Stop listening to the event stream.

        .. versionadded:: 0.2
        """
        events.unsubscribe(self._subscriber)

    def snapshot(self) -> dict[str, Any]:
        """Return transitions (newest first), retry counts per name, totals and last states.

        .. versionadded:: 0.2
        """
        with self._lock:
            transitions = list(self.transitions)
            counts = {name: dict(c) for name, c in self._counts.items()}
            totals = dict(self._totals)
            states = dict(self._states)
        return {
            "transitions": [
                {"at": _iso(at), "name": name, "from": before, "to": after}
                for at, name, before, after in reversed(transitions)
            ],
            "retries": [
                {
                    "name": name,
                    "retries": c.get("retries", 0),
                    "recovered": c.get("recovered", 0),
                    "gave_up": c.get("gave_up", 0),
                }
                for name, c in sorted(counts.items(), key=lambda kv: -kv[1].get("retries", 0))
            ],
            "totals": {
                k: totals.get(k, 0)
                for k in ("retries", "recovered", "gave_up", "rejections", "fallbacks", "timeouts")
            },
            "states": states,
        }

    def __repr__(self) -> str:
        return f"<DashboardFeed transitions={len(self.transitions)}/{self.transitions.maxlen}>"


_FEED_EVENTS = (
    events.CircuitStateChanged,
    events.RetryScheduled,
    events.RetrySucceeded,
    events.RetryGaveUp,
    events.CallRejected,
    events.FallbackUsed,
    events.TimedOut,
)


class _WeakSubscriber:
    """Forwards events to a feed while it lives; unsubscribes itself once it is gone."""

    __slots__ = ("_feed",)

    def __init__(self, feed: DashboardFeed) -> None:
        self._feed = weakref.ref(feed)

    def __call__(self, event: events.Event) -> None:
        feed = self._feed()
        if feed is None:
            events.unsubscribe(self)
        else:
            feed(event)


def _kind_of(event: events.Event) -> str:
    pairs = (
        (events.RetryScheduled, "retries"),
        (events.RetrySucceeded, "recovered"),
        (events.RetryGaveUp, "gave_up"),
        (events.CallRejected, "rejections"),
        (events.FallbackUsed, "fallbacks"),
    )
    for cls, kind in pairs:
        if isinstance(event, cls):
            return kind
    return "timeouts"


def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.timezone.utc).isoformat(timespec="milliseconds")


def _number(value: object, default: float = 0.0) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default


def _metrics(value: object) -> dict[str, float]:
    if not isinstance(value, Mapping):
        return {}
    return {
        str(k): float(v)
        for k, v in value.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def _run_json(run: DashboardRun | Mapping[str, Any]) -> dict[str, Any]:
    """Turn a run (dataclass or mapping in the service's shape) into the feed's JSON."""
    ident: object
    if isinstance(run, DashboardRun):
        checkpoints = [
            {"step": c.step, "metrics": _metrics(c.metrics), "saved_at": _maybe_iso(c.saved_at)}
            for c in run.checkpoints
        ]
        step, total, epoch = run.step, run.total_steps, run.epoch
        ident, name, status = run.id, run.name, run.status
        metrics, resumes, error = _metrics(run.metrics), run.resumes, run.error
    else:
        progress = run.get("progress") or {}
        step = int(_number(progress.get("step", run.get("step"))))
        raw_total = progress.get("total_steps", run.get("total_steps"))
        total = int(raw_total) if isinstance(raw_total, int) and raw_total > 0 else None
        epoch = int(_number(progress.get("epoch", run.get("epoch"))))
        ident, name = run.get("id"), str(run.get("name", ""))
        status = str(run.get("status") or progress.get("status") or "unknown")
        metrics = _metrics(progress.get("metrics") or run.get("metrics"))
        resumes = int(_number(run.get("resumes")))
        error = run.get("error")
        checkpoints = [
            {
                "step": int(_number(c.get("step"))),
                "metrics": _metrics(c.get("metrics")),
                "saved_at": _maybe_iso(c.get("saved_at")),
            }
            for c in run.get("checkpoints") or ()
            if isinstance(c, Mapping)
        ]
    percent: float | None = None
    if total:
        percent = round(min(max(step / total, 0.0), 1.0) * 100.0, 1)
    if status == "completed" and percent is None:
        percent = 100.0
    return {
        "id": ident if isinstance(ident, (int, str)) else str(ident),
        "name": name,
        "status": status,
        "step": step,
        "total_steps": total,
        "epoch": epoch,
        "percent": percent,
        "metrics": metrics,
        "checkpoints": checkpoints,
        "resumes": resumes,
        "error": str(error)[:_MAX_ERROR] if error else None,
    }


def _maybe_iso(value: object) -> str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return _iso(float(value))
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return None


def _breakers(seen_states: Mapping[str, str]) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for name, breaker in breakers().items():
        try:
            s = breaker.statistics()
        except Exception as exc:  # a shared store may be unreachable
            rows[name] = {"name": name, "state": "unknown", "error": type(exc).__name__}
            continue
        rows[name] = {
            "name": name,
            "state": s.state.value,
            "failure_count": s.failure_count,
            "failure_threshold": s.failure_threshold,
            "failed_calls": s.failed_calls,
            "rejected_calls": s.rejected_calls,
            "retry_after": s.retry_after,
        }
    # Unnamed breakers are not registered: show the state their last event reported.
    for name, state in seen_states.items():
        rows.setdefault(name, {"name": name, "state": state, "registered": False})
    return [rows[name] for name in sorted(rows)]


def _asset(name: str) -> str:
    return resources.files("recoverly.service").joinpath(_STATIC).joinpath(name).read_text("utf-8")


def dashboard_router(
    runs: RunsProvider,
    *,
    feed: DashboardFeed | None = None,
    poll_interval: float = 1.0,
    title: str = "recoverly",
) -> APIRouter:
    """Build the router serving ``/dashboard`` and its JSON feed ``/dashboard/data``.

    Mount it with ``app.include_router(dashboard_router(runs))`` (a ``prefix=``
    works too: the page finds its feed through the app's routes).

    Args:
        runs: Called on every poll; returns the runs to show, newest first.
        feed: Where transitions and retry counts come from (default: a new
            :class:`DashboardFeed`, subscribed for the life of the process).
        poll_interval: Seconds between two polls of the page.
        title: Shown in the page's heading.

    Returns:
        An ``APIRouter`` with ``GET /dashboard``, ``GET /dashboard/data`` and
        ``GET /dashboard/static/{asset}``.

    Raises:
        TypeError: ``runs`` is not callable or ``feed`` is not a DashboardFeed.
        ValueError: ``poll_interval`` is not a positive number of seconds.

    .. versionadded:: 0.2
    """
    p = Problems()
    if not callable(cast("object", runs)):
        p._bad(f"runs must be callable, got {runs!r}", kind=True)
    feed = p.optional_instance("feed", feed, DashboardFeed)
    poll = p.duration("poll_interval", poll_interval, positive=True)
    if not isinstance(cast("object", title), str):
        p._bad(f"title must be a string, got {title!r}", kind=True)
    p.raise_if_any()
    live = feed if feed is not None else DashboardFeed()
    page = _asset("dashboard.html").replace("{{TITLE}}", _escape(title))
    router = APIRouter(tags=["dashboard"])

    @router.get(
        "/dashboard",
        response_class=HTMLResponse,
        name="recoverly_dashboard",
        summary="Live dashboard (HTML)",
    )
    def dashboard(request: Request) -> HTMLResponse:
        def path(name: str, **params: str) -> str:
            return _escape(request.url_for(name, **params).path)

        html = (
            page.replace("{{FEED_URL}}", path("recoverly_dashboard_data"))
            .replace("{{JS_URL}}", path("recoverly_dashboard_asset", asset="dashboard.js"))
            .replace("{{CSS_URL}}", path("recoverly_dashboard_asset", asset="dashboard.css"))
            .replace("{{POLL_MS}}", str(round(poll * 1000)))
        )
        return HTMLResponse(html, headers={"Content-Security-Policy": _CSP})

    @router.get("/dashboard/data", name="recoverly_dashboard_data", summary="Dashboard feed")
    def dashboard_data() -> JSONResponse:
        snapshot = live.snapshot()
        body: dict[str, Any] = {
            "title": title,
            "generated_at": _iso(time.time()),
            "poll_interval": poll,
            "runs": [],
            "runs_error": None,
        }
        try:
            body["runs"] = [_run_json(run) for run in runs()]
        except Exception as exc:
            body["runs_error"] = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR]
        body["breakers"] = _breakers(snapshot.pop("states"))
        body.update(snapshot)
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    @router.get(
        "/dashboard/static/{asset}", name="recoverly_dashboard_asset", include_in_schema=False
    )
    def dashboard_asset(asset: str) -> Response:
        media_type = _ASSETS.get(asset)
        if media_type is None:
            return Response(status_code=404)
        return Response(_asset(asset), media_type=media_type)

    return router


def _escape(text: str) -> str:
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#39;")
    )


def metrics_router(registry: Any = None) -> APIRouter:
    """Build the router serving ``GET /metrics`` from a Prometheus registry.

    It only serves: call :func:`recoverly.prometheus.install` (once, at start-up)
    for recoverly's metrics to be in the registry.

    Args:
        registry: A ``prometheus_client.CollectorRegistry`` (default: the global one).

    Returns:
        An ``APIRouter`` with ``GET /metrics`` in the Prometheus text format.

    .. versionadded:: 0.2
    """
    import prometheus_client  # noqa: PLC0415 - the service extra brings it; import on use

    reg = prometheus_client.REGISTRY if registry is None else registry
    router = APIRouter(tags=["observability"])

    @router.get(
        "/metrics",
        name="recoverly_metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {prometheus_client.CONTENT_TYPE_LATEST: {}}}},
    )
    def metrics() -> Response:
        return Response(
            prometheus_client.generate_latest(reg),
            media_type=prometheus_client.CONTENT_TYPE_LATEST,
        )

    return router
