"""Building the configured parts that need more than a constructor call: budgets and chaos.

A :class:`~recoverly.RetryBudget` takes no name. A chaos entry picks its part
with ``type`` (``fault``, ``latency`` or ``outcome``), and a fault names its
exception with a string a TOML file or an environment variable can hold: a
builtin exception (``"ConnectionError"``) or ``"module.Class"``, plus an
optional ``message``. Nothing here reads a source or keeps state
(:mod:`recoverly._config_source` reads, :mod:`recoverly.config` keeps).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any

from recoverly._core.clock import Clock
from recoverly._core.validate import Problems
from recoverly.budget import RetryBudget
from recoverly.chaos import Fault, Latency, Outcome

__all__ = [
    "CHAOS_SETTINGS",
    "CHAOS_TYPES",
    "VERBATIM",
    "chaos_part",
    "exception_factory",
    "retry_budget",
]

#: The ``type`` of a chaos entry -> the part it builds.
CHAOS_TYPES: dict[str, type[Fault | Latency | Outcome]] = {
    "fault": Fault,
    "latency": Latency,
    "outcome": Outcome,
}

#: Chaos settings whose strings are data: never read as durations.
VERBATIM = frozenset({"message", "value"})

_NOT_SETTINGS = {"self", "name", "clock"}


def _chaos_settings(cls: Callable[..., Any]) -> tuple[list[str], list[str]]:
    params = [p for p in inspect.signature(cls).parameters.values() if p.name not in _NOT_SETTINGS]
    known = ["type"]
    for p in params:
        known.append(p.name)
        if p.name == "exception":
            known.append("message")
    required = ["type", *(p.name for p in params if p.default is inspect.Parameter.empty)]
    return known, required


#: ``type`` -> (the settings of that chaos type, the required ones).
CHAOS_SETTINGS = {kind: _chaos_settings(cls) for kind, cls in CHAOS_TYPES.items()}

_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_PLACEHOLDER = RuntimeError  # stands in for a bad exception while the rest is checked


def retry_budget(
    *, name: str | None = None, clock: Clock | None = None, **settings: Any
) -> RetryBudget:
    """Build a :class:`~recoverly.RetryBudget` from its settings (a budget has no name)."""
    del name
    return RetryBudget(**settings, clock=clock)


def chaos_part(
    *, name: str | None = None, clock: Clock | None = None, **settings: Any
) -> Fault | Latency | Outcome:
    """Build the chaos part named by ``settings["type"]`` from the rest of the settings.

    Raises:
        ValueError: A value is out of range or names nothing (every problem is listed).
        TypeError: As ``ValueError``, when at least one problem is a wrong type.
    """
    p = Problems()
    kind = settings.pop("type", None)
    if not isinstance(kind, str) or kind not in CHAOS_TYPES:
        known = ", ".join(repr(k) for k in CHAOS_TYPES)
        close = difflib.get_close_matches(str(kind), CHAOS_TYPES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        p._bad(f"type must be one of {known}{hint}, got {kind!r}", kind=not isinstance(kind, str))
        p.fail()
    if kind == "fault":
        message = settings.pop("message", None)
        settings["exception"] = exception_factory(p, settings.get("exception"), message)
    elif kind == "latency":
        settings["clock"] = clock
    try:
        part = CHAOS_TYPES[kind](**settings, name=name)
    except (TypeError, ValueError) as exc:
        for line in str(exc).split("; "):
            p._bad(line, kind=isinstance(exc, TypeError))
        p.fail()
    p.raise_if_any()
    return part


def exception_factory(p: Problems, spec: object, message: object) -> object:
    """Return what :class:`~recoverly.chaos.Fault` is given for a configured exception.

    ``spec`` may be a string naming an exception class (a builtin such as
    ``"ConnectionError"``, or ``"module.Class"``, which imports ``module``), an
    exception class, or (from Python) anything ``Fault`` takes. With a class,
    each injection raises a fresh ``cls(message)`` (or ``cls()``). The class is
    built once here, so that one that cannot be built fails now. Problems are
    recorded in ``p``; a placeholder class stands in for a bad ``spec``.
    """
    if isinstance(message, (int, float)) and not isinstance(message, bool):
        message = str(message)  # an environment variable's "404" arrives as a number
    if message is not None and not isinstance(message, str):
        p._bad(f"message must be a string, got {message!r}", kind=True)
        message = None
    if isinstance(spec, str):
        cls: object = _exception_class(p, spec)
        if cls is None:
            return _PLACEHOLDER
    elif isinstance(spec, type):
        cls = spec
    else:  # an instance or a factory given from Python: Fault checks it
        if message is not None:
            p._bad(f"message needs an exception class or its name, got exception={spec!r}")
        return spec
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        p._bad(f"exception must be an Exception subclass, got {spec!r}", kind=True)
        return _PLACEHOLDER
    args = () if message is None else (message,)
    try:
        cls(*args)
    except Exception as exc:
        given = "a message" if args else "no arguments"
        why = f"{type(exc).__name__}: {exc}".replace("; ", ", ")
        p._bad(f"exception {cls.__name__} cannot be built from {given} ({why}), got {spec!r}")
        return _PLACEHOLDER
    return functools.partial(cls, *args) if args else cls


def _exception_class(p: Problems, spec: str) -> object:
    """Return the object ``spec`` names (``None`` after recording why there is none)."""
    text = spec.strip()
    if not _DOTTED.match(text):
        p._bad(
            f"exception must name an exception class, such as ConnectionError or "
            f"module.Class, got {spec!r}"
        )
        return None
    module_name, _, attr = text.rpartition(".")
    try:
        module = importlib.import_module(module_name or "builtins")
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}".replace("; ", ", ")
        p._bad(f"exception cannot be imported ({why}), got {spec!r}")
        return None
    found = getattr(module, attr, None)
    if found is None:
        where = f"module {module_name} has no {attr!r}" if module_name else f"no builtin {attr!r}"
        builtin = [n for n, v in vars(module).items() if isinstance(v, type)]
        close = difflib.get_close_matches(attr, builtin, n=1)
        hint = f", did you mean {close[0]}?" if close else ""
        p._bad(f"exception names nothing ({where}{hint}), got {spec!r}")
        return None
    return found
