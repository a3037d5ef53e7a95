"""batch_with_retry: keep going when single items fail.

::

    successful, failed = batch_with_retry(
        items=rows, process_func=transform_row, batch_size=100, max_retries=2
    )
    for item, error in failed:
        log_failure(item, error)

``batch_with_retry`` retries each item with a
:class:`~recoverly.Retry` policy and returns the results in input order plus
the items that failed for good; every input item ends up in exactly one of the
two lists. ``KeyboardInterrupt``, ``SystemExit`` and cancellation are never
turned into failed items: they propagate.

.. versionadded:: 0.1
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any, Generic, TypeVar

from recoverly._core.bus import BUS
from recoverly._core.callables import check_callable, guess_name, is_async_callable
from recoverly._core.clock import Clock, _in_asyncio
from recoverly._core.predicates import ExceptionFilter
from recoverly._core.validate import Duration, Problems
from recoverly.events import BatchItemFailed
from recoverly.retry import Retry

__all__ = ["BatchProgress", "abatch_with_retry", "batch_with_retry"]

T = TypeVar("T")
D = TypeVar("D")
ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

_log = logging.getLogger("recoverly")
_ANY: ExceptionFilter = (Exception,)
_END = object()


# ---------------------------------------------------------------- batch_with_retry
@dataclass(frozen=True, slots=True)
class BatchProgress:
    """Where a batch run stands; passed to ``on_progress`` after every batch.

    Attributes:
        batches: Batches finished so far.
        processed: Items finished so far (``succeeded + failed``).
        succeeded: Items that produced a result.
        failed: Items that failed for good.

    .. versionadded:: 0.1
    """

    batches: int
    processed: int
    succeeded: int
    failed: int


_Outcome = tuple[bool, Any, int]  # (succeeded, result or exception, attempts)


class _Run(Generic[ItemT, ResultT]):
    """Validated settings of one batch run and the lists it fills."""

    __slots__ = ("failed", "fn", "label", "on_progress", "policy", "progress", "results")

    def __init__(
        self,
        fn: Callable[[ItemT], Any],
        policy: Retry,
        on_progress: Callable[[BatchProgress], object] | None,
    ) -> None:
        self.fn, self.policy, self.on_progress = fn, policy, on_progress
        self.label: str = policy.name or guess_name(fn)
        self.results: list[ResultT] = []
        self.failed: list[tuple[ItemT, Exception]] = []
        self.progress = BatchProgress(0, 0, 0, 0)

    def collect(self, batch: list[ItemT], outcomes: list[_Outcome]) -> None:
        """Record one finished batch in input order; report failures and progress."""
        first = self.progress.processed
        for i, (item, (ok, value, attempts)) in enumerate(zip(batch, outcomes, strict=True)):
            if ok:
                self.results.append(value)
                continue
            self.failed.append((item, value))
            if BUS.wants(BatchItemFailed):
                BUS.emit(BatchItemFailed(self.label, first + i, value, attempts))
        done = first + len(batch)
        self.progress = BatchProgress(
            self.progress.batches + 1, done, len(self.results), len(self.failed)
        )
        if self.on_progress is not None:
            try:
                self.on_progress(self.progress)
            except Exception:
                _log.exception("on_progress hook of %s failed", self.label)

    def one(self, item: ItemT) -> _Outcome:
        """Process ``item`` under the retry policy; never raises an ``Exception``."""
        attempts = 0

        def attempt() -> Any:
            nonlocal attempts
            attempts += 1
            return self.fn(item)

        try:
            return True, self.policy.call(attempt), attempts
        except Exception as exc:
            return False, exc, attempts

    async def aone(self, item: ItemT) -> _Outcome:
        """Await ``item``'s processing under the retry policy; never raises an ``Exception``."""
        attempts = 0

        async def attempt() -> Any:
            nonlocal attempts
            attempts += 1
            result = self.fn(item)
            return (await result) if inspect.isawaitable(result) else result

        try:
            return True, await self.policy.acall(attempt), attempts
        except Exception as exc:
            return False, exc, attempts


def _prepare(
    items: object,
    process_func: object,
    batch_size: object,
    max_retries: object,
    workers: tuple[str, object],
    retry_args: dict[str, Any],
    on_progress: object,
    name: object,
) -> tuple[int, int | None, Retry]:
    """Validate every argument at once; return the batch size, workers and policy."""
    p = Problems()
    size = p.int_at_least("batch_size", batch_size, 1)
    retries = p.int_at_least("max_retries", max_retries, 0)
    pool = p.optional_int_at_least(workers[0], workers[1], 1)
    p.optional_callable("on_progress", on_progress)
    label = p.optional_name("name", name)
    if not callable(process_func):
        p._bad(f"process_func must be callable, got {process_func!r}", kind=True)
    if not isinstance(items, (Iterable, AsyncIterable)):
        p._bad(f"items must be an iterable, got {items!r}", kind=True)
    try:
        policy = Retry(
            retries + 1,
            name=label or (guess_name(process_func) if callable(process_func) else None),
            _stacklevel=4,
            **retry_args,
        )
    except (TypeError, ValueError) as exc:
        p._bad(str(exc), kind=isinstance(exc, TypeError))
    p.raise_if_any()
    return size, pool, policy


