"""Retry benchmarks: recoverly against a hand-written floor, tenacity, backoff, stamina.

Three paths, sync and async:

* ``ok``: the wrapped function succeeds at once (the path almost every call takes);
* ``fail``: the wrapped function fails on every odd call, so each decorated call
  is one failure, a zero wait and one success;
* events: what the event bus costs when nobody (or somebody else) listens.

Every library is configured for 3 attempts and, on the failure path, zero wait.
Logging and hooks are off in the main cases (recoverly's default ``log_event``
subscriber is removed by ``run.py``; stamina's on-retry hooks are emptied), so the
cases compare retry machinery; ``fail.recoverly+log`` shows recoverly's default
logging subscriber on top (records go to a ``NullHandler``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from itertools import repeat
from typing import Any

import backoff
import stamina
import tenacity

import recoverly
from _harness import (
    Case,
    afn,
    async_probe,
    async_runner,
    fn,
    sync_probe,
    sync_runner,
)
from recoverly import events
from recoverly._core.bus import BUS, EventBus
from recoverly.events import RetryScheduled, TimedOut

__all__ = ["cases", "count_bus_checks"]

ATTEMPTS = 3


# ---------------------------------------------------------------- the floors
def floor_retry(f: Callable[..., Any], attempts: int = ATTEMPTS, delay: float = 0.0) -> Any:
    """The least a hand-written retry decorator does."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        attempt = 1
        while True:
            try:
                return f(*args, **kwargs)
            except Exception:
                if attempt >= attempts:
                    raise
            attempt += 1
            if delay:
                time.sleep(delay)

    return wrapper


def afloor_retry(
    f: Callable[..., Awaitable[Any]], attempts: int = ATTEMPTS, delay: float = 0.0
) -> Any:
    """The least a hand-written async retry decorator does."""
    import asyncio  # noqa: PLC0415 - only the async floor needs it

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        attempt = 1
        while True:
            try:
                return await f(*args, **kwargs)
            except Exception:
                if attempt >= attempts:
                    raise
            attempt += 1
            if delay:
                await asyncio.sleep(delay)

    return wrapper


# ---------------------------------------------------------------- flaky functions
def make_flaky() -> Callable[[int], int]:
    """Return ``f(x) = x + 1`` that raises ``ValueError`` on every odd call."""
    count = [0]

    def flaky(x: int) -> int:
        count[0] += 1
        if count[0] & 1:
            raise ValueError("odd call")
        return x + 1

    return flaky


def make_aflaky() -> Callable[[int], Awaitable[int]]:
    """Async twin of :func:`make_flaky`."""
    count = [0]

    async def aflaky(x: int) -> int:
        count[0] += 1
        if count[0] & 1:
            raise ValueError("odd call")
        return x + 1

    return aflaky


def _zero_wait() -> Any:
    """A backoff wait generator that always waits 0 s."""
    while True:
        yield 0


# ---------------------------------------------------------------- decorators
def _decorators(*, fail: bool) -> dict[str, Callable[[Callable[..., Any]], Any]]:
    """Each library's decorator, configured for 3 attempts (zero wait when ``fail``)."""
    if fail:
        return {
            "floor": floor_retry,
            "recoverly": recoverly.retry(max_attempts=ATTEMPTS, delay=0),
            "tenacity": tenacity.retry(
                stop=tenacity.stop_after_attempt(ATTEMPTS), wait=tenacity.wait_none()
            ),
            "backoff": backoff.on_exception(_zero_wait, Exception, max_tries=ATTEMPTS, jitter=None),
            "stamina": stamina.retry(
                on=Exception, attempts=ATTEMPTS, wait_initial=0, wait_max=0, wait_jitter=0
            ),
        }
    return {
        "floor": floor_retry,
        "recoverly": recoverly.retry(max_attempts=ATTEMPTS, delay=0),
        "tenacity": tenacity.retry(stop=tenacity.stop_after_attempt(ATTEMPTS)),
        "backoff": backoff.on_exception(backoff.expo, Exception, max_tries=ATTEMPTS),
        "stamina": stamina.retry(on=Exception, attempts=ATTEMPTS),
    }


def _adecorators(*, fail: bool) -> dict[str, Callable[[Callable[..., Any]], Any]]:
    decorators = _decorators(fail=fail)
    decorators["floor"] = afloor_retry
    return decorators


_LABELS = {
    "floor": "hand-written floor",
    "recoverly": "recoverly.retry",
    "tenacity": "tenacity @retry",
    "backoff": "backoff.on_exception",
    "stamina": "stamina.retry",
}


def _subscribe_log() -> None:
    events.subscribe(events.log_event, (RetryScheduled, events.RetrySucceeded))


def _unsubscribe_log() -> None:
    events.unsubscribe(events.log_event)


