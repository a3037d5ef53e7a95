"""chaos: inject faults, latency or made-up results on purpose, to test recovery.

Three parts, usable as decorators and as :class:`~recoverly.Pipeline` parts::

    from recoverly import chaos

    pipeline = Pipeline(
        retry(max_attempts=3),
        chaos.fault(0.1, ConnectionError("injected")),   # 10 % of attempts raise
        chaos.latency(0.05, 2.0),                         # 5 % wait 2 s first
    )

* :func:`fault` raises an exception instead of calling the function;
* :func:`latency` waits (through the injectable clock) before calling it;
* :func:`outcome` returns a given value instead of calling it.

**Injection is off unless switched on**, so chaos parts can stay in production
code and be enabled for a game day or a test run. A part injects when, checked
at each call in this order:

1. it was built with ``enabled=True`` (``enabled=False`` switches it off for good);
2. otherwise, inside ``with chaos.enabled():`` (``enabled(False)`` switches off
   chaos in a block); the switch follows the current thread or task
   (``contextvars``);
3. otherwise, when the environment variable ``RECOVERLY_CHAOS`` was ``1`` when
   recoverly was imported (it is read once: a disabled part then costs a
   context-variable lookup per call, not an environment lookup).

A part's ``enabled`` attribute can also be set later (``part.enabled = True``):
that holds in every thread, where the block switch reaches only the current
thread or task and the tasks it starts (a new thread starts with it unset).

When active, each call injects with probability ``rate``, drawn from the part's
own random generator: a ``seed`` makes the sequence of injections reproducible.
``at=`` names calls that inject whatever the dice say (``at=(3, 7)`` with rate 0:
exactly the 3rd and the 7th call made while switched on), and
``max_injections=`` stops a part after that many injections.

.. versionadded:: 0.2
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar, cast

from recoverly._chaos_state import ChaosDice, ChaosStatistics
from recoverly._core.bus import BUS
from recoverly._core.callables import decoratable_kind, guess_name, wrap
from recoverly._core.clock import Clock, resolve
from recoverly._core.validate import Duration, Problems
from recoverly.events import ChaosInjected

__all__ = [
    "ChaosStatistics",
    "Fault",
    "Latency",
    "Outcome",
    "enabled",
    "fault",
    "latency",
    "outcome",
]

P = ParamSpec("P")
T = TypeVar("T")

#: The environment variable that switches chaos on for the whole process.
ENV_VAR = "RECOVERLY_CHAOS"

_SWITCH: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "recoverly_chaos", default=None
)
#: Whether ``RECOVERLY_CHAOS=1`` was set when this module was imported.
ENV_ENABLED = os.environ.get(ENV_VAR, "") == "1"


@contextmanager
def enabled(on: bool = True) -> Iterator[None]:
    """Switch chaos injection on (or, with ``False``, off) inside a ``with`` block.

    Parts built with an explicit ``enabled=`` keep their own setting. The switch
    holds for the current thread or asyncio/Trio task and what it starts.

    .. versionadded:: 0.2
    """
    token = _SWITCH.set(bool(on))
    try:
        yield
    finally:
        _SWITCH.reset(token)


def is_enabled() -> bool:
    """Return whether chaos is switched on here (block switch, else ``RECOVERLY_CHAOS``).

    .. versionadded:: 0.2
    """
    switch = _SWITCH.get()
    return ENV_ENABLED if switch is None else switch


def _switch(p: Problems, enabled: object) -> bool | None:
    if enabled is not None and not isinstance(enabled, bool):
        p._bad(f"enabled must be True, False or None, got {enabled!r}", kind=True)
        return None
    return enabled


class _Chaos:
    """What every chaos part shares: the switch, the dice and the counters."""

    __slots__ = ("_dice", "_enabled", "name", "seed")

    _kind = "chaos"

    def __init__(
        self,
        p: Problems,
        rate: float,
        seed: int | None,
        enabled: bool | None,
        name: str | None,
        at: Iterable[int] | None,
        max_injections: int | None,
    ) -> None:
        self.name = p.optional_name("name", name)
        self._enabled = _switch(p, enabled)
        self._dice = ChaosDice(p, rate, seed, at, max_injections)
        p.raise_if_any()
        self.seed = seed

    @property
    def rate(self) -> float:
        """Share of calls that inject, in [0, 1]."""
        return self._dice.rate

    @property
    def at(self) -> tuple[int, ...]:
        """Call numbers that inject whatever the dice say, sorted (empty: none)."""
        return self._dice.at

    @property
    def max_injections(self) -> int | None:
        """Injections after which the part injects no more (``None``: no limit)."""
        return self._dice.max_injections

    @property
    def enabled(self) -> bool | None:
        """This part's own switch: ``True``/``False`` fixed, ``None`` follows the global switch.

        It can be set at any time, from any thread; the new value holds for
        every thread at the part's next call.

        Raises:
            TypeError: (on assignment) the value is not ``True``, ``False`` or ``None``.
        """
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool | None) -> None:
        p = Problems()
        checked = _switch(p, value)
        p.raise_if_any()
        self._enabled = checked

    def _inject(self, label: str) -> bool:
        """Decide for one call whether to inject (count and report it)."""
        switch = self._enabled
        if not (switch if switch is not None else is_enabled()):
            return False  # switched off: no lock, no draw, nothing counted
        if not self._dice.roll():
            return False
        if BUS.wants(ChaosInjected):
            BUS.emit(ChaosInjected(label, self._kind))
        return True

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate ``fn``; the wrapper has the same kind and signature."""
        kind = decoratable_kind(self._kind, fn)
        label = self.name or guess_name(fn)
        return cast("Callable[P, T]", wrap(fn, kind, label, self._call_sync, self._call_async))

    def _call_sync(self, label: str, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        raise NotImplementedError  # pragma: no cover - every part defines it

    async def _call_async(
        self, label: str, fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any
    ) -> T:
        raise NotImplementedError  # pragma: no cover - every part defines it

    def statistics(self) -> ChaosStatistics:
        """Return a snapshot of this part's counters."""
        return self._dice.statistics()

    def _settings(self) -> str:
        return ""

    def describe_part(self) -> str:
        """Return this part's one-line description (used by :class:`~recoverly.Pipeline`)."""
        name = f" {self.name!r}" if self.name else ""
        switch = "" if self._enabled is None else f" enabled={self._enabled}"
        schedule = self._dice.settings()
        return f"chaos.{self._kind}{name} rate={self.rate:g}{self._settings()}{schedule}{switch}"

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<{self.describe_part()} calls={s.calls} injected={s.injected}>"


class Fault(_Chaos):
    """Raise an exception instead of calling the function. Built with :func:`fault`.

    .. versionadded:: 0.2
    """

    __slots__ = ("exception",)

    _kind = "fault"

    def __init__(
        self,
        rate: float,
        exception: BaseException | type[BaseException] | Callable[[], BaseException],
        seed: int | None = None,
        *,
        enabled: bool | None = None,
        name: str | None = None,
        at: Iterable[int] | None = None,
        max_injections: int | None = None,
    ) -> None:
        p = Problems()
        spec: object = exception
        if not (isinstance(spec, BaseException) or callable(spec)):
            p._bad(
                f"exception must be an exception, an exception class or a factory, "
                f"got {exception!r}",
                kind=True,
            )
        self.exception = exception
        super().__init__(p, rate, seed, enabled, name, at, max_injections)

    def _error(self) -> BaseException:
        exc = self.exception
        if isinstance(exc, BaseException):
            return exc
        made: object = exc()
        if not isinstance(made, BaseException):
            msg = f"chaos.fault's exception factory returned {made!r}, not an exception"
            raise TypeError(msg)
        return made

    def _call_sync(self, label: str, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        if self._inject(label):
            raise self._error()
        return fn(*args, **kwargs)

    async def _call_async(
        self, label: str, fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any
    ) -> T:
        if self._inject(label):
            raise self._error()
        return await fn(*args, **kwargs)

    def _settings(self) -> str:
        exc = self.exception
        shown = type(exc).__name__ if isinstance(exc, BaseException) else guess_name(exc)
        return f" exception={shown}"


class Latency(_Chaos):
    """Wait before calling the function. Built with :func:`latency`.

    .. versionadded:: 0.2
    """

    __slots__ = ("_clock", "seconds")

    _kind = "latency"

    def __init__(
        self,
        rate: float,
        seconds: Duration,
        seed: int | None = None,
        *,
        enabled: bool | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        at: Iterable[int] | None = None,
        max_injections: int | None = None,
    ) -> None:
        p = Problems()
        self.seconds = p.duration("seconds", seconds)
        self._clock = clock
        super().__init__(p, rate, seed, enabled, name, at, max_injections)

    def _call_sync(self, label: str, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        if self._inject(label):
            resolve(self._clock).sleep(self.seconds)
        return fn(*args, **kwargs)

    async def _call_async(
        self, label: str, fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any
    ) -> T:
        if self._inject(label):
            await resolve(self._clock).asleep(self.seconds)
        return await fn(*args, **kwargs)

    def _settings(self) -> str:
        return f" seconds={self.seconds:g}"


class Outcome(_Chaos):
    """Return a given value instead of calling the function. Built with :func:`outcome`.

    .. versionadded:: 0.2
    """

    __slots__ = ("value",)

    _kind = "outcome"

    def __init__(
        self,
        rate: float,
        value: object,
        seed: int | None = None,
        *,
        enabled: bool | None = None,
        name: str | None = None,
        at: Iterable[int] | None = None,
        max_injections: int | None = None,
    ) -> None:
        self.value = value
        super().__init__(Problems(), rate, seed, enabled, name, at, max_injections)

    def _call_sync(self, label: str, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        if self._inject(label):
            return cast("T", self.value)
        return fn(*args, **kwargs)

    async def _call_async(
        self, label: str, fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any
    ) -> T:
        if self._inject(label):
            return cast("T", self.value)
        return await fn(*args, **kwargs)

    def _settings(self) -> str:
        return f" value={self.value!r}"


def fault(
    rate: float,
    exception: BaseException | type[BaseException] | Callable[[], BaseException],
    seed: int | None = None,
    *,
    enabled: bool | None = None,
    name: str | None = None,
    at: Iterable[int] | None = None,
    max_injections: int | None = None,
) -> Fault:
    """Raise ``exception`` instead of calling the function, in ``rate`` of the calls.

    Args:
        rate: Share of calls that fail, in [0, 1].
        exception: An exception instance (raised as is), an exception class or
            a factory (called for a fresh exception each time).
        seed: Seed of the part's random generator, for a reproducible run.
        enabled: ``True``/``False`` fixes the switch for this part; ``None``
            (default) follows :func:`enabled` and ``RECOVERLY_CHAOS``.
        name: A name for ``repr`` and the :class:`~recoverly.events.ChaosInjected` events.
        at: Call numbers that inject whatever the dice say, counting the calls
            made while the part is switched on from 1 (``None``: none).
        max_injections: Inject at most this many times (``None``: no limit).

    Returns:
        A :class:`Fault` part: a decorator and a pipeline part.

    Raises:
        ValueError: ``rate`` is outside [0, 1], a call number in ``at`` or
            ``max_injections`` is below 1.
        TypeError: An argument has the wrong type (every problem is listed).

    .. versionadded:: 0.2
    """
    return Fault(
        rate, exception, seed, enabled=enabled, name=name, at=at, max_injections=max_injections
    )


def latency(
    rate: float,
    seconds: Duration,
    seed: int | None = None,
    *,
    enabled: bool | None = None,
    name: str | None = None,
    clock: Clock | None = None,
    at: Iterable[int] | None = None,
    max_injections: int | None = None,
) -> Latency:
    """Wait ``seconds`` before calling the function, in ``rate`` of the calls.

    The wait goes through the clock (a manual clock in tests; see
    :mod:`recoverly.testing`), and ``await``-s on the event loop for
    ``async def`` functions.

    Args:
        rate: Share of calls that are delayed, in [0, 1].
        seconds: The added delay (seconds or a ``timedelta``).
        seed: Seed of the part's random generator, for a reproducible run.
        enabled: ``True``/``False`` fixes the switch for this part; ``None``
            (default) follows :func:`enabled` and ``RECOVERLY_CHAOS``.
        name: A name for ``repr`` and the :class:`~recoverly.events.ChaosInjected` events.
        clock: Time source (default: the process clock).
        at: Call numbers that inject whatever the dice say, counting the calls
            made while the part is switched on from 1 (``None``: none).
        max_injections: Inject at most this many times (``None``: no limit).

    Returns:
        A :class:`Latency` part: a decorator and a pipeline part.

    Raises:
        ValueError: ``rate``, ``seconds``, a call number in ``at`` or
            ``max_injections`` is out of range.
        TypeError: An argument has the wrong type (every problem is listed).

    .. versionadded:: 0.2
    """
    return Latency(
        rate,
        seconds,
        seed,
        enabled=enabled,
        name=name,
        clock=clock,
        at=at,
        max_injections=max_injections,
    )


def outcome(
    rate: float,
    value: object,
    seed: int | None = None,
    *,
    enabled: bool | None = None,
    name: str | None = None,
    at: Iterable[int] | None = None,
    max_injections: int | None = None,
) -> Outcome:
    """Return ``value`` instead of calling the function, in ``rate`` of the calls.

    Args:
        rate: Share of calls answered with ``value``, in [0, 1].
        value: What those calls return (returned as is).
        seed: Seed of the part's random generator, for a reproducible run.
        enabled: ``True``/``False`` fixes the switch for this part; ``None``
            (default) follows :func:`enabled` and ``RECOVERLY_CHAOS``.
        name: A name for ``repr`` and the :class:`~recoverly.events.ChaosInjected` events.
        at: Call numbers that inject whatever the dice say, counting the calls
            made while the part is switched on from 1 (``None``: none).
        max_injections: Inject at most this many times (``None``: no limit).

    Returns:
        An :class:`Outcome` part: a decorator and a pipeline part.

    Raises:
        ValueError: ``rate`` is outside [0, 1], a call number in ``at`` or
            ``max_injections`` is below 1.
        TypeError: An argument has the wrong type (every problem is listed).

    .. versionadded:: 0.2
    """
    return Outcome(
        rate, value, seed, enabled=enabled, name=name, at=at, max_injections=max_injections
    )
