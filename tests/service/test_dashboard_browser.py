"""/dashboard in real headless Chromium: progress advances and a breaker changes state.

Needs Debian's ``chromium`` (``apt-get install chromium``; ``.ci/run`` installs it)
and the ``playwright`` Python package; Playwright's own browser download is not
used. The screenshot goes to ``tmp_path`` (and to ``$RECOVERLY_ARTIFACTS_DIR`` when
set); ``RECOVERLY_UPDATE_DOCS_SCREENSHOT=1`` also writes ``docs/images/dashboard.png``.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("playwright.sync_api")

import uvicorn
from fastapi import FastAPI
from playwright.sync_api import expect, sync_playwright

import recoverly
from recoverly import CircuitBreaker, CircuitBreakerError
from recoverly.service.dashboard import DashboardCheckpoint, DashboardRun, dashboard_router

CHROMIUM = os.environ.get("RECOVERLY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS_IMAGE = Path(__file__).resolve().parents[2] / "docs" / "images" / "dashboard.png"

pytestmark = [
    pytest.mark.realtime,
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() or shutil.which("chromium")),
        reason="needs Debian's chromium: apt-get install chromium; .ci/run installs it",
    ),
]


class LiveServer:
    """Uvicorn serving ``app`` on a free loopback port, in a thread."""

    def __init__(self, app, lifespan="off"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            app, log_level="warning", lifespan=lifespan, ws="none", http="h11", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def __exit__(self, *exc):
        if self.thread.is_alive():
            self.stop()


class Runs:
    """A runs provider whose progress the test moves forward."""

    def __init__(self):
        self.step = 50
        self.checkpoints = [DashboardCheckpoint(25, {"loss": 0.82})]

    def __call__(self):
        return [
            DashboardRun(
                3,
                "churn-classifier",
                "running",
                step=self.step,
                total_steps=200,
                epoch=1 + self.step // 50,
                metrics={"loss": round(1.2 - self.step / 250, 3), "accuracy": 0.71},
                checkpoints=list(self.checkpoints),
                resumes=1,
            ),
            DashboardRun(
                2,
                "fraud-detector",
                "completed",
                step=400,
                total_steps=400,
                epoch=8,
                metrics={"loss": 0.214, "accuracy": 0.948},
                checkpoints=[DashboardCheckpoint(s, {"loss": 0.3}) for s in (100, 200, 300, 400)],
            ),
            DashboardRun(4, "recsys-embeddings", "queued", total_steps=1000),
            DashboardRun(
                1,
                "image-tagger",
                "failed",
                step=40,
                total_steps=500,
                checkpoints=[DashboardCheckpoint(25)],
                resumes=3,
                error="CrashLoopError: 3 restarts without progress",
            ),
        ]


def background_activity():
    """Some retries and a fallback, so the totals and the retry table have content."""
    left = [2]

    @recoverly.retry(3, 0.0, name="load_batch")
    def load_batch():
        if left[0]:
            left[0] -= 1
            raise ConnectionError("flaky data loader")
        return "batch"

    @recoverly.retry(2, 0.0, name="save_progress")
    def save_progress():
        raise TimeoutError("database busy")

    load_batch()
    with pytest.raises(TimeoutError):
        save_progress()
    recoverly.fallback("local-model", name="predict")(lambda: 1 / 0)()


def test_dashboard_shows_progress_advancing_and_a_breaker_opening(tmp_path, clock):
    """In Chromium the run's bar goes 25 % -> 75 % and 'predictor' turns from closed to open."""
    runs = Runs()
    predictor = CircuitBreaker(3, 30, name="predictor", clock=clock)
    database = CircuitBreaker(5, 10, name="database", clock=clock)
    app = FastAPI()
    app.include_router(dashboard_router(runs, poll_interval=0.2))
    feature_store = CircuitBreaker(1, 5, name="feature-store", clock=clock)
    with pytest.raises(ConnectionError):
        feature_store.call(_predictor_down)
    clock.advance(5)
    assert feature_store.state is recoverly.CircuitState.HALF_OPEN  # probing now
    background_activity()
    problems: list[str] = []

    with LiveServer(app) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on(
                "console",
                lambda msg: (
                    problems.append(f"console: {msg.text}") if msg.type == "error" else None
                ),
            )
            page.goto(f"{server.url}/dashboard")

            bar = page.locator('[data-run="3"] [role="progressbar"]')
            expect(bar).to_have_attribute("aria-valuenow", "25", timeout=10_000)
            expect(bar).to_contain_text("25.0%")
            expect(page.locator("#status")).to_have_text("live")
            runs.step = 150
            runs.checkpoints.append(DashboardCheckpoint(125, {"loss": 0.7}))
            expect(bar).to_have_attribute("aria-valuenow", "75", timeout=10_000)
            expect(bar).to_contain_text("75.0%")
            expect(page.locator('[data-run="3"] .chip.latest')).to_have_text("step 125")

            expect(page.locator('[data-breaker="feature-store"]')).to_have_attribute(
                "data-state", "half_open"
            )
            card = page.locator('[data-breaker="predictor"]')
            expect(card).to_have_attribute("data-state", "closed", timeout=10_000)
            for _ in range(3):
                with pytest.raises(ConnectionError):
                    predictor.call(_predictor_down)
            with pytest.raises(CircuitBreakerError):
                predictor.call(_predictor_down)
            expect(card).to_have_attribute("data-state", "open", timeout=10_000)
            expect(card.locator(".badge")).to_have_text("open")
            expect(page.locator('[data-transition="predictor"]').first).to_contain_text("closed")
            expect(page.locator('[data-retry="load_batch"]')).to_contain_text("2")
            expect(page.locator('[data-total="rejections"] .value')).to_have_text("1")

            expect(page.locator('[data-run="1"] .run-error')).to_have_text(
                "CrashLoopError: 3 restarts without progress"
            )
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            server.stop()  # the page says so instead of showing stale data as live
            expect(page.locator("#status")).to_contain_text("disconnected", timeout=10_000)
        finally:
            browser.close()

    # Only the failed polls after the server stopped may complain.
    assert [p for p in problems if "ERR_CONNECTION_REFUSED" not in p] == []
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 20_000  # a rendered page, not a blank one
    assert database.state is recoverly.CircuitState.CLOSED
    artifacts = os.environ.get("RECOVERLY_ARTIFACTS_DIR")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(artifacts) / "dashboard.png")
    if os.environ.get("RECOVERLY_UPDATE_DOCS_SCREENSHOT") == "1":
        DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_IMAGE)


