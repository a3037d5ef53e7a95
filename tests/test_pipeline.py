"""Pipeline: parts applied outermost first, once per function, with defined composition."""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from recoverly import (
    CircuitBreaker,
    CircuitBreakerError,
    CircuitState,
    Pipeline,
    TimeoutExceeded,
    fallback,
    retry,
    timeout,
)
from recoverly._core.clock import SystemClock
from recoverly.testing import FlakyCall, ManualClock


# ---------------------------------------------------------------- the composition table
@dataclass
class Row:
    """One row of the composition table: parts, the call's behaviour, what must follow."""

    id: str
    parts: Callable[[ManualClock, dict[str, Any]], tuple[Any, ...]]
    failures: int  # the function fails this many times (ConnectionError), then returns "ok"
    result: object  # the value returned, or the exception type raised
    calls: int  # how many times the function itself ran
    then: Callable[[dict[str, Any], ManualClock], None] = field(default=lambda _s, _c: None)
    before: Callable[[dict[str, Any]], None] = field(default=lambda _s: None)


def _breaker(seen: dict[str, Any], clock: ManualClock, **kw: Any) -> CircuitBreaker:
    kw.setdefault("failure_threshold", 5)
    kw.setdefault("recovery_timeout", 10)
    seen["breaker"] = CircuitBreaker(clock=clock, **kw)
    return seen["breaker"]


def _retry(seen: dict[str, Any], clock: ManualClock, **kw: Any) -> Any:
    kw.setdefault("max_attempts", 3)
    kw.setdefault("delay", 1.0)
    seen["retry"] = retry(clock=clock, **kw)
    return seen["retry"]


def _fallback(seen: dict[str, Any]) -> Any:
    seen["errors"] = []

    def alternative(exception: BaseException) -> str:
        seen["errors"].append(exception)
        return "fallback"

    seen["fallback"] = fallback(alternative)
    return seen["fallback"]


def _stats(seen: dict[str, Any]) -> Any:
    return seen["breaker"].statistics()