def _unrelated(_event: object) -> None:
    """A subscriber for an event type retry never emits."""


def _subscribe_unrelated() -> None:
    events.subscribe(_unrelated, TimedOut)


def _unsubscribe_unrelated() -> None:
    events.unsubscribe(_unrelated)


def _wants_loop(n: int) -> None:
    wants = BUS.wants
    for _ in repeat(None, n):
        wants(RetryScheduled)


def _check_then_emit_loop(n: int) -> None:
    # What a strategy writes around an event it might emit.
    for _ in repeat(None, n):
        if BUS.wants(RetryScheduled):
            BUS.emit(RetryScheduled("f", 1, None, 0.0))


# ---------------------------------------------------------------- cases
def cases() -> list[Case]:
    """Every retry case (the bare-call baselines come from ``_harness.base_cases``)."""
    out: list[Case] = []
    for lib, deco in _decorators(fail=False).items():
        wrapped = deco(fn)
        out.append(
            Case(
                f"retry.ok.{lib}",
                "retry, success path (sync)",
                _LABELS[lib],
                sync_runner(wrapped),
                sync_probe(wrapped),
                baseline="bare",
            )
        )
    for lib, deco in _decorators(fail=True).items():
        wrapped = deco(make_flaky())
        out.append(
            Case(
                f"retry.fail.{lib}",
                "retry, one failure then success, zero wait (sync)",
                _LABELS[lib],
                sync_runner(wrapped),
                sync_probe(wrapped),
                baseline="bare",
            )
        )
    logged = recoverly.retry(max_attempts=ATTEMPTS, delay=0)(make_flaky())
    out.append(
        Case(
            "retry.fail.recoverly+log",
            "retry, one failure then success, zero wait (sync)",
            "recoverly.retry + default log subscriber",
            sync_runner(logged),
            sync_probe(logged),
            baseline="bare",
            setup=_subscribe_log,
            teardown=_unsubscribe_log,
            note="log records go to a NullHandler; tenacity, backoff and stamina log nothing here",
        )
    )
    for lib, deco in _adecorators(fail=False).items():
        wrapped = deco(afn)
        out.append(
            Case(
                f"aretry.ok.{lib}",
                "retry, success path (async)",
                _LABELS[lib],
                async_runner(wrapped),
                async_probe(wrapped),
                baseline="bare.async",
                is_async=True,
            )
        )
    for lib, deco in _adecorators(fail=True).items():
        wrapped = deco(make_aflaky())
        out.append(
            Case(
                f"aretry.fail.{lib}",
                "retry, one failure then success, zero wait (async)",
                _LABELS[lib],
                async_runner(wrapped),
                async_probe(wrapped),
                baseline="bare.async",
                is_async=True,
            )
        )
    out.extend(_event_cases())
    return out


def _event_cases() -> list[Case]:
    ok = recoverly.retry(max_attempts=ATTEMPTS, delay=0)(fn)
    flaky = recoverly.retry(max_attempts=ATTEMPTS, delay=0)(make_flaky())
    group = "events, nobody subscribed"
    return [
        Case(
            "events.wants",
            group,
            "BUS.wants(RetryScheduled)",
            _wants_loop,
            lambda: BUS.wants(RetryScheduled),
            expected=False,
            baseline="loop",
        ),
        Case(
            "events.check",
            group,
            "if BUS.wants(E): BUS.emit(E(...))",
            _check_then_emit_loop,
            lambda: BUS.wants(RetryScheduled),
            expected=False,
            baseline="loop",
        ),
        Case(
            "events.ok.unrelated",
            group,
            "recoverly.retry ok, unrelated subscriber",
            sync_runner(ok),
            sync_probe(ok),
            baseline="bare",
            setup=_subscribe_unrelated,
            teardown=_unsubscribe_unrelated,
        ),
        Case(
            "events.fail.unrelated",
            group,
            "recoverly.retry 1 failure, unrelated subscriber",
            sync_runner(flaky),
            sync_probe(flaky),
            baseline="bare",
            setup=_subscribe_unrelated,
            teardown=_unsubscribe_unrelated,
        ),
    ]


def count_bus_checks(call: Callable[[], object], calls: int = 10) -> float:
    """Return the ``BUS.wants`` checks per ``call()`` in steady state (untimed).

    One warm-up call runs first, so work done once (a first-call cache fill) is
    not counted; then ``calls`` calls are counted and averaged.
    """
    call()
    original = EventBus.wants
    seen = [0]

    def counting(self: EventBus, kind: type) -> bool:
        seen[0] += 1
        return original(self, kind)

    EventBus.wants = counting  # type: ignore[method-assign]
    try:
        for _ in range(calls):
            call()
    finally:
        EventBus.wants = original  # type: ignore[method-assign]
    return seen[0] / calls
