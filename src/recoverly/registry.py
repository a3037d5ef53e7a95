"""Named strategy instances, for health endpoints and tests.

A :class:`~recoverly.CircuitBreaker` created with ``name=`` is listed here for
as long as it is alive::

    payments = CircuitBreaker(name="payments")

    @app.get("/health")
    def health():
        return {name: b.state.name for name, b in recoverly.registry.breakers().items()}

.. versionadded:: 0.1
"""

from __future__ import annotations

from recoverly._core.registry import REGISTRY
from recoverly.circuit_breaker import KIND, CircuitBreaker

__all__ = ["breakers", "reset"]


def breakers() -> dict[str, CircuitBreaker]:
    """Return the live named circuit breakers, ``{name: breaker}``, sorted by name.

    The dictionary is a snapshot: changing it changes nothing.

    Returns:
        A new dictionary of the named breakers that are still alive.

    .. versionadded:: 0.1
    """
    return REGISTRY.live(KIND)


def reset() -> None:
    """Close every listed breaker, as if ``breaker.reset()`` were called on each.

    Meant for tests: a module-level breaker opened by one test would otherwise
    reject calls in the next. Breakers stay listed (a module-level breaker is
    listed for as long as it lives); their ``on_close`` hooks and events fire
    for those that were not CLOSED.

    .. versionadded:: 0.1
    """
    for breaker in REGISTRY.live(KIND).values():
        breaker.reset()


# Re-exported as ``recoverly.breakers``; ``reset`` stays here (tests reach for it by module).
breakers.__module__ = "recoverly"