TABLE = [
    Row(
        "retry>breaker: the breaker counts every failed attempt",
        lambda c, s: (_retry(s, c), _breaker(s, c)),
        failures=2,
        result="ok",
        calls=3,
        then=lambda s, _c: (
            _stats(s).failed_calls == 2 or pytest.fail(f"{_stats(s)}"),
            s["retry"].statistics().recovered == 1 or pytest.fail("not recovered"),
        ),
    ),
    Row(
        "breaker>retry: the breaker sees one successful call",
        lambda c, s: (_breaker(s, c), _retry(s, c)),
        failures=2,
        result="ok",
        calls=3,
        then=lambda s, _c: _stats(s).failed_calls == 0 or pytest.fail(f"{_stats(s)}"),
    ),
    Row(
        "breaker>retry: the breaker counts one failure for a call whose attempts all failed",
        lambda c, s: (_breaker(s, c), _retry(s, c)),
        failures=10,
        result=ConnectionError,
        calls=3,
        then=lambda s, _c: _stats(s).failed_calls == 1 or pytest.fail(f"{_stats(s)}"),
    ),
    Row(
        "retry>breaker: the breaker opens mid-call and retry waits out its retry_after",
        lambda c, s: (
            _retry(s, c, max_attempts=4, delay=0.1),
            _breaker(s, c, failure_threshold=2, recovery_timeout=10),
        ),
        failures=10,
        result=ConnectionError,
        calls=3,  # attempt 3 is rejected, attempt 4 is the HALF_OPEN probe
        then=lambda s, c: (
            c.sleeps == pytest.approx([0.1, 0.2, 9.8]) or pytest.fail(f"{c.sleeps}"),
            _stats(s).rejected_calls == 1 or pytest.fail(f"{_stats(s)}"),
            _stats(s).state is CircuitState.OPEN or pytest.fail(f"{_stats(s)}"),
        ),
    ),
    Row(
        "breaker>retry: an open breaker rejects before retry or the function runs",
        lambda c, s: (_breaker(s, c), _retry(s, c)),
        failures=0,
        result=CircuitBreakerError,
        calls=0,
        before=lambda s: s["breaker"].force_open(),
        then=lambda _s, c: c.sleeps == [] or pytest.fail(f"{c.sleeps}"),
    ),
    Row(
        "retry>breaker: retry retries an open breaker's rejections, then raises one",
        lambda c, s: (_retry(s, c), _breaker(s, c)),
        failures=0,
        result=CircuitBreakerError,
        calls=0,
        before=lambda s: s["breaker"].force_open(),
        then=lambda s, c: (
            len(c.sleeps) == 2 or pytest.fail(f"{c.sleeps}"),
            _stats(s).rejected_calls == 3 or pytest.fail(f"{_stats(s)}"),
        ),
    ),
    Row(
        "fallback>retry: the fallback sees only the final error",
        lambda c, s: (_fallback(s), _retry(s, c)),
        failures=10,
        result="fallback",
        calls=3,
        then=lambda s, _c: (
            len(s["errors"]) == 1 or pytest.fail(f"{s['errors']}"),
            "failure 3" in str(s["errors"][0]) or pytest.fail(f"{s['errors']}"),
        ),
    ),
    Row(
        "retry>fallback: the fallback answers the first failure, retry has nothing to do",
        lambda c, s: (_retry(s, c), _fallback(s)),
        failures=10,
        result="fallback",
        calls=1,
        then=lambda s, c: (
            c.sleeps == [] or pytest.fail(f"{c.sleeps}"),
            "failure 1" in str(s["errors"][0]) or pytest.fail(f"{s['errors']}"),
        ),
    ),
    Row(
        "fallback>retry: no error, no fallback",
        lambda c, s: (_fallback(s), _retry(s, c)),
        failures=2,
        result="ok",
        calls=3,
        then=lambda s, _c: s["errors"] == [] or pytest.fail(f"{s['errors']}"),
    ),
    Row(
        "fallback>breaker: an open breaker's rejection is answered by the fallback",
        lambda c, s: (_fallback(s), _breaker(s, c)),
        failures=0,
        result="fallback",
        calls=0,
        before=lambda s: s["breaker"].force_open(),
        then=lambda s, _c: (
            isinstance(s["errors"][0], CircuitBreakerError) or pytest.fail(f"{s['errors']}"),
        ),
    ),
    Row(
        "breaker>fallback: the breaker never sees the failures the fallback answered",
        lambda c, s: (_breaker(s, c), _fallback(s)),
        failures=10,
        result="fallback",
        calls=1,
        then=lambda s, _c: _stats(s).failed_calls == 0 or pytest.fail(f"{_stats(s)}"),
    ),
    Row(
        "fallback>retry>breaker: full order, every attempt counted, final error answered",
        lambda c, s: (_fallback(s), _retry(s, c), _breaker(s, c)),
        failures=10,
        result="fallback",
        calls=3,
        then=lambda s, _c: (
            _stats(s).failed_calls == 3 or pytest.fail(f"{_stats(s)}"),
            isinstance(s["errors"][0], ConnectionError) or pytest.fail(f"{s['errors']}"),
        ),
    ),
]


def _failing(failures: int) -> FlakyCall:
    count = iter(range(1, 1000))
    return FlakyCall(
        failures=failures,
        exception=lambda: ConnectionError(f"failure {next(count)}"),
        result="ok",
    )


def _check(row: Row, call: Callable[[], object], flaky: FlakyCall) -> None:
    if isinstance(row.result, type) and issubclass(row.result, BaseException):
        with pytest.raises(row.result):
            call()
    else:
        assert call() == row.result
    assert flaky.calls == row.calls


