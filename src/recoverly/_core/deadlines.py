"""How a deadline interrupts a call: SIGALRM scopes and async cancel scopes.

The mechanism behind :mod:`recoverly.timeout`, kept apart from the policy.
Scopes know nothing about the exceptions recoverly raises: each is given an
``expired`` factory that builds the exception to raise at the deadline.

Interrupting needs real timers, so the SIGALRM arithmetic reads the real
monotonic clock even when a test installs a manual one.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from collections.abc import Callable
from types import CodeType, FrameType, TracebackType
from typing import Any

from recoverly._core.clock import SystemClock

__all__ = ["AsyncScope", "Deadline", "SignalScope", "async_scope", "can_signal", "quiet"]

Expired = Callable[[], BaseException]

_REAL = SystemClock()
_HAS_ITIMER = hasattr(signal, "setitimer") and hasattr(signal, "SIGALRM")
_HAS_ASYNCIO_TIMEOUT = sys.version_info >= (3, 11)
#: Shortest timer we arm: a deadline already due fires "now".
_TICK = 1e-6


# ---------------------------------------------------------------- sync: SIGALRM
class Deadline(BaseException):
    """Raised inside the call by our SIGALRM handler; never escapes the scope.

    A ``BaseException`` so that ``except Exception`` in user code (or a retry
    inside the timeout) does not swallow it; the owner of the scope turns it
    into its own exception.
    """

    def __init__(self, scope: SignalScope) -> None:
        super().__init__("timeout deadline reached")
        self.scope = scope


def can_signal() -> bool:
    """Return whether a SIGALRM deadline can be armed here (Unix, main thread)."""
    return (
        _HAS_ITIMER
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGALRM) is not None  # None: installed from C
    )


class SignalScope:
    """One armed SIGALRM deadline, chained to whatever timer ran before it.

    ``open()`` installs our handler and arms ``ITIMER_REAL`` for whichever is
    due first, our deadline or the previous timer; when the previous timer is
    due, its handler gets the signal. ``close()`` disarms, restores the previous
    handler, and re-arms the previous timer for what is left of it (an expired
    one fires at once), so nesting works and an inner scope never extends an
    outer one.

    The owner must catch :class:`Deadline` around ``open()``, the call and
    ``close()`` together: the signal may land anywhere in between. A ``with``
    block's ``__exit__`` cannot catch what is raised in itself, so it registers
    with :func:`quiet`: our deadline landing there only sets ``fired``, and
    ``__exit__`` reports it after ``close()``. An outer scope's deadline still
    raises there, to be turned into a timeout by the outer block.
    """

    __slots__ = (
        "armed_for_us",
        "deadline",
        "fired",
        "outer_interval",
        "outer_next",
        "previous",
        "seconds",
        "state",
    )

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.state = "new"  # -> "opening" -> "active" -> "closed"
        self.fired = False
        self.armed_for_us = True
        self.deadline = 0.0
        self.previous: Any = signal.SIG_DFL
        self.outer_next: float | None = None  # when the previous timer is due (real clock)
        self.outer_interval = 0.0

    def open(self) -> None:
        """Install the handler and arm the timer."""
        self.previous = signal.getsignal(signal.SIGALRM)
        self.state = "opening"
        signal.signal(signal.SIGALRM, self._on_alarm)
        now = _REAL.monotonic()
        self.deadline = now + self.seconds
        delay, interval = signal.setitimer(signal.ITIMER_REAL, self.seconds)
        if delay > 0:
            self.outer_next, self.outer_interval = now + delay, interval
            if delay < self.seconds:  # the outer deadline comes first: fire for it
                signal.setitimer(signal.ITIMER_REAL, delay)
                self.armed_for_us = False
        self.state = "active"

    def _arm(self, now: float) -> None:
        mine = self.deadline - now
        outer = float("inf") if self.outer_next is None else self.outer_next - now
        self.armed_for_us = mine <= outer
        signal.setitimer(signal.ITIMER_REAL, max(min(mine, outer), _TICK))

    def _on_alarm(self, signum: int, frame: Any) -> None:
        if self.state == "closed":
            return  # late delivery; close() re-arms the outer timer from its deadline
        if self.state == "active" and self.armed_for_us:
            self.fired = True
            self.state = "closed"
            if not self._in_own_exit(frame):
                raise Deadline(self)
            return
        # The previous timer is due: give its owner the signal, then keep ours.
        now = _REAL.monotonic()
        self.outer_next = now + self.outer_interval if self.outer_interval else None
        if self.state == "active":
            self._arm(now)
        _deliver(self.previous, signum, frame)

    def _in_own_exit(self, frame: FrameType | None) -> bool:
        """Whether the signal landed in our owner's exit code (see :func:`quiet`)."""
        if frame is None or signal.getsignal(signal.SIGALRM) != self._on_alarm:
            return False  # handed to us by an inner scope: raise through it
        if frame.f_code is SignalScope.close.__code__:
            return frame.f_locals.get("self") is self
        if frame.f_code in _HELPERS:
            frame = frame.f_back
        if frame is None or frame.f_code not in _EXITS:
            return False
        exiting = frame.f_locals.get("scope")
        return exiting is None or exiting is self

    def close(self) -> None:
        """Disarm, restore the previous handler and timer; safe to call twice."""
        self.state = "closed"
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.previous)
        if self.outer_next is not None:
            left = max(self.outer_next - _REAL.monotonic(), _TICK)
            signal.setitimer(signal.ITIMER_REAL, left, self.outer_interval)


