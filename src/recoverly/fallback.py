"""fallback: answer with something else when a call fails.

``@fallback(get_default_config)`` runs the function and, when it raises one of
``exceptions``, returns what the alternative gives instead. The alternative is
a callable or a plain value; several can be chained, in one call
(``fallback(from_cache, from_disk, {})``) or by stacking decorators (the one
nearest the function is tried first).

The original exception is never lost: a :class:`~recoverly.events.FallbackUsed`
event reports it (logged at WARNING by default), an alternative may ask for it
with an ``exception`` keyword parameter, and if the alternative fails too, its
error propagates with the original as its ``__context__``.

.. versionadded:: 0.1
"""

from __future__ import annotations

import enum
import inspect
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast, final

from recoverly._core.bus import BUS
from recoverly._core.callables import Kind, decoratable_kind, guess_name, is_async_callable, wrap
from recoverly._core.predicates import Predicate, compile_filter, describe_filter
from recoverly._core.validate import Problems
from recoverly.events import FallbackUsed

__all__ = ["Fallback", "FallbackStatistics", "fallback"]

P = ParamSpec("P")
T = TypeVar("T")

_NO_ARGS: tuple[Any, ...] = ()
_NO_KWARGS: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class FallbackStatistics:
    """Counters of one :class:`Fallback` policy.

    Attributes:
        invoked: Alternatives called (a chain may call several per call).
        served: Calls answered by an alternative.
        failed: Calls whose alternatives all failed too.

    .. versionadded:: 0.1
    """

    invoked: int
    served: int
    failed: int


class _How(enum.Enum):
    VALUE = "value"
    SYNC = "sync"
    ASYNC = "async"


@final
class _Alternative:
    """One alternative, looked at once: what it is and what it takes."""

    __slots__ = ("how", "label", "passes_args", "target", "wants_exception")

    def __init__(self, target: object) -> None:
        self.target = target
        self.passes_args = self.wants_exception = False
        if not callable(target):
            self.how, self.label = _How.VALUE, repr(target)
            return
        self.how = _How.ASYNC if is_async_callable(target) else _How.SYNC
        self.label = guess_name(target)
        try:
            params = list(inspect.signature(target).parameters.values())
        except (TypeError, ValueError):  # no signature (some builtins): call it bare
            return
        self.wants_exception = any(
            q.name == "exception" and q.kind in (q.POSITIONAL_OR_KEYWORD, q.KEYWORD_ONLY)
            for q in params
        )
        self.passes_args = any(q.name != "exception" for q in params)

    def check_against(self, primary: Callable[..., Any]) -> None:
        """Raise ``TypeError`` if a plain call of ``primary`` cannot be passed on."""
        if not self.passes_args:
            return
        try:
            mine = inspect.signature(cast("Callable[..., Any]", self.target))
            theirs = inspect.signature(primary)
        except (TypeError, ValueError):  # the primary has no readable signature
            return
        args: list[object] = []
        kwargs: dict[str, object] = {}
        for q in theirs.parameters.values():
            if q.default is not q.empty:
                continue
            if q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD):
                args.append(None)
            elif q.kind is q.KEYWORD_ONLY:
                kwargs[q.name] = None
        if self.wants_exception:
            kwargs["exception"] = None
        try:
            mine.bind(*args, **kwargs)
        except TypeError as exc:
            msg = (
                f"fallback alternative {self.label}{mine} cannot take the arguments of "
                f"{guess_name(primary)}{theirs} ({exc}); give it the same parameters, "
                "or none to be called without arguments"
            )
            raise TypeError(msg) from None

    def run(self, exc: BaseException, args: Any, kwargs: Any) -> Any:
        """Call the alternative (or return the value); an async one returns an awaitable."""
        if self.how is _How.VALUE:
            return self.target
        fn = cast("Callable[..., Any]", self.target)
        if not self.passes_args:
            args, kwargs = _NO_ARGS, _NO_KWARGS
        if self.wants_exception:
            return fn(*args, **kwargs, exception=exc)
        return fn(*args, **kwargs)