@pytest.mark.parametrize("row", TABLE, ids=[r.id for r in TABLE])
def test_composition_table_sync(row: Row, clock: ManualClock) -> None:
    """Each row: the order of the parts decides what a sync call goes through."""
    seen: dict[str, Any] = {}
    pipeline = Pipeline(*row.parts(clock, seen))
    flaky = _failing(row.failures)

    def work() -> object:
        return flaky()

    guarded = pipeline(work)
    row.before(seen)
    _check(row, guarded, flaky)
    row.then(seen, clock)


@pytest.mark.parametrize("row", TABLE, ids=[r.id for r in TABLE])
def test_composition_table_async(row: Row, clock: ManualClock) -> None:
    """Each row holds for an ``async def`` function too, through the same parts."""
    seen: dict[str, Any] = {}
    pipeline = Pipeline(*row.parts(clock, seen))
    flaky = _failing(row.failures)

    async def work() -> object:
        await asyncio.sleep(0)
        return flaky()

    guarded = pipeline(work)
    assert inspect.iscoroutinefunction(guarded)
    row.before(seen)
    _check(row, lambda: asyncio.run(guarded()), flaky)
    row.then(seen, clock)


# ---------------------------------------------------------------- timeouts (real time)
def _slow_then_fast(first: float) -> tuple[Callable[[], str], list[float]]:
    durations: list[float] = []

    def work() -> str:
        pause = first if not durations else 0.0
        durations.append(pause)
        time.sleep(pause)
        return "ok"

    return work, durations


@pytest.mark.realtime
def test_timeout_inside_retry_bounds_one_attempt() -> None:
    """retry>timeout: a hung attempt is cut at the timeout and the next attempt answers."""
    work, durations = _slow_then_fast(5.0)
    pipeline = Pipeline(retry(max_attempts=3, delay=0, clock=SystemClock()), timeout(0.05))
    started = time.monotonic()
    assert pipeline(work)() == "ok"
    assert durations == [5.0, 0.0]
    assert time.monotonic() - started < 2.0


@pytest.mark.realtime
def test_timeout_outside_retry_bounds_the_whole_call() -> None:
    """timeout>retry: the waits between attempts count, so the whole call times out."""
    flaky = _failing(2)
    pipeline = Pipeline(timeout(0.1), retry(max_attempts=3, delay=0.08, clock=SystemClock()))
    with pytest.raises(TimeoutExceeded):
        pipeline(flaky)()
    assert flaky.calls == 2  # the second wait (0.16 s) is cut by the timeout


@pytest.mark.realtime
def test_same_parts_inside_out_succeed_where_outside_timed_out() -> None:
    """retry>timeout with the same settings: each attempt is quick, so the call succeeds."""
    flaky = _failing(2)
    pipeline = Pipeline(retry(max_attempts=3, delay=0.08, clock=SystemClock()), timeout(0.1))
    assert pipeline(flaky)() == "ok"
    assert flaky.calls == 3


@pytest.mark.realtime
def test_async_timeout_inside_retry_bounds_one_attempt() -> None:
    """retry>timeout on asyncio: the hung attempt is cancelled, the next one answers."""
    attempts: list[int] = []

    async def work() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            await asyncio.sleep(5)
        return "ok"

    pipeline = Pipeline(retry(max_attempts=3, delay=0, clock=SystemClock()), timeout(0.05))
    assert asyncio.run(pipeline(work)()) == "ok"
    assert len(attempts) == 2


# ---------------------------------------------------------------- the decorator itself
def test_decorating_keeps_name_doc_and_signature(clock: ManualClock) -> None:
    """The composed wrapper reports the function's name, docstring and signature."""
    pipeline = Pipeline(retry(delay=0, clock=clock), CircuitBreaker(clock=clock))

    def price(item: str, *, qty: int = 1) -> float:
        """Price of qty items."""
        return 2.5 * qty

    wrapped = pipeline(price)
    assert wrapped.__name__ == "price"
    assert wrapped.__doc__ == "Price of qty items."
    assert str(inspect.signature(wrapped)) == str(inspect.signature(price))
    assert wrapped("x", qty=2) == 5.0


