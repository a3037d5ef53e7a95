"""timeout: stop waiting for a call that runs too long.

One :class:`Timeout` policy is a decorator for plain and ``async def``
functions, a ``with`` / ``async with`` block, and ``.call()`` / ``.acall()``.
When the time is up it raises :class:`~recoverly.TimeoutExceeded`, which is
also the builtin :class:`TimeoutError`.

How the call is stopped depends on where it runs:

``async def`` on asyncio
    The task is cancelled at the deadline (``asyncio.timeout`` on Python 3.11+,
    a ``loop.call_later`` cancellation on 3.10) and the cancellation becomes
    ``TimeoutExceeded``. A cancellation coming from outside stays a
    cancellation.
``async def`` on Trio
    A ``trio.move_on_after`` cancel scope; Trio is imported only when the call
    runs under Trio.
Sync, in the main thread on Unix
    ``signal.setitimer(ITIMER_REAL)`` and a ``SIGALRM`` handler interrupt the
    call (a busy loop, ``time.sleep``, a blocking socket). The previous
    handler and the previous timer are restored afterwards, so timeouts nest
    and an outer deadline is never extended by an inner one. Code running in
    C without returning to Python (a long NumPy kernel) is interrupted only
    when it returns.
Sync, anywhere else (other threads, Windows, ``SIGALRM`` taken by C code)
    The decorated call runs in a fresh daemon thread and the caller stops
    waiting at the deadline. **The abandoned call keeps running** in that
    thread until it returns on its own: its side effects still happen, and it
    still holds whatever it holds. :meth:`Timeout.statistics` counts such
    calls. A ``with`` block cannot be moved to another thread, so there it is
    measured instead: a block that overran raises ``TimeoutExceeded`` when it
    ends, and entering it warns (``UserWarning``) that it cannot be interrupted.

.. versionadded:: 0.1
"""

from __future__ import annotations

import contextvars
import functools
import threading
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast, final, overload

from recoverly._core.bus import BUS
from recoverly._core.callables import decoratable_kind, guess_name, wrap
from recoverly._core.clock import MAX_SLEEP, Clock, resolve
from recoverly._core.deadlines import (
    AsyncScope,
    Deadline,
    SignalScope,
    async_scope,
    can_signal,
    quiet,
)
from recoverly._core.validate import Duration, Problems
from recoverly.errors import TimeoutExceeded
from recoverly.events import TimedOut

__all__ = ["Timeout", "TimeoutStatistics", "timeout"]

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TimeoutStatistics:
    """Counters of one :class:`Timeout` policy.

    Attributes:
        timed_out: Calls and blocks that exceeded the timeout.
        abandoned: Calls left running in a worker thread after their timeout
            that have not returned yet.

    .. versionadded:: 0.1
    """

    timed_out: int
    abandoned: int


