"""fallback(): alternatives, arguments, chains, filters, async, events and errors."""

from __future__ import annotations

import inspect
import logging

import pytest

from recoverly import retry
from recoverly.events import FallbackUsed
from recoverly.fallback import Fallback, FallbackStatistics, fallback
from recoverly.testing import FlakyCall


class Outage(Exception):
    """The primary's failure in these tests."""


def _down(*args, **kwargs):
    raise Outage("service down")


# ---------------------------------------------------------------- the seeds' examples
def test_seed_fallback_on_primary_failure():
    """The seeds' test: a failing primary is answered by the fallback."""

    def use_cached_data():
        return {"source": "cache"}

    @fallback(use_cached_data)
    def fetch_live_data():
        raise ConnectionError("api down")

    assert fetch_live_data() == {"source": "cache"}


def test_seed_fallback_with_arguments():
    """The seeds' test: the fallback receives the primary's arguments."""
    seen = []

    def local_model_fallback(features, *, scale=1):
        seen.append((features, scale))
        return sum(features) * scale

    @fallback(local_model_fallback)
    def predict(features, *, scale=1):
        raise ConnectionError("ml-api down")

    assert predict([1, 2, 3], scale=2) == 12
    assert seen == [([1, 2, 3], 2)]


def test_seed_no_fallback_when_primary_succeeds():
    """The seeds' test: a primary that succeeds never calls the fallback."""
    calls = []

    @fallback(lambda: calls.append("fallback"))
    def primary(x):
        return x * 2

    assert primary(21) == 42
    assert calls == []


def test_seed_file_operations_load_config(tmp_path, recoverly_clock):
    """The seeds' File Operations example: defaults after retries on a missing file."""

    def get_default_config():
        return {"debug": False, "timeout": 30, "max_retries": 3}

    opened = []

    @fallback(get_default_config)
    @retry(max_attempts=3, delay=0.5, exceptions=(IOError, OSError))
    def load_config(config_path: str) -> dict:
        opened.append(config_path)
        with open(config_path) as f:  # noqa: PTH123 - the seed's code
            return {"raw": f.read()}

    missing = str(tmp_path / "missing.json")
    assert load_config(missing) == get_default_config()
    assert opened == [missing] * 3
    assert recoverly_clock.sleeps == [0.5, 1.0]
    assert inspect.signature(load_config) == inspect.signature(load_config.__wrapped__)


# ---------------------------------------------------------------- alternatives
def test_plain_value_is_returned():
    """A non-callable alternative is returned as it is."""
    assert fallback([])(_down)("x") == []
    assert fallback(None)(_down)() is None


def test_zero_parameter_callable_gets_no_arguments():
    """An alternative without parameters is called bare, whatever the primary took."""
    got = fallback(lambda: "default")(_down)
    assert got(1, 2, key="v") == "default"


def test_exception_keyword_receives_the_original():
    """An alternative declaring `exception` receives the primary's exception."""
    seen = []

    def alt(path, *, exception):
        seen.append((path, exception))
        return "alt"

    @fallback(alt)
    def primary(path):
        raise Outage(path)

    assert primary("/a") == "alt"
    assert seen[0][0] == "/a"
    assert isinstance(seen[0][1], Outage)
    assert str(seen[0][1]) == "/a"


def test_exception_only_alternative_gets_just_the_exception():
    """`def alt(exception)` is called with the exception alone."""
    assert fallback(lambda exception: type(exception).__name__)(_down)(1, 2) == "Outage"


def test_builtin_without_signature_is_called_bare():
    """An alternative whose signature cannot be read (e.g. `dict`) is called bare."""
    assert fallback(dict)(_down)("ignored") == {}


def test_keyword_only_arguments_are_passed_on():
    """Keyword-only arguments of the primary reach an alternative that declares them."""

    def alt(*, region, retries=0):
        return f"{region}/{retries}"

    @fallback(alt)
    def primary(*, region, retries=0):
        raise Outage(region)

    assert primary(region="eu", retries=2) == "eu/2"


def test_methods_pass_self_to_a_matching_alternative():
    """On a method, an alternative with the same parameters receives `self` too."""

    class Client:
        def cached(self, key):
            return f"cached {key}"

        @fallback(cached)
        def get(self, key):
            raise Outage(key)

    assert Client().get("k") == "cached k"


