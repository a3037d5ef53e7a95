"""ConnectionPoolMonitor: pool utilisation, exhaustion warnings and leak reports.

::

    monitor = ConnectionPoolMonitor(engine, warn_threshold=0.8, leak_timeout=30)
    monitor.status()   # {"size": 5, "checked_out": 4, "utilization": 0.27, ...}
    monitor.check()    # log (once) and return connections out for more than 30 s
    monitor.close()    # detach the pool listeners

The monitor listens to the pool's ``checkout``, ``checkin`` and ``detach``
events. Only a :class:`~sqlalchemy.pool.QueuePool` (and its asyncio variant)
reports its size, overflow and idle connections; with any other pool the
monitor still counts checkouts and finds leaks, and ``status()["unavailable"]``
names the fields the pool cannot tell.

.. versionadded:: 0.1
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.pool import Pool, QueuePool

from recoverly._core.clock import Clock, resolve
from recoverly._core.registry import POOL_MONITOR, REGISTRY
from recoverly._core.validate import Problems
from recoverly.db._pool_counts import PoolCounts
from recoverly.db._pool_limits import capacity as _pool_capacity
from recoverly.db._pool_limits import overflow_limit

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.pool import ConnectionPoolEntry
    from typing_extensions import Self

__all__ = ["ConnectionPoolMonitor", "PoolLeak"]

_log = logging.getLogger("recoverly")

#: Frames kept in a leak report, innermost last (library frames are dropped first).
_STACK_KEPT = 16
_SKIP_DIRS = (
    os.path.dirname(sqlalchemy.__file__) + os.sep,  # noqa: PTH120 - a prefix string
    os.path.abspath(__file__),  # noqa: PTH100 - compared as a string
)
#: Fields only a QueuePool can fill in.
_QUEUE_ONLY = ("size", "max_overflow", "capacity", "checked_in", "overflow", "utilization")


@dataclass(frozen=True, slots=True)
class PoolLeak:
    """A connection checked out for longer than the monitor's ``leak_timeout``.

    Attributes:
        connection_id: ``id()`` of the DB-API connection (it appears as
            ``0x...`` in SQLAlchemy's pool logs).
        age: Seconds since it was checked out.
        thread: Name of the thread that checked it out.
        stack: Where it was checked out: formatted frames, innermost last,
            with SQLAlchemy's own frames left out.

    .. versionadded:: 0.1
    """

    connection_id: int
    age: float
    thread: str
    stack: str


class _Checkout:
    """One checked-out connection as the monitor saw it."""

    __slots__ = ("connection_id", "frames", "reported", "since", "thread")

    def __init__(
        self,
        connection_id: int,
        since: float,
        thread: str,
        frames: list[tuple[str, int, str]] | None,
    ) -> None:
        self.connection_id = connection_id
        self.since = since
        self.thread = thread
        self.frames = frames
        self.reported = False


def _caller_frames() -> list[tuple[str, int, str]]:
    """Return ``(file, line, function)`` of the innermost frames outside SQLAlchemy and here.

    Walks the frames directly (no source lines are read until a leak is
    reported), so the cost per checkout stays a few microseconds.
    """
    found: list[tuple[str, int, str]] = []
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and len(found) < _STACK_KEPT:
        code = frame.f_code
        if not code.co_filename.startswith(_SKIP_DIRS):
            found.append((code.co_filename, frame.f_lineno, code.co_name))
        frame = frame.f_back
    found.reverse()
    return found


def _format(frames: list[tuple[str, int, str]] | None) -> str:
    if not frames:
        return "(stack not recorded)\n"
    summary = traceback.StackSummary.from_list(
        [traceback.FrameSummary(file, line, name) for file, line, name in frames]
    )
    return "".join(summary.format())


def _pool_of(engine: Any) -> Pool | None:
    sync_engine = getattr(engine, "sync_engine", engine)  # AsyncEngine -> Engine
    pool = getattr(sync_engine, "pool", sync_engine)
    return pool if isinstance(pool, Pool) else None


class ConnectionPoolMonitor:
    """Watch a SQLAlchemy connection pool: utilisation, exhaustion and leaks.

    ``status()`` returns a dict (see :meth:`status`). Each time the share of
    the pool's capacity in use reaches ``warn_threshold`` a WARNING is logged
    on the ``recoverly`` logger, once per crossing; an INFO follows when it
    drops back below. With ``leak_timeout`` set, the stack of every checkout
    is recorded, and :meth:`check` (also run by :meth:`status`) logs a WARNING,
    once per checkout, for each connection out longer than that, naming the
    code that checked it out. There is no background thread: call
    :meth:`check` from your own health check or scheduler.

    Thread-safe. Listeners are attached when the monitor is created and
    detached by :meth:`close` (or leaving a ``with`` block). The listeners
    belong to the pool, so they follow ``engine.dispose()`` to the new pool.
    An open monitor is listed by name for :mod:`recoverly.prometheus`, which
    exports its :meth:`status` (and so runs :meth:`check`) at every scrape;
    of two open monitors with the same name, the newer one is exported.

    Args:
        engine: A SQLAlchemy ``Engine``, an ``AsyncEngine`` or a ``Pool``.
        warn_threshold: Utilisation in ``(0, 1]`` at which to warn.
        leak_timeout: Seconds (or ``timedelta``) after which a checked-out
            connection counts as leaked; ``None`` (the default) turns leak
            detection and stack capture off.
        name: Name used in logs (default: the engine URL, password hidden).
        clock: Clock used to age checkouts (default: the process clock).

    Raises:
        TypeError: ``engine`` has no SQLAlchemy pool, or an argument has the
            wrong type.
        ValueError: ``warn_threshold`` is outside ``(0, 1]``, ``leak_timeout``
            is not positive, or ``name`` is empty.

    .. versionadded:: 0.1

    .. versionchanged:: 0.2
       Listed for the Prometheus exporter while open.
    """

    __slots__ = (
        "__weakref__",
        "_above",
        "_clock",
        "_closed",
        "_crossing",
        "_engine",
        "_listeners",
        "_lock",
        "_out",
        "_pool",
        "_untracked",
        "_watchers",
        "counts",
        "leak_timeout",
        "name",
        "warn_threshold",
    )

    def __init__(
        self,
        engine: Engine | AsyncEngine | Pool,
        warn_threshold: float = 0.8,
        *,
        leak_timeout: float | None = None,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        p = Problems()
        pool = _pool_of(engine)
        if pool is None:
            p._bad(
                f"engine must be a SQLAlchemy Engine, AsyncEngine or Pool, got {engine!r}",
                kind=True,
            )
        self.warn_threshold = p.fraction("warn_threshold", warn_threshold, low_open=True)
        self.leak_timeout = p.optional_duration("leak_timeout", leak_timeout, positive=True)
        given_name = p.optional_name("name", name)
        p.raise_if_any()
        pool = cast("Pool", pool)  # not None: checked above
        url = getattr(getattr(engine, "sync_engine", engine), "url", None)
        self.name = given_name or (repr(url) if url is not None else type(pool).__name__)
        self._engine = engine
        self._pool = pool
        self._clock = clock
        self._lock = threading.Lock()
        # Serialises a threshold crossing with its log line, so that warnings and
        # recoveries reach the log in the order they were decided.
        self._crossing = threading.Lock()
        self._out: dict[int, _Checkout] = {}
        # Connections already out when the monitor started (QueuePool only knows).
        self._untracked = pool.checkedout() if isinstance(pool, QueuePool) else 0
        self._above = False
        self._closed = False
        self._watchers: tuple[Callable[[str], None], ...] = ()
        self._listeners = (
            ("checkout", self._on_checkout),
            ("checkin", self._on_checkin),
            ("detach", self._on_detach),
            ("invalidate", self._on_invalidate),
            ("soft_invalidate", self._on_invalidate),
        )
        for identifier, fn in self._listeners:
            event.listen(pool, identifier, fn)
        self.counts = PoolCounts(self.name, clock)
        self.counts.notify = self._notify
        self.counts.time_checkouts(pool)
        self._crossed()
        # Listed for exporters (recoverly.prometheus reads status() at scrape time);
        # the newest open monitor of a name is the one listed.
        REGISTRY.register(POOL_MONITOR, self.name, self)

    # ------------------------------------------------------------ watchers
    def _watch(self, fn: Callable[[str], None]) -> None:
        """Call ``fn(kind)`` whenever ``checked_out + pending`` changes.

        ``kind`` is ``"start"`` (a checkout started: it is counted in
        ``counts.pending``), ``"failed"`` (one failed and is no longer counted)
        or ``"checkin"`` (while the pool still counts the returning connection
        as checked out). A successful checkout changes nothing: the caller
        moves from pending to checked out.
        """
        with self._lock:
            self._watchers = (*self._watchers, fn)

    def _unwatch(self, fn: Callable[[str], None]) -> None:
        with self._lock:
            self._watchers = tuple(w for w in self._watchers if w is not fn)

    def _notify(self, kind: str) -> None:
        for fn in self._watchers:
            fn(kind)

    # ------------------------------------------------------------ pool events
    def _on_checkout(self, dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        frames = _caller_frames() if self.leak_timeout is not None else None
        seen = _Checkout(
            id(dbapi_connection),
            resolve(self._clock).monotonic(),
            threading.current_thread().name,
            frames,
        )
        with self._lock:
            self._out[id(record)] = seen
        self._crossed()

    def _on_checkin(self, _dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        with self._lock:
            if self._out.pop(id(record), None) is None and self._untracked:
                self._untracked -= 1
        # The pool counts this connection as out until the event returns.
        self._crossed(returning=1)
        self._notify("checkin")

    def _on_invalidate(
        self, _dbapi_connection: Any, record: ConnectionPoolEntry, exception: BaseException | None
    ) -> None:
        with self._lock:
            in_use = id(record) in self._out
        self.counts.invalidated(in_use, exception)

    def _on_detach(self, _dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        with self._lock:
            self._out.pop(id(record), None)
        self._crossed()

    # ------------------------------------------------------------ threshold
    def _capacity(self) -> int | None:
        return _pool_capacity(self._current_pool())

    def _checked_out(self) -> int:
        pool = self._current_pool()
        if isinstance(pool, QueuePool):
            return pool.checkedout()
        with self._lock:
            return len(self._out) + self._untracked

    def _crossed(self, returning: int = 0) -> None:
        """Log when utilisation crosses ``warn_threshold`` (either way)."""
        capacity = self._capacity()
        if capacity is None:
            return
        pool = self._current_pool()
        if not isinstance(pool, QueuePool):  # pragma: no cover - capacity says it is
            return
        with self._crossing:  # decide, flip and log together: crossings alternate
            with self._lock:
                # Connections a PoolAutoscaler holds for an instant to wake waiters do not count.
                out = max(pool.checkedout() - returning - self.counts.held, 0)
                above = out / capacity >= self.warn_threshold
                changed, self._above = above != self._above, above
            if changed:
                self._log_crossing(above=above, out=out, capacity=capacity)

    def _log_crossing(self, *, above: bool, out: int, capacity: int) -> None:
        if above:
            _log.warning(
                "Connection pool %s is %.0f%% used (%d of %d connections checked out; "
                "warn_threshold %.0f%%): it may soon be exhausted",
                self.name,
                100 * out / capacity,
                out,
                capacity,
                100 * self.warn_threshold,
            )
        else:
            _log.info(
                "Connection pool %s is back below %.0f%% (%d of %d connections checked out)",
                self.name,
                100 * self.warn_threshold,
                out,
                capacity,
            )

    # ------------------------------------------------------------ public
    def _current_pool(self) -> Pool:
        """The engine's pool now (``engine.dispose()`` replaces it)."""
        pool = _pool_of(self._engine) or self._pool
        if not self._closed:
            self.counts.time_checkouts(pool)
        return pool

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` detached the listeners."""
        return self._closed

    def leaks(self) -> list[PoolLeak]:
        """Return the connections checked out for longer than ``leak_timeout``.

        Oldest first. Empty when ``leak_timeout`` is ``None``. Nothing is logged.
        """
        return [leak for leak, _ in self._find_leaks()]

    def check(self) -> list[PoolLeak]:
        """Like :meth:`leaks`, and log a WARNING for each leak not reported before.

        Returns:
            Every current leak (reported now or earlier).
        """
        found = self._find_leaks()
        for leak, first in found:
            if first:
                _log.warning(
                    "Connection pool %s: connection 0x%x has been checked out for %.1f s "
                    "(leak_timeout %.1f s) by thread %s and not returned; checked out at:\n%s",
                    self.name,
                    leak.connection_id,
                    leak.age,
                    self.leak_timeout,
                    leak.thread,
                    leak.stack,
                )
        return [leak for leak, _ in found]

    def _find_leaks(self) -> list[tuple[PoolLeak, bool]]:
        if self.leak_timeout is None:
            return []
        now = resolve(self._clock).monotonic()
        found: list[tuple[_Checkout, bool]] = []
        with self._lock:
            for seen in sorted(self._out.values(), key=lambda s: s.since):
                if now - seen.since > self.leak_timeout:
                    found.append((seen, not seen.reported))
                    seen.reported = True
        return [
            (
                PoolLeak(
                    seen.connection_id,
                    now - seen.since,
                    seen.thread,
                    _format(seen.frames),
                ),
                first,
            )
            for seen, first in found
        ]

    def status(self) -> dict[str, Any]:
        """Return the pool's state now, and report new leaks (see :meth:`check`).

        Keys: ``name``, ``pool`` (the pool class), ``size`` (connections kept
        open), ``max_overflow`` (extra connections allowed beyond ``size``),
        ``capacity`` (``size + max_overflow``), ``checked_out``, ``checked_in``
        (idle in the pool), ``overflow`` (extra connections open now, ``>= 0``),
        ``utilization`` (``checked_out / capacity``), ``warn_threshold``,
        ``leaks`` (how many connections are out longer than ``leak_timeout``),
        ``unavailable`` (the fields this pool cannot report, which are
        ``None``) and ``note`` (why, in words; ``None`` when nothing is
        missing). Counters: ``invalidated_in_use`` / ``invalidated_idle``
        (connections invalidated while checked out / idle), ``checkout_wait``
        (``count``, ``total``, ``max``, ``mean`` seconds waited for a
        connection), ``retries_by_verdict`` and ``commits_resolved`` (for the
        whole process, from the event stream). Without a bound (a pool that is not a ``QueuePool``,
        ``pool_size=0`` or ``max_overflow=-1``) ``capacity`` and
        ``utilization`` are ``None`` and no exhaustion warning is logged. For
        a pool that is not a ``QueuePool``, ``checked_out`` counts the
        checkouts this monitor saw that are not yet returned.

        Returns:
            A new dict.
        """
        pool = self._current_pool()
        leaks = len(self.check())
        info: dict[str, Any] = {"name": self.name, "pool": type(pool).__name__}
        info.update(dict.fromkeys(_QUEUE_ONLY), checked_out=self._checked_out())
        note = None
        if isinstance(pool, QueuePool):
            max_overflow = overflow_limit(pool)
            capacity = self._capacity()
            info.update(
                size=pool.size(),
                max_overflow=None if max_overflow < 0 else max_overflow,
                capacity=capacity,
                checked_in=pool.checkedin(),
                overflow=max(pool.overflow(), 0),
                utilization=None if capacity is None else info["checked_out"] / capacity,
            )
            if capacity is None:
                note = "the pool has no upper bound: no utilization, no exhaustion warning"
        else:
            note = (
                f"{type(pool).__name__} does not report its size or idle connections; "
                "checked_out counts the checkouts this monitor saw"
            )
        info.update(self.counts.snapshot())
        info.update(
            warn_threshold=self.warn_threshold,
            leaks=leaks,
            unavailable=[k for k in _QUEUE_ONLY if info[k] is None],
            note=note,
        )
        return info

    def close(self) -> None:
        """Detach the pool listeners; the monitor stops counting. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._out.clear()
        self.counts.stop()
        REGISTRY.unregister(POOL_MONITOR, self.name, self)
        for target in {id(p): p for p in (self._pool, self._current_pool())}.values():
            for identifier, fn in self._listeners:
                if event.contains(target, identifier, fn):
                    event.remove(target, identifier, fn)

    remove = close

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._checked_out()} checked out"
        return (
            f"<ConnectionPoolMonitor {self.name!r} {type(self._current_pool()).__name__} {state} "
            f"warn_threshold={self.warn_threshold} leak_timeout={self.leak_timeout}>"
        )


ConnectionPoolMonitor.__module__ = "recoverly.db"
PoolLeak.__module__ = "recoverly.db"
