"""The registry of named strategy instances."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from recoverly import registry
from recoverly._core.registry import REGISTRY, Registry
from recoverly.circuit_breaker import CircuitBreaker

#: A module-level breaker, as applications declare them.
MODULE_BREAKER = CircuitBreaker(name="module-level")


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    """Each test starts with only the module-level breaker listed."""
    REGISTRY.clear()
    REGISTRY.register("circuit_breaker", "module-level", MODULE_BREAKER)
    yield
    registry.reset()


def test_named_breakers_are_listed_by_name_and_sorted():
    """breakers() maps names to live breakers, sorted by name."""
    b = CircuitBreaker(name="b")
    a = CircuitBreaker(name="a")
    assert list(registry.breakers().items()) == [
        ("a", a),
        ("b", b),
        ("module-level", MODULE_BREAKER),
    ]


def test_unnamed_breakers_are_not_listed():
    """Only breakers given a name appear in the registry."""
    unnamed = CircuitBreaker()
    assert unnamed not in registry.breakers().values()
    assert list(registry.breakers()) == ["module-level"]


def test_a_collected_breaker_disappears_from_the_listing():
    """Entries are weak: a breaker nobody holds is dropped."""
    temporary = CircuitBreaker(name="temporary")
    assert "temporary" in registry.breakers()
    del temporary
    gc.collect()
    assert "temporary" not in registry.breakers()


def test_a_live_module_level_breaker_stays_listed_while_alive():
    """A breaker kept alive by a module stays listed across collections and resets."""
    gc.collect()
    registry.reset()
    assert registry.breakers()["module-level"] is MODULE_BREAKER


def test_breakers_returns_a_snapshot():
    """Changing the returned dict does not change the registry."""
    CircuitBreaker(name="kept")
    listing = registry.breakers()
    listing.clear()
    assert "kept" not in listing
    assert "module-level" in registry.breakers()


def test_reset_closes_every_listed_breaker():
    """reset() closes open and forced-open breakers and keeps them listed."""
    b = CircuitBreaker(name="x", failure_threshold=1)
    with pytest.raises(KeyError):
        b.call({}.__getitem__, "missing")
    MODULE_BREAKER.force_open()
    registry.reset()
    assert b.state.name == MODULE_BREAKER.state.name == "CLOSED"
    assert registry.breakers()["x"] is b


def test_core_registry_keeps_kinds_apart_and_unregisters_only_the_same_object():
    """Kinds are separate namespaces; unregister ignores a different holder of the name."""
    reg = Registry()

    class Thing:
        pass

    one, two = Thing(), Thing()
    assert reg.register("bulkhead", "n", one) is None
    assert reg.register("limiter", "n", two) is None
    assert reg.live("bulkhead") == {"n": one}
    reg.unregister("bulkhead", "n", two)
    assert reg.live("bulkhead") == {"n": one}
    reg.unregister("bulkhead", "n", one)
    assert reg.live("bulkhead") == {}
    assert reg.register("limiter", "n", one) is two
    reg.clear("limiter")
    assert reg.live("limiter") == {}
    assert repr(reg) == "<Registry {'bulkhead': 0}>"


def test_core_registry_is_safe_under_concurrent_registration():
    """Threads registering distinct names all end up listed."""
    reg = Registry()

    class Thing:
        pass

    things = [Thing() for _ in range(200)]

    def add(start: int) -> None:
        for i in range(start, 200, 4):
            reg.register("k", f"t{i:03}", things[i])

    threads = [threading.Thread(target=add, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reg.live("k")) == 200