# ---------------------------------------------------------------- filters and chains
def test_unmatched_exception_propagates_without_fallback(events):
    """An exception outside `exceptions` propagates and nothing is used."""
    policy = fallback("alt", exceptions=ConnectionError)

    @policy
    def primary():
        raise ValueError("bug")

    with pytest.raises(ValueError, match="bug"):
        primary()
    assert events == []
    assert policy.statistics() == FallbackStatistics(invoked=0, served=0, failed=0)


def test_predicate_filter_selects_exceptions():
    """A predicate `exceptions=` decides which failures fall back."""
    policy = fallback("alt", exceptions=lambda e: "transient" in str(e))

    def fail(msg):
        raise Outage(msg)

    assert policy(fail)("transient glitch") == "alt"
    with pytest.raises(Outage, match="permanent"):
        policy(fail)("permanent")


def test_keyboard_interrupt_never_falls_back():
    """KeyboardInterrupt propagates even with exceptions=BaseException."""

    @fallback("alt", exceptions=BaseException)
    def primary():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        primary()


def test_alternatives_in_one_call_are_tried_in_order():
    """fallback(a, b, value): a first, then b, then the value."""
    tried = []

    def a():
        tried.append("a")
        raise Outage("a down")

    def b():
        tried.append("b")
        raise Outage("b down")

    policy = fallback(a, b, "last resort")
    assert policy(_down)() == "last resort"
    assert tried == ["a", "b"]
    assert policy.statistics() == FallbackStatistics(invoked=3, served=1, failed=0)


def test_stacked_fallbacks_try_the_innermost_first():
    """Stacked decorators: the fallback nearest the function is tried first."""
    tried = []

    def inner():
        tried.append("inner")
        raise Outage("inner down")

    def outer():
        tried.append("outer")
        return "outer"

    @fallback(outer)
    @fallback(inner)
    def primary():
        tried.append("primary")
        raise Outage("primary down")

    assert primary() == "outer"
    assert tried == ["primary", "inner", "outer"]


def test_chain_stops_at_an_unmatched_alternative_error():
    """An alternative failing outside `exceptions` ends the chain with its error."""

    def a():
        raise KeyError("bug in a")

    with pytest.raises(KeyError):
        fallback(a, "never", exceptions=Outage)(_down)()


# ---------------------------------------------------------------- the original is kept
def test_error_in_alternative_keeps_original_as_context():
    """If the alternative fails, its error carries the original as __context__."""

    def broken_cache():
        raise LookupError("cache empty")

    policy = fallback(broken_cache)
    with pytest.raises(LookupError) as info:
        policy(_down)()
    assert isinstance(info.value.__context__, Outage)
    assert policy.statistics() == FallbackStatistics(invoked=1, served=0, failed=1)


def test_chain_errors_link_back_to_the_original():
    """When every alternative fails, the contexts chain back to the primary's error."""

    def a():
        raise LookupError("a")

    def b():
        raise RuntimeError("b")

    with pytest.raises(RuntimeError) as info:
        fallback(a, b)(_down)()
    assert isinstance(info.value.__context__, LookupError)
    assert isinstance(info.value.__context__.__context__, Outage)


def test_fallback_used_event_carries_the_original(events):
    """Each use emits FallbackUsed with the function's name and the exception."""
    policy = fallback("alt", name="prices")
    assert policy(_down)() == "alt"
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, FallbackUsed)
    assert event.name == "prices"
    assert isinstance(event.exception, Outage)


def test_fallback_is_logged_at_warning(caplog):
    """The default subscriber logs the failure and the fallback at WARNING."""

    @fallback("cached")
    def fetch_live_data():
        raise ConnectionError("Connection timeout")

    with caplog.at_level(logging.WARNING, logger="recoverly"):
        assert fetch_live_data() == "cached"
    [record] = [r for r in caplog.records if r.name == "recoverly"]
    assert record.levelno == logging.WARNING
    assert "fetch_live_data failed: ConnectionError - Connection timeout" in record.getMessage()
    assert "fallback" in record.getMessage()


# ---------------------------------------------------------------- async
@pytest.mark.anyio
async def test_async_primary_with_sync_alternative(anyio_backend):
    """An async primary may fall back to a sync alternative."""

    @fallback(lambda key: f"sync {key}")
    async def get(key):
        raise Outage(key)

    assert inspect.iscoroutinefunction(get)
    assert await get("k") == "sync k"


