"""The rate limiter's store interface and its in-memory implementation (GCRA).

GCRA (the generic cell rate algorithm) keeps one number per key: the
*theoretical arrival time* ``tat``, the moment at which the bucket would be
full again. With ``interval = per / rate`` seconds per token and a bucket of
``burst`` tokens, taking ``n`` tokens at time ``now`` is::

    tat = max(stored tat, now)
    new_tat = tat + n * interval
    allowed_at = new_tat - burst * interval
    admitted if allowed_at <= now (then store new_tat), else wait allowed_at - now

Over any window of ``w`` seconds this admits at most ``burst + w / interval``
tokens, under any arrival pattern. A key whose ``tat`` lies in the past holds
a full bucket, exactly as a key never seen, so forgetting it changes nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Protocol, runtime_checkable

from recoverly._core.validate import Problems

__all__ = ["SLACK", "InMemoryLimiterStore", "LimiterStore"]

#: A wait shorter than this (one nanosecond) counts as no wait: without it, float
#: rounding could leave a caller sleeping 1e-17 s again and again.
SLACK = 1e-9


@runtime_checkable
class LimiterStore(Protocol):
    """Where a :class:`~recoverly.RateLimiter` keeps its buckets; each operation is atomic.

    Every method receives the limiter's settings (``interval`` seconds per
    token, ``burst`` tokens), so a store keeps nothing but one theoretical
    arrival time per key. This shape fits a shared store: :meth:`take` is one
    Lua script over one key (``GET``, compare, ``SET`` with an expiry of
    ``burst * interval``), and such a store may read the server's ``TIME``
    instead of ``now``.

    Keys are the limiter's keys (any hashable; ``None`` is the limiter's
    single shared bucket). A store that needs text uses ``str(key)``.

    .. versionadded:: 0.2
    """

    def take(
        self, key: Hashable, tokens: int, now: float, interval: float, burst: int
    ) -> tuple[bool, float]:
        """Take ``tokens`` for ``key`` at ``now`` if they are free.

        Returns:
            ``(True, 0.0)`` when admitted (the tokens are spent), else
            ``(False, retry_after)``: the seconds until they would be free.
            Waits under :data:`SLACK` count as free.
        """
        ...

    def available(self, key: Hashable, now: float, interval: float, burst: int) -> float:
        """Return how many tokens ``key`` could take at ``now`` (a float in ``[0, burst]``)."""
        ...

    def clear(self) -> None:
        """Forget every key: every bucket is full again."""
        ...


class InMemoryLimiterStore:
    """The default limiter store: a dict of theoretical arrival times behind a lock.

    At most ``max_keys`` keys are tracked. When a new key would exceed the
    bound, the least recently admitted key is forgotten. If its bucket had
    refilled (the usual case for an idle key) nothing changes; if it had not,
    that key may get up to one extra burst later. Size ``max_keys`` above the
    number of keys active within ``burst * interval`` seconds to keep the limit
    exact for every key.

    Args:
        max_keys: The most keys tracked at a time.

    Raises:
        ValueError: ``max_keys`` is not an integer >= 1.

    .. versionadded:: 0.2
    """

    __slots__ = ("_lock", "_tats", "evicted", "max_keys")

    def __init__(self, max_keys: int = 10_000) -> None:
        p = Problems()
        self.max_keys = p.int_at_least("max_keys", max_keys, 1)
        p.raise_if_any()
        self._lock = threading.Lock()
        # Insertion order is recency order: an admitted key is moved to the end.
        self._tats: dict[Hashable, float] = {}
        #: Keys forgotten while their bucket was still refilling.
        self.evicted = 0

    def take(
        self, key: Hashable, tokens: int, now: float, interval: float, burst: int
    ) -> tuple[bool, float]:
        """Take ``tokens`` for ``key`` at ``now``; see :meth:`LimiterStore.take`."""
        tats = self._tats
        with self._lock:
            tat = tats.pop(key, now)
            tat = max(tat, now)
            new_tat = tat + tokens * interval
            wait = new_tat - burst * interval - now
            if wait > SLACK:
                if tat > now:  # put it back (as most recent: it is in use)
                    tats[key] = tat
                return False, wait
            tats[key] = new_tat
            if len(tats) > self.max_keys:
                self._evict_oldest(now)
        return True, 0.0

    def _evict_oldest(self, now: float) -> None:
        oldest = next(iter(self._tats))
        if self._tats.pop(oldest) > now:
            self.evicted += 1

    def available(self, key: Hashable, now: float, interval: float, burst: int) -> float:
        """Return the tokens ``key`` could take at ``now``."""
        with self._lock:
            tat = self._tats.get(key, now)
        owed = max(tat - now, 0.0) / interval
        return max(0.0, burst - owed)

    def clear(self) -> None:
        """Forget every key."""
        with self._lock:
            self._tats.clear()

    def __len__(self) -> int:
        """Return the number of keys tracked."""
        return len(self._tats)

    def __repr__(self) -> str:
        return f"<InMemoryLimiterStore keys={len(self._tats)}/{self.max_keys}>"
