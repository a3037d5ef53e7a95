"""hedge: when a call is slow to answer, send another and take the first answer.

Tail latency often comes from one slow replica, a GC pause or a lost packet,
not from the request itself. A hedged call starts the request, and if it has
not answered after ``delay`` seconds, starts the same request again (up to
``max_hedged`` extra times); the first success wins::

    @hedge(delay=0.02, max_hedged=1, budget=shared_budget)
    async def lookup(key: str) -> bytes: ...

* ``async def`` functions: every attempt is an asyncio task; when one succeeds,
  the others are **cancelled** (and awaited until they have stopped).
* Plain functions: every attempt runs in a daemon worker thread (idle workers
  are reused; one idle for 30 s exits) and the caller waits for the first
  answer. The losers cannot be stopped: they are **abandoned**, keep running
  until they return on their own (holding their thread), and are counted in
  :meth:`Hedge.statistics`. Handing a call to a worker costs tens of
  microseconds, hedged or not.
* ``delay=0`` starts all ``1 + max_hedged`` attempts at once (a race).
* An attempt that fails is not replaced (that is what :func:`~recoverly.retry`
  is for): the call waits for the attempts still running and raises the last
  error once every started attempt has failed.
* With a :class:`~recoverly.RetryBudget`, each call is recorded in it and each
  hedge takes one retry from it: **no hedge is started when the budget is
  empty**, so hedging cannot multiply the load on a backend that is already
  slow for everyone.

**Hedge only idempotent calls.** Every attempt may reach the backend and do
its work, including the ones whose answer is thrown away (a cancelled task
may have sent its request already; an abandoned thread finishes it). Hedging a
payment or an append would run it twice. Reads, lookups and idempotent writes
(with an idempotency key) are the right use.

In a :class:`~recoverly.Pipeline`, put the hedge inside the retry and outside
the per-attempt timeout: ``Pipeline(retry(...), hedge(...), timeout(...))``.

.. versionadded:: 0.2
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import os
import queue
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast

from recoverly._core.bus import BUS
from recoverly._core.callables import decoratable_kind, guess_name, wrap
from recoverly._core.clock import Clock, SystemClock, resolve
from recoverly._core.validate import Duration, Problems
from recoverly.budget import RetryBudget
from recoverly.events import HedgeStarted

__all__ = ["Hedge", "HedgeStatistics", "hedge"]

P = ParamSpec("P")
T = TypeVar("T")

# Threads wait on real time: a result queue cannot be woken by a manual clock.
_REAL_TIME = SystemClock()


@dataclass(frozen=True, slots=True)
class HedgeStatistics:
    """Counters of one :class:`Hedge` policy since it was created.

    Attributes:
        calls: Calls made through the policy.
        hedges: Extra attempts started (the load hedging added).
        hedge_wins: Calls answered by an extra attempt rather than the first.
        denied: Hedges not started because the retry budget was empty.
        cancelled: Async attempts cancelled because another one answered first.
        abandoned: Sync attempts left running because another one answered first.

    .. versionadded:: 0.2
    """

    calls: int
    hedges: int
    hedge_wins: int
    denied: int
    cancelled: int
    abandoned: int


class Hedge:
    """A hedging policy; apply it to functions as a decorator or use it as a pipeline part.

    Usually built with :func:`hedge`. Arguments are described there.

    .. versionadded:: 0.2
    """

    __slots__ = ("_clock", "_counts", "_lock", "budget", "delay", "max_hedged", "name")

    def __init__(
        self,
        delay: Duration = 0.05,
        max_hedged: int = 1,
        budget: RetryBudget | None = None,
        *,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        p = Problems()
        self.delay = p.duration("delay", delay)
        self.max_hedged = p.int_at_least("max_hedged", max_hedged, 1)
        self.budget = p.optional_instance("budget", budget, RetryBudget)
        self.name = p.optional_name("name", name)
        p.raise_if_any()
        self._clock = clock
        self._lock = threading.Lock()
        # calls, hedges, hedge_wins, denied, cancelled, abandoned
        self._counts = [0, 0, 0, 0, 0, 0]

    # ------------------------------------------------------------ bookkeeping
    def _add(self, index: int, n: int = 1) -> None:
        with self._lock:
            self._counts[index] += n

    def _started_call(self) -> None:
        self._add(0)
        if self.budget is not None:
            self.budget.deposit()

    def _may_hedge(self, label: str, attempt: int) -> bool:
        """Take one hedge from the budget (count a refusal); report the hedge."""
        if self.budget is not None and not self.budget.try_withdraw():
            self._add(3)
            return False
        self._add(1)
        if BUS.wants(HedgeStarted):
            BUS.emit(HedgeStarted(label, attempt, self.delay))
        return True

    # ------------------------------------------------------------ sync: threads
    def _call_sync(self, label: str, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        self._started_call()
        answers: queue.SimpleQueue[tuple[int, bool, Any]] = queue.SimpleQueue()

        def launch(index: int) -> None:
            context = contextvars.copy_context()

            def attempt() -> None:
                try:
                    answers.put((index, True, context.run(fn, *args, **kwargs)))
                except BaseException as exc:  # handed to the waiting caller
                    answers.put((index, False, exc))

            _WORKERS.submit(attempt)

        started, finished, hedging = self._first_wave(label, launch), 0, self.delay > 0
        next_at = _REAL_TIME.monotonic() + self.delay
        try:
            while True:
                hedging = hedging and started <= self.max_hedged
                try:
                    if hedging:
                        wait = next_at - _REAL_TIME.monotonic()
                        got = answers.get(timeout=wait) if wait > 0 else answers.get_nowait()
                    else:
                        got = answers.get()
                except queue.Empty:
                    if self._may_hedge(label, started):
                        launch(started)
                        started += 1
                        next_at = _REAL_TIME.monotonic() + self.delay
                    else:
                        hedging = False
                    continue
                index, ok, value = got
                finished += 1
                if ok:
                    self._won(index)
                    return cast("T", value)
                if finished == started:  # a failure is not replaced: retry is for errors
                    raise value
        finally:
            # Whatever ended the wait (an answer, or an interruption such as an
            # outer timeout), the attempts still running are left behind.
            self._add(5, started - finished)

    def _first_wave(self, label: str, start: Callable[[int], object]) -> int:
        """Start the first attempt (and with ``delay=0`` every hedge allowed); return the count."""
        start(0)
        started = 1
        if self.delay == 0:
            while started <= self.max_hedged and self._may_hedge(label, started):
                start(started)
                started += 1
        return started

    def _won(self, winner: int) -> None:
        if winner:
            self._add(2)

    # ------------------------------------------------------------ async: tasks
    async def _call_async(
        self, label: str, fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any
    ) -> T:
        race = _Race(_running_loop(label), resolve(self._clock))
        self._started_call()
        started = self._first_wave(label, lambda i: race.start(fn(*args, **kwargs), i))
        hedging = self.delay > 0
        try:
            while True:
                hedging = hedging and started <= self.max_hedged
                if hedging and not race.armed:
                    race.arm(self.delay)
                await race.next_event()
                failure: BaseException | None = None
                while race.finished:
                    task = race.finished.popleft()
                    index = race.running.pop(task)
                    failure = task.exception()
                    if failure is None:
                        self._won(index)
                        return cast("T", task.result())
                if not race.running:  # every attempt failed; a failure is not replaced
                    raise cast("BaseException", failure)
                if race.fired:
                    race.disarm()
                    if self._may_hedge(label, started):
                        race.start(fn(*args, **kwargs), started)
                        started += 1
                    else:
                        hedging = False
        finally:
            race.disarm()
            self._add(4, len(race.running))
            await _stop(list(race.running))

    # ------------------------------------------------------------ public API
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate ``fn``; the wrapper has the same kind and signature."""
        kind = decoratable_kind("hedge", fn)
        label = self.name or guess_name(fn)
        return cast("Callable[P, T]", wrap(fn, kind, label, self._call_sync, self._call_async))

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` hedged, in worker threads (sync callables only)."""
        return self._call_sync(self.name or guess_name(fn), fn, args, kwargs)

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args, **kwargs)`` hedged, as asyncio tasks."""
        return await self._call_async(self.name or guess_name(fn), fn, args, kwargs)

    def statistics(self) -> HedgeStatistics:
        """Return a snapshot of this policy's counters."""
        with self._lock:
            return HedgeStatistics(*self._counts)

    def describe_part(self) -> str:
        """Return this policy's one-line description (used by :class:`~recoverly.Pipeline`)."""
        name = f" {self.name!r}" if self.name else ""
        budget = " budget" if self.budget is not None else ""
        return f"hedge{name} delay={self.delay:g} max_hedged={self.max_hedged}{budget}"

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<{self.describe_part()} calls={s.calls} hedges={s.hedges} "
            f"hedge_wins={s.hedge_wins} denied={s.denied}>"
        )


class _Workers:
    """Reusable daemon threads for sync attempts.

    An idle thread takes the next attempt; when none is idle a new one starts,
    so an attempt that hangs holds only its own thread and can never stop a
    hedge from starting. A thread idle for :data:`IDLE_SECONDS` exits.
    """

    __slots__ = ("_idle", "_jobs", "_lock")

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        """Start empty (also in a forked child, where the parent's threads do not exist)."""
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` on an idle thread, or on a new one."""
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._jobs.put(job)
                return
        threading.Thread(
            target=self._work, args=(job,), name="recoverly-hedge", daemon=True
        ).start()

    def _work(self, job: Callable[[], None]) -> None:
        while True:
            job()  # attempts catch everything themselves
            del job
            with self._lock:
                self._idle += 1
            try:
                job = self._jobs.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:  # a job handed over while timing out is still taken
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        self._idle -= 1
                        return

    def idle(self) -> int:
        """Return how many threads wait for work."""
        with self._lock:
            return self._idle


#: Seconds an idle attempt thread waits for work before it exits.
IDLE_SECONDS = 30.0

_WORKERS = _Workers()


def _reset_workers_in_child() -> None:
    """After ``fork``: the parent's worker threads do not exist in the child."""
    _WORKERS._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_workers_in_child)


