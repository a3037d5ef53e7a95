"""Circuit breaker benchmarks: recoverly against a lock-free floor, pybreaker, circuitbreaker.

Two paths, sync and async:

* ``ok``: the breaker is CLOSED and the call succeeds (the path almost every call takes);
* ``open``: the breaker is OPEN and rejects the call; the loop catches each
  library's rejection exception, so the time is the whole cost of one rejection.

Breakers are opened the way they open in production: by failing calls (5 in a
row). OPEN cases use a recovery timeout of one hour so that no breaker half-opens
during the run; a breaker that did would let the always-failing function through,
and its ``ValueError`` would stop the benchmark rather than skew it.

pybreaker has no async decorator without Tornado, so it has no async case.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import circuitbreaker
import pybreaker

from _harness import (
    REJECTED,
    Case,
    afn,
    async_probe,
    async_runner,
    fn,
    rejecting_async_probe,
    rejecting_async_runner,
    rejecting_probe,
    rejecting_runner,
    sync_probe,
    sync_runner,
)

__all__ = ["cases", "recoverly_breaker_missing"]

THRESHOLD = 5
RECOVERY = 60
LONG_RECOVERY = 3600


def recoverly_breaker_missing() -> str | None:
    """Return why recoverly's breaker cannot be benchmarked, or ``None`` if it can."""
    try:
        from recoverly.circuit_breaker import CircuitBreaker  # noqa: PLC0415
    except ImportError as exc:
        return f"recoverly.circuit_breaker not importable ({exc})"
    try:  # the module may be half-written: check that the expected API works
        answer = CircuitBreaker(failure_threshold=THRESHOLD, recovery_timeout=RECOVERY)(fn)(1)
    except Exception as exc:
        return f"recoverly CircuitBreaker does not work yet ({type(exc).__name__}: {exc})"
    if answer != fn(1):
        return f"recoverly CircuitBreaker returned {answer!r} for f(1)"
    return None


# ---------------------------------------------------------------- the floor
class FloorOpenError(Exception):
    """Raised by the floor breaker when it is open."""


class FloorBreaker:
    """The least a hand-written breaker does: no lock, no clock, no half-open."""

    def __init__(self, threshold: int = THRESHOLD) -> None:
        self.threshold = threshold
        self.failures = 0
        self.open = False

    def __call__(self, f: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self.open:
                raise FloorOpenError
            try:
                result = f(*args, **kwargs)
            except Exception:
                self.failures += 1
                if self.failures >= self.threshold:
                    self.open = True
                raise
            self.failures = 0
            return result

        return wrapper

    def decorate_async(self, f: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """Async twin of ``__call__``."""

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self.open:
                raise FloorOpenError
            try:
                result = await f(*args, **kwargs)
            except Exception:
                self.failures += 1
                if self.failures >= self.threshold:
                    self.open = True
                raise
            self.failures = 0
            return result

        return wrapper


# ---------------------------------------------------------------- always failing
def always_fails(x: int) -> int:
    """A function whose every call fails: used to open breakers."""
    raise ValueError(x)


async def aalways_fails(x: int) -> int:
    """Async twin of :func:`always_fails`."""
    raise ValueError(x)


def _open_sync(wrapped: Callable[[int], Any]) -> None:
    for _ in range(THRESHOLD):
        try:
            wrapped(1)
        except Exception:  # noqa: S112, PERF203 - the failures are the point
            continue


def _open_async(wrapped: Callable[[int], Awaitable[Any]]) -> None:
    import asyncio  # noqa: PLC0415

    async def go() -> None:
        for _ in range(THRESHOLD):
            try:
                await wrapped(1)
            except Exception:  # noqa: S112, PERF203 - the failures are the point
                continue

    asyncio.run(go())


# ---------------------------------------------------------------- the libraries
# Each entry: label, a factory taking the recovery timeout and returning a decorator,
# the rejection exception, and whether the library decorates async functions.
def _libraries() -> dict[str, tuple[str, Callable[[int], Any], type[BaseException], bool]]:
    libs: dict[str, tuple[str, Callable[[int], Any], type[BaseException], bool]] = {
        "floor": ("lock-free floor", lambda _r: FloorBreaker(), FloorOpenError, True),
    }
    if recoverly_breaker_missing() is None:
        from recoverly.circuit_breaker import CircuitBreaker  # noqa: PLC0415
        from recoverly.errors import CircuitBreakerError  # noqa: PLC0415

        libs["recoverly"] = (
            "recoverly CircuitBreaker",
            lambda r: CircuitBreaker(failure_threshold=THRESHOLD, recovery_timeout=r),
            CircuitBreakerError,
            True,
        )
    libs["pybreaker"] = (
        "pybreaker CircuitBreaker",
        lambda r: pybreaker.CircuitBreaker(fail_max=THRESHOLD, reset_timeout=r),
        pybreaker.CircuitBreakerError,
        False,
    )
    libs["circuitbreaker"] = (
        "circuitbreaker.circuit",
        lambda r: circuitbreaker.circuit(failure_threshold=THRESHOLD, recovery_timeout=r),
        circuitbreaker.CircuitBreakerError,
        True,
    )
    return libs


def _decorate(lib: str, breaker: Any, f: Callable[..., Any], *, is_async: bool) -> Any:
    if lib == "floor" and is_async:
        return breaker.decorate_async(f)
    return breaker(f)


def cases() -> list[Case]:
    """Every breaker case; recoverly's only when its module is importable."""
    out: list[Case] = []
    libs = _libraries()
    for lib, (label, make, _exc, _has_async) in libs.items():
        wrapped = _decorate(lib, make(RECOVERY), fn, is_async=False)
        out.append(
            Case(
                f"cb.ok.{lib}",
                "circuit breaker, CLOSED success path (sync)",
                label,
                sync_runner(wrapped),
                sync_probe(wrapped),
                baseline="bare",
            )
        )
    for lib, (label, make, exc, _has_async) in libs.items():
        wrapped = _decorate(lib, make(LONG_RECOVERY), always_fails, is_async=False)
        _open_sync(wrapped)
        out.append(
            Case(
                f"cb.open.{lib}",
                "circuit breaker, OPEN rejection (sync; whole cost of a caught rejection)",
                label,
                rejecting_runner(wrapped, exc),
                rejecting_probe(wrapped, exc),
                expected=REJECTED,
            )
        )
    for lib, (label, make, _exc, has_async) in libs.items():
        if not has_async:
            continue
        wrapped = _decorate(lib, make(RECOVERY), afn, is_async=True)
        out.append(
            Case(
                f"acb.ok.{lib}",
                "circuit breaker, CLOSED success path (async)",
                label,
                async_runner(wrapped),
                async_probe(wrapped),
                baseline="bare.async",
                is_async=True,
            )
        )
    for lib, (label, make, exc, has_async) in libs.items():
        if not has_async:
            continue
        wrapped = _decorate(lib, make(LONG_RECOVERY), aalways_fails, is_async=True)
        _open_async(wrapped)
        out.append(
            Case(
                f"acb.open.{lib}",
                "circuit breaker, OPEN rejection (async; whole cost of a caught rejection)",
                label,
                rejecting_async_runner(wrapped, exc),
                rejecting_async_probe(wrapped, exc),
                expected=REJECTED,
                is_async=True,
            )
        )
    return out