def _predictor_down():
    raise ConnectionError("external predictor unreachable")


@pytest.fixture
def real_clock():
    """The system clock as the default: the service's training pauses really pause."""
    from recoverly._core.clock import SystemClock, set_default_clock

    previous = set_default_clock(SystemClock())
    yield
    set_default_clock(previous)


def closed_port():
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_service_dashboard_follows_a_real_training_run_and_the_predictor_breaker(
    tmp_path, real_clock
):
    """The real service in Chromium: a run's bar moves to 100 %; the predictor breaker opens."""
    app_module = pytest.importorskip("recoverly.service.app")
    settings_module = pytest.importorskip("recoverly.service.settings")
    import httpx

    settings = settings_module.Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        training_step_delay=0.1,
        predictor_url=f"http://127.0.0.1:{closed_port()}",
        predictor_attempts=1,
        breaker_failure_threshold=2,
        breaker_recovery_timeout=600,
    )
    app = app_module.create_app(settings)
    problems: list[str] = []
    seen: list[float] = []
    with LiveServer(app, lifespan="on") as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.goto(f"{server.url}/dashboard")
            config = {
                "name": "browser-run",
                "n_samples": 200,
                "n_features": 4,
                "n_classes": 3,
                "epochs": 2,
                "batch_size": 16,
                "seed": 1,
            }
            response = httpx.post(f"{server.url}/train", json=config, timeout=10)
            assert response.status_code == 202, response.text
            run_id = response.json()["id"]
            row = page.locator(f'[data-run="{run_id}"]')
            bar = row.locator('[role="progressbar"]')
            deadline = time.monotonic() + 45
            while time.monotonic() < deadline:
                now = bar.get_attribute("aria-valuenow", timeout=10_000)
                if now is not None and (not seen or seen[-1] != float(now)):
                    seen.append(float(now))
                if seen and seen[-1] >= 100:
                    break
                page.wait_for_timeout(150)
            expect(row.locator(".badge")).to_have_text("completed", timeout=10_000)
            assert row.locator(".chip").count() >= 1  # its checkpoint history

            for _ in range(2):
                answer = httpx.post(
                    f"{server.url}/predict", json={"features": [[0.1, 0.2, 0.3, 0.4]]}, timeout=10
                )
                assert answer.status_code == 200, answer.text
            card = page.locator('[data-breaker="external-predictor"]')
            expect(card).to_have_attribute("data-state", "open", timeout=10_000)
            expect(page.locator('[data-transition="external-predictor"]').first).to_be_visible()
            page.screenshot(path=str(tmp_path / "service-dashboard.png"), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert seen[-1] == 100
    assert any(0 < v < 100 for v in seen), f"no progress seen between 0 and 100: {seen}"
    assert seen == sorted(seen)  # progress only moves forward