def test_parts_are_applied_once_per_function_not_per_call(clock: ManualClock) -> None:
    """Each part decorates the function once when the pipeline does; calls reuse it."""
    decorated: list[str] = []

    def counting(tag: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            decorated.append(tag)

            @functools.wraps(fn)
            def wrapper(*a: Any, **k: Any) -> Any:
                return (tag, fn(*a, **k))

            return wrapper

        return deco

    pipeline = Pipeline(counting("outer"), counting("inner"))
    wrapped = pipeline(lambda x: x)
    assert decorated == ["inner", "outer"]  # built innermost first
    assert [wrapped(1) for _ in range(3)] == [("outer", ("inner", 1))] * 3
    assert decorated == ["inner", "outer"]


def test_call_composes_once_per_function_and_runs_it(clock: ManualClock) -> None:
    """``.call`` runs through every part and reuses the wrapper for the same function."""
    built: list[object] = []

    def tracing(fn: Callable[..., Any]) -> Callable[..., Any]:
        built.append(fn)
        return fn

    pipeline = Pipeline(tracing, retry(max_attempts=3, delay=1, clock=clock))
    flaky = _failing(1)
    assert pipeline.call(flaky) == "ok"
    assert pipeline.call(flaky) == "ok"
    assert flaky.calls == 3
    assert len(built) == 1
    assert clock.sleeps == [1.0]


def test_acall_awaits_through_every_part(clock: ManualClock) -> None:
    """``.acall`` awaits an ``async def`` function through the pipeline with its arguments."""
    pipeline = Pipeline(retry(max_attempts=2, delay=1, clock=clock))
    flaky = _failing(1)

    async def work(x: int, *, y: int) -> tuple[object, int]:
        return flaky(), x + y

    assert asyncio.run(pipeline.acall(work, 1, y=2)) == ("ok", 3)
    assert flaky.calls == 2


def test_call_and_acall_refuse_the_wrong_kind() -> None:
    """``.call`` of an async function and ``.acall`` of a sync one raise TypeError."""
    pipeline = Pipeline(retry(delay=0))

    async def coro() -> None:
        return None

    with pytest.raises(TypeError, match="acall"):
        pipeline.call(coro)
    with pytest.raises(TypeError, match=r"\.call\(\)"):
        asyncio.run(pipeline.acall(len, "x"))  # type: ignore[arg-type]


def test_call_cache_forgets_the_oldest_function(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``.call`` cache is bounded: past its size the oldest function is dropped."""
    monkeypatch.setattr(importlib.import_module("recoverly.pipeline"), "CACHE_SIZE", 2)
    pipeline = Pipeline(retry(delay=0))
    fns = [lambda i=i: i for i in range(3)]
    assert [pipeline.call(f) for f in fns] == [0, 1, 2]
    assert list(pipeline._cache) == fns[1:]


def test_unhashable_callables_are_composed_each_call() -> None:
    """An unhashable callable still runs through the pipeline (without caching)."""

    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self) -> str:
            return "ran"

    pipeline = Pipeline(retry(delay=0))
    assert pipeline.call(Unhashable()) == "ran"
    assert pipeline._cache == {}


def test_empty_pipeline_returns_the_function() -> None:
    """A pipeline without parts leaves the function as it is."""

    def f() -> int:
        return 1

    assert Pipeline()(f) is f


def test_bad_parts_are_all_listed() -> None:
    """Factories not called, classes and non-callables are rejected in one TypeError."""
    with pytest.raises(TypeError) as info:
        Pipeline(retry, CircuitBreaker, 3, fallback)  # type: ignore[arg-type]
    text = str(info.value)
    assert "part #1 is the factory recoverly.retry; call it: retry(...)" in text
    assert "part #2 is the class CircuitBreaker" in text
    assert "part #3 must be a decorator, got 3" in text
    assert "part #4 is the factory" in text


def test_a_part_that_changes_the_kind_is_reported() -> None:
    """A part returning a sync wrapper for an async function raises TypeError naming it."""

    def syncify(fn: Callable[..., Any]) -> Callable[..., Any]:
        return lambda: None

    async def work() -> None:
        return None

    with pytest.raises(TypeError, match="every part must keep the function's kind"):
        Pipeline(syncify)(work)


def test_generator_functions_are_refused() -> None:
    """Decorating a generator function raises TypeError, as every strategy does."""

    def gen() -> Any:
        yield 1

    with pytest.raises(TypeError, match="pipeline cannot wrap the generator function"):
        Pipeline(retry(delay=0))(gen)


def test_describe_and_repr_list_the_parts_outermost_first(clock: ManualClock) -> None:
    """``describe()`` gives one line per part in order; ``repr`` chains them."""
    pipeline = Pipeline(
        fallback(0),
        retry(max_attempts=4, delay=0, name="r"),
        CircuitBreaker(failure_threshold=3, name="payments", clock=clock),
        timeout(2.0),
        name="checkout",
    )
    assert pipeline.describe() == (
        "fallback alternatives=1",
        "retry 'r' max_attempts=4 strategy=EXPONENTIAL",
        "circuit_breaker 'payments' failure_threshold=3",
        "timeout seconds=2",
    )
    assert repr(pipeline) == (
        "<Pipeline 'checkout': fallback alternatives=1 -> retry 'r' max_attempts=4 "
        "strategy=EXPONENTIAL -> circuit_breaker 'payments' failure_threshold=3 "
        "-> timeout seconds=2>"
    )
    assert repr(Pipeline()) == "<Pipeline: (no parts)>"


def test_nested_pipelines_and_plain_decorators_are_described() -> None:
    """A nested pipeline and a plain decorator function are described by name."""

    def logged(fn: Callable[..., Any]) -> Callable[..., Any]:
        return fn

    inner = Pipeline(retry(delay=0), name="inner")
    outer = Pipeline(logged, inner)
    assert outer.describe() == (
        f"{__name__}.test_nested_pipelines_and_plain_decorators_are_described.<locals>.logged",
        "pipeline 'inner' (1 parts)",
    )
    assert outer(lambda: 5)() == 5


def test_a_part_describing_itself_is_asked() -> None:
    """A part with ``describe_part()`` chooses its own description."""

    class Custom:
        def describe_part(self) -> str:
            return "custom thing"

        def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
            return fn

    assert Pipeline(Custom()).describe() == ("custom thing",)


def test_call_shares_one_wrapper_between_equal_bound_methods() -> None:
    """``obj.method`` read twice composes once: equal bound methods hit the cache."""
    built: list[object] = []

    def tracing(fn: Callable[..., Any]) -> Callable[..., Any]:
        built.append(fn)
        return fn

    class Client:
        def get(self, key: str) -> str:
            return key.upper()

    client = Client()
    pipeline = Pipeline(tracing)
    assert [pipeline.call(client.get, "a"), pipeline.call(client.get, "b")] == ["A", "B"]
    assert len(built) == 1


@pytest.mark.anyio
async def test_recommended_order_on_asyncio_and_trio(clock: ManualClock) -> None:
    """fallback > retry > breaker on both async backends: 3 attempts counted, error answered."""
    seen: dict[str, Any] = {}
    pipeline = Pipeline(_fallback(seen), _retry(seen, clock), _breaker(seen, clock))
    flaky = _failing(10)

    async def work() -> object:
        return flaky()

    assert await pipeline.acall(work) == "fallback"
    assert flaky.calls == 3
    assert _stats(seen).failed_calls == 3
    assert clock.sleeps == [1.0, 2.0]
