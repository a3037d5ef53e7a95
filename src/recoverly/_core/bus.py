"""A tiny synchronous event bus.

Strategies call :meth:`EventBus.wants` (a dict lookup) before they build an
event, so emitting with nobody listening costs next to nothing. A subscriber that
raises is logged and never breaks the protected call.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["BUS", "EventBus", "Subscriber"]

Subscriber = Callable[[Any], object]

_log = logging.getLogger("recoverly")


class EventBus:
    """Routes events to subscribers by event class.

    Subscriptions are copy-on-write: ``emit`` reads an immutable tuple and
    never takes a lock.
    """

    __slots__ = ("_lock", "_subs", "routes")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: tuple[tuple[Subscriber, tuple[type, ...] | None], ...] = ()
        #: event class -> subscribers that want it; filled lazily, reset on (un)subscribe.
        self.routes: dict[type, tuple[Subscriber, ...]] = {}

    def subscribe(self, fn: Subscriber, kinds: tuple[type, ...] | None = None) -> None:
        """Call ``fn(event)`` for every event (or only those of ``kinds``)."""
        with self._lock:
            self._subs = (*self._subs, (fn, kinds))
            self._rebuild()

    def unsubscribe(self, fn: Subscriber) -> bool:
        """Stop calling ``fn``; return whether it was subscribed."""
        with self._lock:
            kept = tuple(s for s in self._subs if s[0] is not fn and s[0] != fn)
            removed = len(kept) != len(self._subs)
            self._subs = kept
            self._rebuild()
        return removed

    def clear(self) -> None:
        """Remove every subscriber."""
        with self._lock:
            self._subs = ()
            self._rebuild()

    def subscribers(self) -> tuple[Subscriber, ...]:
        """Return the subscribed callables in subscription order."""
        return tuple(s[0] for s in self._subs)

    def _rebuild(self) -> None:
        self.routes = {}

    def _route(self, kind: type) -> tuple[Subscriber, ...]:
        subs = tuple(fn for fn, kinds in self._subs if kinds is None or issubclass(kind, kinds))
        routes = dict(self.routes)
        routes[kind] = subs
        self.routes = routes
        return subs

    def wants(self, kind: type) -> bool:
        """Return whether anybody listens for events of class ``kind``."""
        subs = self.routes.get(kind)
        if subs is None:
            subs = self._route(kind)
        return bool(subs)

    def emit(self, event: object) -> None:
        """Deliver ``event`` to its subscribers; a failing subscriber is logged."""
        kind = type(event)
        subs = self.routes.get(kind)
        if subs is None:
            subs = self._route(kind)
        for fn in subs:
            try:
                fn(event)
            except Exception:  # noqa: PERF203 - each subscriber is isolated
                _log.exception("recoverly event subscriber %r failed on %r", fn, event)


#: The process-wide bus every strategy emits to.
BUS = EventBus()
