"""The exceptions recoverly raises, and the circuit states they report.

The tree::

    Exception
    └── RecoverlyError                 anything recoverly raises on its own
        └── RejectedError              a call was refused before (or instead of) running
            ├── CircuitBreakerError    the breaker is OPEN, or HALF_OPEN with no probe free
            ├── BulkheadFullError      every slot and every queue place is taken
            ├── RateLimitExceeded      no token is free within the allowed wait
            ├── ThrottledError         the adaptive throttle refused the call locally
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
    "BulkheadFullError",
    "CircuitBreakerError",
    "CircuitState",
    "RateLimitExceeded",
    "RecoverlyError",
    "RejectedError",
    "ThrottledError",
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

    The data is kept in ``args`` as ``(message, name, state, retry_after)``, so a
    rejection is cheap to build; the message may be ``None`` and is then worded
    by ``str()`` from the other fields.

    Attributes:
        name: The name of the strategy instance that refused.
        state: The state it was in (a string or an enum member).
        retry_after: Seconds until a call may be admitted again, or ``None``.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        name: str | None = None,
        state: object = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, name, state, retry_after)

    def _field(self, index: int) -> Any:
        args = self.args
        return args[index] if len(args) > index else None

    @property
    def name(self) -> str | None:
        """The name of the strategy instance that refused."""
        return self._field(1)  # type: ignore[no-any-return]

    @property
    def state(self) -> object:
        """The state the strategy was in."""
        return self._field(2)

    @property
    def retry_after(self) -> float | None:
        """Seconds until a call may be admitted again, or ``None``."""
        return self._field(3)  # type: ignore[no-any-return]

    def __str__(self) -> str:
        message = self._field(0)
        return self._describe() if message is None else str(message)

    def _describe(self) -> str:
        return f"{type(self).__name__}: {self.name!r} rejected the call ({self.state})"


class CircuitBreakerError(RejectedError):
    """The circuit breaker rejected the call without running it.

    The message reads ``"Circuit breaker is OPEN for 'payments'; next probe in
    12.3 s"`` (HALF_OPEN and FORCED_OPEN rejections say why instead of when);
    ``retry_after`` is the number of seconds until a probe will be let through.

    .. versionadded:: 0.1
    """

    def _describe(self) -> str:
        state, retry_after = self.state, self.retry_after
        if state is CircuitState.HALF_OPEN:
            detail = " (HALF_OPEN: every probe slot is taken)"
        elif state is CircuitState.FORCED_OPEN:
            detail = " (forced open until reset())"
        elif retry_after is not None:
            detail = f"; next probe in {retry_after:.1f} s"
        else:
            detail = ""
        return f"Circuit breaker is OPEN for {self.name!r}{detail}"


class BulkheadFullError(RejectedError):
    """The bulkhead rejected the call: every slot and queue place was taken.

    Also raised when a queued call's wait timed out.

    ``state`` reads ``"full"`` (no queue place) or ``"queue_timeout"``.

    .. versionadded:: 0.2
    """

    def _describe(self) -> str:
        if self.state == "queue_timeout":
            return f"Bulkhead {self.name!r} is full: no slot freed up within the queue timeout"
        return f"Bulkhead {self.name!r} is full: every slot and queue place is taken"


class RateLimitExceeded(RejectedError):
    """The rate limiter refused the call: no token is free within the allowed wait.

    ``retry_after`` is the number of seconds until a token will be free.

    .. versionadded:: 0.2
    """

    def _describe(self) -> str:
        retry_after = self.retry_after
        when = f"; next token in {retry_after:.3f} s" if retry_after is not None else ""
        return f"Rate limit exceeded for {self.name!r}{when}"


class ThrottledError(RejectedError):
    """The adaptive throttle refused the call locally, without sending it.

    ``state`` reads ``"throttled"``; ``retry_after`` is ``None`` (the chance of
    rejection falls as the backend accepts requests again).

    Attributes:
        probability: The rejection probability when the call was refused.

    .. versionadded:: 0.2
    """

    def __init__(
        self, message: str | None = None, *, name: str | None = None, probability: float
    ) -> None:
        super().__init__(message, name=name, state="throttled", retry_after=None)
        self.probability = probability

    def _describe(self) -> str:
        return (
            f"Adaptive throttle {self.name!r} rejected the call locally "
            f"(rejection probability {self.probability:.0%})"
        )


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


for _cls in (
    CircuitState,
    RecoverlyError,
    RejectedError,
    CircuitBreakerError,
    BulkheadFullError,
    RateLimitExceeded,
    TimeoutExceeded,
    ThrottledError,
):
    _cls.__module__ = "recoverly"
del _cls
