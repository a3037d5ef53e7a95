"""Test support: a manual clock, instant sleeps, and fault helpers.

::

    from recoverly.testing import ManualClock, instant

    def test_backoff():
        with instant() as clock:          # every strategy now sleeps on `clock`
            flaky()                       # returns at once
        assert clock.sleeps == [1.0, 2.0] # what would have been slept

The pytest plugin (installed with recoverly) adds a ``recoverly_clock``
fixture that does the same for one test.

.. versionadded:: 0.1
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, final

from recoverly._core.clock import set_default_clock
from recoverly._core.validate import Problems

__all__ = ["FlakyCall", "ManualClock", "instant"]


@final
class ManualClock:
    """A clock that moves only when told to; sleeping advances it instantly.

    ``sleep``/``asleep`` record the requested duration in :attr:`sleeps` and
    advance the clock by it, so code under test runs at full speed while seeing
    time pass. Thread-safe.

    Args:
        start: The initial ``monotonic()`` reading.
        wall: The initial ``wall()`` reading (seconds since the epoch).
        yield_on_sleep: If true, ``asleep`` also yields to the event loop once.

    .. versionadded:: 0.1
    """

    __slots__ = ("_lock", "_now", "_wall_offset", "sleeps", "yield_on_sleep")

    def __init__(
        self, start: float = 0.0, *, wall: float = 1_700_000_000.0, yield_on_sleep: bool = True
    ) -> None:
        p = Problems()
        start = p.number_at_least("start", start, 0)
        wall = p.number_at_least("wall", wall, 0)
        p.raise_if_any()
        self._lock = threading.Lock()
        self._now = start
        self._wall_offset = wall - start
        self.sleeps: list[float] = []
        self.yield_on_sleep = yield_on_sleep

    def monotonic(self) -> float:
        """Return the current reading."""
        return self._now

    def wall(self) -> float:
        """Return the simulated wall-clock time."""
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``.

        Raises:
            ValueError: ``seconds`` is negative or not finite (time never goes back).
        """
        p = Problems()
        seconds = p.duration("seconds", seconds)
        p.raise_if_any()
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        """Record the sleep and advance the clock; returns at once."""
        seconds = max(0.0, float(seconds))
        with self._lock:
            self.sleeps.append(seconds)
            self._now += seconds

    async def asleep(self, seconds: float) -> None:
        """Record the sleep and advance the clock; yields once to the loop."""
        self.sleep(seconds)
        if self.yield_on_sleep:
            await _checkpoint()

    @property
    def slept(self) -> float:
        """The total of all recorded sleeps."""
        with self._lock:
            return sum(self.sleeps)

    def __repr__(self) -> str:
        return f"<ManualClock now={self._now:g} sleeps={len(self.sleeps)}>"


async def _checkpoint() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        import trio  # noqa: PLC0415 - only reached inside Trio

        await trio.lowlevel.checkpoint()
        return
    await asyncio.sleep(0)


@contextmanager
def instant(clock: ManualClock | None = None) -> Iterator[ManualClock]:
    """Make every strategy that uses the default clock run on a manual clock.

    Strategies built with an explicit ``clock=`` keep theirs.

    Yields:
        The :class:`ManualClock` in use; inspect ``clock.sleeps`` afterwards.

    .. versionadded:: 0.1
    """
    clock = clock if clock is not None else ManualClock()
    previous = set_default_clock(clock)
    try:
        yield clock
    finally:
        set_default_clock(previous)


@final
class FlakyCall:
    """A callable that fails a given number of times, then succeeds.

    Counts its calls so tests can assert on them::

        flaky = FlakyCall(failures=2, exception=ConnectionError("down"), result="ok")
        assert retry(max_attempts=3, delay=0)(flaky)() == "ok"
        assert flaky.calls == 3

    Args:
        failures: How many calls raise before the first success.
        exception: The exception instance (or a factory) raised by failing calls.
        result: What a successful call returns (a callable is called with the
            call's arguments).

    .. versionadded:: 0.1
    """

    __slots__ = ("_lock", "calls", "exception", "failures", "result")

    def __init__(
        self,
        failures: int = 1,
        exception: BaseException | Callable[[], BaseException] | None = None,
        result: Any = None,
    ) -> None:
        p = Problems()
        self.failures = p.int_at_least("failures", failures, 0)
        p.raise_if_any()
        self.exception = exception if exception is not None else ConnectionError("injected fault")
        self.result = result
        self.calls = 0
        self._lock = threading.Lock()

    def _next(self) -> int:
        with self._lock:
            self.calls += 1
            return self.calls

    def _exc(self) -> BaseException:
        exc = self.exception
        return exc if isinstance(exc, BaseException) else exc()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Raise for the first ``failures`` calls, then return ``result``."""
        if self._next() <= self.failures:
            raise self._exc()
        return self.result(*args, **kwargs) if callable(self.result) else self.result

    def __repr__(self) -> str:
        return f"<FlakyCall calls={self.calls} failures={self.failures}>"


ManualClock.__module__ = "recoverly.testing"
FlakyCall.__module__ = "recoverly.testing"
instant.__module__ = "recoverly.testing"
