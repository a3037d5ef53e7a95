"""What a ConnectionPoolMonitor counts while connections are in use.

* connections invalidated (lost, or thrown away after an error) while checked
  out, and while idle in the pool (pool ``invalidate`` / ``soft_invalidate``
  events; a :class:`~recoverly.events.ConnectionInvalidated` event each);
* how long checkouts waited for a connection (the pool's ``connect`` is timed),
  and how many are inside ``connect`` now (``pending``: waiting for a
  connection or opening one);
* database retries by verdict, and lost COMMITs resolved by verdict, taken from
  recoverly's event stream (``RetryScheduled`` whose error is a database error,
  ``CommitResolved``): these are counted for the whole process, since an event
  does not say which engine it came from.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import Pool

from recoverly._core.bus import BUS
from recoverly._core.clock import Clock, resolve
from recoverly.db._classify import classify
from recoverly.events import CommitResolved, ConnectionInvalidated, RetryScheduled, subscribe
from recoverly.events import unsubscribe as _unsubscribe

__all__ = ["PoolCounts"]


class PoolCounts:
    """Counters of one monitor; thread-safe."""

    __slots__ = (
        "_clock",
        "_lock",
        "_wrapped",
        "commits",
        "held",
        "invalidated_idle",
        "invalidated_in_use",
        "name",
        "notify",
        "pending",
        "retries",
        "wait_count",
        "wait_max",
        "wait_total",
    )

    def __init__(self, name: str, clock: Clock | None) -> None:
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._wrapped: dict[int, tuple[Pool, Any]] = {}
        self.invalidated_in_use = 0
        self.invalidated_idle = 0
        self.wait_count = 0
        self.wait_total = 0.0
        self.wait_max = 0.0
        self.pending = 0
        #: Connections a PoolAutoscaler holds for an instant to wake waiting checkouts.
        self.held = 0
        #: Called with ``"start"`` when a checkout starts, ``"failed"`` when one fails.
        self.notify: Callable[[str], None] | None = None
        self.retries: Counter[str] = Counter()
        self.commits: Counter[str] = Counter()
        subscribe(self._on_event, (RetryScheduled, CommitResolved))

    # ---------------------------------------------------------------- pool side
    def invalidated(self, in_use: bool, exception: BaseException | None) -> None:
        """Count one invalidated connection and emit the event."""
        with self._lock:
            if in_use:
                self.invalidated_in_use += 1
            else:
                self.invalidated_idle += 1
        if BUS.wants(ConnectionInvalidated):
            BUS.emit(ConnectionInvalidated(self.name, in_use, exception))

    def time_checkouts(self, pool: Pool) -> None:
        """Wrap ``pool.connect`` so each checkout's wait is measured (once per pool)."""
        if id(pool) in self._wrapped:
            return
        original = pool.connect
        clock = self._clock

        def connect() -> Any:
            now = resolve(clock).monotonic
            started = now()
            self._enter()
            ok = False
            try:
                conn = original()
                ok = True
            finally:
                self._waited(now() - started, ok)
            return conn

        pool.connect = connect  # type: ignore[method-assign]
        self._wrapped[id(pool)] = (pool, original)

    def original_connect(self, pool: Pool) -> Callable[[], Any]:
        """Return ``pool``'s own ``connect`` (not timed, not counted as pending)."""
        found = self._wrapped.get(id(pool))
        return pool.connect if found is None else found[1]

    def _enter(self) -> None:
        with self._lock:
            self.pending += 1
        notify = self.notify
        if notify is not None:
            notify("start")

    def _waited(self, seconds: float, ok: bool) -> None:
        with self._lock:
            self.pending -= 1
            self.wait_count += 1
            self.wait_total += seconds
            self.wait_max = max(self.wait_max, seconds)
        notify = self.notify
        if notify is not None and not ok:
            # A success changed nothing: the checkout event already moved the
            # caller from pending to checked out. A failure took one away.
            notify("failed")

    # ---------------------------------------------------------------- event side
    def _on_event(self, event: Any) -> None:
        if isinstance(event, CommitResolved):
            with self._lock:
                self.commits[event.verdict] += 1
        elif isinstance(event.exception, sa_exc.SQLAlchemyError):
            verdict = classify(event.exception).verdict.value
            with self._lock:
                self.retries[verdict] += 1

    # ---------------------------------------------------------------- read / stop
    def snapshot(self) -> dict[str, Any]:
        """The counters as plain values."""
        with self._lock:
            return {
                "invalidated_in_use": self.invalidated_in_use,
                "invalidated_idle": self.invalidated_idle,
                "pending": self.pending,
                "checkout_wait": {
                    "count": self.wait_count,
                    "total": self.wait_total,
                    "max": self.wait_max,
                    "mean": self.wait_total / self.wait_count if self.wait_count else None,
                },
                "retries_by_verdict": dict(self.retries),
                "commits_resolved": dict(self.commits),
            }

    def stop(self) -> None:
        """Unwrap the pools and leave the event stream."""
        _unsubscribe(self._on_event)
        for pool, original in self._wrapped.values():
            pool.connect = original  # type: ignore[method-assign]
        self._wrapped.clear()
