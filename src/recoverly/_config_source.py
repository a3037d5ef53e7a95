"""Reading a named configuration: a mapping, a TOML file, environment variables.

:func:`load` turns the sources given to :func:`recoverly.configure` into one
plain nested ``dict`` (environment variables override the mapping or file);
:func:`normalise` checks its shape and setting names. Every problem is
recorded in a :class:`Report`, named by its key path. Nothing here builds a
strategy: :mod:`recoverly.config` does that.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import os
import re
import reprlib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

from recoverly._config_parts import CHAOS_SETTINGS, VERBATIM, chaos_part, retry_budget
from recoverly.budget import RetryBudget
from recoverly.bulkhead import Bulkhead
from recoverly.circuit_breaker import CircuitBreaker
from recoverly.hedge import Hedge
from recoverly.rate_limit import RateLimiter
from recoverly.retry import Retry
from recoverly.throttle import AdaptiveThrottle
from recoverly.timeout import Timeout

__all__ = [
    "FACTORIES",
    "KNOWN",
    "PART_KINDS",
    "SECTIONS",
    "Report",
    "known_settings",
    "load",
    "normalise",
    "parse_duration",
    "short",
]

#: Section name -> the kind used in pipeline part references (``"breaker:payments"``).
SECTIONS: dict[str, str] = {
    "breakers": "breaker",
    "retries": "retry",
    "timeouts": "timeout",
    "bulkheads": "bulkhead",
    "rate_limiters": "rate_limiter",
    "budgets": "budget",
    "hedges": "hedge",
    "throttles": "throttle",
    "chaos": "chaos",
    "pipelines": "pipeline",
}
#: Part kind -> section, for the kinds a pipeline may name (budgets and pipelines are not parts).
PART_KINDS = {kind: s for s, kind in SECTIONS.items() if s not in {"budgets", "pipelines"}}
FACTORIES: dict[str, Callable[..., Any]] = {
    "breakers": CircuitBreaker,
    "retries": Retry,
    "timeouts": Timeout,
    "bulkheads": Bulkhead,
    "rate_limiters": RateLimiter,
    "budgets": retry_budget,
    "hedges": Hedge,
    "throttles": AdaptiveThrottle,
    "chaos": chaos_part,
}
_SIGNATURES: dict[str, Callable[..., Any]] = {**FACTORIES, "budgets": RetryBudget}
_NOT_SETTINGS = {"self", "name", "clock", "store", "_stacklevel"}


def _settings(factory: Callable[..., Any]) -> tuple[list[str], list[str]]:
    """Return the setting names a kind accepts, and those that are required."""
    params = [
        p for p in inspect.signature(factory).parameters.values() if p.name not in _NOT_SETTINGS
    ]
    required = [p.name for p in params if p.default is inspect.Parameter.empty]
    return [p.name for p in params], required


def _every_chaos_setting() -> tuple[list[str], list[str]]:
    known = [key for keys, _ in CHAOS_SETTINGS.values() for key in keys]
    return list(dict.fromkeys(known)), ["type"]


#: Section -> (the settings it accepts, the required ones); a chaos entry's own
#: type narrows them (see :func:`known_settings`).
KNOWN = {
    section: _every_chaos_setting() if section == "chaos" else _settings(factory)
    for section, factory in _SIGNATURES.items()
}


def known_settings(section: str, settings: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Return the settings one entry accepts and requires (for chaos, by its ``type``)."""
    if section == "chaos":
        kind = settings.get("type")
        if isinstance(kind, str) and kind in CHAOS_SETTINGS:
            return CHAOS_SETTINGS[kind]
    return KNOWN[section]


_ALIASES = {**{kind: section for section, kind in SECTIONS.items()}, **{s: s for s in SECTIONS}}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_INT = re.compile(r"^[+-]?\d+$")
_TRUE = {"true", "yes", "on"}
_FALSE = {"false", "no", "off"}
_NONE = {"none", "null"}

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60


def short(value: object) -> str:
    """Return a ``repr`` of ``value`` short enough for an error message."""
    return _short.repr(value)