def _running_loop(label: str) -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        msg = f"hedge runs async functions on asyncio only; {label} was awaited elsewhere"
        raise RuntimeError(msg) from None


class _Race:
    """One async hedged call: its attempt tasks, its hedge timer and one wake-up future.

    Done-callbacks record finished attempts and the timer, so waiting costs one
    future per wake-up. On the process clock the timer is a ``call_later``
    handle; on any other clock (a manual clock in tests) it is a task sleeping
    through that clock.
    """

    __slots__ = ("clock", "finished", "fired", "loop", "running", "timer", "wake")

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Clock) -> None:
        self.loop = loop
        self.clock = clock
        self.running: dict[asyncio.Future[Any], int] = {}
        self.finished: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.timer: asyncio.TimerHandle | asyncio.Future[Any] | None = None
        self.fired = False
        self.wake: asyncio.Future[None] | None = None

    def _wake_up(self) -> None:
        wake = self.wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _attempt_done(self, task: asyncio.Future[Any]) -> None:
        self.finished.append(task)
        self._wake_up()

    def _timer_done(self, task: object = None) -> None:
        if isinstance(task, asyncio.Future) and task.cancelled():
            return
        self.fired = True
        self._wake_up()

    def start(self, awaitable: Awaitable[Any], index: int) -> None:
        """Start one attempt as a task."""
        task = asyncio.ensure_future(awaitable)
        self.running[task] = index
        task.add_done_callback(self._attempt_done)

    @property
    def armed(self) -> bool:
        """Whether a hedge timer is pending or has fired unhandled."""
        return self.timer is not None

    def arm(self, delay: float) -> None:
        """Start the timer of the next hedge."""
        if type(self.clock) is SystemClock:
            self.timer = self.loop.call_later(delay, self._timer_done)
        else:
            sleeper = asyncio.ensure_future(self.clock.asleep(delay))
            sleeper.add_done_callback(self._timer_done)
            self.timer = sleeper

    def disarm(self) -> None:
        """Cancel the timer (a sleep: nothing to wait for) and forget it fired."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.fired = False

    async def next_event(self) -> None:
        """Return once an attempt has finished or the timer has fired."""
        if self.finished or self.fired:
            return
        self.wake = self.loop.create_future()
        try:
            await self.wake
        finally:
            self.wake = None


async def _stop(tasks: list[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait until they have stopped; never leave an error unread."""
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # mark as retrieved: nobody wants it any more


