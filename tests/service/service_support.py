"""Helpers for the service tests: run the app in process and call it with httpx."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx

from recoverly.service.app import create_app
from recoverly.service.settings import Settings

SMALL = {
    "name": "small",
    "n_samples": 400,
    "n_features": 4,
    "n_classes": 3,
    "epochs": 3,
    "batch_size": 32,
    "seed": 3,
    "checkpoint_every": 5,
}


def settings_for(tmp_path: Path, database_url: str | None = None, **kwargs: Any) -> Settings:
    """Settings with everything under ``tmp_path`` (and the given database)."""
    return Settings(_env_file=None, data_dir=tmp_path, database_url=database_url, **kwargs)  # type: ignore[call-arg]


class Client:
    """A synchronous face on an ``httpx.AsyncClient`` bound to the app (no network)."""

    def __init__(self, portal: Any, client: httpx.AsyncClient) -> None:
        self.portal = portal
        self.client = client

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.portal.call(functools.partial(self.client.request, method, path, **kwargs))

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)


@contextmanager
def serving(app: Any) -> Iterator[Client]:
    """Run ``app``'s lifespan on an event loop thread and yield a client for it."""

    async def make() -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app)
        return httpx.AsyncClient(transport=transport, base_url="http://service")

    with anyio.from_thread.start_blocking_portal("asyncio") as portal:  # noqa: SIM117
        with portal.wrap_async_context_manager(app.router.lifespan_context(app)):
            client = portal.call(make)
            try:
                yield Client(portal, client)
            finally:
                portal.call(client.aclose)


@contextmanager
def service(tmp_path: Path, database_url: str | None = None, **kwargs: Any) -> Iterator[Client]:
    """Build an app on ``tmp_path`` (and ``database_url``) and serve it in process."""
    clock = kwargs.pop("clock", None)
    faults = kwargs.pop("faults", None)
    app = create_app(settings_for(tmp_path, database_url, **kwargs), clock=clock, faults=faults)
    with serving(app) as client:
        client.app = app  # type: ignore[attr-defined]
        yield client


def wait_for(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll ``check`` on the real clock until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


def wait_done(client: Client, run_id: int) -> dict[str, Any]:
    """Wait until run ``run_id`` completed or failed; return its view."""

    def done() -> dict[str, Any] | None:
        body = client.get(f"/models/{run_id}").json()
        return body if body["status"] in ("completed", "failed") else None

    return wait_for(done)


def wait_worker_idle(client: Client) -> dict[str, Any]:
    """Wait until the worker has no run (its last process ended); return its /health view."""

    def idle() -> dict[str, Any] | None:
        worker: dict[str, Any] = client.get("/health").json()["broker"]
        return worker if worker["current_run"] is None and worker["queued"] == 0 else None

    return wait_for(idle)
