"""Bulkhead: at most N calls at a time, a bounded FIFO queue, and rejection beyond it.

A bulkhead isolates one kind of work from the rest: a slow dependency may tie
up its own ``max_concurrent`` slots, never every thread or task of the process.
Give each dependency its own instance::

    reports = Bulkhead(4, max_queue=20, queue_timeout=5.0, name="reports")

    @reports
    async def render(report_id): ...

    with reports:                 # or `async with reports:`
        ...

Calls beyond the free slots wait in first-come, first-served order, up to
``max_queue`` of them and for at most ``queue_timeout`` seconds each; the rest
are rejected at once with :class:`~recoverly.BulkheadFullError`. Threads and
tasks (asyncio or Trio) share one count, so sync and async callers of the same
bulkhead are limited together.

.. versionadded:: 0.2
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar, cast

from recoverly._bulkhead_core import FULL, BulkheadCore, ThreadWaiter, Waiter, async_waiter
from recoverly._core.bus import BUS
from recoverly._core.callables import Kind, decoratable_kind, guess_name
from recoverly._core.clock import DEFAULT_CLOCK, Clock
from recoverly._core.registry import REGISTRY
from recoverly._core.validate import Problems
from recoverly.errors import BulkheadFullError
from recoverly.events import BulkheadWaited, CallRejected

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["KIND", "Bulkhead", "BulkheadStatistics"]

P = ParamSpec("P")
T = TypeVar("T")

#: The registry kind of bulkheads.
KIND: Final = "bulkhead"

_new_error = BulkheadFullError.__new__


@dataclass(frozen=True, slots=True)
class BulkheadStatistics:
    """A snapshot of a :class:`Bulkhead`.

    Attributes:
        name: The bulkhead's label.
        max_concurrent: Slots: calls that may run at a time.
        max_queue: Queue places (``None``: unbounded).
        active: Calls running now.
        queued: Calls waiting for a slot now.
        admitted: Calls that got a slot since the bulkhead was created.
        rejected: Calls turned away (queue full, or the queue wait timed out).
        timed_out: The part of ``rejected`` whose queue wait timed out.

    .. versionadded:: 0.2
    """

    name: str
    max_concurrent: int
    max_queue: int | None
    active: int
    queued: int
    admitted: int
    rejected: int
    timed_out: int


class Bulkhead:
    """Limits how many calls run at once; queues a few more; rejects the rest.

    Use it as ``@bulkhead`` (sync or ``async def``), ``with bulkhead:`` or
    ``async with bulkhead:``. A slot is held from entry until the call returns,
    raises or is cancelled. A queued async caller that is cancelled leaves the
    queue; a queued thread interrupted by ``KeyboardInterrupt`` does too.

    The queue wait is real time, measured by the thread's or event loop's own
    timer (like :class:`~recoverly.Timeout`); ``clock`` only times the waits
    reported in :class:`~recoverly.events.BulkheadWaited` events.

    Args:
        max_concurrent: Calls that may run at the same time (an integer >= 1).
        max_queue: Calls that may wait for a slot (``0``: none wait; ``None``:
            no limit).
        queue_timeout: The longest a queued call waits, in seconds (or a
            ``timedelta``); then it is rejected with state ``"queue_timeout"``.
            ``None`` waits as long as it takes.
        name: Name for errors, events and :func:`recoverly.registry.bulkheads`.
            Unnamed bulkheads are labelled after the first function they decorate.
        clock: Time source for the reported waits (default: the process clock).

    Raises:
        ValueError: A setting is out of range (every bad setting is listed).
        TypeError: A setting has the wrong type.

    .. versionadded:: 0.2
    """

    __slots__ = ("__weakref__", "_clock", "_core", "_label", "_queue_timeout", "name")

    def __init__(
        self,
        max_concurrent: int,
        max_queue: int | None = 0,
        queue_timeout: Any = 30.0,
        name: str | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        p = Problems()
        limit = p.int_at_least("max_concurrent", max_concurrent, 1)
        queue = p.optional_int_at_least("max_queue", max_queue, 0)
        self._queue_timeout = p.optional_duration("queue_timeout", queue_timeout)
        self.name = p.optional_name("name", name)
        if clock is not None and not isinstance(cast("object", clock), Clock):
            p._bad(f"clock must be a Clock or None, got {clock!r}", kind=True)
        self._clock = clock
        p.raise_if_any()
        self._core = BulkheadCore(limit, queue)
        self._label = self.name or "Bulkhead"
        if self.name is not None and REGISTRY.register(KIND, self.name, self) is not None:
            warnings.warn(
                f"another live Bulkhead is named {self.name!r}; "
                "recoverly.registry.bulkheads() now lists this one",
                UserWarning,
                stacklevel=2,
            )

    @property
    def max_concurrent(self) -> int:
        """Calls that may run at the same time."""
        return self._core.max_concurrent

    @property
    def max_queue(self) -> int | None:
        """Calls that may wait for a slot (``None``: no limit)."""
        return self._core.max_queue

    @property
    def queue_timeout(self) -> float | None:
        """The longest a queued call waits, in seconds (``None``: no limit)."""
        return self._queue_timeout

    # ------------------------------------------------------------ outcomes
    def _reject(self, state: str) -> BulkheadFullError:
        if BUS.wants(CallRejected):
            BUS.emit(CallRejected(self._label, KIND, state, None))
        # Built without __init__ and worded only if someone reads str(exc): a full
        # bulkhead rejects many calls, so this path stays cheap.
        return _new_error(BulkheadFullError, None, self._label, state, None)

    def _now(self) -> float:
        return (self._clock or DEFAULT_CLOCK[0]).monotonic()

    def _queued(self, waiter: Waiter, started: float, got_slot: bool) -> None:
        """Finish a queue wait: report it, or raise the timeout rejection."""
        if not got_slot and not self._core.time_out(waiter):
            raise self._reject("queue_timeout")
        if BUS.wants(BulkheadWaited):
            BUS.emit(BulkheadWaited(self._label, self._now() - started))

    def _interrupted(self, waiter: Waiter) -> None:
        """A wait ended by cancellation or an interrupt: leave the queue, or pass the slot on."""
        if self._core.abandon(waiter):
            self._core.leave()

    # ------------------------------------------------------------ drivers
    # Both drivers start with `core.enter(...)`, which returns None when a slot
    # was free; the decorators inline that call and come here only otherwise.
    def _enter(self) -> None:
        waiter = self._core.enter(ThreadWaiter)
        if waiter is not None:
            self._wait(waiter)

    def _wait(self, waiter: Waiter) -> None:
        """Wait in the queue for a slot (sync), or raise the rejection."""
        if waiter is FULL:
            raise self._reject("full")
        started = self._now()
        try:
            got_slot = cast("ThreadWaiter", waiter).wait(self._queue_timeout)
        except BaseException:
            self._interrupted(waiter)
            raise
        self._queued(waiter, started, got_slot)

    async def _aenter(self) -> None:
        waiter = self._core.enter(async_waiter)
        if waiter is not None:
            await self._await(waiter)

    async def _await(self, waiter: Waiter) -> None:
        """Wait in the queue for a slot (async), or raise the rejection."""
        if waiter is FULL:
            raise self._reject("full")
        started = self._now()
        try:
            got_slot = await cast("Any", waiter).wait(self._queue_timeout)
        except BaseException:
            self._interrupted(waiter)
            raise
        self._queued(waiter, started, got_slot)

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate ``fn``; the wrapper keeps its kind (sync or async) and signature.

        Raises:
            TypeError: ``fn`` is a generator or async generator function.
        """
        kind = decoratable_kind("Bulkhead", fn)
        if self.name is None and self._label == "Bulkhead":
            self._label = guess_name(fn)
        enter, leave = self._core.enter, self._core.leave
        if kind is Kind.ASYNC:
            afn = cast("Callable[..., Awaitable[Any]]", fn)
            slow_async = self._await

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                waiter = enter(async_waiter)
                if waiter is not None:
                    await slow_async(waiter)
                try:
                    return await afn(*args, **kwargs)
                finally:
                    leave()

            return cast("Callable[P, T]", async_wrapper)

        slow = self._wait

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            waiter = enter(ThreadWaiter)
            if waiter is not None:
                slow(waiter)
            try:
                return fn(*args, **kwargs)
            finally:
                leave()

        return wrapper

    def __enter__(self) -> Self:
        self._enter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._core.leave()

    async def __aenter__(self) -> Self:
        await self._aenter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._core.leave()

    # ------------------------------------------------------------ inspection
    def statistics(self) -> BulkheadStatistics:
        """Return a snapshot of the settings, the occupancy and the counters."""
        active, queued, admitted, rejected, timed_out = self._core.snapshot()
        return BulkheadStatistics(
            name=self._label,
            max_concurrent=self._core.max_concurrent,
            max_queue=self._core.max_queue,
            active=active,
            queued=queued,
            admitted=admitted,
            rejected=rejected,
            timed_out=timed_out,
        )

    def __repr__(self) -> str:
        s = self.statistics()
        queue = "unbounded" if s.max_queue is None else str(s.max_queue)
        return (
            f"<Bulkhead {s.name!r} active={s.active}/{s.max_concurrent} "
            f"queued={s.queued}/{queue} rejected={s.rejected}>"
        )


Bulkhead.__module__ = "recoverly"
BulkheadStatistics.__module__ = "recoverly"
