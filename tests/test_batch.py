"""safe_execute, asafe_execute, batch_with_retry and abatch_with_retry."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recoverly import events as ev
from recoverly import retry
from recoverly.batch import BatchProgress, abatch_with_retry, batch_with_retry
from recoverly.safe import asafe_execute, safe_execute
from recoverly.testing import ManualClock


class Transient(Exception):
    pass


class BadInput(Exception):
    pass


def fail_times(plan: dict[int, int], exc: type[Exception] = Transient):
    """A process function: item k raises `exc` on its first plan[k] calls; counts calls."""
    calls: Counter[int] = Counter()
    lock = threading.Lock()

    def process(item: int) -> int:
        with lock:
            calls[item] += 1
            n = calls[item]
        if n <= plan.get(item, 0):
            raise exc(f"item {item} call {n}")
        return item * 10

    return process, calls


# ================================================================ safe_execute
def test_safe_execute_returns_the_result_and_passes_arguments():
    """The function's own result comes back; positional and keyword arguments reach it."""
    assert safe_execute(lambda a, b=0: a + b, 2, b=3) == 5


def test_safe_execute_returns_default_and_reports_the_failure(events, caplog):
    """A failure becomes `default`, is emitted as FallbackUsed and logged at WARNING."""
    error = ValueError("bad value")

    def parse() -> int:
        raise error

    with caplog.at_level(logging.WARNING, logger="recoverly"):
        assert safe_execute(parse, default=-1) == -1
    [used] = [e for e in events if isinstance(e, ev.FallbackUsed)]
    assert used.exception is error
    assert used.strategy == "safe_execute"
    assert used.name.endswith("parse")
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "parse" in record.getMessage()
    assert "ValueError - bad value" in record.getMessage()


def test_safe_execute_default_is_none_unless_given():
    """Without default=, a failure returns None."""
    assert safe_execute(int, "not a number") is None


def test_safe_execute_exception_filter_lets_other_errors_through():
    """With exceptions=, only matching errors become the default; others propagate."""
    assert safe_execute(int, "x", default=0, exceptions=ValueError) == 0
    with pytest.raises(TypeError):
        safe_execute(int, None, default=0, exceptions=(ValueError, KeyError))
    assert safe_execute(int, "x", default=0, exceptions=lambda e: "literal" in str(e)) == 0


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_safe_execute_never_swallows_interrupts(interrupt):
    """KeyboardInterrupt and SystemExit propagate whatever the filter says."""

    def stop() -> None:
        raise interrupt

    with pytest.raises(interrupt):
        safe_execute(stop, default=0, exceptions=BaseException)


def test_safe_execute_reserves_default_and_exceptions():
    """default= and exceptions= go to safe_execute, never to the function."""
    seen: dict[str, Any] = {}

    def f(**kwargs: Any) -> dict[str, Any]:
        seen.update(kwargs)
        return kwargs

    assert safe_execute(f, default=1, exceptions=ValueError, func="passed", other=2) == {
        "func": "passed",
        "other": 2,
    }
    assert seen == {"func": "passed", "other": 2}


def test_safe_execute_rejects_a_bad_exception_filter():
    """A filter that is not a class, tuple or callable is a TypeError naming exceptions."""
    with pytest.raises(TypeError, match="exceptions must be"):
        safe_execute(int, "1", exceptions="ValueError")  # type: ignore[arg-type]


