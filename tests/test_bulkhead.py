"""Bulkhead: slots, FIFO queue, rejections, cancellation, events and inspection."""

from __future__ import annotations

import asyncio
import inspect
import math
import threading
import time
from collections.abc import Callable

import anyio
import pytest

import recoverly
from recoverly import Bulkhead, BulkheadFullError, BulkheadStatistics
from recoverly import events as ev
from recoverly._bulkhead_core import BulkheadCore, ThreadWaiter, Waiter


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll until another thread has reached the state the test needs."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            msg = "condition not reached"
            raise AssertionError(msg)
        time.sleep(0.001)


async def await_until(condition: Callable[[], bool]) -> None:
    """Yield until other tasks have reached the state the test needs."""
    for _ in range(10_000):
        if condition():
            return
        await anyio.sleep(0)
    msg = "condition not reached"
    raise AssertionError(msg)


# ---------------------------------------------------------------- slots and rejection
def test_calls_beyond_the_slots_are_rejected_when_there_is_no_queue():
    """With 2 slots taken and max_queue=0, a third caller gets BulkheadFullError('full')."""
    bulkhead = Bulkhead(2, name="db")
    with bulkhead, bulkhead:
        assert bulkhead.statistics().active == 2
        with pytest.raises(BulkheadFullError) as info, bulkhead:
            pytest.fail("the body must not run")
    assert info.value.state == "full"
    assert info.value.name == "db"
    assert info.value.retry_after is None
    assert str(info.value) == "Bulkhead 'db' is full: every slot and queue place is taken"
    stats = bulkhead.statistics()
    assert (stats.active, stats.admitted, stats.rejected, stats.timed_out) == (0, 2, 1, 0)


def test_a_slot_is_released_when_the_call_raises():
    """An exception inside the protected call gives the slot back and propagates unchanged."""
    bulkhead = Bulkhead(1)

    @bulkhead
    def boom() -> None:
        """Fail."""
        raise KeyError("x")

    for _ in range(3):
        with pytest.raises(KeyError):
            boom()
    assert bulkhead.statistics().active == 0
    assert bulkhead.statistics().admitted == 3


def test_separate_bulkheads_isolate_their_work():
    """Filling one bulkhead leaves another one fully available."""
    reports, payments = Bulkhead(1), Bulkhead(1)
    with reports:
        with pytest.raises(BulkheadFullError), reports:
            pass
        with payments:
            assert payments.statistics().active == 1
    assert reports.statistics().rejected == 1
    assert payments.statistics().rejected == 0


def test_the_decorator_keeps_the_function_and_refuses_generators():
    """Wrappers keep name and kind; generator functions are refused with TypeError."""
    bulkhead = Bulkhead(1)

    @bulkhead
    def add(a: int, b: int = 1) -> int:
        """Add."""
        return a + b

    @bulkhead
    async def aadd(a: int) -> int:
        """Add async."""
        return a + 1

    assert add(1, b=2) == 3
    assert add.__name__ == "add"
    assert inspect.iscoroutinefunction(aadd)
    assert asyncio.run(aadd(1)) == 2

    def gen():
        yield 1

    with pytest.raises(TypeError, match="generator"):
        bulkhead(gen)


# ---------------------------------------------------------------- queue (threads)
def test_queued_threads_get_slots_in_arrival_order():
    """Waiting threads are admitted first come, first served."""
    bulkhead = Bulkhead(1, max_queue=5)
    order: list[int] = []
    bulkhead.__enter__()

    def worker(i: int) -> None:
        with bulkhead:
            order.append(i)

    threads = []
    for i in range(4):
        t = threading.Thread(target=worker, args=(i,))
        t.start()
        threads.append(t)
        wait_until(lambda n=i + 1: bulkhead.statistics().queued == n)
    assert bulkhead.statistics().queued == 4
    bulkhead.__exit__(None, None, None)
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3]
    assert bulkhead.statistics() == BulkheadStatistics("Bulkhead", 1, 5, 0, 0, 5, 0, 0)


def test_a_full_queue_rejects_newcomers_at_once():
    """With the slot and the only queue place taken, the next caller is rejected as 'full'."""
    bulkhead = Bulkhead(1, max_queue=1)
    bulkhead.__enter__()
    waiter = threading.Thread(target=bulkhead.__enter__)
    waiter.start()
    wait_until(lambda: bulkhead.statistics().queued == 1)
    with pytest.raises(BulkheadFullError) as info, bulkhead:
        pass
    assert info.value.state == "full"
    bulkhead.__exit__(None, None, None)  # hands the slot to the waiter
    waiter.join(5)
    stats = bulkhead.statistics()
    assert (stats.active, stats.queued, stats.rejected) == (1, 0, 1)