_EXITS: set[CodeType] = set()
_HELPERS: set[CodeType] = set()


def quiet(exit_function: Callable[..., Any], *helpers: Callable[..., Any]) -> None:
    """Register an owner's exit code, where a deadline must not raise.

    A ``with`` block's ``__exit__`` cannot catch what is raised in itself. While
    ``exit_function`` (whose local ``scope`` names the scope once known) or a
    helper it calls runs, or ``SignalScope.close`` runs, our own deadline only
    sets ``fired``; the exit function must check it after ``close()``.
    """
    _EXITS.add(exit_function.__code__)
    _HELPERS.update(f.__code__ for f in helpers)


def _deliver(handler: Any, signum: int, frame: Any) -> None:
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:  # pragma: no cover - the default action ends the process
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGALRM)


# ---------------------------------------------------------------- async backends
class AsyncScope:
    """Base of the async scopes: the backend's own timeout becomes ``expired()``.

    A cancellation that does not come from this scope's deadline goes through
    untouched.
    """

    __slots__ = ("expired", "seconds")

    def __init__(self, seconds: float, expired: Expired) -> None:
        self.seconds = seconds
        self.expired = expired

    async def __aenter__(self) -> None:
        raise NotImplementedError

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        raise NotImplementedError


class _AsyncioScope(AsyncScope):
    """Python 3.11+: ``asyncio.timeout``, which tells our deadline from outer cancels."""

    __slots__ = ("cm",)

    async def __aenter__(self) -> None:
        self.cm = asyncio.timeout(self.seconds)  # type: ignore[attr-defined,unused-ignore]
        await self.cm.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.cm.__aexit__(exc_type, exc, tb)
        except TimeoutError as err:  # raised only when our deadline cancelled the block
            raise self.expired() from err.__cause__


class _LegacyAsyncioScope(AsyncScope):
    """Python 3.10: cancel the task from ``loop.call_later``.

    Python 3.10 cannot tell two cancellations apart: an outer ``cancel()`` that
    lands after our deadline fired is reported as the timeout. On 3.11+ (where
    this class is used only by tests) ``Task.uncancel`` settles it.
    """

    __slots__ = ("fired", "handle", "task")

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - asyncio always runs coroutines in tasks
            msg = "timeout needs to run inside an asyncio task"
            raise RuntimeError(msg)
        self.task, self.fired = task, False
        self.handle = asyncio.get_running_loop().call_later(self.seconds, self._fire)

    def _fire(self) -> None:
        self.fired = True
        self.task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.handle.cancel()
        if not self.fired or not isinstance(exc, asyncio.CancelledError):
            return
        uncancel = getattr(self.task, "uncancel", None)
        if uncancel is not None and uncancel() > 0:
            return  # somebody else cancelled the task too: let it through
        raise self.expired() from exc


class _TrioScope(AsyncScope):
    """Trio: a ``move_on_after`` cancel scope; only its own cancellation is caught."""

    __slots__ = ("cs",)

    async def __aenter__(self) -> None:
        trio = sys.modules["trio"]
        self.cs = trio.move_on_after(self.seconds)
        self.cs.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The scope swallows only its own cancellation, and then we raise instead.
        self.cs.__exit__(exc_type, exc, tb)
        if self.cs.cancelled_caught:
            raise self.expired() from None


def async_scope(seconds: float, expired: Expired) -> AsyncScope:
    """Return a cancel scope for the running event loop (asyncio or Trio).

    Trio is never imported here: it is found in ``sys.modules`` when it runs.

    Raises:
        RuntimeError: No asyncio or Trio event loop runs in this thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        if _HAS_ASYNCIO_TIMEOUT:
            return _AsyncioScope(seconds, expired)
        return _LegacyAsyncioScope(seconds, expired)  # pragma: no cover - Python 3.10
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return _TrioScope(seconds, expired)
    msg = "an async timeout needs a running asyncio or Trio event loop"
    raise RuntimeError(msg)
