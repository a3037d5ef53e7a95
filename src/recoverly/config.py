"""Named configuration: breakers, retries, timeouts, bulkheads, rate limiters and pipelines by name.

:func:`configure` builds every strategy named in a mapping, a TOML file or
environment variables, checks the whole configuration, and only then swaps it
in; :func:`pipeline`, :func:`breaker`, :func:`retry_policy`,
:func:`timeout_policy`, :func:`bulkhead_policy` and :func:`rate_limiter` hand
them out by name::

    recoverly.configure({
        "breakers": {"payments": {"failure_threshold": 5, "recovery_timeout": "30s"}},
        "retries": {"payments": {"max_attempts": 3, "delay": 0.2}},
        "timeouts": {"payments": 2.0},
        "pipelines": {"payments": ["retry:payments", "breaker:payments", "timeout:payments"]},
    })

    @recoverly.pipeline("payments")
    def charge(order): ...

The shape, the environment-variable scheme and what a reconfiguration keeps
are described in ``docs/pipeline.md`` ("Named configuration") and in
:func:`configure`.

.. versionadded:: 0.2
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar, cast, final

from recoverly import bulkhead as _bulkhead
from recoverly import rate_limit as _rate_limit
from recoverly._config_source import FACTORIES, KNOWN, SECTIONS, Report, load, normalise
from recoverly._core.callables import Kind, decoratable_kind
from recoverly._core.clock import Clock
from recoverly._core.registry import REGISTRY
from recoverly.bulkhead import Bulkhead
from recoverly.circuit_breaker import KIND as _BREAKER_KIND
from recoverly.circuit_breaker import CircuitBreaker
from recoverly.pipeline import Pipeline
from recoverly.rate_limit import RateLimiter
from recoverly.retry import Retry
from recoverly.timeout import Timeout

__all__ = [
    "NamedPipeline",
    "breaker",
    "bulkhead_policy",
    "configure",
    "pipeline",
    "rate_limiter",
    "retry_policy",
    "timeout_policy",
]

P = ParamSpec("P")
T = TypeVar("T")

_REGISTERED = {
    "breakers": _BREAKER_KIND,
    "bulkheads": _bulkhead.KIND,
    "rate_limiters": _rate_limit.KIND,
}


@dataclass(frozen=True, slots=True)
class _State:
    """One complete configuration: built objects and the settings they came from."""

    objects: dict[str, dict[str, Any]] = field(default_factory=lambda: {s: {} for s in SECTIONS})
    settings: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    clock: Clock | None = None


_lock = threading.Lock()  # serialises configure(); readers only read _current[0]
_current = [_State()]


def _unlist_dropped(old: _State, new: _State) -> None:
    """Take the strategies ``new`` no longer holds off the registry listings.

    A dropped breaker may live on a while (reference cycles wait for the
    garbage collector); listed, it would make the next configuration using
    its name warn about a duplicate.
    """
    for section, kind in _REGISTERED.items():
        for name, obj in old.objects[section].items():
            if new.objects[section].get(name) is not obj:
                REGISTRY.unregister(kind, name, obj)


def _clear() -> None:
    with _lock:
        old, _current[0] = _current[0], _State()
        _unlist_dropped(old, _current[0])


REGISTRY.add_reset_hook(_clear)


def _same(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    """Whether two settings tables are equal, value types included (``5`` is not ``5.0``)."""
    return (
        a is not None
        and a.keys() == b.keys()
        and all(type(a[k]) is type(b[k]) and a[k] == b[k] for k in a)
    )


# ---------------------------------------------------------------- building
class _Build:
    """Everything one call to :func:`configure` builds, with how to commit or undo it."""

    __slots__ = ("clock", "commits", "current", "objects", "report", "undo")

    def __init__(self, current: _State, clock: Clock | None, report: Report) -> None:
        self.current, self.clock, self.report = current, clock, report
        self.objects: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        self.commits: list[Callable[[], None]] = []
        self.undo: list[Callable[[], None]] = []

    def construct(self, section: str, name: str, settings: dict[str, Any], *, named: bool) -> Any:
        """Call the section's constructor, turning its errors into key-path problems."""
        known, required = KNOWN[section]
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

    def entry(self, section: str, name: str, settings: dict[str, Any]) -> None:
        """Build (or keep) one named object."""
        previous = self.current.objects[section].get(name)
        unchanged = self.clock is self.current.clock or section == "breakers"
        if (
            previous is not None
            and unchanged
            and _same(self.current.settings.get(section, {}).get(name), settings)
        ):
            self.objects[section][name] = previous
            return
        if section == "breakers" and previous is not None:
            probe = self.construct(section, name, settings, named=False)  # validates, unlisted
            if probe is not None:
                self.objects[section][name] = previous
                self.commits.append(functools.partial(previous._adopt_settings, probe))
            return
        kind = _REGISTERED.get(section)
        if kind is not None and previous is not None:  # let the replacement take the name
            REGISTRY.unregister(kind, name, previous)
        holder = previous if kind is None else REGISTRY.live(kind).get(name, previous)
        if kind is not None and holder is not None:  # listed again if this build fails
            self.undo.append(_call(REGISTRY.register, kind, name, holder))
        built = self.construct(section, name, settings, named=True)
        if built is not None:
            self.objects[section][name] = built
            if kind is not None:
                self.undo.append(_call(REGISTRY.unregister, kind, name, built))

    def pipeline(self, name: str, parts: list[str], declared: dict[str, dict[str, Any]]) -> None:
        """Resolve one pipeline's parts (``"kind:name"``, or ``"kind"`` for this name)."""
        kinds = {kind: section for section, kind in SECTIONS.items() if section != "pipelines"}
        resolved: list[Any] = []
        for i, part in enumerate(parts):
            kind, _, ref = (text.strip() for text in part.partition(":"))
            ref = ref or name
            path = f"pipelines.{name}[{i}]"
            section = kinds.get(kind)
            if section is None:
                self.report.unknown(path, kind, part, list(kinds), "part kind")
                continue
            obj = self.objects[section].get(ref)
            if obj is None and ref not in declared[section]:
                names = ", ".join(declared[section]) or "none"
                known = f"({section}: {names})"
                self.report.add(
                    path, f"no {kind} named {ref!r} is configured {known}, got {part!r}"
                )
            resolved.append(obj)
        if all(obj is not None for obj in resolved) and len(resolved) == len(parts):
            self.objects["pipelines"][name] = Pipeline(*resolved, name=name)


