"""retrying: the retry policy for a block of code instead of a function.

::

    for attempt in retrying(max_attempts=3, exceptions=ConnectionError):
        with attempt:
            send(payload)

    async for attempt in retrying(max_attempts=3):
        with attempt:
            await send(payload)

A retryable failure inside ``with attempt:`` is swallowed and the loop goes
round again after the wait; the last failure (or a failure that is not
retryable) propagates out of the loop unchanged. A block that finishes ends
the loop.

.. versionadded:: 0.1
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any, final

from recoverly._core.clock import resolve
from recoverly.retry import Retry

__all__ = ["Attempt", "Retrying", "retrying"]


@final
class Attempt:
    """One pass through a :func:`retrying` loop; use it as ``with attempt:``.

    Attributes:
        number: 1 for the first attempt, 2 for the first retry, ...
    """

    __slots__ = ("_loop", "number")

    def __init__(self, loop: Retrying, number: int) -> None:
        self._loop = loop
        self.number = number

    def __enter__(self) -> Attempt:
        self._loop._entered = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self._loop._exited(self.number, exc)

    def __repr__(self) -> str:
        return f"<Attempt {self.number}>"


@final
class Retrying:
    """Iterator of :class:`Attempt` objects driven by a :class:`~recoverly.Retry` policy.

    Made by :func:`retrying`; iterate it once, with ``for`` or ``async for``.
    """

    __slots__ = ("_done", "_entered", "_label", "_n", "_previous", "_started", "_wait", "policy")

    def __init__(self, policy: Retry) -> None:
        self.policy = policy
        self._label = policy.name or "retrying block"
        self._n = 0
        self._done = False
        self._entered = False
        self._wait: float | None = None
        self._previous = 0.0
        self._started: float | None = None

    def _exited(self, n: int, exc: BaseException | None) -> bool:
        policy = self.policy
        if exc is None:
            self._done = True
            if n > 1:
                policy._finished(self._label, n, None, None)
            return False
        if not policy._retryable(exc):
            self._done = True
            return False
        decision = policy._next_delay(n, exc, self._started, self._previous)
        if isinstance(decision, str):
            self._done = True
            if n > 1 or decision != "attempts":
                policy._finished(self._label, n, exc, decision)
            return False  # let the last exception propagate unchanged
        policy._scheduled(self._label, n, exc, decision)
        self._wait = decision
        return True

    def _next_attempt(self) -> Attempt | None:
        if self._n == 0:
            self._started = self.policy._started()
        elif self._done or not self._entered:
            return None
        self._n += 1
        self._entered = False
        return Attempt(self, self._n)

    def __iter__(self) -> Iterator[Attempt]:
        clock = resolve(self.policy._clock)
        while (attempt := self._next_attempt()) is not None:
            yield attempt
            wait = self._wait
            if wait is not None:
                self._wait, self._previous = None, wait
                clock.sleep(wait)

    async def __aiter__(self) -> AsyncIterator[Attempt]:
        clock = resolve(self.policy._clock)
        while (attempt := self._next_attempt()) is not None:
            yield attempt
            wait = self._wait
            if wait is not None:
                self._wait, self._previous = None, wait
                await clock.asleep(wait)

    def __repr__(self) -> str:
        return f"<Retrying attempt={self._n} done={self._done} policy={self.policy!r}>"


def retrying(*args: Any, **kwargs: Any) -> Retrying:
    """Return an iterator of attempts for a block of code.

    Takes the same arguments as :func:`~recoverly.retry`, or one ready-made
    :class:`~recoverly.Retry` policy as its only argument.

    Raises:
        ValueError: A setting is out of range.
        TypeError: A setting has the wrong type.

    .. versionadded:: 0.1
    """
    if len(args) == 1 and not kwargs and isinstance(args[0], Retry):
        return Retrying(args[0])
    kwargs.setdefault("_stacklevel", 3)
    return Retrying(Retry(*args, **kwargs))


Attempt.__module__ = "recoverly"
Retrying.__module__ = "recoverly"
retrying.__module__ = "recoverly"
