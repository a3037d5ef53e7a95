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
