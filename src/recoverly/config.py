"""Named configuration: every strategy and pipeline, built from settings and handed out by name.

:func:`configure` builds every strategy named in a mapping, a TOML file or
environment variables, checks the whole configuration, and only then swaps it
in; :func:`pipeline`, :func:`breaker`, :func:`retry_policy`,
:func:`timeout_policy`, :func:`bulkhead_policy`, :func:`rate_limiter`,
:func:`retry_budget`, :func:`hedge_policy`, :func:`throttle_policy` and
:func:`chaos_policy` hand them out by name::

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
from typing import Any, ParamSpec, TypeVar, cast, final

from recoverly._config_build import Build, State, build_order, unlist_dropped
from recoverly._config_source import SECTIONS, Report, load, normalise
from recoverly._core.callables import Kind, decoratable_kind
from recoverly._core.clock import Clock
from recoverly._core.registry import REGISTRY
from recoverly.budget import RetryBudget
from recoverly.bulkhead import Bulkhead
from recoverly.chaos import Fault, Latency, Outcome
from recoverly.circuit_breaker import CircuitBreaker
from recoverly.hedge import Hedge
from recoverly.pipeline import Pipeline
from recoverly.rate_limit import RateLimiter
from recoverly.retry import Retry
from recoverly.throttle import AdaptiveThrottle
from recoverly.timeout import Timeout

__all__ = [
    "NamedPipeline",
    "breaker",
    "bulkhead_policy",
    "chaos_policy",
    "configure",
    "hedge_policy",
    "pipeline",
    "rate_limiter",
    "retry_budget",
    "retry_policy",
    "throttle_policy",
    "timeout_policy",
]

P = ParamSpec("P")
T = TypeVar("T")

_lock = threading.Lock()  # serialises configure(); readers only read _current[0]
_current = [State()]


def _clear() -> None:
    with _lock:
        old, _current[0] = _current[0], State()
        unlist_dropped(old, _current[0])


REGISTRY.add_reset_hook(_clear)


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
            "budgets": {"api": {"ratio": 0.2, "min_per_second": 10}},
            "hedges": {"lookup": {"delay": "20ms", "budget": "api"}},
            "throttles": {"payments": {"k": 2, "window": "2m"}},
            "chaos": {"gateway": {"type": "fault", "rate": 0.1,
                                  "exception": "ConnectionError", "message": "injected"}},
            "pipelines": {"payments": ["throttle", "retry:payments", "breaker:payments",
                                       "chaos:gateway", "timeout"]},
        }

    Settings are the keyword arguments of :class:`~recoverly.CircuitBreaker`,
    :class:`~recoverly.Retry`, :class:`~recoverly.Timeout`,
    :class:`~recoverly.Bulkhead`, :class:`~recoverly.RateLimiter`,
    :class:`~recoverly.RetryBudget`, :class:`~recoverly.Hedge` and
    :class:`~recoverly.AdaptiveThrottle` (not ``name``, ``clock`` or ``store``).
    A retry's or a hedge's ``budget`` is the name of an entry of ``budgets``
    (one budget shared by all that name it). A chaos entry's ``type`` is
    ``fault``, ``latency`` or ``outcome`` and the rest are the arguments of
    :func:`recoverly.chaos.fault`, :func:`~recoverly.chaos.latency` or
    :func:`~recoverly.chaos.outcome`; a fault's ``exception`` may be a builtin
    exception's name or ``"module.Class"`` (the module is imported), raised
    fresh as ``Class(message)`` at each injection; an outcome's ``value`` is
    returned as given. Chaos parts inject only when switched on, as in
    :mod:`recoverly.chaos`. A string duration such as ``"500ms"``, ``"2s"``,
    ``"1.5m"`` or ``"1h"`` is turned into seconds (not in a chaos ``value`` or
    ``message``). Pipeline parts are ``"kind:name"`` (kinds ``retry``,
    ``breaker``, ``timeout``, ``bulkhead``, ``rate_limiter``, ``hedge``,
    ``throttle``, ``chaos``), outermost first; a bare ``"kind"`` means the
    pipeline's own name.

    With ``env_prefix="RECOVERLY"``, every variable
    ``RECOVERLY__SECTION__NAME__SETTING=value`` (or ``RECOVERLY__SECTION__NAME=value``
    for a timeout's seconds and a pipeline's comma-separated parts, or
    ``RECOVERLY__DEFAULTS__SECTION__SETTING``) overrides ``source``. SECTION is
    singular or plural (``BREAKER`` or ``BREAKERS``); names and settings are
    lower-cased; values ``true/false/yes/no/on/off`` are booleans, ``none``/``null``
    is ``None``, integers and finite floats are numbers, anything else a string.

    Every problem is reported at once and nothing changes when there is one.
    A reconfiguration replaces the whole configuration: a breaker, budget or
    throttle whose name stays is the same object, keeps its state (open stays
    open, counted calls and retries stay) and takes the new settings in place
    (its sliding window starts empty only when the window's length or buckets
    change); any other strategy is kept when its settings are unchanged and
    replaced by a fresh one otherwise, and pipelines are rebuilt. Functions
    decorated with :func:`pipeline` use the new parts from their next call.

    Args:
        source: The mapping, the TOML file, or ``None`` (environment only, or empty).
        env_prefix: Read environment variables starting with ``env_prefix + "__"``.
        clock: Clock for every strategy built (default: the process clock). A
            breaker, budget or throttle kept across reconfigurations keeps its
            first clock.

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
        build = Build(current, clock, report, entries)
        try:
            for section in build_order(list(entries)):
                for name, settings in entries[section].items():
                    build.entry(section, name, settings)
            for name, parts in pipelines.items():
                build.pipeline(name, parts)
            report.raise_if_any()
        except BaseException:  # a problem, or a constructor's warning turned into an error
            for undo in reversed(build.undo):
                undo()
            raise
        for commit in build.commits:
            commit()
        _current[0] = State(build.objects, entries, clock)
        unlist_dropped(current, _current[0])


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
    """Return the configured retry policy ``name`` (replaced when its settings change).

    Raises:
        LookupError: No retry of that name is configured.

    .. versionadded:: 0.2
    """
    return cast("Retry", _lookup("retries", name))


def timeout_policy(name: str) -> Timeout:
    """Return the configured timeout ``name`` (replaced when its settings change).

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


