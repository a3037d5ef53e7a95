"""Pipeline: several strategies applied as one, in a stated order.

``Pipeline(outermost, ..., innermost)`` takes the same objects that serve as
decorators (a :func:`~recoverly.retry` policy, a
:class:`~recoverly.CircuitBreaker`, a :func:`~recoverly.fallback`, a
:func:`~recoverly.timeout`, chaos parts, a hedge, a throttle, or any other
decorator) and applies them outermost first::

    resilient = Pipeline(
        fallback(cached_answer),          # sees the final error
        retry(max_attempts=3),            # each attempt goes through what follows
        breaker,                          # counts every attempt
        timeout(2.0),                     # bounds one attempt
    )

    @resilient
    def fetch(order_id: int) -> Order: ...

What a call goes through is decided by the order, and only by it:

* every retry attempt passes through the parts inside the retry again, so a
  breaker inside a retry counts each attempt and a timeout inside a retry
  bounds each attempt, while a timeout outside a retry bounds the whole call,
  waits included;
* a fallback sees only what comes out of the parts inside it: placed
  outermost, it answers the final error once retries are spent.

Decorating composes the parts once, innermost first, into one wrapper of the
function's kind (``async def`` stays a coroutine function); a call then costs
what its parts cost, and nothing else. :meth:`Pipeline.call` builds that
wrapper once per function and reuses it.

.. versionadded:: 0.2
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast

from recoverly._core.callables import Kind, decoratable_kind, guess_name, kind_of
from recoverly._core.validate import Problems
from recoverly.circuit_breaker import CircuitBreaker
from recoverly.fallback import Fallback, fallback
from recoverly.retry import Retry, retry
from recoverly.timeout import Timeout, timeout

__all__ = ["Pipeline"]

P = ParamSpec("P")
T = TypeVar("T")

#: How many functions :meth:`Pipeline.call` keeps a composed wrapper for.
CACHE_SIZE = 256

_FACTORIES: dict[object, str] = {
    retry: "retry(...)",
    fallback: "fallback(alternative)",
    timeout: "timeout(seconds)",
}


def describe_part(part: object) -> str:
    """Return a one-line description of one pipeline part (its kind and settings).

    A part may describe itself with a ``describe_part()`` method; recoverly's
    strategies are described from their settings; anything else by its name.

    .. versionadded:: 0.2
    """
    own = getattr(part, "describe_part", None)
    if callable(own):
        return str(own())
    name = getattr(part, "name", None)
    named = f" {name!r}" if isinstance(name, str) and name else ""
    for cls, describe in _DESCRIPTIONS:
        if isinstance(part, cls):
            return describe(part, named)
    return guess_name(part)


_DESCRIPTIONS: tuple[tuple[type[Any], Callable[[Any, str], str]], ...] = (
    (Retry, lambda r, n: f"retry{n} max_attempts={r.max_attempts} strategy={r.strategy.name}"),
    (
        CircuitBreaker,
        lambda b, n: f"circuit_breaker{n} failure_threshold={b.config.failure_threshold}",
    ),
    (Fallback, lambda f, n: f"fallback{n} alternatives={len(f.alternatives)}"),
    (Timeout, lambda t, n: f"timeout{n} seconds={t.seconds:g}"),
)


class Pipeline:
    """Several strategies applied as one decorator, outermost first.

    Args:
        *parts: Decorators, outermost first: anything that takes a function and
            returns a wrapper of the same kind (every recoverly strategy does).
        name: A name for ``repr`` and :meth:`describe` (optional).

    Attributes:
        parts: The parts as given, outermost first.
        name: The pipeline's name, or ``None``.

    Raises:
        TypeError: A part is not a decorator instance (a class, a factory that
            was not called such as ``retry`` instead of ``retry()``, or a value
            that is not callable); every bad part is listed.

    The composed wrapper is built once per decorated function. A part that
    changes a function's kind (a sync wrapper around an ``async def``) is
    reported with ``TypeError`` when decorating.

    .. versionadded:: 0.2
    """

    __slots__ = ("_cache", "_lock", "name", "parts")

    def __init__(
        self, *parts: Callable[[Callable[..., Any]], Callable[..., Any]], name: str | None = None
    ) -> None:
        p = Problems()
        self.name = p.optional_name("name", name)
        for i, part in enumerate(cast("tuple[object, ...]", parts)):
            hint = _FACTORIES.get(part) if _hashable(part) else None
            if hint is not None:
                p._bad(
                    f"part #{i + 1} is the factory {guess_name(part)}; call it: {hint}", kind=True
                )
            elif isinstance(part, type):
                p._bad(
                    f"part #{i + 1} is the class {part.__name__}; pass an instance of it",
                    kind=True,
                )
            elif not callable(part):
                p._bad(f"part #{i + 1} must be a decorator, got {part!r}", kind=True)
        p.raise_if_any()
        self.parts: tuple[Callable[[Callable[..., Any]], Callable[..., Any]], ...] = parts
        self._cache: dict[object, Callable[..., Any]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ composition
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate ``fn`` with every part; the wrapper has ``fn``'s kind and signature.

        Raises:
            TypeError: ``fn`` is a generator function, or a part returned a
                wrapper of another kind.
        """
        kind = decoratable_kind("pipeline", fn)
        wrapped: Callable[..., Any] = fn
        for part in reversed(self.parts):
            wrapped = part(wrapped)
            if not callable(cast("object", wrapped)) or kind_of(wrapped) is not kind:
                msg = (
                    f"pipeline part {describe_part(part)} turned the {kind.value} function "
                    f"{guess_name(fn)} into {wrapped!r}; every part must keep the function's kind"
                )
                raise TypeError(msg)
        return cast("Callable[P, T]", wrapped)

    def _composed(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Return the wrapper of ``fn``, built once and kept (for :meth:`call`)."""
        try:
            found = self._cache.get(fn)
        except TypeError:  # unhashable callable: build it every time
            return self(fn)
        if found is not None:
            return found
        built = self(fn)
        with self._lock:
            if len(self._cache) >= CACHE_SIZE:
                del self._cache[next(iter(self._cache))]  # forget the oldest
            self._cache[fn] = built
        return built

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` through the pipeline (sync callables only).

        The composed wrapper is kept for the last :data:`CACHE_SIZE` functions
        (the pipeline holds a reference to them, and to the object of a bound
        method), so calling the same function again composes nothing. Equal
        bound methods (``obj.method`` read twice) share one wrapper.

        Raises:
            TypeError: ``fn`` is ``async def`` (use :meth:`acall`).
        """
        if kind_of(fn) is not Kind.SYNC:
            msg = f"Pipeline.call cannot run {guess_name(fn)}: use `await pipeline.acall(...)`"
            raise TypeError(msg)
        return cast("T", self._composed(fn)(*args, **kwargs))

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` through the pipeline (``async def`` callables).

        Raises:
            TypeError: ``fn`` is not ``async def`` (use :meth:`call`).
        """
        if kind_of(fn) is not Kind.ASYNC:
            msg = f"Pipeline.acall needs an async callable, got {guess_name(fn)}: use .call()"
            raise TypeError(msg)
        return cast("T", await self._composed(fn)(*args, **kwargs))

    # ------------------------------------------------------------ introspection
    def describe_part(self) -> str:
        """Return how this pipeline reads as a part of another pipeline."""
        name = f" {self.name!r}" if self.name else ""
        return f"pipeline{name} ({len(self.parts)} parts)"

    def describe(self) -> tuple[str, ...]:
        """Return one line per part, outermost first (what each part is and its settings)."""
        return tuple(describe_part(part) for part in self.parts)

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        chain = " -> ".join(self.describe()) or "(no parts)"
        return f"<Pipeline{name}: {chain}>"


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


Pipeline.__module__ = "recoverly"