class Report:
    """Problems found in a configuration, each ``"key.path: what is wrong"``, in order."""

    __slots__ = ("kind", "lines")

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.kind = False  # True once a problem is a wrong type rather than a bad range

    def add(self, path: str, message: str, *, kind: bool = False) -> None:
        """Record one problem at ``path`` (duplicates are recorded once)."""
        line = f"{path}: {message}" if path else message
        if line not in self.lines:
            self.lines.append(line)
        self.kind = self.kind or kind

    def unknown(self, path: str, key: str, value: object, known: list[str], what: str) -> None:
        """Record an unknown ``key`` at ``path``, suggesting the closest known one."""
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(known)})"
        self.add(path, f"unknown {what}{hint}, got {short(value)}")

    def raise_if_any(self) -> None:
        """Raise one ``TypeError`` or ``ValueError`` listing every problem."""
        if not self.lines:
            return
        count = len(self.lines)
        noun = "problem" if count == 1 else "problems"
        text = f"invalid recoverly configuration ({count} {noun}):\n" + "\n".join(
            f"  {line}" for line in self.lines
        )
        if self.kind:
            raise TypeError(text)
        raise ValueError(text)


def parse_duration(value: object) -> object:
    """Turn ``"500ms"``, ``"2s"``, ``"1.5m"`` or ``"1h"`` into seconds; keep other values."""
    if isinstance(value, str):
        found = _DURATION.match(value)
        if found:
            return float(found.group(1)) * _UNITS[found.group(2)]
    return value


def _read_toml(path: Path) -> dict[str, Any]:
    name = "tomllib" if sys.version_info >= (3, 11) else "tomli"
    try:
        toml = importlib.import_module(name)
    except ImportError as exc:
        msg = f"reading {path} needs a TOML parser on Python 3.10: pip install tomli"
        raise ImportError(msg) from exc
    try:
        with path.open("rb") as f:
            data: dict[str, Any] = toml.load(f)
    except ValueError as exc:  # TOMLDecodeError
        msg = f"{path} is not valid TOML: {exc}"
        raise ValueError(msg) from exc
    return data


def _env_value(text: str, *, parts: bool) -> object:  # noqa: PLR0911 - one return per kind
    """Parse one environment value (see the scheme in :func:`recoverly.configure`)."""
    if parts:
        return [item.strip() for item in text.split(",") if item.strip()]
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    if lowered in _NONE:
        return None
    if _INT.match(lowered):
        return int(lowered)
    try:
        number = float(lowered)
    except ValueError:
        return text.strip()
    return number if math.isfinite(number) else text.strip()


def _from_env(prefix: str, environ: Mapping[str, str], report: Report) -> dict[str, Any]:
    """Collect ``PREFIX__SECTION__NAME[__SETTING]`` variables into a nested dict."""
    start = f"{prefix}__"
    found: dict[str, Any] = {}
    for variable in sorted(k for k in environ if k.startswith(start)):
        path = variable[len(start) :].lower().split("__")
        if not all(path) or len(path) < 2:  # noqa: PLR2004 - a section and a name at least
            report.add(f"${variable}", "expected PREFIX__SECTION__NAME[__SETTING]")
            continue
        path[0] = _ALIASES.get(path[0], path[0])
        if path[0] == "defaults" and len(path) > 1:
            path[1] = _ALIASES.get(path[1], path[1])
        value = _env_value(environ[variable], parts=path[0] == "pipelines" and len(path) == 2)  # noqa: PLR2004
        node = found
        for key in path[:-1]:
            inner = node.setdefault(key, {})
            if not isinstance(inner, dict):
                report.add(f"${variable}", f"conflicts with a value set for {key!r}")
                break
            node = inner
        else:
            if isinstance(node.get(path[-1]), dict):
                report.add(f"${variable}", "conflicts with settings set under it")
            else:
                node[path[-1]] = value
    return found


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def load(
    source: object, env_prefix: str | None, environ: Mapping[str, str] | None, report: Report
) -> dict[str, Any]:
    """Read ``source`` (a mapping, a TOML path or ``None``), then the environment on top.

    Raises:
        TypeError: ``source`` or ``env_prefix`` has the wrong type.
        FileNotFoundError: The TOML file does not exist.
        ValueError: The TOML file cannot be parsed.
    """
    if source is None:
        data: dict[str, Any] = {}
    elif isinstance(source, Mapping):
        data = dict(source)
    elif isinstance(source, (str, os.PathLike)):
        data = _read_toml(Path(source))
    else:
        msg = f"configure() takes a mapping, a path to a TOML file or None, got {short(source)}"
        raise TypeError(msg)
    if env_prefix is not None:
        if not isinstance(cast("object", env_prefix), str) or not env_prefix:
            msg = f"env_prefix must be a non-empty string or None, got {env_prefix!r}"
            raise TypeError(msg)
        env = _from_env(env_prefix, os.environ if environ is None else environ, report)
        data = _merge(data, env)
    return data


