"""RedisBreakerStore: one circuit breaker state shared by every process that names it.

Each transition (admit a probe, record a failure, close after a probe) is one
``EVALSHA`` of :data:`~recoverly.redis._scripts.BREAKER` over one hash, timed by
the server's ``TIME``. The store keeps a local copy of the state so that the
common paths cost no round trip:

* CLOSED, no failures counted: :attr:`fast` holds the cached generation and a
  successful call reports nothing at all.
* OPEN: :attr:`reject_until` holds the local monotonic time until which calls
  are rejected without asking Redis.

A daemon thread per store keeps the copy fresh: it listens on the breaker's
pub/sub channel (every state change is published by the script that made it)
and re-reads the state every ``cache_ttl`` seconds as a safety net against a
lost message.

.. versionadded:: 0.2
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from typing import Any

from recoverly._core.clock import MAX_SLEEP, Clock, SystemClock, resolve
from recoverly._core.validate import Problems
from recoverly.errors import CircuitState
from recoverly.redis._link import ERRORS, LOG, Outage, Script, check_name, make_client, text
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
_REAL = SystemClock()  # the watcher paces real network I/O, whatever clock the breaker uses
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

    Pass it as ``CircuitBreaker(..., store=RedisBreakerStore(client, "payments"))``
    in every process; breakers whose stores have the same ``name`` (and
    ``prefix``) share one state. Give them the same settings: each transition
    applies the settings of the process that makes it.

    Cost per call: a CLOSED breaker's successful call makes no round trip, and
    neither does a call rejected while OPEN. A counted failure, the first
    success after failures, and the OPEN -> HALF_OPEN -> CLOSED path make one
    ``EVALSHA`` each. HALF_OPEN admits ``half_open_max_calls`` probes across
    all processes together; a probe slot whose process died is reclaimed
    after ``probe_lease`` seconds.

    Staleness: a state change made elsewhere reaches this process through
    pub/sub (on loopback, within about a millisecond). If that message is lost
    (pub/sub connection dropped), the periodic re-read applies the change within
    ``cache_ttl`` seconds plus one socket timeout. So this process may admit calls
    for at most that long after another process opened the breaker.

    Only the consecutive-failure rule is supported (``failure_threshold``);
    the rate rules (``failure_rate_threshold``, ``slow_call_duration``) need
    the in-memory store. Hooks and events fire in the process that made the
    change, once for all processes.

    Redis unreachable: the store logs one WARNING on ``recoverly.redis`` and,
    with ``fail_open=True``, runs a local in-memory breaker (starting CLOSED)
    until Redis answers again; with ``fail_open=False`` it rejects every call
    (``CircuitBreakerError``, state OPEN) meanwhile. Reconnection is tried
    every ``reconnect_interval`` seconds; then the shared state is read again
    (the local state is dropped) and one INFO line is logged. The protected
    application never sees a Redis exception.

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
        self._clock: Clock | None = None
        self._local: InMemoryBreakerStore | None = None
        self._outage = Outage(f"circuit breaker {name!r}", retry, _REAL.monotonic)
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
        self._refresh()
        thread = threading.Thread(
            target=_watch,
            args=(weakref.ref(self), self._stop),
            name=f"recoverly-redis-breaker-{self.name}",
            daemon=True,
        )
        self._thread = thread
        thread.start()

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
        config = self._config
        if config is None:
            msg = "RedisBreakerStore is not bound to a CircuitBreaker yet"
            raise RuntimeError(msg)
        cap = config.max_recovery_timeout
        args = (
            op,
            permit,
            config.failure_threshold or 0,
            repr(config.recovery_timeout),
            repr(config.recovery_backoff),
            -1 if cap is None else repr(cap),
            repr(MAX_SLEEP),
            config.half_open_max_calls,
            repr(self.probe_lease),
            target,
        )
        sent = self._now()
        try:
            reply = _SCRIPT.run(self._client, (self._key, self._channel), args)
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
        self._set(
            text(reply[1]),
            int(reply[2]),
            int(reply[3]),
            text(reply[4]),
            sent,
            authoritative=authoritative,
        )

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
                self._refreshed_at = _REAL.monotonic()

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
        return _transitions(reply)

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
            _transitions(reply),
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
        return CircuitState(text(reply[1])), _transitions(reply)

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
        return _transitions(reply)

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
        left = text(reply[4])
        return BreakerSnapshot(
            state=CircuitState(text(reply[1])),
            generation=int(reply[2]),
            consecutive_failures=int(reply[3]),
            failed_calls=int(reply[5]),
            trips=int(reply[6]),
            probes_in_flight=int(reply[7]),
            window_calls=0,
            window_failures=0,
            window_slow_calls=0,
            retry_after=float(left) if left else None,
        )

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

    # ------------------------------------------------------------ the watcher
    def _tick(self, pubsub: Any) -> tuple[Any, float]:
        """One round of the watcher; return its pub/sub object and how long to wait."""
        outage = self._outage
        if outage.down:
            _close_quietly(pubsub)
            if outage.due() and self._refresh():
                return None, 0.0
            return None, max(0.0, outage.next_try - _REAL.monotonic())
        try:
            if self.subscribe and pubsub is None:
                client: Any = self._client
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self._channel)
                self._refresh()  # after subscribing: nothing can slip between the two
            left = self._refreshed_at + self.cache_ttl - _REAL.monotonic()
            if left <= 0:
                self._refresh()
                left = self.cache_ttl
            if pubsub is None:
                return None, min(left, 0.5)
            message = pubsub.get_message(timeout=min(left, 0.5))
            if message is not None and message.get("type") in {"message", b"message"}:
                self._on_message(message["data"])
        except ERRORS as exc:
            self._fall_back(exc)
            _close_quietly(pubsub)
            return None, self._outage.retry_interval
        return pubsub, 0.0


def _transitions(reply: Reply) -> tuple[Transition, ...]:
    """The state changes listed after the eight fixed fields of a script reply."""
    if len(reply) <= 8:  # noqa: PLR2004 - the reply's fixed part
        return _NONE
    changes = []
    for i in range(8, len(reply), 4):
        duration = text(reply[i + 3])
        changes.append(
            Transition(
                CircuitState(text(reply[i])),
                CircuitState(text(reply[i + 1])),
                int(reply[i + 2]),
                float(duration) if duration else None,
            )
        )
    return tuple(changes)


def _close_quietly(pubsub: Any) -> None:
    if pubsub is None:
        return
    with contextlib.suppress(*ERRORS):
        pubsub.close()


def _watch(ref: weakref.ref[RedisBreakerStore], stop: threading.Event) -> None:
    """The watcher thread: ends when the store is closed or garbage-collected."""
    pubsub: Any = None
    try:
        while not stop.is_set():
            store = ref()
            if store is None:
                return
            try:
                pubsub, wait = store._tick(pubsub)
            except Exception:  # pragma: no cover - a bug must not kill the watcher silently
                LOG.exception("watcher of %r failed; retrying", store)
                _close_quietly(pubsub)
                pubsub, wait = None, 1.0
            del store
            if wait > 0:
                stop.wait(wait)
    finally:
        _close_quietly(pubsub)


RedisBreakerStore.__module__ = "recoverly.redis"
