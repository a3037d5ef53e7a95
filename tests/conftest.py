"""Shared fixtures: a manual clock, a clean event bus, and both async backends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings

from recoverly import events as ev
from recoverly import registry
from recoverly._core.bus import BUS
from recoverly._core.registry import REGISTRY
from recoverly.testing import ManualClock, instant

pytest_plugins = ["db_servers", "redis_servers"]

# The machines are shared and noisy: Hypothesis' per-example deadline would turn a
# slow moment into a failure that says nothing about the code under test.
settings.register_profile("recoverly", deadline=None, print_blob=True)
settings.load_profile("recoverly")


@pytest.fixture(autouse=True)
def _isolate_global_state() -> Iterator[None]:
    """Restore the event bus, the default clock and the breaker registry after each test.

    Names registered during the test are taken off the registry afterwards: a
    strategy the test dropped may live on until the garbage collector breaks a
    reference cycle (an exception's traceback holding it, say), and would make the
    next test that uses the same name warn about a duplicate, depending on when
    the collector last ran.
    """
    before = BUS._subs
    with REGISTRY._lock:
        listed = {kind: dict(entries) for kind, entries in REGISTRY._entries.items()}
    with instant(ManualClock()):
        yield
    registry.reset()
    with REGISTRY._lock:
        REGISTRY._entries = {
            kind: {
                name: ref for name, ref in entries.items() if listed.get(kind, {}).get(name) is ref
            }
            for kind, entries in REGISTRY._entries.items()
        }
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
