"""Sliding windows of call outcomes: failure rate and slow-call rate.

Two shapes, as in resilience4j:

* :class:`CountWindow` keeps the last ``size`` outcomes in a ring buffer.
* :class:`TimeWindow` keeps the outcomes of the last ``seconds``, split into
  ``buckets`` equal slots that expire one by one.

Both keep running totals, so recording an outcome is O(1) (a time window
clears at most ``buckets`` slots when it catches up with the clock, a constant)
and reading the totals never walks the window. Neither is thread-safe: the
owner (a circuit breaker's state) holds its lock around them.
"""

from __future__ import annotations

import math
from typing import Protocol

__all__ = ["CountWindow", "TimeWindow", "Totals", "Window"]

#: ``(calls, failures, slow_calls)`` currently inside a window.
Totals = tuple[int, int, int]

_FAILED = 1
_SLOW = 2


class Window(Protocol):
    """What a circuit breaker needs from a sliding window."""

    def record(self, failed: bool, slow: bool, now: float) -> None:
        """Add one outcome observed at ``now`` (monotonic seconds)."""
        ...

    def totals(self, now: float) -> Totals:
        """Return ``(calls, failures, slow_calls)`` inside the window at ``now``."""
        ...

    def reset(self) -> None:
        """Forget every outcome."""
        ...


class CountWindow:
    """The last ``size`` outcomes, in a ring buffer.

    Args:
        size: How many outcomes the window holds (``>= 1``).
    """

    __slots__ = ("_pos", "_ring", "calls", "failures", "size", "slow_calls")

    def __init__(self, size: int) -> None:
        if size < 1:
            msg = f"size must be an integer >= 1, got {size!r}"
            raise ValueError(msg)
        self.size = size
        self._ring = bytearray(size)
        self._pos = 0
        self.calls = self.failures = self.slow_calls = 0

    def record(self, failed: bool, slow: bool, now: float = 0.0) -> None:
        """Add one outcome, evicting the oldest when the window is full."""
        del now
        ring, pos = self._ring, self._pos
        if self.calls == self.size:
            old = ring[pos]
            self.failures -= old & _FAILED
            self.slow_calls -= old >> 1
        else:
            self.calls += 1
        ring[pos] = (_FAILED if failed else 0) | (_SLOW if slow else 0)
        self.failures += bool(failed)
        self.slow_calls += bool(slow)
        self._pos = (pos + 1) % self.size

    def totals(self, now: float = 0.0) -> Totals:
        """Return ``(calls, failures, slow_calls)``."""
        del now
        return self.calls, self.failures, self.slow_calls

    def reset(self) -> None:
        """Forget every outcome."""
        self._ring = bytearray(self.size)
        self._pos = 0
        self.calls = self.failures = self.slow_calls = 0

    def __repr__(self) -> str:
        return (
            f"<CountWindow size={self.size} calls={self.calls} failures={self.failures} "
            f"slow={self.slow_calls}>"
        )


class TimeWindow:
    """The outcomes of the last ``seconds``, in ``buckets`` slots.

    An outcome lives in the slot covering its time; a slot is cleared when the
    window moves past it, so the window spans between ``seconds - span`` and
    ``seconds`` (``span = seconds / buckets``).

    Args:
        seconds: Length of the window (``> 0``).
        buckets: Number of slots (``>= 1``); more slots expire outcomes more smoothly.
    """

    __slots__ = (
        "_calls",
        "_epoch",
        "_failures",
        "_slow",
        "_span",
        "buckets",
        "calls",
        "failures",
        "seconds",
        "slow_calls",
    )

    def __init__(self, seconds: float, buckets: int = 10) -> None:
        if not (math.isfinite(seconds) and seconds > 0):
            msg = f"seconds must be a finite number > 0, got {seconds!r}"
            raise ValueError(msg)
        if buckets < 1:
            msg = f"buckets must be an integer >= 1, got {buckets!r}"
            raise ValueError(msg)
        self.seconds = float(seconds)
        self.buckets = buckets
        self._span = self.seconds / buckets
        self._calls = [0] * buckets
        self._failures = [0] * buckets
        self._slow = [0] * buckets
        self._epoch: int | None = None
        self.calls = self.failures = self.slow_calls = 0

    def _advance(self, now: float) -> int:
        """Expire the slots the window has moved past; return the current slot."""
        epoch = math.floor(now / self._span)
        last = self._epoch
        if last is None or epoch - last >= self.buckets:
            if self.calls:
                self.reset()
        elif epoch > last:
            for e in range(last + 1, epoch + 1):
                slot = e % self.buckets
                self.calls -= self._calls[slot]
                self.failures -= self._failures[slot]
                self.slow_calls -= self._slow[slot]
                self._calls[slot] = self._failures[slot] = self._slow[slot] = 0
        else:
            # A reading from the past (another thread's older `now`) lands in the newest slot.
            epoch = last
        self._epoch = epoch
        return epoch % self.buckets

    def record(self, failed: bool, slow: bool, now: float) -> None:
        """Add one outcome observed at ``now``."""
        slot = self._advance(now)
        self._calls[slot] += 1
        self.calls += 1
        if failed:
            self._failures[slot] += 1
            self.failures += 1
        if slow:
            self._slow[slot] += 1
            self.slow_calls += 1

    def totals(self, now: float) -> Totals:
        """Return ``(calls, failures, slow_calls)`` inside the window at ``now``."""
        self._advance(now)
        return self.calls, self.failures, self.slow_calls

    def reset(self) -> None:
        """Forget every outcome."""
        n = self.buckets
        self._calls, self._failures, self._slow = [0] * n, [0] * n, [0] * n
        self.calls = self.failures = self.slow_calls = 0

    def __repr__(self) -> str:
        return (
            f"<TimeWindow seconds={self.seconds:g} buckets={self.buckets} calls={self.calls} "
            f"failures={self.failures} slow={self.slow_calls}>"
        )
