"""When a PoolAutoscaler resizes: the decision rule, with no I/O and no clock of its own.

The rule sees *demand*: connections checked out plus checkouts in progress
(waiting for a connection or opening one), and the pool's *capacity* (the most
connections it may have out). ``utilization = demand / capacity``.

* **Busy**: utilisation at or above ``grow_at`` without a break for
  ``grow_after`` seconds. The capacity grows to fit the highest demand of the
  last ``grow_after`` seconds at the target utilisation (midway between
  ``shrink_at`` and ``grow_at``), by at least one, up to ``max_size``.
* **Idle**: utilisation at or below ``shrink_at`` without a break for
  ``shrink_after`` seconds. The capacity shrinks to fit the highest demand of
  the last ``shrink_after`` seconds at the target utilisation, never below
  ``min_size`` nor below the connections checked out now.
* Between the two thresholds nothing changes, and after any change the next
  one waits ``cooldown`` seconds; a new spell starts at each change. Landing
  at the target utilisation, between the thresholds, is what keeps a steady
  load from flapping.

Demand only changes at checkouts, checkins and checkout attempts, which the
driver reports as they happen, so a spell measured from those observations is
exact; the driver's timer only adds observations while nothing happens.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["AutoscaleConfig", "AutoscalePolicy", "Decision", "PeakWindow"]


@dataclass(frozen=True, slots=True)
class AutoscaleConfig:
    """Validated settings of one autoscaler (see the module docstring)."""

    min_size: int
    max_size: int
    grow_at: float
    shrink_at: float
    grow_after: float
    shrink_after: float
    cooldown: float

    @property
    def target(self) -> float:
        """The utilisation a resize aims for: midway between the thresholds."""
        return (self.grow_at + self.shrink_at) / 2


class Decision(NamedTuple):
    """A resize to make: to ``new`` connections, because the pool was ``reason``."""

    new: int
    reason: str  # "busy" or "idle"
    utilization: float


class PeakWindow:
    """The highest demand of the last ``seconds``, demand being a step function of time.

    An observed value holds until the next observation, so a value seen
    before the window still counts if it was current when the window began.
    Entries are kept in time order with decreasing values (a value is dropped
    once a newer one is at least as high), so at most one entry per distinct
    value is kept, however many observations arrive.
    """

    __slots__ = ("_entries", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        # [since, value, until]: ``until`` is set when the next observation arrives.
        self._entries: deque[list[float]] = deque()

    def add(self, now: float, value: int) -> None:
        """Record that demand is ``value`` from ``now`` on."""
        entries = self._entries
        if entries and entries[-1][2] < 0:
            entries[-1][2] = now
        while entries and entries[-1][1] <= value:
            entries.pop()
        entries.append([now, value, -1.0])

    def peak(self, now: float) -> int:
        """Return the highest value current at any time in ``[now - seconds, now]``."""
        entries = self._entries
        start = now - self.seconds
        while len(entries) > 1 and 0 <= entries[0][2] <= start:
            entries.popleft()
        return int(entries[0][1]) if entries else 0


class AutoscalePolicy:
    """The spell bookkeeping of one autoscaler. Not thread-safe: the driver locks."""

    __slots__ = (
        "busy_since",
        "config",
        "idle_since",
        "last_change",
        "recent_busy",
        "recent_idle",
        "utilization",
    )

    def __init__(self, config: AutoscaleConfig) -> None:
        self.config = config
        self.busy_since: float | None = None
        self.idle_since: float | None = None
        self.recent_busy = PeakWindow(config.grow_after)
        self.recent_idle = PeakWindow(config.shrink_after)
        self.last_change: float | None = None
        self.utilization = 0.0

    def observe(self, now: float, capacity: int, checked_out: int, pending: int) -> Decision | None:
        """Record the pool's state at ``now``; return a resize to make, if one is due."""
        cfg = self.config
        demand = max(checked_out, 0) + max(pending, 0)
        self.recent_busy.add(now, demand)
        self.recent_idle.add(now, demand)
        self.utilization = demand / capacity
        if self.utilization >= cfg.grow_at:
            self.idle_since = None
            if self.busy_since is None:
                self.busy_since = now
        elif self.utilization <= cfg.shrink_at:
            self.busy_since = None
            if self.idle_since is None:
                self.idle_since = now
        else:
            self.busy_since = self.idle_since = None
        if self.last_change is not None and now - self.last_change < cfg.cooldown:
            return None
        if (
            self.busy_since is not None
            and now - self.busy_since >= cfg.grow_after
            and capacity < cfg.max_size
        ):
            wanted = math.ceil(self.recent_busy.peak(now) / cfg.target)
            return self._change(now, min(cfg.max_size, max(capacity + 1, wanted)), "busy")
        if (
            self.idle_since is not None
            and now - self.idle_since >= cfg.shrink_after
            and capacity > cfg.min_size
        ):
            wanted = math.ceil(self.recent_idle.peak(now) / cfg.target)
            new = max(cfg.min_size, checked_out, wanted)
            if new < capacity:
                return self._change(now, new, "idle")
        return None

    def _change(self, now: float, new: int, reason: str) -> Decision:
        self.last_change = now
        self.busy_since = self.idle_since = None
        return Decision(new, reason, self.utilization)

    def spell(self, now: float) -> tuple[str, float]:
        """Return ``("busy" | "idle" | "steady", seconds in that state so far)``."""
        if self.busy_since is not None:
            return "busy", now - self.busy_since
        if self.idle_since is not None:
            return "idle", now - self.idle_since
        return "steady", 0.0