@pytest.mark.realtime
def test_a_queued_thread_gives_up_after_the_queue_timeout(events):
    """The wait is bounded: after queue_timeout the caller gets 'queue_timeout' and leaves."""
    bulkhead = Bulkhead(1, max_queue=2, queue_timeout=0.05, name="slow")
    with bulkhead:
        started = time.monotonic()
        with pytest.raises(BulkheadFullError) as info, bulkhead:
            pass
        assert time.monotonic() - started >= 0.04
    assert info.value.state == "queue_timeout"
    assert "no slot freed up within the queue timeout" in str(info.value)
    stats = bulkhead.statistics()
    assert (stats.queued, stats.rejected, stats.timed_out) == (0, 1, 1)
    assert events == [events_type("slow", "bulkhead", "queue_timeout", None)]


def events_type(*args: object) -> ev.CallRejected:
    """Build the rejection event the bulkhead is expected to emit."""
    return ev.CallRejected(*args)  # type: ignore[arg-type]


def test_a_thread_and_a_task_share_the_same_slots():
    """A slot held by a thread makes an asyncio caller queue until the thread releases it."""
    bulkhead = Bulkhead(1, max_queue=1, queue_timeout=None)
    entered, release = threading.Event(), threading.Event()

    def holder() -> None:
        with bulkhead:
            entered.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    entered.wait(5)

    async def main() -> str:
        threading.Thread(
            target=lambda: (wait_until(lambda: bulkhead.statistics().queued == 1), release.set())
        ).start()
        async with bulkhead:
            return "ran"

    assert asyncio.run(main()) == "ran"
    thread.join(5)
    assert bulkhead.statistics().admitted == 2


def test_a_waiter_that_can_no_longer_be_woken_passes_its_slot_on():
    """If waking the first waiter fails (its loop is gone), the next one gets the slot."""

    class Gone(Waiter):
        __slots__ = ()

        def wake(self) -> None:
            raise RuntimeError("Event loop is closed")

    core = BulkheadCore(1, None)
    assert core.enter(ThreadWaiter) is None
    lost = core.enter(Gone)
    second = core.enter(ThreadWaiter)
    assert isinstance(second, ThreadWaiter)
    core.leave()
    assert lost is not None
    assert lost.granted
    assert second.granted
    assert second.wait(0)
    assert core.snapshot() == (1, 0, 3, 0, 0)


# ---------------------------------------------------------------- queue (async, asyncio and Trio)
@pytest.mark.anyio
async def test_queued_tasks_get_slots_in_arrival_order(events, anyio_backend):
    """Tasks waiting for a slot are admitted first come, first served; each wait is reported."""
    bulkhead = Bulkhead(1, max_queue=10, name=f"fifo-{anyio_backend}")
    order: list[int] = []

    @bulkhead
    async def work(i: int) -> None:
        """Record the order."""
        order.append(i)
        await anyio.sleep(0)

    async with anyio.create_task_group() as group, bulkhead:
        for i in range(5):
            group.start_soon(work, i)
            await await_until(lambda n=i + 1: bulkhead.statistics().queued == n)
    assert order == [0, 1, 2, 3, 4]
    assert [type(e) for e in events] == [ev.BulkheadWaited] * 5
    assert all(e.name == f"fifo-{anyio_backend}" for e in events)


@pytest.mark.anyio
async def test_a_cancelled_queued_task_leaves_the_queue():
    """Cancelling a queued task removes it: the freed slot goes to the next waiter."""
    bulkhead = Bulkhead(1, max_queue=5)
    ran: list[str] = []
    scope = anyio.CancelScope()

    async def first() -> None:
        with scope:
            async with bulkhead:
                ran.append("cancelled one")

    async def second() -> None:
        async with bulkhead:
            ran.append("second")

    async with anyio.create_task_group() as group, bulkhead:
        group.start_soon(first)
        await await_until(lambda: bulkhead.statistics().queued == 1)
        group.start_soon(second)
        await await_until(lambda: bulkhead.statistics().queued == 2)
        scope.cancel()
        await await_until(lambda: bulkhead.statistics().queued == 1)
    assert ran == ["second"]
    stats = bulkhead.statistics()
    assert (stats.active, stats.queued, stats.admitted, stats.rejected) == (0, 0, 2, 0)


@pytest.mark.anyio
async def test_cancelling_a_running_call_releases_its_slot():
    """A call cancelled while it holds a slot gives the slot back."""
    bulkhead = Bulkhead(1)

    @bulkhead
    async def forever() -> None:
        """Never return."""
        await anyio.sleep(math.inf)

    with anyio.move_on_after(0.01):
        await forever()
    assert bulkhead.statistics().active == 0
    async with bulkhead:
        assert bulkhead.statistics().active == 1


@pytest.mark.realtime
@pytest.mark.anyio
async def test_a_queued_task_gives_up_after_the_queue_timeout():
    """An async waiter is rejected with 'queue_timeout' and leaves the queue."""
    bulkhead = Bulkhead(1, max_queue=1, queue_timeout=0.02)
    async with bulkhead:
        with pytest.raises(BulkheadFullError) as info:
            async with bulkhead:
                pass
    assert info.value.state == "queue_timeout"
    stats = bulkhead.statistics()
    assert (stats.active, stats.queued, stats.timed_out) == (0, 0, 1)