def test_seed_load_dataset_with_fallback_to_backup(tmp_path: Path):
    """The seed's primary/backup loader: retried primary fails, the backup is served."""
    clock = ManualClock()

    @retry(max_attempts=3, delay=2.0, exceptions=(IOError, OSError), clock=clock)
    def load_dataset(file_path: str) -> list[str]:
        return Path(file_path).read_text().splitlines()

    def load_dataset_with_fallback(primary_path: str, backup_path: str | None = None):
        df = safe_execute(load_dataset, primary_path, default=None)
        if df is not None:
            return df
        if backup_path:
            df = safe_execute(load_dataset, backup_path, default=None)
            if df is not None:
                return df
        msg = f"Could not load dataset from {primary_path} or {backup_path}"
        raise FileNotFoundError(msg)

    backup = tmp_path / "backup.csv"
    backup.write_text("a,b\n1,2\n")
    missing = str(tmp_path / "missing.csv")
    assert load_dataset_with_fallback(missing, str(backup)) == ["a,b", "1,2"]
    assert clock.sleeps == [2.0, 4.0]
    with pytest.raises(FileNotFoundError, match="Could not load"):
        load_dataset_with_fallback(missing)


def test_seed_optional_feature_steps_fall_back_to_zeros():
    """The seed's optional feature steps: a missing column gives the zero default."""
    rows = [{"feature1": 2, "amount": 5}, {"feature1": 3, "amount": 7}]
    interaction = safe_execute(
        lambda: [r["feature1"] * r["feature2"] for r in rows], default=[0] * len(rows)
    )
    scaled = safe_execute(lambda: [r["amount"] * 2 for r in rows], default=[0] * len(rows))
    assert interaction == [0, 0]
    assert scaled == [10, 14]


@pytest.mark.anyio
async def test_safe_execute_on_an_async_function_applies_the_default_when_awaited():
    """safe_execute(async_fn) returns an awaitable that gives the default on failure."""

    async def fetch(ok: bool) -> str:
        await anyio.lowlevel.checkpoint()
        if not ok:
            raise ConnectionError("down")
        return "data"

    assert await safe_execute(fetch, True, default="cached") == "data"
    assert await safe_execute(fetch, False, default="cached") == "cached"


@pytest.mark.anyio
async def test_asafe_execute_returns_result_or_default(events):
    """asafe_execute awaits the function and reports a failure like safe_execute."""

    async def fetch(ok: bool) -> str:
        if not ok:
            raise ConnectionError("down")
        return "data"

    assert await asafe_execute(fetch, True) == "data"
    assert await asafe_execute(fetch, False, default="cached") == "cached"
    assert [type(e.exception) for e in events if isinstance(e, ev.FallbackUsed)] == [
        ConnectionError
    ]


@pytest.mark.anyio
async def test_asafe_execute_lets_cancellation_through():
    """Cancellation is never turned into the default."""

    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await asafe_execute(cancelled, default=0, exceptions=BaseException)


# ================================================================ batch_with_retry
def test_all_items_succeed_in_input_order(events):
    """Every item succeeds: results in input order, nothing failed, no failure events."""
    results, failed = batch_with_retry(list(range(7)), lambda x: x * x, batch_size=3)
    assert results == [0, 1, 4, 9, 16, 25, 36]
    assert failed == []
    assert not [e for e in events if isinstance(e, ev.BatchItemFailed)]


def test_items_that_fail_then_succeed_within_retries_are_results():
    """An item failing up to max_retries times still succeeds; calls are counted per item."""
    process, calls = fail_times({0: 0, 1: 1, 2: 2, 3: 3})
    results, failed = batch_with_retry(
        items=[0, 1, 2, 3], process_func=process, batch_size=100, max_retries=2
    )
    assert results == [0, 10, 20]
    assert [(item, str(exc)) for item, exc in failed] == [(3, "item 3 call 3")]
    assert calls == {0: 1, 1: 2, 2: 3, 3: 3}


def test_permanent_failures_are_reported_in_order_with_events(events):
    """Items that never succeed come back as (item, last exception), in input order."""
    process, calls = fail_times({1: 99, 4: 99})
    results, failed = batch_with_retry(range(6), process, batch_size=2, max_retries=1, name="rows")
    assert results == [0, 20, 30, 50]
    assert [item for item, _ in failed] == [1, 4]
    assert all(isinstance(exc, Transient) for _, exc in failed)
    assert calls[1] == calls[4] == 2
    item_failed = [e for e in events if isinstance(e, ev.BatchItemFailed)]
    assert [(e.name, e.index, e.attempts) for e in item_failed] == [("rows", 1, 2), ("rows", 4, 2)]
    assert item_failed[0].exception is failed[0][1]