def _retry_args(
    delay: object,
    backoff: object,
    max_delay: object,
    jitter: object,
    exceptions: object,
    clock: object,
) -> dict[str, Any]:
    return {
        "delay": delay,
        "backoff": backoff,
        "max_delay": max_delay,
        "jitter": jitter,
        "exceptions": exceptions,
        "clock": clock,
    }


def _chunks(source: Iterator[ItemT], size: int) -> Iterator[list[ItemT]]:
    while batch := list(islice(source, size)):
        yield batch


def batch_with_retry(
    items: Iterable[ItemT],
    process_func: Callable[[ItemT], ResultT],
    batch_size: int = 100,
    max_retries: int = 2,
    *,
    max_workers: int | None = None,
    delay: Duration = 0.0,
    backoff: float = 2.0,
    max_delay: Duration | None = None,
    jitter: bool | float = False,
    exceptions: ExceptionFilter = _ANY,
    on_progress: Callable[[BatchProgress], object] | None = None,
    name: str | None = None,
    clock: Clock | None = None,
) -> tuple[list[ResultT], list[tuple[ItemT, Exception]]]:
    """Process every item, retrying each one; return the results and the failures.

    Items are read from ``items`` (any iterable, generators included)
    ``batch_size`` at a time. A batch is finished, every item succeeded or
    failed for good, before the next one is read, so at most ``batch_size``
    items are held or in flight at once and ``on_progress`` is called after each
    batch. With ``max_workers``, the items of a batch run concurrently on a
    thread pool of that size (use ``batch_size >= max_workers`` to keep it busy);
    the results still come back in input order.

    Each item gets up to ``max_retries + 1`` attempts through a
    :class:`~recoverly.Retry` policy (waits: ``delay``, ``backoff``,
    ``max_delay``, ``jitter``, slept on ``clock``). An exception matching
    ``exceptions`` is retried; any other ``Exception`` fails the item at once
    (use this for errors that a retry cannot fix, like bad input); both kinds
    are recorded in ``failed`` and never abort the batch.
    ``KeyboardInterrupt``, ``SystemExit`` and cancellation abort the batch (with
    a pool, items not yet started are cancelled); so does an error raised by the
    ``items`` iterable itself. Each failed item emits a
    :class:`~recoverly.events.BatchItemFailed` event.

    Args:
        items: The items to process.
        process_func: Called as ``process_func(item)``.
        batch_size: Items read and processed at a time (``>= 1``).
        max_retries: Retries per item after the first attempt (``>= 0``).
        max_workers: Threads for concurrent processing; ``None``: one at a time.
        delay: Base wait before a retry, in seconds (default ``0``: no wait).
        backoff: Growth factor of the wait per retry (``>= 1``).
        max_delay: Cap on each wait; ``None``: no cap.
        jitter: Spread waits like :func:`~recoverly.retry` does.
        exceptions: Which exceptions are worth retrying (default ``Exception``).
        on_progress: Called with a :class:`BatchProgress` after every batch; an
            error it raises is logged and ignored.
        name: Name used in events and logs (default: ``process_func``'s name).
        clock: Time source for the waits (default: the process clock).

    Returns:
        ``(results, failed)``: the results of the items that succeeded, in input
        order, and ``[(item, exception), ...]`` for the items that failed for
        good, also in input order.

    Raises:
        ValueError: A setting is out of range (every bad setting is listed).
        TypeError: A setting has the wrong type, or ``process_func`` is
            ``async def`` (use :func:`abatch_with_retry`).

    .. versionadded:: 0.1
    """
    retry_args = _retry_args(delay, backoff, max_delay, jitter, exceptions, clock)
    size, workers, policy = _prepare(
        items,
        process_func,
        batch_size,
        max_retries,
        ("max_workers", max_workers),
        retry_args,
        on_progress,
        name,
    )
    if is_async_callable(process_func):
        msg = f"process_func {guess_name(process_func)} is async: use abatch_with_retry"
        raise TypeError(msg)
    run: _Run[ItemT, ResultT] = _Run(process_func, policy, on_progress)
    batches = _chunks(iter(items), size)
    if workers is None:
        for batch in batches:
            run.collect(batch, [run.one(item) for item in batch])
        return run.results, run.failed
    with ThreadPoolExecutor(workers, thread_name_prefix="recoverly-batch") as pool:
        try:
            for batch in batches:
                futures = [pool.submit(run.one, item) for item in batch]
                run.collect(batch, [f.result() for f in futures])
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return run.results, run.failed