@pytest.mark.anyio
async def test_async_rejection_when_full_emits_call_rejected(events):
    """A full async bulkhead rejects at once and reports CallRejected('bulkhead', 'full')."""
    bulkhead = Bulkhead(1, name="api")
    async with bulkhead:
        with pytest.raises(BulkheadFullError):
            async with bulkhead:
                pass
    assert events == [events_type("api", "bulkhead", "full", None)]


# ---------------------------------------------------------------- validation and inspection
def test_every_bad_setting_is_reported_in_one_error():
    """max_concurrent, max_queue and queue_timeout problems are all listed with values."""
    with pytest.raises(ValueError) as info:
        Bulkhead(0, max_queue=-1, queue_timeout=math.nan)
    text = str(info.value)
    assert "max_concurrent must be an integer >= 1, got 0" in text
    assert "max_queue must be an integer >= 0, got -1" in text
    assert "queue_timeout must be a finite number of seconds >= 0, got nan" in text


def test_wrong_kinds_raise_type_error():
    """A float slot count, a string name and a bad clock are type errors."""
    with pytest.raises(TypeError) as info:
        Bulkhead(2.5, name=3, clock="now")  # type: ignore[arg-type]
    text = str(info.value)
    assert "max_concurrent must be an integer >= 1, got 2.5" in text
    assert "name must be a string or None, got 3" in text
    assert "clock must be a Clock or None, got 'now'" in text


def test_statistics_repr_and_registry():
    """statistics() is a frozen snapshot, repr shows occupancy, named bulkheads are listed."""
    bulkhead = Bulkhead(3, max_queue=None, name="render")
    with bulkhead:
        assert repr(bulkhead) == "<Bulkhead 'render' active=1/3 queued=0/unbounded rejected=0>"
    stats = bulkhead.statistics()
    with pytest.raises(AttributeError):
        stats.active = 2  # type: ignore[misc]
    assert (bulkhead.max_concurrent, bulkhead.max_queue, bulkhead.queue_timeout) == (3, None, 30.0)
    assert recoverly.bulkheads()["render"] is bulkhead
    with pytest.warns(UserWarning, match="another live Bulkhead is named 'render'") as rec:
        other = Bulkhead(1, name="render")
    assert rec[0].filename == __file__
    assert recoverly.bulkheads()["render"] is other


def test_unnamed_bulkheads_take_the_decorated_function_name():
    """The label of an unnamed bulkhead is the first decorated function's name."""
    bulkhead = Bulkhead(1)

    @bulkhead
    def export() -> None:
        """Nothing."""

    assert bulkhead.statistics().name.endswith("export")


def test_an_interrupted_thread_leaves_the_queue(monkeypatch):
    """A KeyboardInterrupt while queued removes the waiter and propagates unchanged."""
    bulkhead = Bulkhead(1, max_queue=2)

    def interrupted(self, timeout):
        raise KeyboardInterrupt

    monkeypatch.setattr(ThreadWaiter, "wait", interrupted)
    with bulkhead:
        with pytest.raises(KeyboardInterrupt), bulkhead:
            pass
        assert bulkhead.statistics().queued == 0
    stats = bulkhead.statistics()
    assert (stats.active, stats.queued, stats.rejected) == (0, 0, 0)


def test_a_slot_granted_as_the_wait_times_out_is_kept():
    """If the slot arrives just as the wait times out, the caller keeps it: no rejection."""
    core = BulkheadCore(1, 1)
    assert core.enter(ThreadWaiter) is None
    waiter = core.enter(ThreadWaiter)
    assert isinstance(waiter, ThreadWaiter)
    core.leave()  # hands the slot over ...
    assert core.time_out(waiter)  # ... before the timed-out waiter looks
    assert core.snapshot() == (1, 0, 2, 0, 0)


def test_bulkhead_events_are_logged_at_debug_level(caplog):
    """The default log subscriber words BulkheadWaited when it is passed one."""
    caplog.set_level("DEBUG", logger="recoverly")
    ev.log_event(ev.BulkheadWaited("reports", 0.25))
    assert caplog.messages == ["reports: got a slot after 0.25s in the queue"]


def test_releasing_a_slot_that_was_never_taken_is_an_error():
    """An unmatched __exit__ raises RuntimeError instead of corrupting the count."""
    bulkhead = Bulkhead(1)
    with pytest.raises(RuntimeError, match="released more often than it was taken"):
        bulkhead.__exit__(None, None, None)
    assert bulkhead.statistics().active == 0
    with bulkhead:
        assert bulkhead.statistics().active == 1


def test_bulkhead_settings_are_read_only():
    """max_concurrent, max_queue and queue_timeout cannot be changed after construction."""
    bulkhead = Bulkhead(2, max_queue=3, queue_timeout=1.5)
    assert (bulkhead.max_concurrent, bulkhead.max_queue, bulkhead.queue_timeout) == (2, 3, 1.5)
    for attribute in ("max_concurrent", "max_queue", "queue_timeout"):
        with pytest.raises(AttributeError):
            setattr(bulkhead, attribute, 1)