def hedge(
    delay: Duration = 0.05,
    max_hedged: int = 1,
    budget: RetryBudget | None = None,
    *,
    name: str | None = None,
    clock: Clock | None = None,
) -> Hedge:
    """Start another attempt when a call has not answered after ``delay``; first success wins.

    **Only for idempotent calls**: every attempt may do its work on the
    backend, including the ones whose answer is discarded.

    Args:
        delay: Seconds to wait for an answer before each extra attempt (or a
            ``timedelta``); ``0`` starts every attempt at once.
        max_hedged: Extra attempts allowed per call (``>= 1``).
        budget: A :class:`~recoverly.RetryBudget`: each call is recorded in it,
            each extra attempt takes a retry from it, and none is started when
            it is empty.
        name: Name used in thread names and ``repr`` (default: the function's).
        clock: Time source for the async delay (default: the process clock;
            sync attempts wait on real time).

    Returns:
        A :class:`Hedge` policy: a decorator and a pipeline part.

    Raises:
        ValueError: A setting is out of range (every problem is listed).
        TypeError: A setting has the wrong type.

    .. versionadded:: 0.2
    """
    return Hedge(delay, max_hedged, budget, name=name, clock=clock)


Hedge.__module__ = "recoverly"
HedgeStatistics.__module__ = "recoverly"
hedge.__module__ = "recoverly"
