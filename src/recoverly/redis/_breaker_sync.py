"""Keeping a RedisBreakerStore's local copy in sync: the watcher thread and reply parsing.

The watcher (one daemon thread per store) listens on the breaker's pub/sub
channel, re-reads the whole state every ``cache_ttl`` seconds, and during an
outage tries to reconnect every ``reconnect_interval`` seconds. It holds only
a weak reference to its store, so it ends when the store is closed or
garbage-collected.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import TYPE_CHECKING, Any

from recoverly._core.clock import SystemClock
from recoverly.errors import CircuitState
from recoverly.redis._link import ERRORS, LOG, text
from recoverly.stores import BreakerSnapshot, Transition

if TYPE_CHECKING:
    from recoverly.redis._breaker_copy import SharedCopy

__all__ = ["REAL", "close_quietly", "snapshot_of", "tick", "transitions", "watch"]

REAL = SystemClock()  # the watcher paces real network I/O, whatever clock the breaker uses
_NONE: tuple[Transition, ...] = ()
#: Longest wait for a pub/sub message: bounds how long close() waits for the thread.
_POLL = 0.1
#: Fields before the state changes in a script reply.
_FIXED = 8


def snapshot_of(reply: list[Any]) -> BreakerSnapshot:
    """The snapshot described by a script reply."""
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


def tick(store: SharedCopy, pubsub: Any) -> tuple[Any, float]:
    """One round of the watcher; return its pub/sub object and how long to wait."""
    outage = store._outage
    if outage.down:
        close_quietly(pubsub)
        if outage.due() and store._refresh():
            return None, 0.0
        return None, max(0.0, outage.next_try - REAL.monotonic())
    try:
        if store.subscribe and pubsub is None:
            client: Any = store._client
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(store._channel)
            store._refresh()  # after subscribing: nothing can slip between the two
        left = store._refreshed_at + store.cache_ttl - REAL.monotonic()
        if left <= 0:
            store._refresh()
            left = store.cache_ttl
        if pubsub is None:
            return None, min(left, _POLL)
        message = pubsub.get_message(timeout=min(left, _POLL))
        if message is not None and message.get("type") in {"message", b"message"}:
            store._on_message(message["data"])
    except ERRORS as exc:
        close_quietly(pubsub)
        if store._stop.is_set():  # closing: the connection went away on purpose
            return None, 0.0
        store._fall_back(exc)
        return None, store._outage.retry_interval
    return pubsub, 0.0


def transitions(reply: list[Any]) -> tuple[Transition, ...]:
    """The state changes listed after the eight fixed fields of a script reply."""
    if len(reply) <= _FIXED:
        return _NONE
    changes = []
    for i in range(_FIXED, len(reply), 4):
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


def close_quietly(pubsub: Any) -> None:
    """Close a pub/sub object (or nothing), ignoring a dead connection."""
    if pubsub is None:
        return
    with contextlib.suppress(*ERRORS):
        pubsub.close()


def watch(ref: weakref.ref[SharedCopy], stop: threading.Event) -> None:
    """The watcher thread: ends when the store is closed or garbage-collected."""
    pubsub: Any = None
    try:
        while not stop.is_set():
            store = ref()
            if store is None:
                return
            try:
                pubsub, wait = tick(store, pubsub)
            except Exception:  # pragma: no cover - a bug must not kill the watcher silently
                LOG.exception("watcher of %r failed; retrying", store)
                close_quietly(pubsub)
                pubsub, wait = None, 1.0
            del store
            if wait > 0:
                stop.wait(wait)
    finally:
        close_quietly(pubsub)
