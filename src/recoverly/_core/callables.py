"""Looking at a callable once, when it is decorated."""

from __future__ import annotations

import enum
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = [
    "Kind",
    "check_callable",
    "decoratable_kind",
    "guess_name",
    "is_async_callable",
    "kind_of",
    "wrap",
]


class Kind(enum.Enum):
    """What a decorator must return to keep the callable's nature."""

    SYNC = "sync"
    ASYNC = "async"
    GENERATOR = "generator"
    ASYNC_GENERATOR = "async generator"


def _unwrap(fn: Any) -> Any:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def is_async_callable(fn: object) -> bool:
    """Return whether calling ``fn`` returns an awaitable coroutine.

    Sees through ``functools.partial`` and objects whose ``__call__`` is
    ``async def``.
    """
    target = _unwrap(fn)
    if inspect.iscoroutinefunction(target):
        return True
    call = getattr(target, "__call__", None)  # noqa: B004 - we want the bound __call__
    return (
        call is not None
        and not inspect.isfunction(target)
        and not inspect.ismethod(target)
        and inspect.iscoroutinefunction(call)
    )


def kind_of(fn: object) -> Kind:
    """Classify ``fn`` as sync, async, generator or async generator function."""
    target = _unwrap(fn)
    if inspect.isasyncgenfunction(target):
        return Kind.ASYNC_GENERATOR
    if inspect.isgeneratorfunction(target):
        return Kind.GENERATOR
    if is_async_callable(fn):
        return Kind.ASYNC
    return Kind.SYNC


def guess_name(fn: object) -> str:
    """Return a readable dotted name for ``fn`` (for logs and events)."""
    target = _unwrap(fn)
    qualname = getattr(target, "__qualname__", None) or getattr(
        type(target), "__qualname__", repr(target)
    )
    module = getattr(target, "__module__", None)
    if module and module not in {"builtins", "__main__"}:
        return f"{module}.{qualname}"
    return str(qualname)


def check_callable(name: str, fn: object) -> Callable[..., Any]:
    """Return ``fn`` if callable, else raise ``TypeError`` naming the parameter."""
    if not callable(fn):
        msg = f"{name} must be callable, got {fn!r}"
        raise TypeError(msg)
    return fn


def decoratable_kind(strategy: str, fn: object) -> Kind:
    """Return ``fn``'s kind, refusing generator functions with a clear ``TypeError``.

    Retrying, timing or guarding a generator function is ambiguous (the work
    happens while it is consumed, not when it is called), so strategies wrap
    only plain and ``async def`` functions.
    """
    kind = kind_of(fn)
    if kind in (Kind.GENERATOR, Kind.ASYNC_GENERATOR):
        msg = (
            f"{strategy} cannot wrap the {kind.value} function {guess_name(fn)}: "
            "decorate the function that consumes it instead"
        )
        raise TypeError(msg)
    return kind


def wrap(
    fn: Callable[..., Any],
    kind: Kind,
    label: str,
    call_sync: Callable[[str, Callable[..., Any], Any, Any], Any],
    call_async: Callable[[str, Callable[..., Awaitable[Any]], Any, Any], Awaitable[Any]],
) -> Callable[..., Any]:
    """Return a wrapper of ``fn``'s kind that hands every call to a strategy driver.

    The wrapper calls ``call_sync(label, fn, args, kwargs)`` or awaits
    ``call_async(label, fn, args, kwargs)``; ``functools.wraps`` keeps the name,
    docstring and signature, and an ``async def`` stays a coroutine function.
    """
    if kind is Kind.ASYNC:

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            """Await the async driver (functools.wraps replaces this docstring)."""
            return await call_async(label, fn, args, kwargs)

        return async_wrapper

    @functools.wraps(fn)
    def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
        return call_sync(label, fn, args, kwargs)

    return sync_wrapper