def _call(fn: Callable[..., object], *args: object) -> Callable[[], None]:
    """Return a thunk calling ``fn(*args)`` and dropping its result."""

    def thunk() -> None:
        fn(*args)

    return thunk


def configure(
    source: object = None, /, *, env_prefix: str | None = None, clock: Clock | None = None
) -> None:
    """Build the named strategies described by ``source`` and the environment, then use them.

    ``source`` is a mapping, a path to a TOML file (``str`` or ``os.PathLike``)
    or ``None``. Its shape::

        {
            "defaults": {"breakers": {...}, "retries": {...}, ...},  # under every entry
            "breakers": {"payments": {"failure_threshold": 5, "recovery_timeout": 30}},
            "retries": {"payments": {"max_attempts": 3, "delay": 0.2}},
            "timeouts": {"payments": 2.0},              # or {"seconds": 2.0}
            "bulkheads": {"payments": {"max_concurrent": 10, "max_queue": 5}},
            "rate_limiters": {"payments": {"rate": 50, "per": 1}},
            "pipelines": {"payments": ["retry:payments", "breaker:payments", "timeout"]},
        }

    Settings are the keyword arguments of :class:`~recoverly.CircuitBreaker`,
    :class:`~recoverly.Retry`, :class:`~recoverly.Timeout`,
    :class:`~recoverly.Bulkhead` and :class:`~recoverly.RateLimiter` (not
    ``name``, ``clock`` or ``store``). A string duration such as ``"500ms"``,
    ``"2s"``, ``"1.5m"`` or ``"1h"`` is turned into seconds. Pipeline parts are
    ``"kind:name"`` (kinds ``retry``, ``breaker``, ``timeout``, ``bulkhead``,
    ``rate_limiter``), outermost first; a bare ``"kind"`` means the pipeline's
    own name.

    With ``env_prefix="RECOVERLY"``, every variable
    ``RECOVERLY__SECTION__NAME__SETTING=value`` (or ``RECOVERLY__SECTION__NAME=value``
    for a timeout's seconds and a pipeline's comma-separated parts, or
    ``RECOVERLY__DEFAULTS__SECTION__SETTING``) overrides ``source``. SECTION is
    singular or plural (``BREAKER`` or ``BREAKERS``); names and settings are
    lower-cased; values ``true/false/yes/no/on/off`` are booleans, ``none``/``null``
    is ``None``, integers and finite floats are numbers, anything else a string.

    Every problem is reported at once and nothing changes when there is one.
    A reconfiguration replaces the whole configuration: a breaker whose name
    stays keeps its state (open stays open) and takes the new settings in
    place; a bulkhead or rate limiter is kept when its settings are unchanged
    and replaced by a fresh one otherwise; retries, timeouts and pipelines are
    rebuilt. Functions decorated with :func:`pipeline` use the new parts from
    their next call.

    Args:
        source: The mapping, the TOML file, or ``None`` (environment only, or empty).
        env_prefix: Read environment variables starting with ``env_prefix + "__"``.
        clock: Clock for every strategy built (default: the process clock). A
            breaker kept across reconfigurations keeps its first clock.

    Raises:
        ValueError: A value is out of range or a reference is unknown; the
            message lists every problem as ``key.path: what, got value``.
        TypeError: As ``ValueError``, when at least one problem is a wrong type
            (also for a ``source`` that is neither a mapping nor a path).
        FileNotFoundError: The TOML file does not exist.
        ImportError: A TOML file on Python 3.10 without ``tomli`` installed.

    .. versionadded:: 0.2
    """
    report = Report()
    data = load(source, env_prefix, None, report)
    entries, pipelines = normalise(data, report)
    with _lock:
        current = _current[0]
        build = _Build(current, clock, report)
        try:
            for section, named in entries.items():
                for name, settings in named.items():
                    build.entry(section, name, settings)
            for name, parts in pipelines.items():
                build.pipeline(name, parts, entries)
            report.raise_if_any()
        except BaseException:  # a problem, or a constructor's warning turned into an error
            for undo in reversed(build.undo):
                undo()
            raise
        for commit in build.commits:
            commit()
        _current[0] = _State(build.objects, entries, clock)
        _unlist_dropped(current, _current[0])


