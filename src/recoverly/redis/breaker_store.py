"""RedisBreakerStore: one circuit breaker state shared by every process that names it.

Each transition is one ``EVALSHA`` of :data:`~recoverly.redis._scripts.BREAKER`
over one hash, timed by the server's ``TIME``; a local copy of the state
(kept fresh by :mod:`recoverly.redis._breaker_sync`) spares the common paths
any round trip. The guide is ``docs/distributed.md``.

.. versionadded:: 0.2
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from typing import Any

from recoverly._core.clock import MAX_SLEEP, Clock, resolve
from recoverly._core.validate import Problems
from recoverly.errors import CircuitState
from recoverly.redis._breaker_sync import REAL, snapshot_of, transitions, watch
from recoverly.redis._link import ERRORS, Outage, Script, check_name, make_client, text
from recoverly.redis._scripts import BREAKER
from recoverly.stores import (
    NOT_OPEN,
    REJECTED,
    Admission,
    BreakerConfig,
    BreakerSnapshot,
    InMemoryBreakerStore,
    Transition,
)

__all__ = ["RedisBreakerStore"]

_SCRIPT = Script(BREAKER)
_CLOSED, _OPEN = CircuitState.CLOSED, CircuitState.OPEN
_HALF_OPEN, _FORCED_OPEN, _DISABLED = (
    CircuitState.HALF_OPEN,
    CircuitState.FORCED_OPEN,
    CircuitState.DISABLED,
)
_NONE: tuple[Transition, ...] = ()
Reply = list[Any]


class RedisBreakerStore:
    """A :class:`~recoverly.stores.BreakerStore` kept in Redis, for breakers shared by processes.

    Pass ``CircuitBreaker(..., store=RedisBreakerStore(client, "payments"))`` in
    every process: stores with the same ``name`` and ``prefix`` share one state.
    Give the breakers the same settings (a transition applies the settings of
    the process making it). Only the ``failure_threshold`` rule is supported.

    Cost: a CLOSED breaker's successful call and a call rejected while OPEN make
    no round trip; a counted failure, the first success after failures and each
    OPEN -> HALF_OPEN -> CLOSED step make one ``EVALSHA``. HALF_OPEN admits
    ``half_open_max_calls`` probes across all processes together; a slot whose
    process died is reclaimed after ``probe_lease`` seconds. Hooks and events
    fire once, in the process that made the change.

    Staleness: changes made elsewhere arrive by pub/sub (on loopback, within
    about a millisecond); if a message is lost, the re-read every ``cache_ttl``
    seconds applies it. So a process admits calls for at most ``cache_ttl``
    plus one socket timeout after another process opened the breaker.

    Redis unreachable: one WARNING on ``recoverly.redis``; then, with
    ``fail_open=True``, a local in-memory breaker (starting CLOSED) decides,
    and with ``False`` every call is rejected (state OPEN). Every
    ``reconnect_interval`` seconds Redis is tried again; when it answers, the
    shared state takes over (the local one is dropped) and one INFO line is
    logged. The protected application never sees a Redis exception.

    Args:
        client: A ``redis.Redis`` client, or a URL; a URL gets a client with
            0.25 s socket timeouts. With your own client, keep its timeouts short:
            they bound how long a call can wait for an unreachable Redis.
        name: The shared breaker's name (part of the Redis key).
        prefix: Prefix of every key and channel.
        fail_open: While Redis is unreachable, ``True`` runs a local breaker and
            ``False`` rejects every call.
        cache_ttl: Seconds between re-reads of the shared state (the staleness
            bound when a pub/sub message is lost).
        reconnect_interval: Seconds between reconnection attempts during an outage.
        probe_lease: Seconds after which a HALF_OPEN probe slot is presumed lost.
        subscribe: Listen on pub/sub for state changes (``False``: rely on the
            periodic re-read alone).

    Raises:
        ValueError: A setting is out of range (every bad setting is listed).
        TypeError: A setting has the wrong type.

    .. versionadded:: 0.2
    """

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

    def __init__(
        self,
        client: Any,
        name: str,
        *,
        prefix: str = "recoverly:",
        fail_open: bool = True,
        cache_ttl: float = 1.0,
        reconnect_interval: float = 1.0,
        probe_lease: float = 30.0,
        subscribe: bool = True,
    ) -> None:
        p = Problems()
        check_name(p, name, prefix)
        self.cache_ttl = p.duration("cache_ttl", cache_ttl, positive=True)
        retry = p.duration("reconnect_interval", reconnect_interval, positive=True)
        self.probe_lease = p.duration("probe_lease", probe_lease, positive=True)
        p.raise_if_any()
        self._client = make_client(client)
        self._owns_client = self._client is not client
        self.name = name
        self.fail_open = bool(fail_open)
        self.subscribe = bool(subscribe)
        # The braces are a cluster hash tag: the hash and channel share a slot.
        self._key = f"{prefix}breaker:{{{name}}}"
        self._channel = f"{self._key}:changes"
        self._lock = threading.Lock()
        self._cache: tuple[CircuitState, int, int] = (_CLOSED, -1, 0)
        self._config: BreakerConfig | None = None
        self._settings: tuple[object, ...] = ()
        self._clock: Clock | None = None
        self._local: InMemoryBreakerStore | None = None
        self._outage = Outage(f"circuit breaker {name!r}", retry, REAL.monotonic)
        self._refreshed_at = -math.inf
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fast = -1
        self.reject_until = NOT_OPEN

    # ------------------------------------------------------------ plumbing
    def bind(self, config: BreakerConfig, clock: Clock | None) -> None:
        """Attach the store to a breaker, read the shared state and start the watcher.

        Raises:
            RuntimeError: The store is already bound to another breaker.
            ValueError: The breaker uses a rate rule, which this store does not support.
        """
        if self._config is not None:
            msg = "this RedisBreakerStore already belongs to another CircuitBreaker"
            raise RuntimeError(msg)
        if config.uses_window:
            msg = (
                "RedisBreakerStore supports the failure_threshold rule only; "
                "failure_rate_threshold and slow_call_duration need the in-memory store"
            )
            raise ValueError(msg)
        self._config, self._clock = config, clock
        cap = config.max_recovery_timeout
        self._settings = (
            config.failure_threshold or 0,
            repr(config.recovery_timeout),
            repr(config.recovery_backoff),
            -1 if cap is None else repr(cap),
            repr(MAX_SLEEP),
            config.half_open_max_calls,
            repr(self.probe_lease),
        )
        self._refresh()
        _BOUND.add(self)
        self._start_watcher()

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

    def close(self) -> None:
        """Stop the watcher thread and close the connections (the state stays in Redis).

        A client made from a URL is closed too; a client passed in is left open.
        """
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        if self._owns_client:
            self._client.close()

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

    def _outcome(self, op: str, permit: int) -> tuple[Transition, ...]:
        result = self._run(op, permit)
        if result is None:
            # The call was admitted by the shared state that just became
            # unreachable: count it against the fallback's current state.
            local = self._local
            if local is not None:
                permit = local.snapshot().generation
            return self._degraded_outcome(op, permit)
        reply, sent = result
        self._apply(reply, sent)
        return transitions(reply)

    def _degraded_outcome(self, op: str, permit: int) -> tuple[Transition, ...]:
        local = self._local
        if local is None:
            return _NONE
        changes = (
            local.on_success(permit, 0.0) if op == "success" else local.on_failure(permit, 0.0)
        )
        self._mirror()
        return changes

    # ------------------------------------------------------------ the BreakerStore protocol
    def acquire(self) -> Admission:
        """Admit or reject one call (a round trip only when OPEN is due or HALF_OPEN)."""
        if self._outage.down:
            return self._degraded_acquire()
        state, gen, _ = self._cache
        if state is _CLOSED or state is _DISABLED:
            return gen, state, None, _NONE
        if state is _FORCED_OPEN:
            return REJECTED, state, None, _NONE
        if state is _OPEN:
            left = self.reject_until - self._now()
            if left > 0:
                return REJECTED, state, left, _NONE
        result = self._run("acquire")
        if result is None:
            return self._degraded_acquire()
        reply, sent = result
        self._apply(reply, sent)
        left_text = text(reply[4])
        return (
            int(reply[0]),
            CircuitState(text(reply[1])),
            float(left_text) if left_text else None,
            transitions(reply),
        )

    def _degraded_acquire(self) -> Admission:
        local = self._local
        if local is None:
            return REJECTED, _OPEN, self._outage.retry_interval, _NONE
        admission = local.acquire()
        self._mirror()
        return admission

    def on_success(self, permit: int, duration: float) -> tuple[Transition, ...]:  # noqa: ARG002
        """Record a success (a round trip unless the CLOSED copy has nothing to clear)."""
        if self._outage.down:
            return self._degraded_outcome("success", permit)
        state, gen, cons = self._cache
        if state is _DISABLED or (state is _CLOSED and cons == 0 and gen == permit):
            return _NONE
        return self._outcome("success", permit)

    def on_failure(self, permit: int, duration: float) -> tuple[Transition, ...]:  # noqa: ARG002
        """Record a counted failure (one round trip; durations matter only to rate rules)."""
        if self._outage.down:
            return self._degraded_outcome("failure", permit)
        if self._cache[0] is _DISABLED:
            return _NONE
        return self._outcome("failure", permit)

    def release(self, permit: int) -> None:
        """Give back a probe slot (one round trip, only while HALF_OPEN)."""
        if self._outage.down:
            local = self._local
            if local is not None:
                local.release(permit)
            return
        if self._cache[0] is _HALF_OPEN:
            result = self._run("release", permit)
            if result is not None:
                self._apply(*result)

    def poll(self) -> tuple[CircuitState, tuple[Transition, ...]]:
        """Return the state, moving OPEN to HALF_OPEN when the server says it is due."""
        if self._outage.down:
            local = self._local
            if local is None:
                return _OPEN, _NONE
            result = local.poll()
            self._mirror()
            return result
        state = self._cache[0]
        if state is not _OPEN or self.reject_until - self._now() > 0:
            return state, _NONE
        found = self._run("poll")
        if found is None:
            return self.poll()
        reply, sent = found
        self._apply(reply, sent)
        return CircuitState(text(reply[1])), transitions(reply)

    def force(self, state: CircuitState) -> tuple[Transition, ...]:
        """Move the shared breaker to CLOSED, FORCED_OPEN or DISABLED."""
        result = None if self._outage.down else self._run("force", 0, state.value)
        if result is None:
            local = self._local
            if local is None:
                return _NONE
            changes = local.force(state)
            self._mirror()
            return changes
        reply, sent = result
        self._apply(reply, sent)
        return transitions(reply)

    def snapshot(self) -> BreakerSnapshot:
        """Return the shared state and counters (one round trip), or the fallback's."""
        result = None if self._outage.down else self._run("read")
        if result is None:
            local = self._local
            if local is not None:
                return local.snapshot()
            return BreakerSnapshot(_OPEN, -1, 0, 0, 0, 0, 0, 0, 0, self._outage.retry_interval)
        reply, sent = result
        self._apply(reply, sent, authoritative=True)
        return snapshot_of(reply)

    @property
    def degraded(self) -> bool:
        """Whether Redis is unreachable and the local fallback is in charge."""
        return self._outage.down

    def __repr__(self) -> str:
        state, gen, cons = self._cache
        mode = " degraded" if self._outage.down else ""
        return (
            f"<RedisBreakerStore {self.name!r} key={self._key!r} {state.name} "
            f"generation={gen} failures={cons}{mode}>"
        )


#: Bound stores, so that a forked child (gunicorn --preload, Celery prefork) restarts
#: their watchers: without one, a child's copy of the state would never change.
_BOUND: weakref.WeakSet[RedisBreakerStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_BOUND):
        store._after_fork()


if hasattr(os, "register_at_fork"):  # pragma: no branch - every POSIX system
    os.register_at_fork(after_in_child=_after_fork_in_child)

RedisBreakerStore.__module__ = "recoverly.redis"