def test_max_retries_zero_means_one_attempt():
    """max_retries=0: each item runs exactly once."""
    process, calls = fail_times({0: 1})
    results, failed = batch_with_retry([0, 1], process, max_retries=0)
    assert results == [10]
    assert [i for i, _ in failed] == [0]
    assert calls == {0: 1, 1: 1}


def test_non_matching_exception_fails_the_item_at_once_and_the_batch_goes_on(events):
    """An error outside exceptions= is not retried but recorded as failed; the batch continues."""
    process, calls = fail_times({1: 99}, exc=BadInput)
    results, failed = batch_with_retry(range(3), process, max_retries=2, exceptions=Transient)
    assert results == [0, 20]
    assert [i for i, _ in failed] == [1]
    assert calls[1] == 1
    [event] = [e for e in events if isinstance(e, ev.BatchItemFailed)]
    assert event.attempts == 1


def test_keyboard_interrupt_aborts_the_batch():
    """KeyboardInterrupt is never recorded as an item failure: it stops the batch."""
    seen: list[int] = []

    def process(item: int) -> int:
        seen.append(item)
        if item == 1:
            raise KeyboardInterrupt
        return item

    with pytest.raises(KeyboardInterrupt):
        batch_with_retry(range(5), process)
    assert seen == [0, 1]


def test_retry_waits_are_slept_on_the_given_clock(clock):
    """Waits between attempts follow delay*backoff**n and go through the clock."""
    process, _ = fail_times({0: 2, 1: 1})
    results, failed = batch_with_retry(
        [0, 1], process, max_retries=2, delay=1.0, backoff=3.0, clock=clock
    )
    assert (results, failed) == ([0, 10], [])
    assert clock.sleeps == [1.0, 3.0, 1.0]


def test_generator_input_is_read_one_batch_at_a_time():
    """A generator is consumed lazily: only one batch is read ahead of the progress report."""
    pulled: list[int] = []

    def source() -> Iterator[int]:
        for i in range(7):
            pulled.append(i)
            yield i

    reports: list[tuple[BatchProgress, int]] = []
    results, failed = batch_with_retry(
        source(), lambda x: -x, batch_size=3, on_progress=lambda p: reports.append((p, len(pulled)))
    )
    assert results == [0, -1, -2, -3, -4, -5, -6]
    assert failed == []
    assert reports == [
        (BatchProgress(batches=1, processed=3, succeeded=3, failed=0), 3),
        (BatchProgress(batches=2, processed=6, succeeded=6, failed=0), 6),
        (BatchProgress(batches=3, processed=7, succeeded=7, failed=0), 7),
    ]


def test_a_failing_progress_hook_is_logged_and_ignored(caplog):
    """An on_progress error never breaks the batch."""

    def hook(progress: BatchProgress) -> None:
        raise RuntimeError("dashboard down")

    with caplog.at_level(logging.ERROR, logger="recoverly"):
        results, _ = batch_with_retry(range(4), str, batch_size=2, on_progress=hook)
    assert results == ["0", "1", "2", "3"]
    assert sum("on_progress hook" in r.getMessage() for r in caplog.records) == 2