@final
class Timeout:
    """A timeout policy: a decorator, a ``with``/``async with`` block, or ``.call()``.

    Usually built with :func:`timeout`. Arguments are described there.

    .. versionadded:: 0.1
    """

    __slots__ = ("_abandoned", "_clock", "_lock", "_timed_out", "name", "seconds")

    def __init__(
        self, seconds: Duration = 30.0, *, name: str | None = None, clock: Clock | None = None
    ) -> None:
        p = Problems()
        self.seconds = p.duration("seconds", seconds, positive=True)
        self.name = p.optional_name("name", name)
        self._clock = _check_clock(p, clock)
        p.raise_if_any()
        self._lock = threading.Lock()
        self._timed_out = self._abandoned = 0

    # ------------------------------------------------------------ reporting
    def _expired(self, label: str) -> TimeoutExceeded:
        """Count and report a timeout; return the exception to raise."""
        with self._lock:
            self._timed_out += 1
        if BUS.wants(TimedOut):
            BUS.emit(TimedOut(label, self.seconds))
        return TimeoutExceeded(
            f"{label} timed out after {self.seconds:g}s", name=label, seconds=self.seconds
        )

    def _label(self, fn: object = None) -> str:
        if self.name:
            return self.name
        return "timeout block" if fn is None else guess_name(fn)

    # ------------------------------------------------------------ drivers
    def _call_sync(self, label: str, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        if not can_signal():
            return self._call_in_thread(label, fn, args, kwargs)
        scope = SignalScope(self.seconds)
        try:
            scope.open()
            try:
                result = fn(*args, **kwargs)
            finally:
                scope.close()
        except Deadline as exc:
            scope.close()  # idempotent: completes a close the signal cut short
            if exc.scope is not scope:
                raise
            raise self._expired(label).with_traceback(exc.__traceback__) from None
        if scope.fired:  # the call caught our interruption and went on
            raise self._expired(label)
        return result

    def _call_in_thread(self, label: str, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        box = _Box()
        lock = self._lock
        context = contextvars.copy_context()

        def run() -> None:
            try:
                box.result = context.run(fn, *args, **kwargs)
            except BaseException as exc:  # handed to the waiting caller
                box.error = exc
            finally:
                with lock:
                    box.finished = True
                    if box.abandoned:
                        self._abandoned -= 1
                box.done.set()

        worker = threading.Thread(target=run, name=f"recoverly-timeout {label}", daemon=True)
        worker.start()
        if not box.done.wait(min(self.seconds, MAX_SLEEP)):
            with lock:
                if not box.finished:
                    box.abandoned = True
                    self._abandoned += 1
            if box.abandoned:
                raise self._expired(label)
        error, box.error = box.error, None
        if error is not None:
            raise error
        return cast("T", box.result)

    async def _call_async(
        self, label: str, fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any
    ) -> T:
        async with async_scope(self.seconds, functools.partial(self._expired, label)):
            return await fn(*args, **kwargs)

    # ------------------------------------------------------------ public API
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate ``fn``; the wrapper has the same kind and signature."""
        kind = decoratable_kind("timeout", fn)
        label = self._label(fn)
        return cast("Callable[P, T]", wrap(fn, kind, label, self._call_sync, self._call_async))

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` with this timeout (sync callables only).

        Returns:
            What ``fn`` returned.

        Raises:
            TimeoutExceeded: ``fn`` did not finish within ``seconds``.
        """
        return self._call_sync(self._label(fn), fn, args, kwargs)

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args, **kwargs)`` with this timeout.

        Returns:
            What ``fn`` returned.

        Raises:
            TimeoutExceeded: ``fn`` did not finish within ``seconds``.
        """
        return await self._call_async(self._label(fn), fn, args, kwargs)

    def __enter__(self) -> Timeout:
        scope: SignalScope | _MeasuredScope
        if can_signal():
            scope = SignalScope(self.seconds)
        else:
            warnings.warn(
                f"timeout({self.seconds:g}) used as a `with` block outside the main thread "
                "cannot interrupt the block; TimeoutExceeded is raised when it ends if it "
                "overran. Decorate a function or use .call() to stop waiting on time.",
                UserWarning,
                stacklevel=2,
            )
            scope = _MeasuredScope(self.seconds, resolve(self._clock).monotonic())
        _push(self, scope)
        try:
            scope.open()
        except BaseException:
            _pop(self)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Until close() runs, a SIGALRM landing here or in _pop is noted, not
        # raised (see deadlines.quiet), so call nothing else written in Python first.
        scope = _pop(self)
        if isinstance(scope, SignalScope):
            scope.close()
        elif exc is None and resolve(self._clock).monotonic() - scope.started > self.seconds:
            raise self._expired(self._label())
        else:
            return
        if isinstance(exc, Deadline) and exc.scope is scope:
            raise self._expired(self._label()).with_traceback(tb) from None
        if exc is None and scope.fired:
            raise self._expired(self._label())

    async def __aenter__(self) -> Timeout:
        scope = async_scope(self.seconds, functools.partial(self._expired, self._label()))
        _push(self, scope)
        try:
            await scope.__aenter__()
        except BaseException:
            _pop(self)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scope = cast("AsyncScope", _pop(self))
        await scope.__aexit__(exc_type, exc, tb)

    def statistics(self) -> TimeoutStatistics:
        """Return a snapshot of this policy's counters."""
        with self._lock:
            return TimeoutStatistics(self._timed_out, self._abandoned)

    def __repr__(self) -> str:
        s = self.statistics()
        name = f" {self.name!r}" if self.name else ""
        return (
            f"<Timeout{name} seconds={self.seconds:g} timed_out={s.timed_out} "
            f"abandoned={s.abandoned}>"
        )


def _check_clock(p: Problems, clock: object) -> Clock | None:
    if clock is None or isinstance(clock, Clock):
        return clock
    p._bad(f"clock must be a Clock or None, got {clock!r}", kind=True)
    return None


# ---------------------------------------------------------------- block bookkeeping
# The scopes of open `with` blocks, per thread and per task (contextvars give each
# thread and each asyncio/Trio task its own stack), so one Timeout can guard many
# blocks at once without per-call state on the shared policy.
_OPEN: contextvars.ContextVar[tuple[tuple[Timeout, object], ...]] = contextvars.ContextVar(
    "recoverly_timeout_scopes", default=()
)


def _push(policy: Timeout, scope: object) -> None:
    _OPEN.set((*_OPEN.get(), (policy, scope)))


def _pop(policy: Timeout) -> Any:
    stack = _OPEN.get()
    for i in range(len(stack) - 1, -1, -1):
        if stack[i][0] is policy:
            _OPEN.set(stack[:i] + stack[i + 1 :])
            return stack[i][1]
    msg = f"{policy!r} is exited without having been entered in this thread or task"
    raise RuntimeError(msg)


class _MeasuredScope:
    """A block that cannot be interrupted: only measured (on the policy's clock)."""

    __slots__ = ("seconds", "started")

    def __init__(self, seconds: float, started: float) -> None:
        self.seconds = seconds
        self.started = started

    def open(self) -> None:
        """Nothing to arm."""


class _Box:
    """Hands a worker thread's outcome back to the waiting caller."""

    __slots__ = ("abandoned", "done", "error", "finished", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished = False
        self.abandoned = False


# ---------------------------------------------------------------- factory
@overload
def timeout(seconds: Callable[P, T], /) -> Callable[P, T]: ...


@overload
def timeout(
    seconds: Duration = 30.0, *, name: str | None = None, clock: Clock | None = None
) -> Timeout: ...


def timeout(seconds: Any = 30.0, *, name: str | None = None, clock: Clock | None = None) -> Any:
    """Raise :class:`~recoverly.TimeoutExceeded` when a call runs longer than ``seconds``.

    Use it as ``@timeout(seconds=30)`` (or bare ``@timeout``: 30 s) on plain and
    ``async def`` functions, or as a block: ``with timeout(2.0): ...`` and
    ``async with timeout(2.0): ...``. See the module documentation for how each
    kind of call is stopped, and the pitfalls of threads.

    Args:
        seconds: The time allowed, in seconds (a float or a ``timedelta``), > 0.
        name: Name used in the exception, events and logs (default: the
            function's name, or ``"timeout block"``).
        clock: Clock used to measure a ``with`` block that cannot be
            interrupted (outside the main thread). Interrupting always uses
            real timers.

    Returns:
        A :class:`Timeout` policy (or, bare, the wrapped function).

    Raises:
        ValueError: ``seconds`` is not a finite number > 0, or ``name`` is empty.
        TypeError: An argument has the wrong type, or the decorated callable
            is a generator function.

    .. versionadded:: 0.1
    """
    if callable(seconds):
        return Timeout()(seconds)
    return Timeout(seconds, name=name, clock=clock)


quiet(Timeout.__exit__, _pop)
Timeout.__module__ = "recoverly"
TimeoutStatistics.__module__ = "recoverly"
timeout.__module__ = "recoverly"
