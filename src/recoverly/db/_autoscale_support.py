"""PoolAutoscaler's helpers: settings checks and the hand-over to blocked checkouts.

The settings are checked against the pool and the server's connection limit;
the hand-over gives checkouts blocked on the pool's queue a new connection
each after a growth (sync and async twins, side by side).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from sqlalchemy.engine import Engine as SyncEngine
from sqlalchemy.pool import Pool, QueuePool

from recoverly._core.validate import Problems
from recoverly.db._pool_limits import capacity, check_resizable
from recoverly.db._server_limit import server_connection_limit
from recoverly.db.pool import _pool_of

if TYPE_CHECKING:
    from recoverly.db._autoscale_policy import AutoscaleConfig
    from recoverly.db.pool import ConnectionPoolMonitor

__all__ = [
    "Scaler",
    "ahand_over",
    "bounds",
    "check_engine",
    "hand_over",
    "read_server_limit",
    "running_loop",
    "waiters_to_serve",
]

_log = logging.getLogger("recoverly")

#: How long a hand-over waits for a waiting checkout to take its connection
#: (polls of the pool, real time): 50 x 2 ms.
_POLLS = 50
_POLL = 0.002


class Scaler(Protocol):
    """What a hand-over needs of its PoolAutoscaler."""

    name: str
    monitor: ConnectionPoolMonitor
    config: AutoscaleConfig
    _stop: threading.Event

    @property
    def closed(self) -> bool:
        """Whether the autoscaler was closed."""
        ...

    def hold(self, change: int) -> None:
        """Count connections held by the hand-over."""
        ...


def check_engine(p: Problems, engine: object) -> Pool | None:
    """Return the engine's pool, recording why it cannot be autoscaled."""
    pool = _pool_of(engine)
    if pool is None:
        p._bad(
            f"engine must be a SQLAlchemy Engine, AsyncEngine or Pool, got {engine!r}",
            kind=True,
        )
        return None
    problem = check_resizable(pool)
    if problem is not None:
        kind, text = problem
        if kind is RuntimeError:
            raise RuntimeError(text)
        p._bad(f"engine: {text}", kind=kind is TypeError)
    return pool


def bounds(
    engine: object,
    pool: QueuePool,
    min_size: int | None,
    max_size: int,
    server_limit: int | str | None,
    server_headroom: int,
) -> tuple[int, int, int | None]:
    """Return ``(min_size, max_size, server limit)`` checked against the pool and the server."""
    p = Problems()
    floor = pool.size() if min_size is None else min_size
    if floor < pool.size():
        p._bad(
            f"min_size must be >= the pool's pool_size ({pool.size()}), got {floor}: "
            "connections up to pool_size are kept open"
        )
    if floor > max_size:
        p._bad(f"min_size must be <= max_size ({max_size}), got {floor}")
    p.raise_if_any()
    limit = read_server_limit(engine, server_limit)
    if limit is None:
        return floor, max_size, None
    usable = limit - server_headroom
    if usable < floor:
        msg = (
            f"the server allows {limit} connections; less server_headroom "
            f"{server_headroom} leaves {usable}, below min_size {floor}"
        )
        raise ValueError(msg)
    if usable < max_size:
        _log.warning(
            "PoolAutoscaler: max_size %d lowered to %d (the server allows %d connections, "
            "server_headroom %d)",
            max_size,
            usable,
            limit,
            server_headroom,
        )
    return floor, min(max_size, usable), limit


def read_server_limit(engine: object, server_limit: int | str | None) -> int | None:
    """Return ``server_limit``, asking the server when it is ``"auto"``."""
    if server_limit != "auto":
        return cast("int | None", server_limit)
    if not isinstance(engine, SyncEngine):
        msg = (
            'server_limit="auto" needs a synchronous Engine, got '
            f"{type(engine).__name__}; read the limit with `server_connection_limit(conn)` "
            "(or `await conn.run_sync(server_connection_limit)`) and pass the number"
        )
        raise TypeError(msg)
    with engine.connect() as conn:
        return server_connection_limit(conn)


def waiters_to_serve(pool: QueuePool, pending: int) -> int:
    """How many new connections to hand out: waiting checkouts, up to the room left.

    None while an idle connection is in the pool (a waiter takes that one).
    """
    limit = capacity(pool)
    if pending <= 0 or limit is None or pool.checkedin() > 0:
        return 0
    return max(min(pending, limit - (pool.size() + pool.overflow())), 0)


def running_loop() -> asyncio.AbstractEventLoop | None:
    """Return the event loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def hand_over(pool: QueuePool, connect: Callable[[], Any], scaler: Scaler) -> None:
    """After a growth, give each checkout blocked on the queue a new connection.

    A higher limit does not wake them; returning a fresh connection to the
    queue wakes one. One at a time: the queue holds only ``pool_size``, so a
    second connection put before the waiter took the first could be closed as
    surplus. Stops when nobody takes one (nobody is waiting then).
    """
    try:
        for _ in range(scaler.config.max_size):
            if scaler.closed or not waiters_to_serve(pool, scaler.monitor.counts.pending):
                return
            scaler.hold(1)
            try:
                connect().close()  # back into the queue at once: that wakes one waiter
            finally:
                scaler.hold(-1)
            for _ in range(_POLLS):
                if pool.checkedin() == 0:
                    break
                scaler._stop.wait(_POLL)
            else:
                return
    except Exception as exc:  # best effort: the waiters meet the same error themselves
        _log.warning(
            "PoolAutoscaler %s: could not open a connection for waiting checkouts: %s",
            scaler.name,
            exc,
        )


async def ahand_over(engine: Any, pool: QueuePool, scaler: Scaler) -> None:
    """:func:`hand_over` on the event loop of an ``AsyncEngine``."""
    try:
        for _ in range(scaler.config.max_size):
            if scaler.closed or not waiters_to_serve(pool, scaler.monitor.counts.pending):
                return
            scaler.hold(1)
            try:
                async with engine.connect():
                    pass
            finally:
                scaler.hold(-1)
            for _ in range(_POLLS):
                if pool.checkedin() == 0:
                    break
                await asyncio.sleep(_POLL)
            else:
                return
    except Exception as exc:  # best effort: the waiters meet the same error themselves
        _log.warning(
            "PoolAutoscaler %s: could not open a connection for waiting checkouts: %s",
            scaler.name,
            exc,
        )