def test_empty_input_gives_empty_lists():
    """No items: no calls, two empty lists."""
    assert batch_with_retry([], str) == ([], [])
    assert batch_with_retry(iter([]), str, max_workers=2) == ([], [])


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"batch_size": 0}, ValueError, r"batch_size must be an integer >= 1, got 0"),
        ({"max_retries": -1}, ValueError, r"max_retries must be an integer >= 0, got -1"),
        ({"max_workers": 0}, ValueError, r"max_workers must be an integer >= 1, got 0"),
        ({"batch_size": True}, TypeError, r"batch_size must be an integer"),
        ({"batch_size": 2.5}, TypeError, r"batch_size must be an integer"),
        ({"delay": -1}, ValueError, r"delay must be a finite number of seconds >= 0"),
        ({"backoff": 0.5}, ValueError, r"backoff must be a finite number >= 1"),
        ({"exceptions": "x"}, TypeError, r"exceptions must be"),
        ({"on_progress": 3}, TypeError, r"on_progress must be callable"),
        ({"items": 5}, TypeError, r"items must be an iterable, got 5"),
        ({"process_func": None}, TypeError, r"process_func must be callable, got None"),
    ],
)
def test_bad_arguments_are_rejected_before_any_item_runs(kwargs, error, pattern):
    """Each bad argument raises naming the parameter, the rule and the value."""
    calls: list[int] = []
    args: dict[str, Any] = {"items": [1, 2], "process_func": calls.append, **kwargs}
    with pytest.raises(error, match=pattern):
        batch_with_retry(**args)
    assert calls == []


def test_all_bad_arguments_are_listed_together():
    """Several bad arguments are reported in one error."""
    with pytest.raises(
        ValueError, match=r"batch_size.*max_retries.*max_workers.*delay must be a finite"
    ):
        batch_with_retry([1], str, 0, -1, max_workers=0, delay=float("nan"))


def test_async_process_func_is_refused_with_a_pointer_to_the_async_twin():
    """An async def process_func needs abatch_with_retry."""

    async def process(item: int) -> int:  # pragma: no cover - never called
        return item

    with pytest.raises(TypeError, match="abatch_with_retry"):
        batch_with_retry([1], process)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=4), max_size=30),
    st.integers(min_value=1, max_value=7),
    st.integers(min_value=0, max_value=3),
    st.sampled_from([None, 3]),
)
def test_every_item_ends_up_in_exactly_one_list(failures, batch_size, max_retries, workers):
    """Nothing is lost: results and failed together account for every input, in order."""
    plan = dict(enumerate(failures))
    process, _ = fail_times(plan)
    results, failed = batch_with_retry(
        range(len(failures)), process, batch_size, max_retries, max_workers=workers
    )
    expected_ok = [i * 10 for i, n in plan.items() if n <= max_retries]
    assert results == expected_ok
    assert [i for i, _ in failed] == [i for i, n in plan.items() if n > max_retries]


# ---------------------------------------------------------------- thread pool
def test_thread_pool_keeps_input_order_when_items_finish_out_of_order():
    """With max_workers, results keep input order although item 0 finishes last."""
    start = threading.Barrier(4, timeout=5)
    last_done = threading.Event()
    finished: list[int] = []
    lock = threading.Lock()

    def process(item: int) -> str:
        start.wait()  # all four run at once: the pool really is concurrent
        if item == 0:
            assert last_done.wait(timeout=5)
        with lock:
            finished.append(item)
            if len(finished) == 3:
                last_done.set()
        return f"r{item}"

    results, failed = batch_with_retry(range(4), process, batch_size=4, max_workers=4)
    assert results == ["r0", "r1", "r2", "r3"]
    assert failed == []
    assert finished[-1] == 0


def test_thread_pool_retries_and_reports_failures_in_order(clock):
    """Retries and failures behave the same on the pool; failed stays in input order."""
    process, calls = fail_times({0: 5, 2: 1, 5: 5})
    results, failed = batch_with_retry(
        range(6), process, batch_size=4, max_retries=2, max_workers=3, delay=0.5, clock=clock
    )
    assert results == [10, 20, 30, 40]
    assert [i for i, _ in failed] == [0, 5]
    assert calls == {0: 3, 1: 1, 2: 2, 3: 1, 4: 1, 5: 3}
    assert sorted(clock.sleeps) == [0.5, 0.5, 0.5, 1.0, 1.0]


