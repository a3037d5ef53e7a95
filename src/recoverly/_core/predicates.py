"""Turns ``exceptions=`` arguments into one predicate.

An exception filter may be an exception class, a tuple of classes, or a
callable ``(exc) -> bool``. ``KeyboardInterrupt``, ``SystemExit``,
``GeneratorExit`` and cancellation (``asyncio.CancelledError``, Trio's
``Cancelled``) are never matched, whatever the filter says.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import TypeAlias

__all__ = ["ExceptionFilter", "Predicate", "compile_filter", "describe_filter", "is_control_flow"]

Predicate: TypeAlias = Callable[[BaseException], bool]
ExceptionFilter: TypeAlias = (
    type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
)

_NEVER: tuple[type[BaseException], ...] = (
    KeyboardInterrupt,
    SystemExit,
    GeneratorExit,
    asyncio.CancelledError,
)


def is_control_flow(exc: BaseException) -> bool:
    """Return whether ``exc`` is an interrupt, exit or cancellation."""
    if isinstance(exc, _NEVER):
        return True
    # Trio's Cancelled derives from BaseException; match it by name so the core
    # never imports trio.
    return type(exc).__name__ == "Cancelled" and type(exc).__module__.startswith("trio")


def _is_exception_class(value: object) -> bool:
    return inspect.isclass(value) and issubclass(value, BaseException)


def compile_filter(name: str, value: object) -> Predicate:
    """Return a predicate for ``value`` or raise ``TypeError`` naming ``name``.

    Args:
        name: The parameter name, used in the error message.
        value: An exception class, a tuple of them, or a callable.

    Returns:
        A callable that says whether an exception matches.

    Raises:
        TypeError: ``value`` is none of the accepted kinds.
    """
    if _is_exception_class(value):
        types: tuple[type[BaseException], ...] = (value,)  # type: ignore[assignment]
    elif isinstance(value, tuple) and all(_is_exception_class(v) for v in value):
        types = value
    elif callable(value):
        user: Callable[[BaseException], bool] = value

        def by_predicate(exc: BaseException) -> bool:
            return not is_control_flow(exc) and bool(user(exc))

        return by_predicate
    else:
        msg = (
            f"{name} must be an exception class, a tuple of exception classes or a "
            f"callable (exc) -> bool, got {value!r}"
        )
        raise TypeError(msg)

    if not types:

        def match_nothing(exc: BaseException) -> bool:  # noqa: ARG001
            return False

        return match_nothing

    def by_type(exc: BaseException) -> bool:
        return isinstance(exc, types) and not is_control_flow(exc)

    return by_type


def describe_filter(value: object) -> str:
    """Return a short human description of an exception filter for ``repr``."""
    if isinstance(value, tuple):
        return "(" + ", ".join(v.__name__ for v in value) + ")"
    if inspect.isclass(value):
        return value.__name__
    return getattr(value, "__qualname__", repr(value))
