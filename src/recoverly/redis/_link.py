"""What the Redis store and limiter share: clients, scripts, and outage bookkeeping."""

from __future__ import annotations

import hashlib
import inspect
import logging
import threading
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from recoverly._core.validate import Problems

__all__ = ["LOG", "Outage", "Script", "check_name", "make_client", "text"]

LOG = logging.getLogger("recoverly.redis")

#: Socket timeouts of clients made from a URL: an unreachable Redis must cost a
#: call a fraction of a second, never the library default of seconds.
SOCKET_TIMEOUT = 0.25


def make_client(client: Any) -> redis.Redis:
    """Return ``client``, or a client with short timeouts when it is a URL string.

    Raises:
        TypeError: ``client`` is neither a URL nor a synchronous redis-py client.
    """
    command = getattr(client, "execute_command", None)
    if not isinstance(client, str) and (command is None or inspect.iscoroutinefunction(command)):
        msg = f"client must be a redis.Redis client or a URL string, got {client!r}"
        raise TypeError(msg)
    if isinstance(client, str):
        return redis.Redis.from_url(
            client,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            # One immediate retry replaces a pooled connection the server closed
            # (after a restart); more would only delay noticing an outage.
            retry=Retry(NoBackoff(), 1),
        )
    return client  # type: ignore[no-any-return]


def check_name(p: Problems, name: object, prefix: object) -> None:
    """Record a problem unless ``name`` is a non-empty string and ``prefix`` a string."""
    if not isinstance(name, str):
        p._bad(f"name must be a non-empty string, got {name!r}", kind=True)
    elif not name:
        p._bad(f"name must be a non-empty string, got {name!r}")
    if not isinstance(prefix, str):
        p._bad(f"prefix must be a string, got {prefix!r}", kind=True)


def text(value: object) -> str:
    """Decode a reply field, whether the client decodes responses or not."""
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


class Script:
    """One Lua script run with ``EVALSHA``, loaded again after ``NOSCRIPT``.

    The SHA1 is computed locally, so the first call needs no ``SCRIPT LOAD``
    when the server already has the script (another process loaded it).
    """

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def load(self, client: Any) -> None:
        """Load the script with ``SCRIPT LOAD`` (idempotent)."""
        client.script_load(self.source)

    def run(self, client: Any, keys: tuple[str, ...], args: tuple[object, ...]) -> Any:
        """Run the script; on ``NOSCRIPT`` (server restarted or flushed) load it and retry once."""
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            self.load(client)
            return client.evalsha(self.sha, len(keys), *keys, *args)


class Outage:
    """Whether Redis is reachable, logging one WARNING per outage and one INFO per recovery.

    Args:
        what: Names the user of the connection in the log lines.
        retry_interval: Seconds between reconnection attempts while down.
        monotonic: The clock that times the attempts.
    """

    __slots__ = ("_lock", "_monotonic", "down", "next_try", "retry_interval", "what")

    def __init__(self, what: str, retry_interval: float, monotonic: Any) -> None:
        self.what = what
        self.retry_interval = retry_interval
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self.down = False
        self.next_try = 0.0

    def fail(self, exc: BaseException, fallback: str) -> bool:
        """Record that Redis failed; return whether this started a new outage."""
        with self._lock:
            self.next_try = self._monotonic() + self.retry_interval
            if self.down:
                return False
            self.down = True
        LOG.warning(
            "Redis unreachable for %s (%s: %s); %s until it answers again",
            self.what,
            type(exc).__name__,
            exc,
            fallback,
        )
        return True

    def after_fork(self) -> None:
        """Replace the lock in a forked child (another thread may have held it at the fork)."""
        self._lock = threading.Lock()

    def due(self) -> bool:
        """Whether it is time to try Redis again during an outage."""
        return bool(self._monotonic() >= self.next_try)

    def recovered(self) -> bool:
        """Record that Redis answered; return whether an outage just ended."""
        with self._lock:
            if not self.down:
                return False
            self.down = False
        LOG.info("Redis reachable again for %s; shared state resumes", self.what)
        return True


ERRORS = (RedisError, OSError)