async def abatch_with_retry(
    items: Iterable[ItemT] | AsyncIterable[ItemT],
    process_func: Callable[[ItemT], Awaitable[ResultT]],
    batch_size: int = 100,
    max_retries: int = 2,
    *,
    max_concurrency: int | None = None,
    delay: Duration = 0.0,
    backoff: float = 2.0,
    max_delay: Duration | None = None,
    jitter: bool | float = False,
    exceptions: ExceptionFilter = _ANY,
    on_progress: Callable[[BatchProgress], object] | None = None,
    name: str | None = None,
    clock: Clock | None = None,
) -> tuple[list[ResultT], list[tuple[ItemT, Exception]]]:
    """Await ``process_func`` for every item, retrying each one (asyncio or Trio).

    The async twin of :func:`batch_with_retry`, with the same rules. ``items``
    may also be an async iterable. ``max_concurrency`` items of a batch run at
    once (``None``: one at a time); results stay in input order.

    Args:
        items: The items to process (sync or async iterable).
        process_func: An ``async def`` function called as ``process_func(item)``.
        batch_size: Items read and processed at a time (``>= 1``).
        max_retries: Retries per item after the first attempt (``>= 0``).
        max_concurrency: Items processed at once within a batch; ``None``: one.
        delay: Base wait before a retry, in seconds (default ``0``).
        backoff: Growth factor of the wait per retry (``>= 1``).
        max_delay: Cap on each wait; ``None``: no cap.
        jitter: Spread waits like :func:`~recoverly.retry` does.
        exceptions: Which exceptions are worth retrying (default ``Exception``).
        on_progress: Called with a :class:`BatchProgress` after every batch.
        name: Name used in events and logs (default: ``process_func``'s name).
        clock: Time source for the waits (default: the process clock).

    Returns:
        ``(results, failed)`` as for :func:`batch_with_retry`.

    Raises:
        ValueError: A setting is out of range (every bad setting is listed).
        TypeError: A setting has the wrong type.

    .. versionadded:: 0.1
    """
    retry_args = _retry_args(delay, backoff, max_delay, jitter, exceptions, clock)
    size, limit, policy = _prepare(
        items,
        process_func,
        batch_size,
        max_retries,
        ("max_concurrency", max_concurrency),
        retry_args,
        on_progress,
        name,
    )
    run: _Run[ItemT, ResultT] = _Run(
        check_callable("process_func", process_func), policy, on_progress
    )
    if isinstance(items, AsyncIterable):
        source: Any = items.__aiter__()
        is_async = True
    else:
        source, is_async = iter(items), False
    while batch := await _take(source, size, is_async=is_async):
        run.collect(batch, await _run_batch(run, batch, limit or 1))
    return run.results, run.failed


async def _run_batch(run: _Run[ItemT, Any], batch: list[ItemT], limit: int) -> list[_Outcome]:
    """Process one batch with at most ``limit`` items in flight; outcomes in input order."""
    outcomes: list[_Outcome] = [(False, None, 0)] * len(batch)
    positions = iter(range(len(batch)))

    async def worker() -> None:
        for i in positions:  # shared: each worker takes the next unstarted item
            outcomes[i] = await run.aone(batch[i])

    await _all_at_once([worker] * min(limit, len(batch)))
    return outcomes


async def _take(source: Any, size: int, *, is_async: bool) -> list[Any]:
    if not is_async:
        return list(islice(source, size))
    batch: list[Any] = []
    while len(batch) < size and (item := await anext(source, _END)) is not _END:
        batch.append(item)
    return batch


async def _all_at_once(workers: list[Callable[[], Awaitable[None]]]) -> None:
    """Run ``workers`` concurrently in the running loop (asyncio or Trio)."""
    if len(workers) == 1:
        await workers[0]()
        return
    if _in_asyncio():
        tasks = [asyncio.ensure_future(w()) for w in workers]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        return
    trio = sys.modules["trio"]
    try:
        async with trio.open_nursery() as nursery:
            for w in workers:
                nursery.start_soon(w)
    except BaseException as exc:
        # Raise what a worker raised, as asyncio does, not a group of one.
        inner = getattr(exc, "exceptions", None)
        if isinstance(inner, tuple) and len(inner) == 1:
            raise inner[0] from None
        raise


for _obj in (BatchProgress, abatch_with_retry, batch_with_retry):
    _obj.__module__ = "recoverly"
del _obj
