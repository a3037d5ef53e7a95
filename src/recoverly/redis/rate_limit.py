"""RedisRateLimiter: one rate limit shared by every process, GCRA in one Lua script.

:class:`RedisLimiterStore` implements :class:`~recoverly.stores.LimiterStore`
with :data:`~recoverly.redis._scripts.GCRA`: each decision is exactly one
``EVALSHA`` round trip, timed by the server's ``TIME`` so that processes with
different local clocks agree. :class:`RedisRateLimiter` is a
:class:`~recoverly.RateLimiter` over that store.

.. versionadded:: 0.2
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from recoverly._core.clock import Clock, SystemClock
from recoverly._core.validate import Problems
from recoverly.rate_limit import RateLimiter
from recoverly.redis._link import ERRORS, Outage, Script, check_name, make_client, text
from recoverly.redis._scripts import GCRA
from recoverly.stores import InMemoryLimiterStore

__all__ = ["RedisLimiterStore", "RedisRateLimiter"]

_SCRIPT = Script(GCRA)
_REAL = SystemClock()  # reconnection attempts are paced in real time


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


class RedisLimiterStore:
    """A :class:`~recoverly.stores.LimiterStore` in Redis: buckets shared by processes.

    One key per bucket (``<prefix>rate:{<name>}`` plus ``:<key>`` for keyed
    buckets) holds the theoretical arrival time and expires once the bucket
    is full again. Every :meth:`take` is one ``EVALSHA``; the ``now`` argument
    is ignored in favour of the server's clock.

    Redis unreachable: one WARNING on ``recoverly.redis``, then, with
    ``fail_open=True``, decisions are made by a local in-memory store (each
    process then admits the full rate on its own); with ``fail_open=False``
    every request is refused with ``retry_after`` = the time to the next
    reconnection attempt. Reconnection is attempted by the first decision
    after every ``reconnect_interval`` seconds; on success one INFO line is
    logged and shared decisions resume.

    Args:
        client: A ``redis.Redis`` client, or a URL (the client then gets 0.25 s
            socket timeouts). Keep your own client's timeouts short as well.
        name: The shared limiter's name (part of every key).
        prefix: Prefix of every key.
        fail_open: While Redis is unreachable, ``True`` decides locally and
            ``False`` refuses.
        reconnect_interval: Seconds between reconnection attempts during an outage.

    Raises:
        ValueError: A setting is out of range (every bad setting is listed).
        TypeError: A setting has the wrong type.

    .. versionadded:: 0.2
    """

    __slots__ = ("_base", "_client", "_local", "_outage", "_owns_client", "fail_open", "name")

    def __init__(
        self,
        client: Any,
        name: str,
        *,
        prefix: str = "recoverly:",
        fail_open: bool = True,
        reconnect_interval: float = 1.0,
    ) -> None:
        p = Problems()
        check_name(p, name, prefix)
        retry = p.duration("reconnect_interval", reconnect_interval, positive=True)
        p.raise_if_any()
        self._client = make_client(client)
        self._owns_client = self._client is not client
        self.name = name
        self.fail_open = bool(fail_open)
        self._base = f"{prefix}rate:{{{name}}}"
        self._local = InMemoryLimiterStore()
        self._outage = Outage(f"rate limiter {name!r}", retry, _REAL.monotonic)

    def key_of(self, key: Hashable) -> str:
        """Return the Redis key of bucket ``key`` (``None``: the shared bucket)."""
        return self._base if key is None else f"{self._base}:{key}"

    def _eval(self, key: Hashable, args: tuple[object, ...]) -> list[Any] | None:
        """Run the script, or return ``None`` while Redis is (still) unreachable."""
        outage = self._outage
        if outage.down and not outage.due():
            return None
        try:
            reply: list[Any] = _SCRIPT.run(self._client, (self.key_of(key),), args)
        except ERRORS as exc:
            outage.fail(exc, self._fallback_text())
            return None
        if outage.down:
            outage.recovered()
        return reply

    def take(
        self, key: Hashable, tokens: int, now: float, interval: float, burst: int
    ) -> tuple[bool, float]:
        """Take ``tokens`` from ``key``'s bucket if free (one round trip).

        Returns:
            ``(True, 0.0)``, or ``(False, seconds until the tokens are free)``.
        """
        reply = self._eval(key, (repr(interval), burst, tokens))
        if reply is None:
            if self.fail_open:
                return self._local.take(key, tokens, now, interval, burst)
            return False, max(self._outage.next_try - _REAL.monotonic(), 1e-3)
        if int(reply[0]):
            return True, 0.0
        return False, float(text(reply[1]))

    def available(self, key: Hashable, now: float, interval: float, burst: int) -> float:
        """Return the tokens ``key`` could take now (one round trip)."""
        reply = self._eval(key, (repr(interval), burst, 0))
        if reply is None:
            if self.fail_open:
                return self._local.available(key, now, interval, burst)
            return 0.0
        owed = float(text(reply[2]))
        return max(0.0, burst - owed / interval)

    def clear(self) -> None:
        """Delete every bucket of this limiter (``SCAN`` + ``DEL``) and the local fallback's."""
        self._local.clear()
        try:
            keys = [self._base, *self._client.scan_iter(match=_glob_escape(self._base) + ":*")]
            self._client.delete(*keys)
        except ERRORS as exc:
            self._outage.fail(exc, self._fallback_text())

    def _fallback_text(self) -> str:
        return "decisions are local" if self.fail_open else "every request is refused"

    def close(self) -> None:
        """Close the client if it was made from a URL (a client passed in is left open)."""
        if self._owns_client:
            self._client.close()

    @property
    def degraded(self) -> bool:
        """Whether Redis is unreachable and the fallback decides."""
        return self._outage.down

    def __repr__(self) -> str:
        mode = " degraded" if self._outage.down else ""
        return f"<RedisLimiterStore {self.name!r} key={self._base!r}{mode}>"