# ---------------------------------------------------------------- handing out
def _lookup(section: str, name: str) -> Any:
    found = _current[0].objects[section].get(name)
    if found is None:
        kind = SECTIONS[section]
        names = ", ".join(sorted(_current[0].objects[section])) or "none"
        msg = (
            f"no {kind} named {name!r} is configured ({section}: {names}); see recoverly.configure"
        )
        raise LookupError(msg)
    return found


def breaker(name: str) -> CircuitBreaker:
    """Return the configured circuit breaker ``name`` (the same object across reconfigurations).

    Raises:
        LookupError: No breaker of that name is configured.

    .. versionadded:: 0.2
    """
    return cast("CircuitBreaker", _lookup("breakers", name))


def retry_policy(name: str) -> Retry:
    """Return the configured retry policy ``name`` (a new object after each reconfiguration).

    Raises:
        LookupError: No retry of that name is configured.

    .. versionadded:: 0.2
    """
    return cast("Retry", _lookup("retries", name))


def timeout_policy(name: str) -> Timeout:
    """Return the configured timeout ``name`` (a new object after each reconfiguration).

    Raises:
        LookupError: No timeout of that name is configured.

    .. versionadded:: 0.2
    """
    return cast("Timeout", _lookup("timeouts", name))


def bulkhead_policy(name: str) -> Bulkhead:
    """Return the configured bulkhead ``name`` (replaced when its settings change).

    Raises:
        LookupError: No bulkhead of that name is configured.

    .. versionadded:: 0.2
    """
    return cast("Bulkhead", _lookup("bulkheads", name))


