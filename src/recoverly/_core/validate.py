"""Argument checks that fail when a strategy is configured, never later.

Each check returns the normalised value or records a problem in a
:class:`Problems` collector, so a constructor can report every bad argument in
one exception. Messages name the parameter, the rule and the value:
``"max_attempts must be an integer >= 1, got 0"``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Any, NoReturn, TypeAlias, TypeVar

__all__ = ["Duration", "Problems", "to_seconds"]

#: Durations are float seconds; a ``datetime.timedelta`` is accepted too.
Duration: TypeAlias = "float | dt.timedelta"

_T = TypeVar("_T")


class Problems:
    """Collects validation problems and raises them together.

    ``ValueError`` is raised when every problem is a bad range, ``TypeError``
    when at least one is a bad kind.
    """

    __slots__ = ("_type_error", "messages")

    def __init__(self) -> None:
        self.messages: list[str] = []
        self._type_error = False

    def _bad(self, message: str, *, kind: bool = False) -> None:
        self.messages.append(message)
        self._type_error = self._type_error or kind

    def raise_if_any(self) -> None:
        """Raise one exception that lists every recorded problem."""
        if not self.messages:
            return
        text = "; ".join(self.messages)
        if self._type_error:
            raise TypeError(text)
        raise ValueError(text)

    def fail(self) -> NoReturn:
        """Raise the recorded problems (there must be at least one)."""
        self.raise_if_any()
        raise AssertionError  # pragma: no cover

    # ------------------------------------------------------------------ checks
    def int_at_least(self, name: str, value: Any, minimum: int) -> int:
        """Check ``value`` is an int (not a bool) ``>= minimum``."""
        if isinstance(value, bool) or not isinstance(value, int):
            self._bad(f"{name} must be an integer >= {minimum}, got {value!r}", kind=True)
            return minimum
        if value < minimum:
            self._bad(f"{name} must be an integer >= {minimum}, got {value!r}")
        return value

    def optional_int_at_least(self, name: str, value: Any, minimum: int) -> int | None:
        """Like :meth:`int_at_least`, with ``None`` meaning "no limit"."""
        return None if value is None else self.int_at_least(name, value, minimum)

    def duration(self, name: str, value: Any, *, positive: bool = False) -> float:
        """Check a duration: float seconds or ``timedelta``, finite, ``>= 0`` (or ``> 0``)."""
        rule = "> 0" if positive else ">= 0"
        seconds = _to_seconds(value)
        if seconds is None:
            self._bad(
                f"{name} must be a number of seconds or a timedelta, got {value!r}", kind=True
            )
            return 0.0
        if not math.isfinite(seconds) or seconds < 0 or (positive and seconds == 0):
            self._bad(f"{name} must be a finite number of seconds {rule}, got {value!r}")
            return 0.0
        return seconds

    def optional_duration(self, name: str, value: Any, *, positive: bool = False) -> float | None:
        """Like :meth:`duration`, with ``None`` meaning "no limit"."""
        return None if value is None else self.duration(name, value, positive=positive)

    def number_at_least(self, name: str, value: Any, minimum: float) -> float:
        """Check a finite real number ``>= minimum``."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self._bad(f"{name} must be a number >= {minimum}, got {value!r}", kind=True)
            return float(minimum)
        if not math.isfinite(value) or value < minimum:
            self._bad(f"{name} must be a finite number >= {minimum}, got {value!r}")
            return float(minimum)
        return float(value)

    def fraction(self, name: str, value: Any, *, low_open: bool = False) -> float:
        """Check a number in ``[0, 1]`` (or ``(0, 1]`` when ``low_open``)."""
        rule = "in (0, 1]" if low_open else "in [0, 1]"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self._bad(f"{name} must be a number {rule}, got {value!r}", kind=True)
            return 1.0
        if not (0.0 <= value <= 1.0) or (low_open and value == 0):
            self._bad(f"{name} must be a number {rule}, got {value!r}")
            return 1.0
        return float(value)

    def optional_callable(self, name: str, value: Any) -> Callable[..., Any] | None:
        """Check ``value`` is callable or ``None``."""
        if value is not None and not callable(value):
            self._bad(f"{name} must be callable or None, got {value!r}", kind=True)
            return None
        return value  # type: ignore[no-any-return]

    def optional_instance(self, name: str, value: object, cls: type[_T]) -> _T | None:
        """Check ``value`` is an instance of ``cls`` or ``None``."""
        if value is None or isinstance(value, cls):
            return value
        self._bad(f"{name} must be a {cls.__name__} or None, got {value!r}", kind=True)
        return None

    def optional_name(self, name: str, value: Any) -> str | None:
        """Check ``value`` is a non-empty string or ``None``."""
        if value is None:
            return None
        if not isinstance(value, str):
            self._bad(f"{name} must be a string or None, got {value!r}", kind=True)
            return None
        if not value:
            self._bad(f"{name} must not be empty, got {value!r}")
        return value


def _to_seconds(value: Any) -> float | None:
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def to_seconds(value: float | dt.timedelta) -> float:
    """Return float seconds for a number or a ``timedelta`` (already validated)."""
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return float(value)