class RedisRateLimiter(RateLimiter):
    """A :class:`~recoverly.RateLimiter` whose buckets live in Redis, shared by every process.

    Limiters with the same ``name`` (and ``prefix``) share their buckets, in any
    number of processes: together they admit at most ``burst + rate * w / per``
    tokens in any window of ``w`` seconds. Each decision (:meth:`try_acquire`,
    each attempt of :meth:`acquire`) is one round trip. :meth:`aacquire` makes
    that round trip inline on the event loop (one ``EVALSHA``, bounded by the
    client's socket timeout) rather than hopping to a thread, which would
    cost as much as the round trip itself.

    Args:
        client: A ``redis.Redis`` client, or a URL (0.25 s socket timeouts).
        rate: Tokens added per ``per`` seconds.
        per: The period of ``rate`` in seconds (or a ``timedelta``).
        burst: The bucket size (default: ``rate`` rounded down, at least 1).
        name: The shared limiter's name; required, it is part of the Redis key.
        prefix: Prefix of every key.
        fail_open: While Redis is unreachable, decide locally (``True``) or
            refuse everything (``False``); see :class:`RedisLimiterStore`.
        reconnect_interval: Seconds between reconnection attempts during an outage.
        key: For the decorator: ``key(*args, **kwargs)`` picks a bucket.
        timeout: The longest wait for a token in the decorator and :meth:`acquire`.
        clock: Time source for waits (default: the process clock).

    Raises:
        ValueError: A setting is out of range (every bad setting is listed).
        TypeError: A setting has the wrong type.

    .. versionadded:: 0.2
    """

    __slots__ = ()

    def __init__(
        self,
        client: Any,
        rate: float,
        per: Any = 1.0,
        burst: int | None = None,
        name: str | None = None,
        *,
        prefix: str = "recoverly:",
        fail_open: bool = True,
        reconnect_interval: float = 1.0,
        key: Callable[..., Hashable] | None = None,
        timeout: Any = 30.0,
        clock: Clock | None = None,
    ) -> None:
        if name is None:
            msg = "RedisRateLimiter needs a name: it is the limiter's key in Redis"
            raise TypeError(msg)
        store = RedisLimiterStore(
            client,
            name,
            prefix=prefix,
            fail_open=fail_open,
            reconnect_interval=reconnect_interval,
        )
        super().__init__(rate, per, burst, name, key=key, timeout=timeout, store=store, clock=clock)

    def close(self) -> None:
        """Close the store's client if it was made from a URL."""
        store = self._store
        if isinstance(store, RedisLimiterStore):
            store.close()

    def __repr__(self) -> str:
        return "<Redis" + super().__repr__()[1:]


RedisLimiterStore.__module__ = "recoverly.redis"
RedisRateLimiter.__module__ = "recoverly.redis"