class Fallback:
    """A fallback policy; apply it to functions as a decorator.

    Usually built with :func:`fallback`. Arguments are described there.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_alternatives",
        "_failed",
        "_invoked",
        "_lock",
        "_matches",
        "_served",
        "alternatives",
        "exceptions",
        "name",
    )

    def __init__(
        self,
        alternative: object,
        *more_alternatives: object,
        exceptions: Any = (Exception,),
        name: str | None = None,
    ) -> None:
        p = Problems()
        self.name = p.optional_name("name", name)
        self.alternatives = (alternative, *more_alternatives)
        for i, value in enumerate(self.alternatives[:-1]):
            if not callable(value):
                p._bad(
                    f"alternative #{i + 1} is the plain value {value!r}, which never fails, "
                    "so the alternatives after it would never be used"
                )
        try:
            self._matches: Predicate = compile_filter("exceptions", exceptions)
        except TypeError as exc:
            p._bad(str(exc), kind=True)
        p.raise_if_any()
        self.exceptions = exceptions
        self._alternatives = tuple(_Alternative(a) for a in self.alternatives)
        self._lock = threading.Lock()
        self._invoked = self._served = self._failed = 0

    # ------------------------------------------------------------ bookkeeping
    def _using(self, label: str, exc: BaseException) -> None:
        with self._lock:
            self._invoked += 1
        if BUS.wants(FallbackUsed):
            BUS.emit(FallbackUsed(label, exc))

    def _count(self, *, served: bool) -> None:
        with self._lock:
            if served:
                self._served += 1
            else:
                self._failed += 1

    def _check_sync_primary(self, fn: object) -> None:
        for alt in self._alternatives:
            if alt.how is _How.ASYNC:
                msg = (
                    f"fallback alternative {alt.label} is async but {guess_name(fn)} is "
                    "not: a sync function cannot await it; make the alternative sync"
                )
                raise TypeError(msg)

    # ------------------------------------------------------------ drivers
    # Each alternative runs inside the `except` block of the failure it answers,
    # so an error it raises carries that failure as its __context__.
    def _call_sync(self, label: str, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            if not self._matches(exc):
                raise
            return cast("T", self._recover_sync(label, exc, args, kwargs, 0))

    def _recover_sync(
        self, label: str, exc: BaseException, args: Any, kwargs: Any, level: int
    ) -> Any:
        self._using(label, exc)
        try:
            result = self._alternatives[level].run(exc, args, kwargs)
        except BaseException as err:
            if level + 1 == len(self._alternatives) or not self._matches(err):
                self._count(served=False)
                raise
            return self._recover_sync(label, err, args, kwargs, level + 1)
        self._count(served=True)
        return result

    async def _call_async(
        self, label: str, fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any
    ) -> T:
        try:
            return await fn(*args, **kwargs)
        except BaseException as exc:
            if not self._matches(exc):
                raise
            return cast("T", await self._recover_async(label, exc, args, kwargs, 0))

    async def _recover_async(
        self, label: str, exc: BaseException, args: Any, kwargs: Any, level: int
    ) -> Any:
        self._using(label, exc)
        alt = self._alternatives[level]
        try:
            result = alt.run(exc, args, kwargs)
            if alt.how is _How.ASYNC:
                result = await result
        except BaseException as err:
            if level + 1 == len(self._alternatives) or not self._matches(err):
                self._count(served=False)
                raise
            return await self._recover_async(label, err, args, kwargs, level + 1)
        self._count(served=True)
        return result

    # ------------------------------------------------------------ public API
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate ``fn``; the wrapper has the same kind and signature.

        Raises:
            TypeError: ``fn`` is a generator function, ``fn`` is sync and an
                alternative is async, or an alternative cannot take ``fn``'s
                arguments.
        """
        kind = decoratable_kind("fallback", fn)
        if kind is Kind.SYNC:
            self._check_sync_primary(fn)
        for alt in self._alternatives:
            alt.check_against(fn)
        label = self.name or guess_name(fn)

        return cast("Callable[P, T]", wrap(fn, kind, label, self._call_sync, self._call_async))

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)``, falling back on failure (sync callables only).

        Returns:
            What ``fn`` or the alternative that answered returned.

        Raises:
            TypeError: An alternative is async (use :meth:`acall`).
        """
        self._check_sync_primary(fn)
        return self._call_sync(self.name or guess_name(fn), fn, args, kwargs)

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args, **kwargs)``, falling back on failure.

        Returns:
            What ``fn`` or the alternative that answered returned.
        """
        return await self._call_async(self.name or guess_name(fn), fn, args, kwargs)

    def statistics(self) -> FallbackStatistics:
        """Return a snapshot of this policy's counters."""
        with self._lock:
            return FallbackStatistics(self._invoked, self._served, self._failed)

    def __repr__(self) -> str:
        s = self.statistics()
        name = f" {self.name!r}" if self.name else ""
        chain = ", ".join(a.label for a in self._alternatives)
        return (
            f"<Fallback{name} to=[{chain}] exceptions={describe_filter(self.exceptions)} "
            f"invoked={s.invoked} served={s.served} failed={s.failed}>"
        )


def fallback(
    alternative: object,
    *more_alternatives: object,
    exceptions: Any = (Exception,),
    name: str | None = None,
) -> Fallback:
    """Answer with ``alternative`` when the decorated function raises.

    ``alternative`` is a callable or a plain value. A callable with parameters
    is called with the arguments of the failed call; one without parameters is
    called with none (``@fallback(get_default_config)`` over
    ``load_config(config_path)``). A callable that declares a keyword parameter
    named ``exception`` receives the original exception in it. This is decided
    once, when the decorator is applied. To return a callable as the fallback
    value, wrap it: ``fallback(lambda: handler)``.

    Works on plain functions, methods and ``async def`` functions; an
    ``async def`` function may have sync or async alternatives.

    Args:
        alternative: The first thing to try when the call fails.
        *more_alternatives: Further alternatives, tried in order when the
            previous one fails with one of ``exceptions``. Only the last may be
            a plain value.
        exceptions: What to fall back on: an exception class, a tuple of them,
            or a predicate ``(exc) -> bool``. Anything else propagates.
            ``KeyboardInterrupt``, ``SystemExit`` and cancellation always do.
        name: Name used in events and logs (default: the function's name).

    Returns:
        A :class:`Fallback` policy to use as a decorator.

    Raises:
        ValueError: A plain value is followed by more alternatives, or ``name``
            is empty.
        TypeError: ``exceptions`` or ``name`` has the wrong type; when the
            decorator is applied, see :meth:`Fallback.__call__`.

    When every alternative fails, the last error propagates; its
    ``__context__`` is the previous failure, back to the original one.

    .. versionadded:: 0.1
    """
    return Fallback(alternative, *more_alternatives, exceptions=exceptions, name=name)


Fallback.__module__ = "recoverly"
FallbackStatistics.__module__ = "recoverly"
fallback.__module__ = "recoverly"
