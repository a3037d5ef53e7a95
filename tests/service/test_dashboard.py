"""The dashboard routers: the JSON feed, the page, its assets, and the event feed's bounds."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

import anyio
import httpx
from fastapi import FastAPI

import recoverly
from recoverly import CircuitBreaker, CircuitBreakerError, events
from recoverly.service.dashboard import (
    DashboardCheckpoint,
    DashboardFeed,
    DashboardRun,
    dashboard_router,
)


def get(app, path):
    """GET ``path`` from ``app`` in process (no network)."""

    async def fetch():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path)

    return anyio.run(fetch)


def app_with(runs, **kwargs):
    app = FastAPI()
    app.include_router(dashboard_router(runs, **kwargs))
    return app


def test_feed_lists_runs_with_percent_and_checkpoint_history():
    """A run at step 30 of 120 shows 25 %, its metrics and both checkpoints, oldest first."""
    run = DashboardRun(
        7,
        "iris",
        "running",
        step=30,
        total_steps=120,
        epoch=2,
        metrics={"loss": 0.5},
        checkpoints=[DashboardCheckpoint(10, {"loss": 0.9}), DashboardCheckpoint(20, saved_at=0.0)],
        resumes=1,
    )
    data = get(app_with(lambda: [run]), "/dashboard/data").json()
    assert data["runs"] == [
        {
            "id": 7,
            "name": "iris",
            "status": "running",
            "step": 30,
            "total_steps": 120,
            "epoch": 2,
            "percent": 25.0,
            "metrics": {"loss": 0.5},
            "checkpoints": [
                {"step": 10, "metrics": {"loss": 0.9}, "saved_at": None},
                {"step": 20, "metrics": {}, "saved_at": "1970-01-01T00:00:00.000+00:00"},
            ],
            "resumes": 1,
            "error": None,
        }
    ]
    assert data["runs_error"] is None
    assert data["poll_interval"] == 1.0


def test_feed_accepts_runs_shaped_like_the_service_model_view():
    """A mapping with progress {epoch, step, total_steps} and checkpoints is shown the same way."""
    view = {
        "id": 3,
        "name": "digits",
        "status": "running",
        "config": {"epochs": 5},
        "progress": {
            "epoch": 1,
            "step": 50,
            "total_steps": 200,
            "percent": 25.0,
            "status": "running",
            "metrics": {"loss": 1.5, "note": "text is dropped"},
        },
        "metrics": {},
        "checkpoints": [{"step": 40, "metrics": {"loss": 1.6}}],
        "resumes": 2,
        "weights_sha256": None,
        "error": "MemoryError: out of memory",
    }
    (run,) = get(app_with(lambda: [view]), "/dashboard/data").json()["runs"]
    assert run["error"] == "MemoryError: out of memory"
    assert run["percent"] == 25.0
    assert run["step"] == 50
    assert run["epoch"] == 1
    assert run["metrics"] == {"loss": 1.5}
    assert run["checkpoints"] == [{"step": 40, "metrics": {"loss": 1.6}, "saved_at": None}]
    assert run["resumes"] == 2


def test_completed_run_without_total_shows_full_and_unknown_total_shows_none():
    """No total_steps: a completed run is 100 %, a running one has no percentage."""
    runs = [DashboardRun(1, "a", "completed", step=9), DashboardRun(2, "b", "running", step=9)]
    data = get(app_with(lambda: runs), "/dashboard/data").json()
    assert [r["percent"] for r in data["runs"]] == [100.0, None]


def test_tripped_breaker_shows_open_and_its_transition_newest_first(clock):
    """Two failures open 'predictor': the feed shows it OPEN and closed->open as newest."""
    breaker = CircuitBreaker(2, 30, name="predictor", clock=clock)
    other = CircuitBreaker(2, 30, name="db", clock=clock)
    app = app_with(list)
    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)
    data = get(app, "/dashboard/data").json()
    rows = {b["name"]: b for b in data["breakers"]}
    assert rows["predictor"]["state"] == "open"
    assert rows["predictor"]["failed_calls"] == 2
    assert rows["predictor"]["retry_after"] == 30.0
    assert rows["db"]["state"] == "closed"
    assert [(t["name"], t["from"], t["to"]) for t in data["transitions"]] == [
        ("predictor", "closed", "open")
    ]
    breaker.reset()
    data = get(app, "/dashboard/data").json()
    assert [(t["from"], t["to"]) for t in data["transitions"]] == [
        ("open", "closed"),
        ("closed", "open"),
    ]
    assert other.state is recoverly.CircuitState.CLOSED


def test_retry_counts_and_totals_are_shown_per_callable(clock):
    """Retries, recoveries, give-ups, rejections and fallbacks are counted."""
    app = app_with(list)
    left = [2]

    @recoverly.retry(3, 0.0, name="load_batch")
    def load_batch():
        if left[0]:
            left[0] -= 1
            raise ConnectionError
        return 1

    @recoverly.retry(2, 0.0, name="fetch_weights")
    def fetch_weights():
        raise TimeoutError

    load_batch()
    with pytest.raises(TimeoutError):
        fetch_weights()
    recoverly.fallback(0, name="score")(lambda: 1 / 0)()
    breaker = CircuitBreaker(1, 30, name="api", clock=clock)
    with pytest.raises(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)
    with pytest.raises(CircuitBreakerError):
        breaker.call(lambda: 1)
    data = get(app, "/dashboard/data").json()
    assert data["retries"] == [
        {"name": "load_batch", "retries": 2, "recovered": 1, "gave_up": 0},
        {"name": "fetch_weights", "retries": 1, "recovered": 0, "gave_up": 1},
    ]
    assert data["totals"] == {
        "retries": 3,
        "recovered": 1,
        "gave_up": 1,
        "rejections": 1,
        "fallbacks": 1,
        "timeouts": 0,
    }


def test_failing_runs_provider_still_serves_breakers(clock):
    """If the runs provider raises, the feed answers 200 with the error and the breakers."""
    keep = CircuitBreaker(name="predictor", clock=clock)

    def runs():
        raise ConnectionError("database unreachable")

    response = get(app_with(runs), "/dashboard/data")
    assert response.status_code == 200
    data = response.json()
    assert data["runs"] == []
    assert data["runs_error"] == "ConnectionError: database unreachable"
    assert "predictor" in [b["name"] for b in data["breakers"]]
    assert keep.state is recoverly.CircuitState.CLOSED


def test_transition_buffer_keeps_only_the_newest(clock):
    """max_transitions=3 after five state changes keeps the three newest."""
    feed = DashboardFeed(max_transitions=3, clock=lambda: 0.0)
    try:
        breaker = CircuitBreaker(1, 1, name="flappy", clock=clock)
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)  # closed -> open
        clock.advance(1)
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)  # open -> half_open -> open
        breaker.reset()  # open -> closed
        moves = [(t["from"], t["to"]) for t in feed.snapshot()["transitions"]]
        assert moves == [("open", "closed"), ("half_open", "open"), ("open", "half_open")]
    finally:
        feed.close()


def test_feed_caps_distinct_names():
    """With max_names=1 a second callable's retries are counted under '_other'."""
    feed = DashboardFeed(max_names=1)
    try:
        for name in ("first", "second"):
            recoverly.retry(2, 0.0, name=name)(_fails_once())()
        names = [r["name"] for r in feed.snapshot()["retries"]]
        assert sorted(names) == ["_other", "first"]
    finally:
        feed.close()
    assert feed._subscriber not in events.subscribers()


