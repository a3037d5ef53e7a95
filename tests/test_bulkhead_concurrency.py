"""Bulkhead under load: 64 threads, 1 000 tasks (asyncio and Trio), and both at once.

The protected function counts how many copies of itself run at the same time;
the maximum must never exceed ``max_concurrent`` (and must reach it, or the test
would prove nothing).
"""

from __future__ import annotations

import asyncio
import threading

import anyio
import pytest

from recoverly import Bulkhead, BulkheadFullError


class Gauge:
    """Tracks the current and the highest number of concurrent holders."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.calls = 0

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.calls += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


def test_sixty_four_threads_never_exceed_the_slots():
    """64 threads x 20 calls through 4 slots with an unbounded queue: all run, never > 4 at once."""
    bulkhead = Bulkhead(4, max_queue=None, queue_timeout=None)
    gauge = Gauge()
    barrier = threading.Barrier(64)

    @bulkhead
    def work() -> None:
        with gauge:
            threading.Event().wait(0.0002)  # hold the slot long enough to contend

    def worker() -> None:
        barrier.wait()
        for _ in range(20):
            work()

    threads = [threading.Thread(target=worker) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gauge.peak == 4
    assert gauge.calls == 64 * 20
    stats = bulkhead.statistics()
    assert (stats.active, stats.queued, stats.admitted, stats.rejected) == (0, 0, 1280, 0)


def test_sixty_four_threads_with_a_short_queue_are_admitted_or_rejected_exactly():
    """With 2 slots and 3 queue places, every call either runs or is rejected as 'full'."""
    bulkhead = Bulkhead(2, max_queue=3, queue_timeout=None)
    gauge = Gauge()
    rejected = 0
    count_lock = threading.Lock()

    @bulkhead
    def work() -> None:
        with gauge:
            threading.Event().wait(0.0002)

    def worker() -> None:
        nonlocal rejected
        for _ in range(10):
            try:
                work()
            except BulkheadFullError as exc:  # noqa: PERF203 - counting rejections is the point
                assert exc.state == "full"
                with count_lock:
                    rejected += 1

    threads = [threading.Thread(target=worker) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gauge.peak == 2
    stats = bulkhead.statistics()
    assert gauge.calls + rejected == 640
    assert (stats.admitted, stats.rejected) == (gauge.calls, rejected)
    assert rejected > 0
    assert (stats.active, stats.queued) == (0, 0)


@pytest.mark.anyio
async def test_a_thousand_tasks_never_exceed_the_slots():
    """1 000 tasks through 10 slots with an unbounded queue: all run, never > 10 at once."""
    bulkhead = Bulkhead(10, max_queue=None)
    gauge = Gauge()

    @bulkhead
    async def work() -> None:
        with gauge:
            await anyio.sleep(0)
            await anyio.sleep(0)

    async with anyio.create_task_group() as group:
        for _ in range(1000):
            group.start_soon(work)
    assert gauge.peak == 10
    assert gauge.calls == 1000
    stats = bulkhead.statistics()
    assert (stats.active, stats.queued, stats.admitted) == (0, 0, 1000)


@pytest.mark.anyio
async def test_a_thousand_tasks_with_cancellations_leave_no_slot_behind():
    """Cancelling half of 1 000 queued or running tasks leaks no slot and no queue place."""
    bulkhead = Bulkhead(5, max_queue=None)
    gauge = Gauge()

    @bulkhead
    async def work() -> None:
        with gauge:
            await anyio.sleep(0)

    async def maybe_cancelled(i: int) -> None:
        with anyio.CancelScope() as scope:
            if i % 2:
                scope.cancel()
            await work()

    async with anyio.create_task_group() as group:
        for i in range(1000):
            group.start_soon(maybe_cancelled, i)
    assert gauge.peak <= 5
    assert gauge.calls >= 500
    stats = bulkhead.statistics()
    assert (stats.active, stats.queued) == (0, 0)


def test_threads_and_asyncio_tasks_are_counted_together():
    """8 threads and 200 asyncio tasks on one 3-slot bulkhead never run more than 3 at once."""
    bulkhead = Bulkhead(3, max_queue=None, queue_timeout=None)
    gauge = Gauge()

    def sync_work() -> None:
        with bulkhead, gauge:
            threading.Event().wait(0.0002)

    async def async_work() -> None:
        async with bulkhead:
            with gauge:
                await asyncio.sleep(0.0001)

    def thread_main() -> None:
        for _ in range(25):
            sync_work()

    async def main() -> None:
        await asyncio.gather(*(async_work() for _ in range(200)))

    threads = [threading.Thread(target=thread_main) for _ in range(8)]
    for t in threads:
        t.start()
    asyncio.run(main())
    for t in threads:
        t.join()
    assert gauge.peak == 3
    assert gauge.calls == 400
    stats = bulkhead.statistics()
    assert (stats.active, stats.queued, stats.admitted) == (0, 0, 400)


def test_threads_and_trio_tasks_are_counted_together():
    """A slot freed by a thread wakes a Trio task through the run's token."""
    trio = pytest.importorskip("trio")
    bulkhead = Bulkhead(2, max_queue=None, queue_timeout=None)
    gauge = Gauge()

    def sync_work() -> None:
        with bulkhead, gauge:
            threading.Event().wait(0.0005)

    async def trio_work() -> None:
        async with bulkhead:
            with gauge:
                await trio.sleep(0.0001)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(trio_work)

    threads = [threading.Thread(target=lambda: [sync_work() for _ in range(20)]) for _ in range(4)]
    for t in threads:
        t.start()
    trio.run(main)
    for t in threads:
        t.join()
    assert gauge.peak == 2
    assert gauge.calls == 180
    stats = bulkhead.statistics()
    assert (stats.active, stats.queued, stats.admitted) == (0, 0, 180)
