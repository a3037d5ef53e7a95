"""RedisBreakerStore: one circuit breaker state shared by every process that names it.

Each transition is one ``EVALSHA`` of :data:`~recoverly.redis._scripts.BREAKER`
over one hash, timed by the server's ``TIME``; a local copy of the state
(kept fresh by :mod:`recoverly.redis._breaker_sync`) spares the common paths
any round trip. The guide is ``docs/distributed.md``.

.. versionadded:: 0.2
"""

from __future__ import annotations

import math
import threading
from typing import Any

from recoverly._core.clock import MAX_SLEEP, Clock
from recoverly._core.validate import Problems
from recoverly.errors import CircuitState
from recoverly.redis._breaker_copy import SharedCopy, track_forks
from recoverly.redis._breaker_sync import REAL, snapshot_of, transitions
from recoverly.redis._link import Outage, check_name, make_client, text
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

_CLOSED, _OPEN = CircuitState.CLOSED, CircuitState.OPEN
_HALF_OPEN, _FORCED_OPEN, _DISABLED = (
    CircuitState.HALF_OPEN,
    CircuitState.FORCED_OPEN,
    CircuitState.DISABLED,
)
_NONE: tuple[Transition, ...] = ()

#: Seconds a process waits before asking Redis again for a probe slot after
#: finding them all taken: without it, every call of every process would be a
#: round trip while a probe runs.
HALF_OPEN_RECHECK = 0.01


class RedisBreakerStore(SharedCopy):
    """A :class:`~recoverly.stores.BreakerStore` kept in Redis, for breakers shared by processes.

    Pass ``CircuitBreaker(..., store=RedisBreakerStore(client, "payments"))`` in
    every process: stores with the same ``name`` and ``prefix`` share one state.
    Give the breakers the same settings (a transition applies the settings of
    the process making it). Only the ``failure_threshold`` rule is supported.

    Cost: a CLOSED breaker's successful call and a call rejected while OPEN make
    no round trip; a counted failure, the first success after failures and each
    OPEN -> HALF_OPEN -> CLOSED step make one ``EVALSHA``. While the probe
    slots are taken, a process asks for one at most every 10 ms. HALF_OPEN admits
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

    __slots__ = ()

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
        self._recheck_at = -math.inf
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
        track_forks(self)
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
        decided = self._decide_locally()
        if decided is not None:
            return decided
        result = self._run("acquire")
        if result is None:
            return self._degraded_acquire()
        reply, sent = result
        self._apply(reply, sent)
        permit, state = int(reply[0]), CircuitState(text(reply[1]))
        if permit < 0 and state is _HALF_OPEN:
            self._recheck_at = sent + HALF_OPEN_RECHECK
        left_text = text(reply[4])
        return permit, state, float(left_text) if left_text else None, transitions(reply)

    def _decide_locally(self) -> Admission | None:
        """The admission the local copy can give without a round trip, if any."""
        state, gen, _ = self._cache
        if state is _CLOSED or state is _DISABLED:
            return gen, state, None, _NONE
        if state is _FORCED_OPEN:
            return REJECTED, state, None, _NONE
        if state is _OPEN:
            left = self.reject_until - self._now()
            if left > 0:
                return REJECTED, state, left, _NONE
        elif state is _HALF_OPEN and self._now() < self._recheck_at:
            return REJECTED, state, None, _NONE  # the probe slots were all taken just now
        return None

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


RedisBreakerStore.__module__ = "recoverly.redis"
