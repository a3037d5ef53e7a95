"""PoolAutoscaler: a connection pool's limit that follows the load.

::

    engine = create_engine(url, pool_size=5, max_overflow=0, pool_timeout=10)
    scaler = PoolAutoscaler(engine, min_size=5, max_size=30)
    scaler.status()   # the monitor's figures plus min_size, max_size, spell, resizes...
    scaler.close()    # stop; the pool keeps the capacity it has

The capacity (``pool_size + max_overflow``: the most connections out at once)
grows when checkouts keep the pool busy and shrinks back after a quiet spell.
The rule is in :mod:`recoverly.db._autoscale_policy`; the one private
SQLAlchemy attribute it writes is in :mod:`recoverly.db._pool_limits`.

.. versionadded:: 0.2
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING, Any, Literal, cast

from sqlalchemy.pool import AsyncAdaptedQueuePool, Pool, QueuePool

from recoverly._core.bus import BUS
from recoverly._core.clock import Clock, resolve
from recoverly._core.validate import Problems
from recoverly.db._autoscale_policy import AutoscaleConfig, AutoscalePolicy, Decision
from recoverly.db._autoscale_support import (
    ahand_over,
    bounds,
    check_engine,
    hand_over,
    running_loop,
    waiters_to_serve,
)
from recoverly.db._pool_limits import capacity, set_capacity
from recoverly.db.pool import ConnectionPoolMonitor, _pool_of
from recoverly.events import PoolResized

if TYPE_CHECKING:
    from types import TracebackType

    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine
    from typing_extensions import Self

__all__ = ["PoolAutoscaler"]

_log = logging.getLogger("recoverly")


class PoolAutoscaler:
    """Grow a QueuePool's capacity while it is busy, shrink it back when it is quiet.

    The capacity is the most connections the pool may have out at once
    (``pool_size + max_overflow``). Demand is the connections checked out plus
    the checkouts in progress (waiting for a connection or opening one), and
    ``utilization = demand / capacity``:

    * at or above ``grow_at`` for ``grow_after`` seconds, the capacity grows to
      fit the busiest moment of that spell at the utilisation midway between
      the thresholds (by at least one connection), up to ``max_size``;
    * at or below ``shrink_at`` for ``shrink_after`` seconds, it shrinks the
      same way, never below ``min_size`` and never below the connections
      checked out at that moment;
    * after a change, the next one waits ``cooldown`` seconds.

    Growing takes effect at the next checkout; checkouts already waiting are
    handed a new connection each (by the autoscaler's thread) instead of
    sitting out their ``pool_timeout``. Shrinking closes nothing in use:
    SQLAlchemy closes a connection beyond ``pool_size`` when it is returned to
    a pool that already holds ``pool_size`` idle ones, so ``pool_size`` is the
    number kept open through quiet times and the floor of ``min_size``.

    Decisions are made on the pool's own events (checkout, checkin, a checkout
    starting) and by a daemon thread every ``interval`` seconds, which also
    sees quiet spells with no events at all. Each resize emits a
    :class:`~recoverly.events.PoolResized` event (logged at INFO). A
    :class:`ConnectionPoolMonitor` (``monitor``, created when not given)
    supplies the counts; :meth:`status` is its status plus the autoscaler's.

    Args:
        engine: An ``Engine``, ``AsyncEngine`` or their ``QueuePool`` /
            ``AsyncAdaptedQueuePool``, with ``pool_size >= 1`` and
            ``max_overflow >= 0``.
        max_size: The most connections the pool may ever have out.
        min_size: The least capacity (default: the pool's ``pool_size``);
            at least ``pool_size``. At start the capacity is brought within
            ``[min_size, max_size]``.
        grow_at: Utilisation in ``(0, 1]`` that counts as busy.
        shrink_at: Utilisation in ``[0, grow_at)`` that counts as idle.
        grow_after: Seconds (or ``timedelta``) of busy before growing.
        shrink_after: Seconds of idle before shrinking.
        cooldown: Seconds after a resize before the next one.
        interval: Seconds between the thread's checks; ``None``: no thread
            (call :meth:`tick` yourself).
        server_limit: ``None`` (do not look), ``"auto"`` (ask the server at
            start, see :func:`server_connection_limit`; synchronous engines
            only) or the number of connections the server allows.
        server_headroom: Connections of ``server_limit`` left to others;
            ``max_size`` is lowered (with a WARNING) to ``server_limit -
            server_headroom`` when it is above.
        monitor: A monitor of the same pool to use (default: a new one).
        name: Name used in logs and events (default: the monitor's).
        clock: Clock for the decisions (default: the process clock).

    Raises:
        TypeError: ``engine`` has no QueuePool, or an argument has the wrong type.
        ValueError: A bound or threshold is out of range, or the pool has no
            limit (``pool_size=0`` or ``max_overflow=-1``).
        RuntimeError: The installed SQLAlchemy lacks the pool attribute the
            autoscaler writes (see ``recoverly.db._pool_limits``).

    .. versionadded:: 0.2
    """

    __slots__ = (
        "_async_engine",
        "_clock",
        "_closed",
        "_engine",
        "_handover",
        "_last",
        "_lock",
        "_loop",
        "_own_monitor",
        "_policy",
        "_resizes",
        "_stop",
        "_thread",
        "_wake",
        "config",
        "interval",
        "monitor",
        "name",
        "server_limit",
    )

    def __init__(
        self,
        engine: Engine | AsyncEngine | Pool,
        *,
        max_size: int,
        min_size: int | None = None,
        grow_at: float = 0.9,
        shrink_at: float = 0.4,
        grow_after: float = 1.0,
        shrink_after: float = 60.0,
        cooldown: float = 5.0,
        interval: float | None = 1.0,
        server_limit: int | Literal["auto"] | None = None,
        server_headroom: int = 10,
        monitor: ConnectionPoolMonitor | None = None,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        p = Problems()
        pool = check_engine(p, engine)
        max_size = p.int_at_least("max_size", max_size, 1)
        min_size = p.optional_int_at_least("min_size", min_size, 1)
        before = len(p.messages)
        grow_at = p.fraction("grow_at", grow_at, low_open=True)
        shrink_at = p.fraction("shrink_at", shrink_at)
        if shrink_at >= grow_at and len(p.messages) == before:
            p._bad(f"shrink_at must be < grow_at ({grow_at!r}), got {shrink_at!r}")
        durations = {
            key: p.duration(key, value)
            for key, value in (
                ("grow_after", grow_after),
                ("shrink_after", shrink_after),
                ("cooldown", cooldown),
            )
        }
        self.interval = p.optional_duration("interval", interval, positive=True)
        server_headroom = p.int_at_least("server_headroom", server_headroom, 0)
        given_limit: object = server_limit  # checked at run time, whatever the annotation
        if isinstance(given_limit, str) and given_limit != "auto":
            p._bad(
                f"server_limit must be None, 'auto' or an integer >= 1, got {given_limit!r}",
                kind=True,
            )
        elif given_limit is not None and given_limit != "auto":
            server_limit = p.int_at_least("server_limit", given_limit, 1)
        monitor = p.optional_instance("monitor", monitor, ConnectionPoolMonitor)
        if monitor is not None and pool is not None and monitor._current_pool() is not pool:
            p._bad("monitor must watch the same pool as engine", kind=True)
        given_name = p.optional_name("name", name)
        p.raise_if_any()
        pool = cast("QueuePool", pool)
        floor, max_size, self.server_limit = bounds(
            engine, pool, min_size, max_size, server_limit, server_headroom
        )
        self.config = AutoscaleConfig(floor, max_size, grow_at, shrink_at, **durations)
        self._engine = engine
        self._async_engine = engine if hasattr(engine, "sync_engine") else None
        self._own_monitor = monitor is None
        self.monitor = monitor or ConnectionPoolMonitor(engine, clock=clock)
        self.name = given_name or self.monitor.name
        self._clock = clock
        self._lock = threading.Lock()
        self._policy = AutoscalePolicy(self.config)
        self._closed = False
        self._resizes = 0
        self._handover = False
        self._last: tuple[PoolResized, float] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._start(pool)

    def _start(self, pool: QueuePool) -> None:
        now = resolve(self._clock).monotonic()
        old = capacity(pool) or self.config.min_size
        new = min(max(old, self.config.min_size), self.config.max_size)
        if new != old:
            set_capacity(pool, new)
            self._resizes += 1
            self._last = (PoolResized(self.name, old, new, "limits", pool.checkedout() / old), now)
            self._emit(self._last[0])
        self.monitor._watch(self._observe)
        if self.interval is not None:
            self._thread = threading.Thread(
                target=self._run, name=f"recoverly-pool-autoscaler-{self.name}", daemon=True
            )
            self._thread.start()

    # ------------------------------------------------------------ decisions
    def _pool(self) -> QueuePool | None:
        pool = _pool_of(self._engine)
        return pool if isinstance(pool, QueuePool) else None

    def _observe(self, kind: str) -> None:
        """Pool-event hook: never raises into the checkout or checkin."""
        try:
            self._decide(kind)
        except Exception:  # pragma: no cover - a bug must not break a checkout
            _log.exception("PoolAutoscaler %s: decision failed", self.name)

    def _decide(self, kind: str) -> Decision | None:
        pool = self._pool()
        if pool is None:
            return None
        if kind == "start" and isinstance(pool, AsyncAdaptedQueuePool):
            loop = self._loop
            if loop is None or loop.is_closed():  # learn (or relearn) the engine's loop
                self._loop = running_loop()
        now = resolve(self._clock).monotonic()
        with self._lock:
            cap = capacity(pool)
            if self._closed or cap is None:
                return None
            # Connections the autoscaler holds while handing them to waiters are not demand.
            counts = self.monitor.counts
            out = pool.checkedout() - (kind == "checkin") - counts.held
            pending = counts.pending
            decision = self._policy.observe(now, cap, out, pending)
            if decision is None:
                return None
            set_capacity(pool, decision.new)
            self._resizes += 1
            event = PoolResized(self.name, cap, decision.new, decision.reason, decision.utilization)
            self._last = (event, now)
            # Checkouts blocked on the queue are not woken by the higher limit (the
            # one starting now is not blocked: it opens a connection next).
            waiting = pending - (kind == "start")
            self._handover = self._handover or (decision.new > cap and waiting > 0)
        self._emit(event)
        if self._handover:
            self._wake.set()
        return decision

    @staticmethod
    def _emit(event: PoolResized) -> None:
        if BUS.wants(PoolResized):
            BUS.emit(event)

    def tick(self) -> int | None:
        """Check the pool now; return the new capacity if this check resized it.

        The thread calls this every ``interval``; call it yourself with
        ``interval=None`` (from any thread). Also hands new connections to
        checkouts still waiting after a growth.
        """
        decision = self._decide("tick")
        with self._lock:
            handover, self._handover = self._handover, False
        if handover:
            self._release_waiters()
        return None if decision is None else decision.new

    def _release_waiters(self) -> None:
        """After a growth, give each checkout blocked on the queue a new connection.

        A higher limit does not wake them; returning a fresh connection to the
        queue wakes one. Stops when nobody takes one: nobody is waiting then.
        """
        pool = self._pool()
        if pool is None or self._closed:
            return
        if isinstance(pool, AsyncAdaptedQueuePool):
            self._release_async_waiters(pool)
            return
        hand_over(pool, self.monitor.counts.original_connect(pool), self)

    def _release_async_waiters(self, pool: QueuePool) -> None:
        loop, engine = self._loop, self._async_engine
        if loop is None or engine is None or loop.is_closed():
            return
        if waiters_to_serve(pool, self.monitor.counts.pending):
            asyncio.run_coroutine_threadsafe(ahand_over(engine, pool, self), loop)

    def hold(self, change: int) -> None:
        """Count connections held by a hand-over (they are not demand)."""
        counts = self.monitor.counts
        with counts._lock:
            counts.held += change

    def _run(self) -> None:
        interval = cast("float", self.interval)
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.tick()
            except Exception:  # pragma: no cover - keep checking after a failed pass
                _log.exception("PoolAutoscaler %s: check failed", self.name)

    # ------------------------------------------------------------ public
    @property
    def capacity(self) -> int | None:
        """The pool's capacity now (``None`` once the engine's pool has no limit)."""
        pool = self._pool()
        return None if pool is None else capacity(pool)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return self._closed

    def status(self) -> dict[str, Any]:
        """Return the monitor's :meth:`~ConnectionPoolMonitor.status` plus the autoscaler's keys.

        Added keys: ``min_size``, ``max_size`` (after any lowering to the
        server's limit), ``server_limit`` (``None`` when not read), ``spell``
        (``"busy"``, ``"idle"`` or ``"steady"``) and ``spell_seconds`` (how
        long so far), ``cooldown_left`` (seconds before a resize may happen),
        ``resizes`` (how many so far) and ``last_resize`` (``None`` or a dict
        with ``old``, ``new``, ``reason``, ``utilization`` and ``seconds_ago``).

        Returns:
            A new dict.
        """
        info = self.monitor.status()
        now = resolve(self._clock).monotonic()
        with self._lock:
            spell, seconds = self._policy.spell(now)
            changed = self._policy.last_change
            left = 0.0 if changed is None else max(self.config.cooldown - (now - changed), 0.0)
            last = self._last
            info.update(
                min_size=self.config.min_size,
                max_size=self.config.max_size,
                server_limit=self.server_limit,
                spell=spell,
                spell_seconds=seconds,
                cooldown_left=left,
                resizes=self._resizes,
            )
        info["last_resize"] = (
            None
            if last is None
            else {
                "old": last[0].old,
                "new": last[0].new,
                "reason": last[0].reason,
                "utilization": last[0].utilization,
                "seconds_ago": now - last[1],
            }
        )
        return info

    def close(self) -> None:
        """Stop resizing and the thread; the pool keeps its current capacity. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.monitor._unwatch(self._observe)
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        if self._own_monitor:
            self.monitor.close()

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
        now = resolve(self._clock).monotonic()
        state = "closed" if self._closed else self._policy.spell(now)[0]
        return (
            f"<PoolAutoscaler {self.name!r} capacity={self.capacity} "
            f"min_size={self.config.min_size} max_size={self.config.max_size} {state}>"
        )


PoolAutoscaler.__module__ = "recoverly.db"