def test_thread_pool_holds_at_most_one_batch_in_flight():
    """With a pool, the input is still read one batch at a time."""
    pulled: list[int] = []

    def source() -> Iterator[int]:
        for i in range(6):
            pulled.append(i)
            yield i

    seen: list[int] = []
    results, _ = batch_with_retry(
        source(), str, batch_size=2, max_workers=2, on_progress=lambda p: seen.append(len(pulled))
    )
    assert results == ["0", "1", "2", "3", "4", "5"]
    assert seen == [2, 4, 6]


def test_thread_pool_interrupt_cancels_items_not_yet_started():
    """An interrupt in a worker aborts the batch and cancels the items still queued."""
    started: list[int] = []

    def process(item: int) -> int:
        started.append(item)
        if item == 0:
            raise KeyboardInterrupt
        return item

    with pytest.raises(KeyboardInterrupt):
        batch_with_retry(range(100), process, batch_size=100, max_workers=1)
    assert len(started) < 100


def test_seed_process_batch_task_reports_failed_ids():
    """The seed's Celery batch task, with stand-ins for loading and saving."""
    saved: dict[int, int] = {}

    def process_single_item(item_id: int) -> int:
        if item_id % 4 == 0:
            raise LookupError(f"item {item_id} missing")
        result = item_id * 2
        saved[item_id] = result
        return result

    def process_batch_task(item_ids: list[int]) -> dict[str, Any]:
        successful, failed = batch_with_retry(
            items=item_ids, process_func=process_single_item, batch_size=50, max_retries=2
        )
        return {
            "total": len(item_ids),
            "successful": len(successful),
            "failed": len(failed),
            "failed_ids": [item_id for item_id, _ in failed],
        }

    assert process_batch_task(list(range(1, 11))) == {
        "total": 10,
        "successful": 8,
        "failed": 2,
        "failed_ids": [4, 8],
    }
    assert sorted(saved) == [1, 2, 3, 5, 6, 7, 9, 10]


def test_seed_process_rows_in_batches():
    """The seed's row-dict batch processing with a pandas-free stand-in."""

    def transform_row(row: dict[str, int]) -> dict[str, int]:
        if row["value"] < 0:
            raise ValueError("negative value")
        return {**row, "processed": row["value"] * 2}

    rows = [{"value": v} for v in (1, -2, 3)]
    successful, failures = batch_with_retry(
        items=rows, process_func=transform_row, batch_size=500, max_retries=2
    )
    assert successful == [{"value": 1, "processed": 2}, {"value": 3, "processed": 6}]
    assert [(item, str(err)) for item, err in failures] == [({"value": -2}, "negative value")]


def test_seed_parallel_batch_process_and_the_built_in_pool_agree():
    """The seed's hand-made parallel version and max_workers give the same answer."""

    def expensive_operation(item: int) -> int:
        return item**2

    def parallel_batch_process(items: list[int], process_func: Callable[[int], int]):
        num_workers, batch_size = 4, 250
        chunk_size = len(items) // num_workers
        chunks = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)]
        all_successful: list[int] = []
        all_failed: list[tuple[int, Exception]] = []

        def process_chunk(chunk: list[int]):
            return batch_with_retry(
                items=chunk, process_func=process_func, batch_size=batch_size, max_retries=2
            )

        with ThreadPoolExecutor(max_workers=num_workers) as executor:
            for successful, failed in executor.map(process_chunk, chunks):
                all_successful.extend(successful)
                all_failed.extend(failed)
        return all_successful, all_failed

    items = list(range(1000))
    by_hand = parallel_batch_process(items, expensive_operation)
    built_in = batch_with_retry(items, expensive_operation, batch_size=250, max_workers=4)
    assert by_hand == built_in
    assert built_in == ([i**2 for i in items], [])


