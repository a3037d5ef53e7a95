"""RedisTaskStore: idempotent results, leases with fencing tokens, delivery history.

One store serves every :class:`~recoverly.celery.ResilientTask` of an
application. For each idempotency key it keeps, in Redis:

- the **result** of the copy that finished, so a redelivered message returns
  it instead of running the work again;
- a **lease** (a key with a TTL that the owner's heartbeat renews) and a
  **fencing token** (``INCR``: each new owner gets a larger number); a result
  or a fenced side effect is written only while the writer's token is the
  newest, so a stale owner that lost its lease cannot overwrite anything;
- the **delivery counters and history** (when, on which worker, with which
  exception), from which lost deliveries are counted and the dead letter is
  filled.

.. versionadded:: 0.2
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from recoverly._core.clock import Clock, resolve
from recoverly._core.validate import Duration, Problems
from recoverly.celery import _scripts
from recoverly.celery.errors import LeaseLost

__all__ = ["Begin", "RedisTaskStore"]

_DAY = 86_400.0
_HISTORY_LIMIT = 100


@dataclass(frozen=True, slots=True)
class Begin:
    """What :meth:`RedisTaskStore.begin` found.

    Attributes:
        kind: ``"owner"`` (this copy runs), ``"done"`` (a result is stored),
            ``"busy"`` (another live copy owns the lease) or ``"dead"``
            (the task is in the dead letter).
        token: The fencing token (``"owner"`` only).
        losses: Deliveries that started and never finished before this one.
        failures: Failed attempts recorded so far (``"owner"`` only).
        result: The stored result (``"done"`` only).
        retry_after: Seconds until the busy lease expires (``"busy"`` only).
        newly_dead: This call marked the task dead (``"dead"`` only): the caller
            files it in the dead letter.

    .. versionadded:: 0.2
    """

    kind: str
    token: int = 0
    losses: int = 0
    failures: int = 0
    result: Any = None
    retry_after: float = 0.0
    newly_dead: bool = False


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisTaskStore:
    """Task results, leases, fencing tokens and the dead letter in Redis.

    Args:
        client: A ``redis.Redis`` client or a ``redis://`` URL (a client made from a
            URL times out after 5 s connecting and 10 s reading; give your own
            client for other settings, and give it timeouts too).
        prefix: Prefix of every key this store writes.
        result_ttl: How long a finished task's result is kept (seconds or a
            ``timedelta``); redeliveries within this time return it. ``None``
            keeps it forever.
        state_ttl: How long counters, fencing tokens and history are kept after
            the last delivery began. ``None`` keeps them forever.
        dead_letter_limit: Most entries kept in the dead letter list (oldest
            dropped first).
        clock: The clock for history timestamps (``wall()``).

    Raises:
        TypeError: ``client`` is neither a client nor a URL.
        ValueError: A duration or limit is out of range.

    .. versionadded:: 0.2
    """

    __slots__ = (
        "_begin",
        "_clock",
        "_commit",
        "_finish",
        "_renew",
        "client",
        "dead_letter_limit",
        "prefix",
        "result_ttl",
        "state_ttl",
    )

    def __init__(
        self,
        client: redis.Redis | str,
        *,
        prefix: str = "recoverly:celery",
        result_ttl: Duration | None = 7 * _DAY,
        state_ttl: Duration | None = 7 * _DAY,
        dead_letter_limit: int = 10_000,
        clock: Clock | None = None,
    ) -> None:
        p = Problems()
        given: object = client
        if isinstance(given, str):
            # Bounded waits: a hung Redis must not stall the heartbeat (and every
            # lease of the process) forever.
            given = redis.Redis.from_url(given, socket_timeout=10.0, socket_connect_timeout=5.0)
        elif not isinstance(given, redis.Redis):
            p._bad(f"client must be a redis.Redis or a redis:// URL, got {client!r}", kind=True)
        self.prefix = p.optional_name("prefix", prefix) or "recoverly:celery"
        self.result_ttl = p.optional_duration("result_ttl", result_ttl, positive=True)
        self.state_ttl = p.optional_duration("state_ttl", state_ttl, positive=True)
        self.dead_letter_limit = p.int_at_least("dead_letter_limit", dead_letter_limit, 1)
        p.raise_if_any()
        self.client: redis.Redis = given  # type: ignore[assignment]
        self._clock = clock
        self._begin = self.client.register_script(_scripts.BEGIN)
        self._renew = self.client.register_script(_scripts.RENEW)
        self._commit = self.client.register_script(_scripts.COMMIT)
        self._finish = self.client.register_script(_scripts.FINISH)

    def __repr__(self) -> str:
        return f"<RedisTaskStore prefix={self.prefix!r} result_ttl={self.result_ttl!r}>"

    # ------------------------------------------------------------ keys
    def key(self, idempotency_key: str, part: str) -> str:
        """Return the Redis key of ``part`` (fence, lease, result, state, history)."""
        return f"{self.prefix}:{{{idempotency_key}}}:{part}"

    @property
    def dead_letter_key(self) -> str:
        """The Redis list that holds dead letters (newest first)."""
        return f"{self.prefix}:dead-letter"

    # ------------------------------------------------------------ lease protocol
    def begin(
        self,
        idempotency_key: str,
        lease_seconds: float,
        *,
        max_redeliveries: int | None = None,
        record: Mapping[str, object] | None = None,
    ) -> Begin:
        """Take the lease for ``idempotency_key`` unless the task is done, dead or busy.

        One script decides, atomically: a stored result wins, then the dead mark,
        then a live lease; then the cap (more than ``max_redeliveries`` deliveries
        that started and never finished marks the task dead); otherwise this copy
        becomes the owner with a new fencing token.

        Args:
            idempotency_key: The task's idempotency key.
            lease_seconds: The lease's time to live (renewed by the heartbeat).
            max_redeliveries: The cap on lost deliveries; ``None``: no cap.
            record: Details of a ``"started"`` history entry written when this
                copy becomes the owner (``token`` and ``lost_before`` are added).

        Returns:
            What was found; with ``kind == "owner"`` this copy holds the lease.
        """
        k = idempotency_key
        entry = "" if record is None else self._entry("started", record)
        cap = -1 if max_redeliveries is None else max_redeliveries
        reply = self._begin(
            keys=[self.key(k, part) for part in ("result", "lease", "fence", "state", "history")],
            args=[_ms(lease_seconds), _ms(self.state_ttl), cap, entry],
        )
        kind, *rest = (_text(x) for x in reply)
        if kind == "done":
            return Begin("done", result=json.loads(rest[0])["result"])
        if kind == "dead":
            return Begin("dead", losses=int(rest[0]), newly_dead=rest[1] == "1")
        if kind == "busy":
            return Begin("busy", retry_after=max(int(rest[0]), 0) / 1000.0)
        return Begin("owner", token=int(rest[0]), losses=int(rest[1]), failures=int(rest[2]))

    def renew(self, idempotency_key: str, token: int, lease_seconds: float) -> bool:
        """Extend the lease if ``token`` still holds it; return whether it does."""
        return bool(
            self._renew(keys=[self.key(idempotency_key, "lease")], args=[token, _ms(lease_seconds)])
        )

    def commit(
        self,
        idempotency_key: str,
        token: int,
        result: object,
        writes: Sequence[Callable[[Any], object]] = (),
        *,
        record: Mapping[str, object] | None = None,
    ) -> None:
        """Store ``result`` and free the lease, if ``token`` is still the newest.

        Args:
            idempotency_key: The task's idempotency key.
            token: The fencing token of the writer.
            result: A JSON-serialisable result.
            writes: Callables that queue more Redis commands on a pipeline; they
                are applied in the same transaction as the result, or not at all.
            record: Details of a ``"succeeded"`` history entry written with the result.

        Raises:
            LeaseLost: A newer token was issued: nothing was written.
            TypeError: ``result`` cannot be serialised as JSON.
        """
        try:
            payload = json.dumps({"result": result})
        except (TypeError, ValueError) as exc:
            msg = (
                f"the result of task {idempotency_key!r} must be JSON-serialisable to be "
                f"stored for redeliveries, got {type(result).__name__}: {exc}"
            )
            raise TypeError(msg) from exc
        k = idempotency_key
        entry = "" if record is None else self._entry("succeeded", record)
        if writes:
            done = self._commit_with(k, token, payload, writes, entry)
        else:
            parts = ("fence", "lease", "result", "state", "history")
            done = self._commit(
                keys=[self.key(k, part) for part in parts],
                args=[token, payload, _ms(self.result_ttl), entry],
            )
        if not done:
            self.finish(k, token)
            raise LeaseLost(k, token)

    def _commit_with(
        self,
        key: str,
        token: int,
        payload: str,
        writes: Sequence[Callable[[Any], object]],
        entry: str,
    ) -> bool:
        """The commit as a WATCH/MULTI transaction that also runs ``writes``."""
        fence, lease = self.key(key, "fence"), self.key(key, "lease")
        with self.client.pipeline() as pipe:
            try:
                pipe.watch(fence, lease)  # type: ignore[no-untyped-call]
                current, holder = pipe.get(fence), pipe.get(lease)
                if current is None or int(_text(current)) != token:
                    return False
                pipe.multi()
                for write in writes:
                    write(pipe)
                ttl = _ms(self.result_ttl)
                pipe.set(self.key(key, "result"), payload, px=ttl or None)
                if holder is not None and int(_text(holder)) == token:
                    pipe.delete(lease)
                pipe.hincrby(self.key(key, "state"), "finished", 1)
                if entry:
                    pipe.rpush(self.key(key, "history"), entry)
                    pipe.ltrim(self.key(key, "history"), -_HISTORY_LIMIT, -1)
                pipe.execute()
            except redis.WatchError:
                return False
        return True

    def finish(
        self,
        idempotency_key: str,
        token: int,
        *,
        outcome: str = "",
        record: Mapping[str, object] | None = None,
    ) -> None:
        """End a delivery that stored no result: count it finished and free the lease.

        Args:
            idempotency_key: The task's idempotency key.
            token: The fencing token of the delivery.
            outcome: ``"retry"`` counts a failed attempt; ``"gave-up"`` resets the
                count, so a later submission of the same work starts afresh.
            record: Details of a ``"failed"`` history entry.
        """
        k = idempotency_key
        entry = "" if record is None else self._entry("failed", record)
        self._finish(
            keys=[self.key(k, "lease"), self.key(k, "state"), self.key(k, "history")],
            args=[token, outcome, entry],
        )

    def fenced(self, idempotency_key: str, token: int, write: Callable[[Any], object]) -> None:
        """Apply Redis writes atomically, only while ``token`` is the newest fencing token.

        ``write`` receives a pipeline in MULTI mode and queues its commands on
        it; they are executed in one transaction guarded by ``WATCH`` on the
        fencing counter.

        Raises:
            LeaseLost: A newer token was issued (before or during the write):
                nothing was applied.
        """
        fence = self.key(idempotency_key, "fence")
        with self.client.pipeline() as pipe:
            try:
                pipe.watch(fence)  # type: ignore[no-untyped-call]
                current = pipe.get(fence)
                if current is None or int(_text(current)) != token:
                    raise LeaseLost(idempotency_key, token)
                pipe.multi()
                write(pipe)
                pipe.execute()
            except redis.WatchError as exc:
                raise LeaseLost(idempotency_key, token) from exc

    # ------------------------------------------------------------ history and dead letter
    def _entry(self, event: str, details: Mapping[str, object]) -> str:
        """One history entry as a JSON object: event, wall time, hostname, details."""
        entry = {
            "event": event,
            "at": resolve(self._clock).wall(),
            **details,
            "hostname": details.get("hostname") or socket.gethostname(),
        }
        return json.dumps(entry, default=repr)

    def record(self, idempotency_key: str, event: str, /, **details: object) -> None:
        """Append one entry to the task's delivery history (newest last, bounded)."""
        history = self.key(idempotency_key, "history")
        with self.client.pipeline(transaction=True) as pipe:
            pipe.rpush(history, self._entry(event, details))
            pipe.ltrim(history, -_HISTORY_LIMIT, -1)
            if self.state_ttl is not None:
                pipe.pexpire(history, _ms(self.state_ttl))
            pipe.execute()

    def history(self, idempotency_key: str) -> list[dict[str, Any]]:
        """Return the task's delivery history, oldest first."""
        raw = self.client.lrange(self.key(idempotency_key, "history"), 0, -1)
        return [json.loads(_text(x)) for x in raw]

    def dead_letter(
        self, idempotency_key: str, losses: int, /, **details: object
    ) -> dict[str, Any]:
        """Push the task, with its history, to the dead letter list.

        :meth:`begin` marks the task dead (atomically, once); the copy that did
        calls this to file it.

        Returns:
            The dead letter entry that was stored.
        """
        entry = {
            "key": idempotency_key,
            "losses": losses,
            "at": resolve(self._clock).wall(),
            **details,
            "history": self.history(idempotency_key),
        }
        with self.client.pipeline(transaction=True) as pipe:
            pipe.lpush(self.dead_letter_key, json.dumps(entry, default=repr))
            pipe.ltrim(self.dead_letter_key, 0, self.dead_letter_limit - 1)
            pipe.execute()
        return entry

    def dead_letters(self) -> list[dict[str, Any]]:
        """Return the dead letter entries, newest first."""
        raw = self.client.lrange(self.dead_letter_key, 0, -1)
        return [json.loads(_text(x)) for x in raw]

    def result(self, idempotency_key: str) -> tuple[bool, Any]:
        """Return ``(True, result)`` when a result is stored, else ``(False, None)``."""
        raw = self.client.get(self.key(idempotency_key, "result"))
        if raw is None:
            return False, None
        return True, json.loads(_text(raw))["result"]

    def forget(self, idempotency_key: str) -> None:
        """Delete the result, lease, counters and history of ``idempotency_key``."""
        # The fencing counter stays: a reset would hand out old tokens again.
        parts = ("lease", "result", "state", "history")
        self.client.delete(*(self.key(idempotency_key, part) for part in parts))


def _ms(seconds: float | None) -> int:
    """Milliseconds for Redis (``0`` means "no expiry" to the scripts)."""
    return 0 if seconds is None else max(1, round(seconds * 1000))
