"""Building one named configuration: every object, what to commit, what to undo.

:class:`Build` turns the checked settings of :mod:`recoverly._config_source`
into strategies, keeping (or updating in place) the objects of the current
configuration where that keeps state; :mod:`recoverly.config` swaps the result
in. Problems go to the :class:`~recoverly._config_source.Report`, by key path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from recoverly import bulkhead as _bulkhead
from recoverly import rate_limit as _rate_limit
from recoverly._config_source import (
    FACTORIES,
    PART_KINDS,
    SECTIONS,
    Report,
    known_settings,
    short,
)
from recoverly._core.clock import Clock
from recoverly._core.registry import REGISTRY
from recoverly.budget import RetryBudget
from recoverly.circuit_breaker import KIND as _BREAKER_KIND
from recoverly.pipeline import Pipeline

__all__ = ["ADOPTING", "Build", "State", "build_order", "unlist_dropped"]

#: Sections whose objects are listed in the registry, by registry kind.
REGISTERED = {
    "breakers": _BREAKER_KIND,
    "bulkheads": _bulkhead.KIND,
    "rate_limiters": _rate_limit.KIND,
}
#: Sections whose objects stay the same across reconfigurations and take new
#: settings in place (``_adopt_settings``), keeping their state and first clock.
ADOPTING = frozenset({"breakers", "budgets", "throttles"})
#: Section -> {setting: (section it names an entry of, class also accepted from Python)}.
REFERENCES: dict[str, dict[str, tuple[str, type]]] = {
    "retries": {"budget": ("budgets", RetryBudget)},
    "hedges": {"budget": ("budgets", RetryBudget)},
}


def build_order(sections: list[str]) -> list[str]:
    """Return ``sections`` with those that others refer to first."""
    targets = {target for refs in REFERENCES.values() for target, _ in refs.values()}
    return sorted(sections, key=lambda section: section not in targets)


@dataclass(frozen=True, slots=True)
class State:
    """One complete configuration: built objects and the settings they came from."""

    objects: dict[str, dict[str, Any]] = field(default_factory=lambda: {s: {} for s in SECTIONS})
    settings: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    clock: Clock | None = None


def unlist_dropped(old: State, new: State) -> None:
    """Take the strategies ``new`` no longer holds off the registry listings.

    A dropped breaker may live on a while (reference cycles wait for the
    garbage collector); listed, it would make the next configuration using
    its name warn about a duplicate.
    """
    for section, kind in REGISTERED.items():
        for name, obj in old.objects[section].items():
            if new.objects[section].get(name) is not obj:
                REGISTRY.unregister(kind, name, obj)


def _same(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    """Whether two settings tables are equal, value types included (``5`` is not ``5.0``)."""
    return (
        a is not None
        and a.keys() == b.keys()
        and all(type(a[k]) is type(b[k]) and a[k] == b[k] for k in a)
    )


def _call(fn: Callable[..., object], *args: object) -> Callable[[], None]:
    """Return a thunk calling ``fn(*args)`` and dropping its result."""

    def thunk() -> None:
        fn(*args)

    return thunk


class Build:
    """Everything one call to :func:`recoverly.configure` builds, with how to commit or undo it."""

    __slots__ = ("clock", "commits", "current", "declared", "objects", "report", "undo")

    def __init__(
        self,
        current: State,
        clock: Clock | None,
        report: Report,
        declared: dict[str, dict[str, dict[str, Any]]],
    ) -> None:
        self.current, self.clock, self.report = current, clock, report
        self.declared = declared
        self.objects: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        self.commits: list[Callable[[], None]] = []
        self.undo: list[Callable[[], None]] = []

    def construct(self, section: str, name: str, settings: dict[str, Any], *, named: bool) -> Any:
        """Call the section's constructor, turning its errors into key-path problems."""
        known, required = known_settings(section, settings)
        missing = [key for key in required if key not in settings]
        for key in missing:
            self.report.add(f"{section}.{name}.{key}", "required setting is missing")
        if missing:
            return None
        extra = {"name": name} if named else {}
        try:
            return FACTORIES[section](**settings, **extra, clock=self.clock)
        except (TypeError, ValueError) as exc:
            for message in str(exc).split("; "):
                kind = isinstance(exc, TypeError)
                setting = next((k for k in known if message.startswith(f"{k} ")), None)
                if setting is None:
                    self.report.add(f"{section}.{name}", message, kind=kind)
                else:
                    text = message[len(setting) + 1 :]
                    self.report.add(f"{section}.{name}.{setting}", text, kind=kind)
            return None

    def _references(
        self, section: str, name: str, settings: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Replace the names of other entries (``"budget": "api"``) by those objects.

        Returns the settings to build with and ``{setting: object}`` for each
        name replaced. An unknown name is reported; a name whose entry failed
        to build gives ``None`` (that entry's problems are reported already).
        """
        resolved, found = dict(settings), {}
        for key, (target, cls) in REFERENCES.get(section, {}).items():
            ref = settings.get(key)
            if ref is None or isinstance(ref, cls):
                continue
            path = f"{section}.{name}.{key}"
            names = ", ".join(self.declared[target]) or "none"
            kind = SECTIONS[target]
            if not isinstance(ref, str):
                self.report.add(
                    path, f"must name a {kind} ({target}: {names}), got {short(ref)}", kind=True
                )
            elif ref not in self.declared[target]:
                self.report.add(
                    path, f"no {kind} named {ref!r} is configured ({target}: {names}), got {ref!r}"
                )
            found[key] = resolved[key] = (
                self.objects[target].get(ref) if isinstance(ref, str) else None
            )
        return resolved, found

    def entry(self, section: str, name: str, settings: dict[str, Any]) -> None:
        """Build (or keep, or update in place) one named object."""
        previous = self.current.objects[section].get(name)
        resolved, references = self._references(section, name, settings)
        adopting = section in ADOPTING
        if (
            previous is not None
            and (adopting or self.clock is self.current.clock)
            and _same(self.current.settings.get(section, {}).get(name), settings)
            and all(getattr(previous, key) is obj for key, obj in references.items())
        ):
            self.objects[section][name] = previous
            return
        if adopting and previous is not None:
            probe = self.construct(section, name, resolved, named=False)  # validates, unlisted
            if probe is not None:
                self.objects[section][name] = previous
                self.commits.append(functools.partial(previous._adopt_settings, probe))
            return
        kind = REGISTERED.get(section)
        if kind is not None and previous is not None:  # let the replacement take the name
            REGISTRY.unregister(kind, name, previous)
        holder = previous if kind is None else REGISTRY.live(kind).get(name, previous)
        if kind is not None and holder is not None:  # listed again if this build fails
            self.undo.append(_call(REGISTRY.register, kind, name, holder))
        built = self.construct(section, name, resolved, named=True)
        if built is not None:
            self.objects[section][name] = built
            if kind is not None:
                self.undo.append(_call(REGISTRY.unregister, kind, name, built))

    def pipeline(self, name: str, parts: list[str]) -> None:
        """Resolve one pipeline's parts (``"kind:name"``, or ``"kind"`` for this name)."""
        resolved: list[Any] = []
        for i, part in enumerate(parts):
            kind, _, ref = (text.strip() for text in part.partition(":"))
            ref = ref or name
            path = f"pipelines.{name}[{i}]"
            section = PART_KINDS.get(kind)
            if section is None:
                self.report.unknown(path, kind, part, list(PART_KINDS), "part kind")
                continue
            obj = self.objects[section].get(ref)
            if obj is None and ref not in self.declared[section]:
                names = ", ".join(self.declared[section]) or "none"
                known = f"({section}: {names})"
                self.report.add(
                    path, f"no {kind} named {ref!r} is configured {known}, got {part!r}"
                )
            resolved.append(obj)
        if all(obj is not None for obj in resolved) and len(resolved) == len(parts):
            self.objects["pipelines"][name] = Pipeline(*resolved, name=name)
