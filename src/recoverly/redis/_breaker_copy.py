"""The local copy of a shared breaker state: script calls, fallback, and fork handling.

:class:`SharedCopy` is the base of :class:`~recoverly.redis.RedisBreakerStore`.
It runs the script, keeps the local copy (``fast``, ``reject_until`` and the
cached state) consistent with each reply and each published change, and
switches to a local in-memory breaker while Redis is unreachable.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from typing import Any

from recoverly._core.clock import Clock, resolve
from recoverly.errors import CircuitState
from recoverly.redis._breaker_sync import REAL, watch
from recoverly.redis._link import ERRORS, Outage, Script, text
from recoverly.redis._scripts import BREAKER
from recoverly.stores import NOT_OPEN, BreakerConfig, InMemoryBreakerStore

__all__ = ["Reply", "SharedCopy", "track_forks"]

_SCRIPT = Script(BREAKER)
_CLOSED, _OPEN = CircuitState.CLOSED, CircuitState.OPEN
_FORCED_OPEN, _DISABLED = CircuitState.FORCED_OPEN, CircuitState.DISABLED
Reply = list[Any]


class SharedCopy:
    """Script calls and the local copy of the shared state (not public)."""

    __slots__ = (
        "__weakref__",
        "_cache",
        "_channel",
        "_client",
        "_clock",
        "_config",
        "_key",
        "_local",
        "_lock",
        "_outage",
        "_owns_client",
        "_recheck_at",
        "_refreshed_at",
        "_settings",
        "_stop",
        "_thread",
        "cache_ttl",
        "fail_open",
        "fast",
        "name",
        "probe_lease",
        "reject_until",
        "subscribe",
    )

    _cache: tuple[CircuitState, int, int]
    _channel: str
    _client: Any
    _clock: Clock | None
    _config: BreakerConfig | None
    _key: str
    _local: InMemoryBreakerStore | None
    _lock: threading.Lock
    _outage: Outage
    _owns_client: bool
    _recheck_at: float
    _refreshed_at: float
    _settings: tuple[object, ...]
    _stop: threading.Event
    _thread: threading.Thread | None
    cache_ttl: float
    fail_open: bool
    fast: int
    name: str
    probe_lease: float
    reject_until: float
    subscribe: bool

    def _start_watcher(self) -> None:
        thread = threading.Thread(
            target=watch,
            args=(weakref.ref(self), self._stop),
            name=f"recoverly-redis-breaker-{self.name}",
            daemon=True,
        )
        self._thread = thread
        thread.start()

    def _after_fork(self) -> None:
        """In a forked child: fresh locks and a watcher of its own (threads do not survive fork)."""
        self._lock = threading.Lock()
        self._outage.after_fork()
        if self._thread is not None and not self._stop.is_set():
            self._stop = threading.Event()
            self._refreshed_at = -math.inf  # re-read at once: the parent's copy may be old
            self._start_watcher()

    def _now(self) -> float:
        return resolve(self._clock).monotonic()

    def _run(self, op: str, permit: int = 0, target: str = "") -> tuple[Reply, float] | None:
        """Run one script operation; ``None`` (and a fallback) when Redis is unreachable."""
        if self._config is None:
            msg = "RedisBreakerStore is not bound to a CircuitBreaker yet"
            raise RuntimeError(msg)
        sent = self._now()
        try:
            reply = _SCRIPT.run(
                self._client, (self._key, self._channel), (op, permit, *self._settings, target)
            )
        except ERRORS as exc:
            self._fall_back(exc)
            return None
        return reply, sent

    def _fall_back(self, exc: BaseException) -> None:
        """Switch to the local fallback (one WARNING per outage)."""
        config = self._config
        if config is None:  # pragma: no cover - only bound stores talk to Redis
            return
        what = "a local in-memory breaker runs" if self.fail_open else "every call is rejected"
        with self._lock:
            if self.fail_open and self._local is None:
                local = InMemoryBreakerStore()
                local.bind(config, self._clock)
                self._local = local
            self._outage.fail(exc, what)
            self._mirror()

    def _mirror(self) -> None:
        """Publish the fallback's hints (call with the lock held or from the fallback path)."""
        local = self._local
        if local is not None:
            self.reject_until = local.reject_until
            self.fast = local.fast
        else:
            self.fast = -1
            self.reject_until = NOT_OPEN

    def _recover(self, reply: Reply, sent: float) -> None:
        """Redis answers again: drop the fallback and adopt the shared state."""
        with self._lock:
            self._local = None
            self._outage.recovered()
        self._apply(reply, sent, authoritative=True)

    def _apply(self, reply: Reply, sent: float, *, authoritative: bool = False) -> None:
        """Adopt the state in a script reply as the local copy."""
        state, gen, cons, left = text(reply[1]), int(reply[2]), int(reply[3]), text(reply[4])
        self._set(state, gen, cons, left, sent, authoritative=authoritative)

    def _set(
        self, state_name: str, gen: int, cons: int, left: str, at: float, *, authoritative: bool
    ) -> None:
        state = CircuitState(state_name)
        with self._lock:
            if self._outage.down:
                return
            if not authoritative and gen < self._cache[1]:
                return  # an older reply overtaken by a newer one
            if gen != self._cache[1]:
                self._recheck_at = -math.inf
            self._cache = (state, gen, cons)
            if state is _OPEN:
                self.fast = -1
                self.reject_until = at + float(left)
            elif state is _FORCED_OPEN:
                self.fast = -1
                self.reject_until = math.inf
            else:
                self.reject_until = NOT_OPEN
                quiet = state is _DISABLED or (state is _CLOSED and cons == 0)
                self.fast = gen if quiet else -1
            if authoritative:
                self._refreshed_at = REAL.monotonic()

    def _refresh(self) -> bool:
        """Re-read the shared state; return whether Redis answered."""
        result = self._run("read")
        if result is None:
            return False
        reply, sent = result
        if self._outage.down:
            self._recover(reply, sent)
        else:
            self._apply(reply, sent, authoritative=True)
        return True

    def _on_message(self, data: object) -> None:
        """Apply a published change: ``"<generation> <state> <consecutive> <left>"``."""
        gen, state, cons, *left = text(data).split(" ")
        self._set(
            state, int(gen), int(cons), left[0] if left else "", self._now(), authoritative=False
        )


#: Bound stores, so that a forked child (gunicorn --preload, Celery prefork) restarts
#: their watchers: without one, a child's copy of the state would never change.
_BOUND: weakref.WeakSet[SharedCopy] = weakref.WeakSet()


def track_forks(store: SharedCopy) -> None:
    """Restart ``store``'s watcher in every forked child."""
    _BOUND.add(store)


def _after_fork_in_child() -> None:
    for store in list(_BOUND):
        store._after_fork()


if hasattr(os, "register_at_fork"):  # pragma: no branch - every POSIX system
    os.register_at_fork(after_in_child=_after_fork_in_child)