def test_public_objects_show_their_public_module():
    """The batch helpers present themselves as recoverly.*."""
    for obj in (safe_execute, asafe_execute, batch_with_retry, abatch_with_retry, BatchProgress):
        assert obj.__module__ == "recoverly"


# ================================================================ abatch_with_retry
@pytest.mark.anyio
async def test_async_batch_retries_each_item_and_keeps_order(clock):
    """abatch_with_retry retries per item on the clock and returns results in input order."""
    calls: Counter[int] = Counter()

    async def process(item: int) -> int:
        calls[item] += 1
        await anyio.lowlevel.checkpoint()
        if calls[item] <= {1: 1, 3: 9}.get(item, 0):
            raise Transient(item)
        return item * 10

    results, failed = await abatch_with_retry(
        range(5), process, batch_size=2, max_retries=2, delay=1.0, clock=clock
    )
    assert results == [0, 10, 20, 40]
    assert [i for i, _ in failed] == [3]
    assert calls == {0: 1, 1: 2, 2: 1, 3: 3, 4: 1}
    assert clock.sleeps == [1.0, 1.0, 2.0]


@pytest.mark.anyio
async def test_async_batch_runs_concurrently_within_the_limit_and_keeps_order():
    """max_concurrency items run at once (never more); item 0 finishes last yet comes first."""
    in_flight = peak = 0
    others_done = anyio.Event()
    finished: list[int] = []

    async def process(item: int) -> str:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            if item == 0:
                await others_done.wait()
            else:
                await anyio.lowlevel.checkpoint()
            finished.append(item)
            if len(finished) == 4:
                others_done.set()
            return f"r{item}"
        finally:
            in_flight -= 1

    with anyio.fail_after(5):
        results, failed = await abatch_with_retry(
            range(5), process, batch_size=5, max_concurrency=3
        )
    assert results == ["r0", "r1", "r2", "r3", "r4"]
    assert failed == []
    assert finished[-1] == 0
    assert peak == 3


@pytest.mark.anyio
async def test_async_batch_accepts_an_async_iterable():
    """An async generator is consumed batch by batch."""
    pulled: list[int] = []

    async def source() -> AsyncIterator[int]:
        for i in range(5):
            pulled.append(i)
            yield i

    async def double(item: int) -> int:
        return item * 2

    seen: list[int] = []
    results, failed = await abatch_with_retry(
        source(), double, batch_size=2, on_progress=lambda p: seen.append(len(pulled))
    )
    assert (results, failed) == ([0, 2, 4, 6, 8], [])
    assert seen == [2, 4, 5]


@pytest.mark.anyio
async def test_async_batch_validates_max_concurrency():
    """max_concurrency must be an integer >= 1 or None."""

    async def process(item: int) -> int:  # pragma: no cover - never called
        return item

    with pytest.raises(ValueError, match=r"max_concurrency must be an integer >= 1, got 0"):
        await abatch_with_retry([1], process, max_concurrency=0)


class Abort(BaseException):
    """Not an Exception: must abort the batch rather than fail one item."""


@pytest.mark.anyio
async def test_async_batch_abort_propagates_unwrapped_and_stops_other_workers():
    """A BaseException in one concurrent item propagates as itself on asyncio and Trio."""
    started: list[int] = []

    async def process(item: int) -> int:
        started.append(item)
        await anyio.lowlevel.checkpoint()
        if item == 1:
            raise Abort
        await anyio.sleep_forever()
        return item  # pragma: no cover

    with anyio.fail_after(5), pytest.raises(Abort):
        await abatch_with_retry(range(10), process, batch_size=10, max_concurrency=3)
    assert started == [0, 1, 2]


@pytest.mark.anyio
async def test_async_batch_accepts_a_plain_function():
    """A sync process_func works in abatch_with_retry too (it is simply called)."""
    results, failed = await abatch_with_retry([1, 2], lambda x: x + 1)
    assert (results, failed) == ([2, 3], [])