# ---------------------------------------------------------------- reading the mapping
def normalise(
    data: dict[str, Any], report: Report
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, list[str]]]:
    """Check the shape; return ``{section: {name: settings}}`` and ``{pipeline: [part, ...]}``."""
    known_sections = [*SECTIONS, "defaults"]
    for key, value in data.items():
        if key not in known_sections:
            report.unknown(str(key), str(key), value, known_sections, "section")
    defaults = _defaults(data.get("defaults", {}), report)
    entries = {
        section: _entries(section, data.get(section, {}), defaults.get(section, {}), report)
        for section in KNOWN
    }
    pipelines: dict[str, list[str]] = {}
    for name, raw in _named(data.get("pipelines", {}), "pipelines", report).items():
        if not isinstance(raw, (list, tuple)) or not all(isinstance(x, str) for x in raw):
            example = f"['retry:{name}', 'breaker:{name}']"
            report.add(
                f"pipelines.{name}",
                f"must be a list of parts such as {example}, got {short(raw)}",
                kind=True,
            )
            continue
        pipelines[name] = list(raw)
    return entries, pipelines


def _entries(
    section: str, table: object, defaults: dict[str, Any], report: Report
) -> dict[str, dict[str, Any]]:
    """Return ``{name: settings}`` of one section, defaults applied and durations parsed."""
    verbatim = VERBATIM if section == "chaos" else frozenset()
    found: dict[str, dict[str, Any]] = {}
    for name, raw in _named(table, section, report).items():
        if section == "timeouts" and not isinstance(raw, dict):
            raw = {"seconds": raw}  # noqa: PLW2901 - `timeouts.x = 2.0` is short for seconds
        if not isinstance(raw, dict):
            report.add(
                f"{section}.{name}", f"must be a table of settings, got {short(raw)}", kind=True
            )
            continue
        merged = {**defaults, **raw}
        known = known_settings(section, merged)[0]
        for key, value in raw.items():
            if key not in known:
                report.unknown(f"{section}.{name}.{key}", str(key), value, known, "setting")
        found[name] = {
            k: v if k in verbatim else parse_duration(v) for k, v in merged.items() if k in known
        }
    return found


def _named(raw: object, section: str, report: Report) -> dict[str, Any]:
    """Return the ``{name: value}`` table of one section, reporting bad names."""
    if not isinstance(raw, dict):
        report.add(section, f"must be a table of names, got {short(raw)}", kind=True)
        return {}
    good = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not name or ":" in name:
            report.add(
                section,
                f"names must be non-empty strings without ':', got {short(name)}",
                kind=True,
            )
        else:
            good[name] = value
    return good


def _defaults(raw: object, report: Report) -> dict[str, dict[str, Any]]:
    """Return ``{section: settings}`` from the ``defaults`` table."""
    if not isinstance(raw, dict):
        report.add("defaults", f"must be a table of sections, got {short(raw)}", kind=True)
        return {}
    found: dict[str, dict[str, Any]] = {}
    for section, settings in raw.items():
        if section not in KNOWN:
            report.unknown(f"defaults.{section}", str(section), settings, list(KNOWN), "section")
        elif not isinstance(settings, dict):
            report.add(
                f"defaults.{section}",
                f"must be a table of settings, got {short(settings)}",
                kind=True,
            )
        else:
            known = KNOWN[section][0]
            for key, value in settings.items():
                if key not in known:
                    report.unknown(f"defaults.{section}.{key}", str(key), value, known, "setting")
            found[section] = {k: v for k, v in settings.items() if k in known}
    return found
