"""RetryBudget: retries capped at a share of recent calls.

A retry policy alone multiplies load during an outage: every caller retries,
so a struggling service sees ``max_attempts`` times its normal traffic. A
budget (as in Finagle, Envoy and gRPC) caps the *total* number of retries that
many decorated functions may make to a share of the calls they made recently,
plus a small floor so that rarely called functions can still retry::

    allowed retries in the window = min_per_second * window + ratio * calls in the window

Share one budget among everything that talks to one backend::

    api_budget = RetryBudget(ratio=0.2, min_per_second=10)

    @retry(max_attempts=3, budget=api_budget)
    def fetch(): ...

When the budget is spent, a failing call is not retried: the original
exception goes straight back to the caller, and a
:class:`~recoverly.events.RetryGaveUp` event with ``reason="budget"`` is emitted.

.. versionadded:: 0.1
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from recoverly._core.clock import Clock, resolve
from recoverly._core.validate import Problems

__all__ = ["RetryBudget", "RetryBudgetStatistics"]


@dataclass(frozen=True, slots=True)
class RetryBudgetStatistics:
    """A snapshot of a :class:`RetryBudget`.

    Attributes:
        calls: First attempts recorded in the window.
        retries: Retries granted in the window.
        rejected: Retries refused since the budget was created.
        available: Retries that would be granted now.
    """

    calls: int
    retries: int
    rejected: int
    available: int


class RetryBudget:
    """Caps retries to ``ratio`` of recent calls plus ``min_per_second`` per second.

    Thread-safe; one budget is meant to be shared by many retry policies.

    Args:
        ratio: Retries allowed per call in the window (0.2 = 20 % extra load).
        min_per_second: Retries always allowed per second, whatever the traffic.
        window: Seconds of history considered, split into ``buckets`` slots.
        buckets: Resolution of the sliding window.
        clock: Time source (default: the process clock).

    Raises:
        ValueError: An argument is out of range (all problems are listed).
        TypeError: An argument has the wrong type.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_bucket_span",
        "_calls",
        "_clock",
        "_epoch",
        "_lock",
        "_rejected",
        "_retries",
        "buckets",
        "min_per_second",
        "ratio",
        "window",
    )

    def __init__(
        self,
        ratio: float = 0.2,
        min_per_second: float = 10.0,
        window: float = 10.0,
        *,
        buckets: int = 10,
        clock: Clock | None = None,
    ) -> None:
        p = Problems()
        self.ratio = p.number_at_least("ratio", ratio, 0)
        self.min_per_second = p.number_at_least("min_per_second", min_per_second, 0)
        self.window = p.duration("window", window, positive=True)
        self.buckets = p.int_at_least("buckets", buckets, 1)
        p.raise_if_any()
        self._clock = clock
        self._lock = threading.Lock()
        self._bucket_span = self.window / self.buckets
        self._calls = [0] * self.buckets
        self._retries = [0] * self.buckets
        self._epoch = 0  # index of the newest bucket, in bucket units since time 0
        self._rejected = 0

    def _advance(self, now: float) -> int:
        """Roll the window forward to ``now``; return the current slot (lock held)."""
        epoch = int(now / self._bucket_span)
        gap = epoch - self._epoch
        if gap > 0:
            for i in range(1, min(gap, self.buckets) + 1):
                slot = (self._epoch + i) % self.buckets
                self._calls[slot] = 0
                self._retries[slot] = 0
            self._epoch = epoch
        return self._epoch % self.buckets

    def _available(self) -> int:
        allowance = self.min_per_second * self.window + self.ratio * sum(self._calls)
        return max(0, int(allowance) - sum(self._retries))

    def deposit(self) -> None:
        """Record one first attempt (retry decorators do this for you)."""
        now = resolve(self._clock).monotonic()
        with self._lock:
            self._calls[self._advance(now)] += 1

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; return ``False`` when none is left."""
        now = resolve(self._clock).monotonic()
        with self._lock:
            slot = self._advance(now)
            if self._available() <= 0:
                self._rejected += 1
                return False
            self._retries[slot] += 1
            return True

    def _adopt_settings(self, other: RetryBudget) -> None:
        """Take ``other``'s settings; keep this budget's window unless its shape changes.

        ``ratio`` and ``min_per_second`` apply to the calls and retries already
        in the window. A new ``window`` or ``buckets`` starts an empty window
        (the ``rejected`` counter stays). The clock stays this budget's. Used by
        :func:`recoverly.configure`, so that a budget shared by many policies
        stays one object across reconfigurations.
        """
        with self._lock:
            self.ratio, self.min_per_second = other.ratio, other.min_per_second
            if (other.window, other.buckets) != (self.window, self.buckets):
                self.window, self.buckets = other.window, other.buckets
                self._bucket_span = other._bucket_span
                self._calls = [0] * other.buckets
                self._retries = [0] * other.buckets
                self._epoch = 0

    def statistics(self) -> RetryBudgetStatistics:
        """Return a snapshot of the window."""
        now = resolve(self._clock).monotonic()
        with self._lock:
            self._advance(now)
            return RetryBudgetStatistics(
                calls=sum(self._calls),
                retries=sum(self._retries),
                rejected=self._rejected,
                available=self._available(),
            )

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<RetryBudget ratio={self.ratio:g} min_per_second={self.min_per_second:g} "
            f"window={self.window:g}s calls={s.calls} retries={s.retries} available={s.available}>"
        )


RetryBudget.__module__ = "recoverly"
RetryBudgetStatistics.__module__ = "recoverly"