@pytest.mark.anyio
async def test_async_primary_with_async_alternative_gets_exception(anyio_backend):
    """An async alternative is awaited and may ask for the exception."""

    async def alt(key, *, exception):
        return f"async {key} after {exception}"

    @fallback(alt)
    async def get(key):
        raise Outage("boom")

    assert await get("k") == "async k after boom"


@pytest.mark.anyio
async def test_async_chain_and_context(anyio_backend):
    """Async chains try alternatives in order and keep the original as context."""

    async def a():
        raise LookupError("a")

    async def b():
        raise RuntimeError("b")

    async def primary():
        raise Outage("primary")

    assert await fallback(a, "value").acall(primary) == "value"
    with pytest.raises(RuntimeError) as info:
        await fallback(a, b).acall(primary)
    assert isinstance(info.value.__context__.__context__, Outage)


@pytest.mark.anyio
async def test_async_unmatched_exception_propagates(anyio_backend):
    """An async primary's exception outside `exceptions` propagates unchanged."""
    policy = fallback("alt", exceptions=ConnectionError)

    @policy
    async def primary():
        raise ValueError("bug")

    with pytest.raises(ValueError, match="bug"):
        await primary()
    assert policy.statistics().invoked == 0


@pytest.mark.anyio
async def test_async_success_passes_through(anyio_backend):
    """An async primary that succeeds returns its own result."""
    flaky = FlakyCall(failures=0, result="live")

    async def primary():
        return flaky()

    assert await fallback("cached")(primary)() == "live"
    assert flaky.calls == 1


# ---------------------------------------------------------------- call(), repr, stats
def test_call_runs_function_under_policy():
    """`.call(fn, *args)` falls back like the decorator and counts it."""
    policy = fallback(lambda x: -x)
    assert policy.call(_down, 5) == -5
    assert policy.call(abs, -3) == 3
    assert policy.statistics() == FallbackStatistics(invoked=1, served=1, failed=0)


def test_repr_shows_chain_filter_and_counters():
    """repr shows the name, the alternatives, the filter and the counters."""

    def cache():
        return 1

    policy = fallback(cache, 0, exceptions=(OSError, Outage), name="cfg")
    policy(_down)()
    text = repr(policy)
    assert text.startswith("<Fallback 'cfg' to=[")
    assert "cache" in text
    assert "exceptions=(OSError, Outage)" in text
    assert "invoked=1 served=1 failed=0" in text


def test_policy_has_slots_and_public_module():
    """Fallback objects have no __dict__ and report the public module."""
    assert not hasattr(fallback(1), "__dict__")
    assert Fallback.__module__ == FallbackStatistics.__module__ == "recoverly"
    assert fallback.__module__ == "recoverly"


# ---------------------------------------------------------------- validation
def test_sync_primary_with_async_alternative_is_rejected():
    """A sync function cannot fall back to an async alternative: TypeError at decoration."""

    async def alt():
        return 1

    with pytest.raises(TypeError, match=r"alternative .*alt is async but .*sync_primary"):

        @fallback(alt)
        def sync_primary():
            return 0

    with pytest.raises(TypeError, match="is async"):
        fallback(alt).call(_down)


def test_incompatible_alternative_is_rejected_at_decoration():
    """An alternative that cannot take the primary's arguments fails when decorating."""

    def alt(a, b):
        return a + b

    with pytest.raises(TypeError, match=r"cannot take the arguments of .*one_arg\(x\)"):

        @fallback(alt)
        def one_arg(x):
            return x


def test_value_before_more_alternatives_is_rejected():
    """A plain value that is not last makes later alternatives unreachable: ValueError."""
    with pytest.raises(ValueError, match=r"alternative #1 is the plain value 0"):
        fallback(0, lambda: 1)


def test_bad_exceptions_and_name_are_reported_together():
    """Bad `exceptions` and `name` are named with their values in one TypeError."""
    with pytest.raises(TypeError) as info:
        fallback("x", exceptions="OSError", name=3)
    assert "exceptions must be" in str(info.value)
    assert "'OSError'" in str(info.value)
    assert "name must be a string or None, got 3" in str(info.value)


def test_generator_functions_are_rejected():
    """Generator functions cannot be wrapped (the failure happens while iterating)."""

    def gen():
        yield 1

    with pytest.raises(TypeError, match="generator function"):
        fallback(0)(gen)
