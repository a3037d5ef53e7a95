"""Named strategy instances, for health endpoints and tests.

A :class:`~recoverly.CircuitBreaker` created with ``name=`` is listed here for
as long as it is alive::

    payments = CircuitBreaker(name="payments")

    @app.get("/health")
    def health():
        return {name: b.state.name for name, b in recoverly.registry.breakers().items()}

Named :class:`~recoverly.Bulkhead` and :class:`~recoverly.RateLimiter`
instances are listed the same way, by :func:`bulkheads` and :func:`limiters`.

.. versionadded:: 0.1
"""

from __future__ import annotations

from recoverly import bulkhead, rate_limit
from recoverly._core.registry import REGISTRY
from recoverly.bulkhead import Bulkhead
from recoverly.circuit_breaker import KIND, CircuitBreaker
from recoverly.rate_limit import RateLimiter

__all__ = ["breakers", "bulkheads", "limiters", "reset"]


def breakers() -> dict[str, CircuitBreaker]:
    """Return the live named circuit breakers, ``{name: breaker}``, sorted by name.

    The dictionary is a snapshot: changing it changes nothing.

    Returns:
        A new dictionary of the named breakers that are still alive.

    .. versionadded:: 0.1
    """
    return REGISTRY.live(KIND)


def bulkheads() -> dict[str, Bulkhead]:
    """Return the live named bulkheads, ``{name: bulkhead}``, sorted by name.

    Returns:
        A new dictionary of the named bulkheads that are still alive.

    .. versionadded:: 0.2
    """
    return REGISTRY.live(bulkhead.KIND)


def limiters() -> dict[str, RateLimiter]:
    """Return the live named rate limiters, ``{name: limiter}``, sorted by name.

    Returns:
        A new dictionary of the named rate limiters that are still alive.

    .. versionadded:: 0.2
    """
    return REGISTRY.live(rate_limit.KIND)


def reset() -> None:
    """Close every listed breaker, as if ``breaker.reset()`` were called on each.

    Meant for tests: a module-level breaker opened by one test would otherwise
    reject calls in the next. Breakers stay listed (a module-level breaker is
    listed for as long as it lives); their ``on_close`` hooks and events fire
    for those that were not CLOSED. Listed rate limiters are reset too (every
    bucket refilled); bulkheads have nothing to reset.

    .. versionadded:: 0.1

    .. versionchanged:: 0.2
       Also resets the listed rate limiters, and forgets the named
       configuration set by :func:`recoverly.configure`.
    """
    for breaker in REGISTRY.live(KIND).values():
        breaker.reset()
    for limiter in REGISTRY.live(rate_limit.KIND).values():
        limiter.reset()
    REGISTRY.run_reset_hooks()


# Re-exported as ``recoverly.breakers``; ``reset`` stays here (tests reach for it by module).
breakers.__module__ = "recoverly"
bulkheads.__module__ = "recoverly"
limiters.__module__ = "recoverly"
