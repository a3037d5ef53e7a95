"""safe_execute: turn a failure into a default value, and say so.

::

    df = safe_execute(load_dataset, primary_path, default=None)   # None if it raised

The exception is reported, never swallowed silently: a
:class:`~recoverly.events.FallbackUsed` event (strategy ``"safe_execute"``) is
emitted and the default subscriber logs it at WARNING. ``KeyboardInterrupt``,
``SystemExit`` and cancellation are never turned into defaults: they propagate.

.. versionadded:: 0.1
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, overload

from recoverly._core.bus import BUS
from recoverly._core.callables import guess_name
from recoverly._core.predicates import ExceptionFilter, Predicate, compile_filter
from recoverly.events import FallbackUsed

__all__ = ["asafe_execute", "safe_execute"]

T = TypeVar("T")
D = TypeVar("D")

_ANY: ExceptionFilter = (Exception,)
_ANY_MATCH = compile_filter("exceptions", _ANY)


def _matcher(exceptions: ExceptionFilter) -> Predicate:
    return _ANY_MATCH if exceptions is _ANY else compile_filter("exceptions", exceptions)


def _used_default(func: object, exc: BaseException) -> None:
    if BUS.wants(FallbackUsed):
        BUS.emit(FallbackUsed(guess_name(func), exc, "safe_execute"))


@overload
def safe_execute(
    func: Callable[..., Coroutine[Any, Any, T]],
    /,
    *args: Any,
    default: D,
    exceptions: ExceptionFilter = ...,
    **kwargs: Any,
) -> Coroutine[Any, Any, T | D]: ...


@overload
def safe_execute(
    func: Callable[..., Coroutine[Any, Any, T]],
    /,
    *args: Any,
    exceptions: ExceptionFilter = ...,
    **kwargs: Any,
) -> Coroutine[Any, Any, T | None]: ...


@overload
def safe_execute(
    func: Callable[..., T],
    /,
    *args: Any,
    default: D,
    exceptions: ExceptionFilter = ...,
    **kwargs: Any,
) -> T | D: ...


@overload
def safe_execute(
    func: Callable[..., T], /, *args: Any, exceptions: ExceptionFilter = ..., **kwargs: Any
) -> T | None: ...


def safe_execute(
    func: Callable[..., Any],
    /,
    *args: Any,
    default: Any = None,
    exceptions: ExceptionFilter = _ANY,
    **kwargs: Any,
) -> Any:
    """Return ``func(*args, **kwargs)``, or ``default`` if it raises.

    The failure is reported as a :class:`~recoverly.events.FallbackUsed` event
    (``strategy="safe_execute"``), which the default subscriber logs at WARNING
    with the function's name and the exception. It is never swallowed silently.

    ``default`` and ``exceptions`` are keyword-only and reserved: they are never
    passed on to ``func``. To pass arguments of those names, wrap the call in a
    ``lambda`` or ``functools.partial``. ``default`` is returned as is (the same
    object every time it is used).

    If ``func`` returns a coroutine (it is ``async def``), ``safe_execute``
    returns a coroutine that applies the same rule when awaited:
    ``await safe_execute(fetch, url, default=None)``. :func:`asafe_execute` is
    the same thing spelt explicitly.

    Args:
        func: The callable to run.
        *args: Positional arguments for ``func``.
        default: What to return when ``func`` raises a matching exception.
        exceptions: Which exceptions become ``default``: a class, a tuple of
            classes or a predicate. Others propagate. Default: ``Exception``.
        **kwargs: Keyword arguments for ``func``.

    Returns:
        ``func``'s result, or ``default``.

    Raises:
        TypeError: ``exceptions`` is not a class, tuple of classes or callable.
        BaseException: Whatever ``func`` raised when it does not match
            ``exceptions`` (``KeyboardInterrupt``, ``SystemExit`` and
            cancellation never match).

    .. versionadded:: 0.1
    """
    matches = _matcher(exceptions)
    try:
        result = func(*args, **kwargs)
    except Exception as exc:
        if not matches(exc):
            raise
        _used_default(func, exc)
        return default
    if inspect.iscoroutine(result):
        return _guarded(func, result, default, matches)
    return result


async def _guarded(func: object, aw: Awaitable[T], default: D, matches: Predicate) -> T | D:
    try:
        return await aw
    except Exception as exc:
        if not matches(exc):
            raise
        _used_default(func, exc)
        return default


@overload
async def asafe_execute(
    func: Callable[..., Awaitable[T]],
    /,
    *args: Any,
    default: D,
    exceptions: ExceptionFilter = ...,
    **kwargs: Any,
) -> T | D: ...


@overload
async def asafe_execute(
    func: Callable[..., Awaitable[T]],
    /,
    *args: Any,
    exceptions: ExceptionFilter = ...,
    **kwargs: Any,
) -> T | None: ...


async def asafe_execute(
    func: Callable[..., Awaitable[Any]],
    /,
    *args: Any,
    default: Any = None,
    exceptions: ExceptionFilter = _ANY,
    **kwargs: Any,
) -> Any:
    """Await ``func(*args, **kwargs)``, or return ``default`` if it raises.

    The async twin of :func:`safe_execute`, with the same reporting and the same
    reserved keyword arguments. Cancellation always propagates.

    Args:
        func: An ``async def`` function (or anything returning an awaitable).
        *args: Positional arguments for ``func``.
        default: What to return when ``func`` raises a matching exception.
        exceptions: Which exceptions become ``default`` (default ``Exception``).
        **kwargs: Keyword arguments for ``func``.

    Returns:
        ``func``'s result, or ``default``.

    Raises:
        TypeError: ``exceptions`` is not a class, tuple of classes or callable.

    .. versionadded:: 0.1
    """
    matches = _matcher(exceptions)
    try:
        aw = func(*args, **kwargs)
    except Exception as exc:
        if not matches(exc):
            raise
        _used_default(func, exc)
        return default
    return await _guarded(func, aw, default, matches)


for _obj in (safe_execute, asafe_execute):
    _obj.__module__ = "recoverly"
del _obj