def rate_limiter(name: str) -> RateLimiter:
    """Return the configured rate limiter ``name`` (replaced when its settings change).

    Raises:
        LookupError: No rate limiter of that name is configured.

    .. versionadded:: 0.2
    """
    return cast("RateLimiter", _lookup("rate_limiters", name))


def pipeline(name: str) -> NamedPipeline:
    """Return the configured pipeline ``name``, which follows reconfigurations.

    Raises:
        LookupError: No pipeline of that name is configured now.

    .. versionadded:: 0.2
    """
    _lookup("pipelines", name)
    return NamedPipeline(name)


@final
class NamedPipeline:
    """A configured pipeline, looked up by name at each call.

    Use it like a :class:`~recoverly.Pipeline` (``@recoverly.pipeline("payments")``,
    ``.call``, ``.acall``, ``describe()``). Each call goes through the parts
    configured *now*: after :func:`configure` changes the pipeline, the next
    call uses the new parts; if the name is no longer configured, calls raise
    ``LookupError``.

    Attributes:
        name: The pipeline's configured name.

    .. versionadded:: 0.2
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def current(self) -> Pipeline:
        """The :class:`~recoverly.Pipeline` configured under this name now."""
        return cast("Pipeline", _lookup("pipelines", self.name))

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate ``fn``; each call runs through the pipeline configured at that moment.

        Raises:
            TypeError: ``fn`` is a generator function.
        """
        kind = decoratable_kind("pipeline", fn)
        name, current = self.name, _current
        # (configuration, composed wrapper) last used: one identity check per call
        # while the configuration stays; a tuple, so it is replaced atomically.
        memo: list[tuple[object, Callable[..., Any]]] = [(None, fn)]

        def composed() -> Callable[..., Any]:
            state = current[0]
            built: Callable[..., Any] = _lookup("pipelines", name)(fn)
            memo[0] = (state, built)
            return built

        if kind is Kind.ASYNC:

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                state, built = memo[0]
                if state is not current[0]:
                    built = composed()
                return await built(*args, **kwargs)

            return cast("Callable[P, T]", async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            state, built = memo[0]
            if state is not current[0]:
                built = composed()
            return cast("T", built(*args, **kwargs))

        return wrapper

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` through the pipeline configured now (sync callables)."""
        return self.current.call(fn, *args, **kwargs)

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` through the pipeline configured now."""
        return await self.current.acall(fn, *args, **kwargs)

    def describe(self) -> tuple[str, ...]:
        """Return one line per part of the pipeline configured now, outermost first."""
        return self.current.describe()

    def describe_part(self) -> str:
        """Return how this pipeline reads as a part of another pipeline."""
        return f"configured pipeline {self.name!r}"

    def __repr__(self) -> str:
        try:
            chain = " -> ".join(self.describe()) or "(no parts)"
        except LookupError:
            chain = "(not configured)"
        return f"<NamedPipeline {self.name!r}: {chain}>"


for _fn in (
    breaker,
    bulkhead_policy,
    configure,
    pipeline,
    rate_limiter,
    retry_policy,
    timeout_policy,
):
    _fn.__module__ = "recoverly"
NamedPipeline.__module__ = "recoverly.config"
