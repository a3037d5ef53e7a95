"""Classifying callables once at decoration time."""

from __future__ import annotations

import functools

from recoverly._core.callables import Kind, guess_name, is_async_callable, kind_of


async def coro(x):
    return x


def plain(x):
    return x


def gen():
    yield 1


async def agen():
    yield 1


class AsyncCallable:
    async def __call__(self):
        return 1


def test_kinds_are_detected():
    """Functions, coroutine functions and both generator kinds are told apart."""
    assert kind_of(plain) is Kind.SYNC
    assert kind_of(coro) is Kind.ASYNC
    assert kind_of(gen) is Kind.GENERATOR
    assert kind_of(agen) is Kind.ASYNC_GENERATOR


def test_partials_and_async_call_objects_are_async():
    """partial(coroutine function) and objects with async __call__ count as async."""
    assert is_async_callable(functools.partial(coro, 1))
    assert is_async_callable(AsyncCallable())
    assert not is_async_callable(functools.partial(plain, 1))
    assert not is_async_callable(print)


def test_guess_name_is_dotted():
    """Names include the module unless it is builtins or __main__."""
    assert guess_name(plain) == f"{__name__}.plain"
    assert guess_name(functools.partial(plain, 1)) == f"{__name__}.plain"
    assert guess_name(len) == "len"
    assert guess_name(AsyncCallable()) == f"{__name__}.AsyncCallable"


def test_decoratable_kind_refuses_generators_naming_the_strategy():
    """Generator functions are refused with the strategy's name in the message."""
    import pytest

    from recoverly._core.callables import decoratable_kind

    assert decoratable_kind("retry", coro) is Kind.ASYNC
    with pytest.raises(TypeError, match="timeout cannot wrap the generator function"):
        decoratable_kind("timeout", gen)
    with pytest.raises(TypeError, match="fallback cannot wrap the async generator function"):
        decoratable_kind("fallback", agen)


def test_wrap_hands_calls_to_the_driver_of_the_right_kind():
    """wrap() keeps the kind and forwards label, function and arguments to the driver."""
    import asyncio
    import inspect

    from recoverly._core.callables import wrap

    seen = []

    def drive(label, fn, args, kwargs):
        seen.append((label, fn, args, kwargs))
        return fn(*args, **kwargs)

    async def adrive(label, fn, args, kwargs):
        seen.append((label, fn, args, kwargs))
        return await fn(*args, **kwargs)

    sync_wrapped = wrap(plain, Kind.SYNC, "p", drive, adrive)
    async_wrapped = wrap(coro, Kind.ASYNC, "c", drive, adrive)
    assert sync_wrapped(3) == 3
    assert inspect.iscoroutinefunction(async_wrapped)
    assert asyncio.run(async_wrapped(x=4)) == 4
    assert seen == [("p", plain, (3,), {}), ("c", coro, (), {"x": 4})]
    assert sync_wrapped.__wrapped__ is plain
