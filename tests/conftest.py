"""Shared fixtures: a manual clock, a clean event bus, and both async backends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings

from recoverly import events as ev
from recoverly import registry
from recoverly._core.bus import BUS
from recoverly.testing import ManualClock, instant

pytest_plugins = ["db_servers", "redis_servers"]

# The machines are shared and noisy: Hypothesis' per-example deadline would turn a
# slow moment into a failure that says nothing about the code under test.
settings.register_profile("recoverly", deadline=None, print_blob=True)
settings.load_profile("recoverly")


@pytest.fixture(autouse=True)
def _isolate_global_state() -> Iterator[None]:
    """Restore the event bus, the default clock and the breaker registry after each test."""
    before = BUS._subs
    with instant(ManualClock()):
        yield
    registry.reset()
    with BUS._lock:
        BUS._subs = before
        BUS._rebuild()


@pytest.fixture
def clock() -> ManualClock:
    """A manual clock to pass as ``clock=`` explicitly."""
    return ManualClock()


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every ``@pytest.mark.anyio`` test on asyncio and on Trio."""
    return str(request.param)


@pytest.fixture
def events() -> Iterator[list[object]]:
    """Collect every event emitted during the test, in order."""
    seen: list[object] = []
    ev.subscribe(seen.append)
    yield seen
    ev.unsubscribe(seen.append)
