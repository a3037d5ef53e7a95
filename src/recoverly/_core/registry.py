"""A process-wide index of named strategy instances, by kind.

Strategies register themselves here when they are given a name, so that
``recoverly.registry`` (and health endpoints built on it) can list them.
Entries are weak references: a breaker stays listed exactly as long as
something else keeps it alive (a module-level breaker, for the life of the
process) and disappears when it is garbage collected.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["POOL_MONITOR", "REGISTRY", "Registry"]

#: The kind under which ``recoverly.db.ConnectionPoolMonitor`` instances list
#: themselves (by name), so exporters can read them without importing SQLAlchemy.
POOL_MONITOR = "connection_pool_monitor"


class Registry:
    """Named instances by kind (``"circuit_breaker"``, ``"bulkhead"``, ...). Thread-safe."""

    __slots__ = ("_entries", "_lock", "_reset_hooks")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, weakref.ref[Any]]] = {}
        self._reset_hooks: list[Callable[[], object]] = []

    def add_reset_hook(self, hook: Callable[[], object]) -> None:
        """Have ``recoverly.registry.reset()`` call ``hook()`` (for layers above the registry)."""
        with self._lock:
            if hook not in self._reset_hooks:
                self._reset_hooks.append(hook)

    def run_reset_hooks(self) -> None:
        """Call every reset hook, in the order they were added."""
        with self._lock:
            hooks = list(self._reset_hooks)
        for hook in hooks:
            hook()

    def register(self, kind: str, name: str, obj: object) -> object | None:
        """List ``obj`` under ``name``; return the live instance it replaced, if any."""
        with self._lock:
            entries = self._entries.setdefault(kind, {})
            ref = entries.get(name)
            previous = ref() if ref is not None else None
            entries[name] = weakref.ref(obj, self._forget(kind, name))
        return previous if previous is not obj else None

    def _forget(self, kind: str, name: str) -> Any:
        def forget(dead: weakref.ref[Any]) -> None:
            with self._lock:
                entries = self._entries.get(kind, {})
                if entries.get(name) is dead:
                    del entries[name]

        return forget

    def unregister(self, kind: str, name: str, obj: object) -> None:
        """Remove ``name`` if it still refers to ``obj``."""
        with self._lock:
            entries = self._entries.get(kind, {})
            ref = entries.get(name)
            if ref is not None and ref() is obj:
                del entries[name]

    def live(self, kind: str) -> dict[str, Any]:
        """Return ``{name: instance}`` for the live instances of ``kind``, sorted by name."""
        with self._lock:
            refs = sorted(self._entries.get(kind, {}).items())
        found = {name: ref() for name, ref in refs}
        return {name: obj for name, obj in found.items() if obj is not None}

    def clear(self, kind: str | None = None) -> None:
        """Forget every entry (of ``kind``, or of all kinds)."""
        with self._lock:
            if kind is None:
                self._entries.clear()
            else:
                self._entries.pop(kind, None)

    def __repr__(self) -> str:
        with self._lock:
            sizes = {kind: len(entries) for kind, entries in self._entries.items()}
        return f"<Registry {sizes}>"


#: The process-wide registry.
REGISTRY = Registry()
