"""The one place that reads and writes a QueuePool's overflow limit.

SQLAlchemy has no public way to change how many connections a live
:class:`~sqlalchemy.pool.QueuePool` may open. Its limit is
``pool_size + max_overflow``; ``pool_size`` is the size of the pool's internal
queue (fixed when the queue is built: an asyncio queue's size cannot change),
while ``max_overflow`` is a plain integer, ``QueuePool._max_overflow``, read on
each checkout (under the pool's overflow lock when it decides whether to open
a connection). Writing that integer is what :class:`~recoverly.db.PoolAutoscaler`
does, and only here; :func:`check_resizable` verifies at start-up that the
installed SQLAlchemy still has it, and says so clearly when it does not.

``pool.recreate()`` and ``engine.dispose()`` copy the limit to the new pool,
so a resized limit survives them.
"""

from __future__ import annotations

import sqlalchemy
from sqlalchemy.pool import Pool, QueuePool

__all__ = ["capacity", "check_resizable", "overflow_limit", "set_capacity"]

#: The private attribute this module relies on.
_ATTR = "_max_overflow"
#: A QueuePool method whose presence shows the overflow accounting we rely on.
_ACCOUNTING = "_inc_overflow"


def check_resizable(pool: Pool) -> tuple[type[Exception], str] | None:
    """Return why ``pool``'s limit cannot be changed (exception class, text), or ``None``.

    ``TypeError``: not a QueuePool. ``RuntimeError``: this SQLAlchemy lacks the
    attribute. ``ValueError``: the pool has no limit to change.
    """
    if not isinstance(pool, QueuePool):
        return TypeError, (
            "only a QueuePool (or AsyncAdaptedQueuePool) has a limit to resize, "
            f"got {type(pool).__name__}"
        )
    limit = getattr(pool, _ATTR, None)
    if (
        isinstance(limit, bool)
        or not isinstance(limit, int)
        or not callable(getattr(pool, _ACCOUNTING, None))
    ):
        return RuntimeError, (
            f"SQLAlchemy {sqlalchemy.__version__}'s QueuePool has no integer {_ATTR} and "
            f"{_ACCOUNTING}(), through which recoverly.db resizes a pool: this SQLAlchemy "
            "version is not supported by PoolAutoscaler"
        )
    if pool.size() == 0 or limit < 0:
        return ValueError, (
            f"the pool has no limit (pool_size={pool.size()}, max_overflow={limit}); "
            "create the engine with pool_size >= 1 and max_overflow >= 0"
        )
    return None


def overflow_limit(pool: QueuePool) -> int:
    """Return ``max_overflow`` as the pool uses it now (``-1``: no limit)."""
    limit: int = getattr(pool, _ATTR)
    return limit


def capacity(pool: Pool) -> int | None:
    """Return how many connections ``pool`` may have out at once, ``None`` if unbounded."""
    if not isinstance(pool, QueuePool):
        return None
    limit = overflow_limit(pool)
    if pool.size() == 0 or limit < 0:
        return None
    return pool.size() + limit


def set_capacity(pool: QueuePool, connections: int) -> None:
    """Let ``pool`` open at most ``connections`` (``>= pool.size()``) at once.

    Raising it lets the next checkout open a connection at once; lowering it
    closes nothing: checkouts wait (or open nothing new) until fewer are out,
    and connections beyond ``pool_size`` are closed as they are returned to a
    pool already holding ``pool_size`` idle ones (SQLAlchemy's own rule).
    """
    limit = connections - pool.size()
    if limit < 0:  # pragma: no cover - callers never go below pool_size
        msg = f"connections must be >= pool_size ({pool.size()}), got {connections}"
        raise ValueError(msg)
    setattr(pool, _ATTR, limit)
