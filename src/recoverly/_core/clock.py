"""The one place that touches ``time.*`` and ``asyncio.sleep``.

Every strategy reads time and sleeps through a :class:`Clock`. The default is
:class:`SystemClock`; tests swap in ``recoverly.testing.ManualClock`` either per
strategy (``clock=``) or for the whole process (:func:`set_default_clock`).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Protocol, runtime_checkable

__all__ = [
    "DEFAULT_CLOCK",
    "MAX_SLEEP",
    "Clock",
    "SystemClock",
    "default_clock",
    "resolve",
    "set_default_clock",
]

#: The longest single sleep the standard library accepts (``threading.TIMEOUT_MAX``).
#: Computed delays saturate here instead of overflowing.
MAX_SLEEP: float = float(threading.TIMEOUT_MAX)


@runtime_checkable
class Clock(Protocol):
    """A source of time and a way to wait.

    ``monotonic()`` is used for every duration and deadline; ``wall()`` only for
    timestamps shown to humans.
    """

    def monotonic(self) -> float:
        """Return seconds from an arbitrary origin that never goes backwards."""
        ...

    def wall(self) -> float:
        """Return the wall-clock time as seconds since the Unix epoch."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time`` and real sleeps.

    ``asleep`` uses ``asyncio.sleep`` inside an asyncio loop and ``trio.sleep``
    inside Trio.
    """

    __slots__ = ()

    # The C functions themselves, not Python methods wrapping them: reading the
    # clock is on the hot paths (breaker rejections, deadlines).
    monotonic = staticmethod(time.monotonic)
    """Return ``time.monotonic()``."""
    wall = staticmethod(time.time)
    """Return ``time.time()``."""

    def sleep(self, seconds: float) -> None:
        """Sleep with ``time.sleep``; zero or negative returns at once."""
        if seconds > 0:
            time.sleep(min(seconds, MAX_SLEEP))

    async def asleep(self, seconds: float) -> None:
        """Sleep in the running event loop (asyncio or Trio)."""
        seconds = min(max(seconds, 0.0), MAX_SLEEP)
        if _in_asyncio():
            await asyncio.sleep(seconds)
            return
        trio = sys.modules.get("trio")
        if trio is not None:  # pragma: no branch - Trio is the only other loop we know
            await trio.sleep(seconds)
            return
        await asyncio.sleep(seconds)  # pragma: no cover - raises the usual asyncio error

    def __repr__(self) -> str:
        return "SystemClock()"


def _in_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


#: One-element holder of the process-wide default clock. Hot paths index it
#: directly instead of calling :func:`resolve`.
DEFAULT_CLOCK: list[Clock] = [SystemClock()]


def default_clock() -> Clock:
    """Return the process-wide default clock."""
    return DEFAULT_CLOCK[0]


def set_default_clock(clock: Clock) -> Clock:
    """Install ``clock`` as the process-wide default and return the previous one."""
    previous = DEFAULT_CLOCK[0]
    DEFAULT_CLOCK[0] = clock
    return previous


def resolve(clock: Clock | None) -> Clock:
    """Return ``clock``, or the current default when it is ``None``."""
    return DEFAULT_CLOCK[0] if clock is None else clock
