"""The bulkhead's shared state and its waiters (threads, asyncio, Trio).

:class:`BulkheadCore` decides, under one ``threading.Lock``, whether a caller
runs now, waits in the FIFO queue, or is turned away; it never sleeps and never
calls user code while holding the lock. Threads and tasks on any event loop
share one core, so a sync caller and async callers on the same bulkhead are
counted together.

A freed slot is handed straight to the first waiter (``active`` does not drop
and rise again), so a newcomer can never overtake the queue. The invariant that
follows: while anyone is queued, every slot is taken.

Each waiter brings its own way to be woken: a ``threading.Event`` for a
thread, a future resolved through ``call_soon_threadsafe`` for an asyncio
task, a ``trio.Event`` set through the run's ``TrioToken`` for a Trio task.
Waking is always safe from any thread.
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
from collections import deque
from typing import Any, Final

__all__ = ["FULL", "AsyncioWaiter", "BulkheadCore", "ThreadWaiter", "TrioWaiter", "Waiter"]


class Waiter:
    """One queued caller: ``granted`` turns true (under the core's lock) when it owns a slot."""

    __slots__ = ("granted",)

    def __init__(self) -> None:
        self.granted = False

    def wake(self) -> None:
        """Tell the waiting caller it owns a slot (may raise if it can no longer be told)."""
        raise NotImplementedError  # pragma: no cover


class ThreadWaiter(Waiter):
    """A blocked thread, woken by a ``threading.Event``."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        super().__init__()
        self._event = threading.Event()

    def wake(self) -> None:
        """Set the event."""
        self._event.set()

    def wait(self, timeout: float | None) -> bool:
        """Block until woken (``True``) or until ``timeout`` seconds passed (``False``)."""
        return self._event.wait(timeout)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class AsyncioWaiter(Waiter):
    """A task on an asyncio loop, woken by resolving a future on that loop."""

    __slots__ = ("_future", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self._future: asyncio.Future[None] = loop.create_future()

    def wake(self) -> None:
        """Resolve the future from any thread (raises ``RuntimeError`` if the loop is closed)."""
        self._loop.call_soon_threadsafe(_resolve, self._future)

    async def wait(self, timeout: float | None) -> bool:
        """Await the future; ``False`` after ``timeout`` seconds. Cancellation propagates."""
        try:
            await asyncio.wait_for(self._future, timeout)
        except asyncio.TimeoutError:
            return False
        return True


class TrioWaiter(Waiter):
    """A Trio task, woken by setting a ``trio.Event`` through the run's token."""

    __slots__ = ("_event", "_token", "_trio")

    def __init__(self, trio: Any) -> None:
        super().__init__()
        self._trio = trio
        self._event = trio.Event()
        self._token = trio.lowlevel.current_trio_token()

    def wake(self) -> None:
        """Set the event from any thread (raises ``trio.RunFinishedError`` after the run)."""
        self._token.run_sync_soon(self._event.set)

    async def wait(self, timeout: float | None) -> bool:
        """Wait for the event; ``False`` after ``timeout`` seconds. Cancellation propagates."""
        with self._trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            await self._event.wait()
        return not scope.cancelled_caught


def async_waiter() -> AsyncioWaiter | TrioWaiter:
    """Return a waiter for the running event loop (asyncio, else Trio)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        trio = sys.modules.get("trio")
        if trio is None:
            raise
        return TrioWaiter(trio)
    return AsyncioWaiter(loop)


#: What :meth:`BulkheadCore.enter` returns when the caller is turned away.
FULL: Final = Waiter()


class BulkheadCore:
    """Slots, queue and counters of one bulkhead, behind a ``threading.Lock``."""

    __slots__ = (
        "_lock",
        "active",
        "admitted",
        "max_concurrent",
        "max_queue",
        "queue",
        "rejected",
        "timed_out",
    )

    def __init__(self, max_concurrent: int, max_queue: int | None) -> None:
        self._lock = threading.Lock()
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.active = 0
        self.queue: deque[Waiter] = deque()
        self.admitted = 0
        self.rejected = 0
        self.timed_out = 0

    def enter(self, make_waiter: Any) -> Waiter | None:
        """Take a slot (``None``), join the queue (a waiter from ``make_waiter()``) or get FULL."""
        with self._lock:
            if self.active < self.max_concurrent:  # then nobody is queued
                self.active += 1
                self.admitted += 1
                return None
            limit = self.max_queue
            if limit is not None and len(self.queue) >= limit:
                self.rejected += 1
                return FULL
            waiter: Waiter = make_waiter()
            self.queue.append(waiter)
            return waiter

    def leave(self) -> None:
        """Give a slot back: to the first waiter if any, else to the pool."""
        while True:
            with self._lock:
                if not self.queue:
                    if self.active <= 0:
                        msg = "Bulkhead slot released more often than it was taken"
                        raise RuntimeError(msg)
                    self.active -= 1
                    return
                waiter = self.queue.popleft()
                waiter.granted = True
                self.admitted += 1
            try:
                waiter.wake()
            except Exception:  # noqa: S112 - its loop is gone: pass the slot on
                continue
            return

    def abandon(self, waiter: Waiter) -> bool:
        """Take a waiter that stopped waiting out of the queue.

        Returns:
            ``True`` if it was granted a slot meanwhile (the caller now owns it).
        """
        with self._lock:
            if waiter.granted:
                return True
            self.queue.remove(waiter)
            return False

    def time_out(self, waiter: Waiter) -> bool:
        """Like :meth:`abandon` for a wait that timed out; counts the rejection."""
        with self._lock:
            if waiter.granted:
                return True
            self.queue.remove(waiter)
            self.rejected += 1
            self.timed_out += 1
            return False

    def snapshot(self) -> tuple[int, int, int, int, int]:
        """Return ``(active, queued, admitted, rejected, timed_out)``."""
        with self._lock:
            return self.active, len(self.queue), self.admitted, self.rejected, self.timed_out