def retry_budget(name: str) -> RetryBudget:
    """Return the configured retry budget ``name`` (the same object across reconfigurations).

    Retries and hedges configured with ``"budget": name`` share this object;
    code of your own may share it too (``retry(budget=recoverly.retry_budget("api"))``).

    Raises:
        LookupError: No budget of that name is configured.

    .. versionadded:: 0.2
    """
    return cast("RetryBudget", _lookup("budgets", name))


def hedge_policy(name: str) -> Hedge:
    """Return the configured hedge ``name`` (replaced when its settings change).

    Raises:
        LookupError: No hedge of that name is configured.

    .. versionadded:: 0.2
    """
    return cast("Hedge", _lookup("hedges", name))


def throttle_policy(name: str) -> AdaptiveThrottle:
    """Return the configured adaptive throttle ``name`` (the same object across reconfigurations).

    Raises:
        LookupError: No throttle of that name is configured.

    .. versionadded:: 0.2
    """
    return cast("AdaptiveThrottle", _lookup("throttles", name))


def chaos_policy(name: str) -> Fault | Latency | Outcome:
    """Return the configured chaos part ``name`` (replaced when its settings change).

    Its ``type`` setting decides which: a :class:`~recoverly.chaos.Fault`, a
    :class:`~recoverly.chaos.Latency` or a :class:`~recoverly.chaos.Outcome`.

    Raises:
        LookupError: No chaos part of that name is configured.

    .. versionadded:: 0.2
    """
    return cast("Fault | Latency | Outcome", _lookup("chaos", name))


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
    chaos_policy,
    configure,
    hedge_policy,
    pipeline,
    rate_limiter,
    retry_budget,
    retry_policy,
    throttle_policy,
    timeout_policy,
):
    _fn.__module__ = "recoverly"
NamedPipeline.__module__ = "recoverly.config"