def test_a_dropped_feed_leaves_the_event_bus_by_itself():
    """A feed nobody references any more unsubscribes at the next event it would get."""
    import gc

    before = len(events.subscribers())
    DashboardFeed()  # dropped at once
    assert len(events.subscribers()) == before + 1
    gc.collect()
    recoverly.retry(2, 0.0, name="f")(_fails_once())()
    assert len(events.subscribers()) == before


def _fails_once():
    left = [1]

    def call():
        if left[0]:
            left[0] -= 1
            raise ConnectionError
        return 1

    return call


def test_page_points_at_its_feed_under_a_prefix_and_sets_a_strict_csp():
    """Mounted under /ops the page's feed and assets are /ops/...; CSP forbids inline script."""
    app = FastAPI()
    app.include_router(dashboard_router(list, title="<ml>", poll_interval=0.5), prefix="/ops")
    response = get(app, "/ops/dashboard")
    assert response.status_code == 200
    html = response.text
    assert 'data-feed="/ops/dashboard/data"' in html
    assert 'data-poll-ms="500"' in html
    assert 'src="/ops/dashboard/static/dashboard.js"' in html
    assert "&lt;ml&gt;" in html
    assert "<ml>" not in html
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "<script>" not in html  # no inline script
    js = get(app, "/ops/dashboard/static/dashboard.js")
    assert js.headers["content-type"].startswith("text/javascript")
    assert "textContent" in js.text
    assert "innerHTML" not in js.text


def test_only_the_known_assets_are_served():
    """Unknown names and path tricks get 404."""
    app = app_with(list)
    assert get(app, "/dashboard/static/dashboard.css").status_code == 200
    assert get(app, "/dashboard/static/dashboard.html").status_code == 404
    assert get(app, "/dashboard/static/..%2F__init__.py").status_code == 404


def test_bad_arguments_are_all_reported():
    """A non-callable provider and a zero poll interval are named in one error."""
    with pytest.raises(TypeError) as info:
        dashboard_router(None, poll_interval=0)  # type: ignore[arg-type]
    assert "runs must be callable" in str(info.value)
    assert "poll_interval" in str(info.value)
    with pytest.raises(ValueError, match="max_transitions"):
        DashboardFeed(max_transitions=0)
