"""The exceptions recoverly raises, and the circuit states they report.

The tree::

    Exception
    └── RecoverlyError                 anything recoverly raises on its own
        └── RejectedError              a call was refused before (or instead of) running
            ├── CircuitBreakerError    the breaker is OPEN, or HALF_OPEN with no probe free
            └── TimeoutExceeded        also a builtin ``TimeoutError``

Every rejection carries ``name`` (the strategy instance), ``state`` and
``retry_after`` (seconds until a call could be admitted, or ``None``). When
retries run out, recoverly re-raises *your* last exception unchanged: it is
never wrapped in one of these.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = [
    "CircuitBreakerError",
    "CircuitState",
    "RecoverlyError",
    "RejectedError",
    "TimeoutExceeded",
]


class CircuitState(enum.Enum):
    """The states of a :class:`~recoverly.CircuitBreaker`.

    .. versionadded:: 0.1
    """

    CLOSED = "closed"
    """Calls pass; failures are counted."""
    OPEN = "open"
    """Calls are rejected until the recovery timeout has passed."""
    HALF_OPEN = "half_open"
    """A limited number of probe calls pass; their outcome decides the next state."""
    FORCED_OPEN = "forced_open"
    """Opened by hand with ``force_open()``; stays open until ``reset()``."""
    DISABLED = "disabled"
    """Switched off with ``disable()``: every call passes and nothing is counted."""


class RecoverlyError(Exception):
    """Base class of every exception recoverly raises itself.

    .. versionadded:: 0.1
    """

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep keyword attributes across pickling (Celery ships exceptions that way).
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


def _rebuild(cls: type[RecoverlyError], args: tuple[Any, ...], attrs: dict[str, Any]) -> Any:
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(attrs)
    return exc


class RejectedError(RecoverlyError):
    """A strategy refused to run the call.

    Attributes:
        name: The name of the strategy instance that refused.
        state: The state it was in (a string or an enum member).
        retry_after: Seconds until a call may be admitted again, or ``None``.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        message: str,
        *,
        name: str | None = None,
        state: object = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.name = name
        self.state = state
        self.retry_after = retry_after


class CircuitBreakerError(RejectedError):
    """The circuit breaker rejected the call without running it.

    The message reads ``"Circuit breaker is OPEN ..."`` and names the breaker;
    ``retry_after`` is the number of seconds until a probe will be let through.

    .. versionadded:: 0.1
    """


class TimeoutExceeded(RejectedError, TimeoutError):
    """The call ran longer than its timeout.

    It is also the builtin ``TimeoutError``, so ``except TimeoutError`` catches it.

    Attributes:
        seconds: The timeout that was exceeded.

    .. versionadded:: 0.1
    """

    def __init__(self, message: str, *, name: str | None = None, seconds: float) -> None:
        super().__init__(message, name=name, state=None, retry_after=None)
        self.seconds = seconds


for _cls in (CircuitState, RecoverlyError, RejectedError, CircuitBreakerError, TimeoutExceeded):
    _cls.__module__ = "recoverly"
del _cls
