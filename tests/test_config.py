"""Named configuration: recoverly.configure() and the strategies it hands out by name."""

from __future__ import annotations

import inspect
import sys
import threading
from pathlib import Path

import pytest

import recoverly
from recoverly import (
    Bulkhead,
    CircuitBreaker,
    CircuitBreakerError,
    CircuitState,
    RateLimiter,
    Retry,
    Timeout,
    registry,
)
from recoverly.config import NamedPipeline
from recoverly.stores import InMemoryBreakerStore

PAYMENTS = {
    "breakers": {"payments": {"failure_threshold": 2, "recovery_timeout": 30}},
    "retries": {"payments": {"max_attempts": 3, "delay": 0.2}},
    "timeouts": {"payments": {"seconds": 2.0}},
    "bulkheads": {"payments": {"max_concurrent": 4, "max_queue": 2}},
    "rate_limiters": {"payments": {"rate": 50, "per": 1}},
    "pipelines": {"payments": ["retry:payments", "breaker:payments", "timeout:payments"]},
}


def problems(exc: pytest.ExceptionInfo[BaseException]) -> list[str]:
    """Return the problem lines of a configuration error, without the heading."""
    heading, *lines = str(exc.value).splitlines()
    assert heading.startswith("invalid recoverly configuration (")
    return [line.strip() for line in lines]


class Flaky:
    """A callable failing ``failures`` times with ConnectionError, then returning 'ok'."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"failure {self.calls}")
        return "ok"


# ---------------------------------------------------------------- building from a dict
def test_dict_builds_every_kind_with_its_settings(clock):
    """configure(dict) builds each named strategy with the settings given."""
    recoverly.configure(PAYMENTS, clock=clock)
    breaker = recoverly.breaker("payments")
    assert isinstance(breaker, CircuitBreaker)
    assert breaker.name == "payments"
    assert breaker.config.failure_threshold == 2
    assert breaker.config.recovery_timeout == 30.0
    retry = recoverly.retry_policy("payments")
    assert isinstance(retry, Retry)
    assert (retry.max_attempts, retry.delay) == (3, 0.2)
    timeout = recoverly.timeout_policy("payments")
    assert isinstance(timeout, Timeout)
    assert timeout.seconds == 2.0
    bulkhead = recoverly.bulkhead_policy("payments")
    assert isinstance(bulkhead, Bulkhead)
    assert bulkhead.statistics().max_concurrent == 4
    assert isinstance(recoverly.rate_limiter("payments"), RateLimiter)
    assert recoverly.pipeline("payments").describe() == (
        "retry 'payments' max_attempts=3 strategy=EXPONENTIAL",
        "circuit_breaker 'payments' failure_threshold=2",
        "timeout 'payments' seconds=2",
    )


def test_named_strategies_are_listed_in_the_registry(clock):
    """Configured breakers, bulkheads and limiters appear in recoverly.registry listings."""
    recoverly.configure(PAYMENTS, clock=clock)
    assert registry.breakers()["payments"] is recoverly.breaker("payments")
    assert registry.bulkheads()["payments"] is recoverly.bulkhead_policy("payments")
    assert registry.limiters()["payments"] is recoverly.rate_limiter("payments")


def test_durations_are_parsed_from_strings(clock):
    """'500ms', '2s', '1.5m' and '1h' become seconds."""
    recoverly.configure(
        {
            "breakers": {"a": {"recovery_timeout": "1.5m", "max_recovery_timeout": "1h"}},
            "retries": {"a": {"delay": "500ms"}},
            "timeouts": {"a": "2s"},
        },
        clock=clock,
    )
    assert recoverly.breaker("a").config.recovery_timeout == 90.0
    assert recoverly.breaker("a").config.max_recovery_timeout == 3600.0
    assert recoverly.retry_policy("a").delay == 0.5
    assert recoverly.timeout_policy("a").seconds == 2.0


def test_defaults_apply_under_every_entry_and_entries_override_them(clock):
    """`defaults.<section>` settings fill every entry of the section unless it sets them."""
    recoverly.configure(
        {
            "defaults": {"breakers": {"failure_threshold": 7, "recovery_timeout": 5}},
            "breakers": {"a": {}, "b": {"failure_threshold": 2}},
        },
        clock=clock,
    )
    assert recoverly.breaker("a").config.failure_threshold == 7
    assert recoverly.breaker("b").config.failure_threshold == 2
    assert recoverly.breaker("b").config.recovery_timeout == 5.0


def test_bare_part_kind_means_the_pipelines_own_name(clock):
    """A part written as 'retry' refers to the retry named like the pipeline."""
    recoverly.configure(
        {"retries": {"search": {"max_attempts": 5}}, "pipelines": {"search": ["retry"]}},
        clock=clock,
    )
    assert recoverly.pipeline("search").current.parts == (recoverly.retry_policy("search"),)


def test_empty_mapping_clears_the_configuration(clock):
    """configure({}) leaves nothing configured."""
    recoverly.configure(PAYMENTS, clock=clock)
    recoverly.configure({})
    with pytest.raises(LookupError):
        recoverly.breaker("payments")


def test_unknown_names_raise_lookup_error_listing_configured_ones(clock):
    """Asking for a name that is not configured says which names are."""
    recoverly.configure(PAYMENTS, clock=clock)
    with pytest.raises(LookupError) as exc:
        recoverly.breaker("payment")
    assert str(exc.value) == (
        "no breaker named 'payment' is configured (breakers: payments); see recoverly.configure"
    )
    with pytest.raises(LookupError, match="no pipeline named 'x' is configured"):
        recoverly.pipeline("x")
    for lookup in (recoverly.retry_policy, recoverly.timeout_policy):
        with pytest.raises(LookupError, match="'nope'"):
            lookup("nope")
    with pytest.raises(LookupError, match=r"\(bulkheads: payments\)"):
        recoverly.bulkhead_policy("nope")
    with pytest.raises(LookupError, match=r"\(rate_limiters: payments\)"):
        recoverly.rate_limiter("nope")


def test_registry_reset_forgets_the_configuration(clock):
    """recoverly.registry.reset() clears the named configuration too."""
    recoverly.configure(PAYMENTS, clock=clock)
    registry.reset()
    with pytest.raises(LookupError, match=r"\(pipelines: none\)"):
        recoverly.pipeline("payments")


# ---------------------------------------------------------------- TOML and environment
def test_toml_file_is_read(tmp_path: Path, clock):
    """A path to a TOML file configures the same shape as a dict."""
    path = tmp_path / "resilience.toml"
    path.write_text(
        "[breakers.payments]\nfailure_threshold = 4\nrecovery_timeout = '10s'\n"
        "[retries.payments]\nmax_attempts = 2\n"
        "[timeouts]\npayments = 1.5\n"
        "[pipelines]\npayments = ['retry:payments', 'breaker:payments']\n",
        encoding="utf-8",
    )
    recoverly.configure(path, clock=clock)
    assert recoverly.breaker("payments").config.failure_threshold == 4
    assert recoverly.breaker("payments").config.recovery_timeout == 10.0
    assert recoverly.timeout_policy("payments").seconds == 1.5
    recoverly.configure(str(path), clock=clock)  # a str path works too
    assert recoverly.pipeline("payments").current.parts == (
        recoverly.retry_policy("payments"),
        recoverly.breaker("payments"),
    )


def test_invalid_toml_names_the_file(tmp_path: Path):
    """A TOML syntax error raises ValueError naming the file."""
    path = tmp_path / "bad.toml"
    path.write_text("[breakers\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{path} is not valid TOML: "):
        recoverly.configure(path)


def test_missing_toml_file_raises_file_not_found(tmp_path: Path):
    """A path that does not exist raises FileNotFoundError."""
    with pytest.raises(FileNotFoundError):
        recoverly.configure(tmp_path / "absent.toml")


def test_environment_variables_configure_every_kind(monkeypatch, clock):
    """PREFIX__SECTION__NAME__SETTING variables are parsed into typed settings."""
    for key, value in {
        "APP__BREAKER__PAYMENTS__FAILURE_THRESHOLD": "5",
        "APP__BREAKERS__PAYMENTS__FAILURE_RATE_THRESHOLD": "0.5",
        "APP__BREAKER__PAYMENTS__MAX_RECOVERY_TIMEOUT": "none",
        "APP__BREAKER__PAYMENTS__RECOVERY_TIMEOUT": "2s",
        "APP__RETRY__PAYMENTS_EU__DELAY": "500ms",
        "APP__RETRY__PAYMENTS_EU__JITTER": "yes",
        "APP__RETRY__PAYMENTS_EU__STRATEGY": "fixed",
        "APP__TIMEOUT__PAYMENTS": "1.5",
        "APP__DEFAULTS__BULKHEAD__MAX_QUEUE": "3",
        "APP__BULKHEAD__PAYMENTS__MAX_CONCURRENT": "8",
        "APP__PIPELINE__PAYMENTS": "retry:payments_eu, breaker:payments,timeout",
        "OTHER__BREAKER__X__FAILURE_THRESHOLD": "1",
    }.items():
        monkeypatch.setenv(key, value)
    recoverly.configure(env_prefix="APP", clock=clock)
    breaker = recoverly.breaker("payments")
    assert breaker.config.failure_threshold == 5
    assert breaker.config.failure_rate_threshold == 0.5
    assert breaker.config.max_recovery_timeout is None
    assert breaker.config.recovery_timeout == 2.0
    retry = recoverly.retry_policy("payments_eu")
    assert retry.delay == 0.5
    assert retry.jitter == 0.5  # True means the default jitter share
    assert retry.strategy.name == "FIXED"
    assert recoverly.timeout_policy("payments").seconds == 1.5
    assert recoverly.bulkhead_policy("payments").statistics().max_queue == 3
    assert recoverly.pipeline("payments").current.parts == (
        retry,
        breaker,
        recoverly.timeout_policy("payments"),
    )
    with pytest.raises(LookupError):
        recoverly.breaker("x")


def test_environment_overrides_the_mapping(monkeypatch, clock):
    """Environment variables win over the mapping, setting by setting."""
    monkeypatch.setenv("RECOVERLY__BREAKER__PAYMENTS__FAILURE_THRESHOLD", "9")
    monkeypatch.setenv("RECOVERLY__PIPELINE__PAYMENTS", "breaker")
    recoverly.configure(PAYMENTS, env_prefix="RECOVERLY", clock=clock)
    assert recoverly.breaker("payments").config.failure_threshold == 9
    assert recoverly.breaker("payments").config.recovery_timeout == 30.0
    assert recoverly.pipeline("payments").current.parts == (recoverly.breaker("payments"),)


def test_bad_environment_variables_are_reported_by_name(monkeypatch):
    """Malformed or conflicting variables are listed with their names."""
    monkeypatch.setenv("APP__BREAKER", "1")
    monkeypatch.setenv("APP__TIMEOUT__A", "2")
    monkeypatch.setenv("APP__TIMEOUT__A__SECONDS", "3")
    monkeypatch.setenv("APP__BREAKER__B__FAILURE_THRESHOLD", "zero")
    with pytest.raises(TypeError) as exc:
        recoverly.configure(env_prefix="APP")
    assert problems(exc) == [
        "$APP__BREAKER: expected PREFIX__SECTION__NAME[__SETTING]",
        "$APP__TIMEOUT__A__SECONDS: conflicts with a value set for 'a'",
        "breakers.b.failure_threshold: must be an integer >= 1, got 'zero'",
    ]


# ---------------------------------------------------------------- errors
def test_every_problem_is_reported_at_once_with_its_key_path():
    """One error lists unknown sections and settings, bad values, and bad references."""
    with pytest.raises(TypeError) as exc:
        recoverly.configure(
            {
                "breaker": {},
                "breakers": {
                    "payments": {"failure_treshold": 5, "recovery_timeout": -1},
                    "search": 3,
                },
                "retries": {"payments": {"max_attempts": 0, "colour": "red"}},
                "bulkheads": {"db": {"max_queue": 1}},
                "pipelines": {"payments": ["retri:payments", "breaker:nope"], "odd": "retry"},
            }
        )
    assert problems(exc) == [
        "breaker: unknown section (did you mean breakers?), got {}",
        (
            "breakers.payments.failure_treshold: unknown setting "
            "(did you mean failure_threshold?), got 5"
        ),
        "breakers.search: must be a table of settings, got 3",
        (
            "retries.payments.colour: unknown setting (known: max_attempts, delay, backoff, "
            "jitter, exceptions, strategy, max_delay, on_retry, retry_on_result, giveup, "
            "deadline, budget, random), got 'red'"
        ),
        "pipelines.odd: must be a list of parts such as ['retry:odd', 'breaker:odd'], got 'retry'",
        "breakers.payments.recovery_timeout: must be a finite number of seconds >= 0, got -1",
        "retries.payments.max_attempts: must be an integer >= 1, got 0",
        "bulkheads.db.max_concurrent: required setting is missing",
        "pipelines.payments[0]: unknown part kind (did you mean retry?), got 'retri:payments'",
        (
            "pipelines.payments[1]: no breaker named 'nope' is configured "
            "(breakers: payments), got 'breaker:nope'"
        ),
    ]


def test_range_problems_alone_raise_value_error():
    """When no problem is a wrong type, the error is a ValueError."""
    with pytest.raises(ValueError) as exc:
        recoverly.configure({"timeouts": {"a": 0}, "rate_limiters": {"b": {"rate": -1}}})
    assert problems(exc) == [
        "timeouts.a.seconds: must be a finite number of seconds > 0, got 0",
        "rate_limiters.b.rate: must be a finite number > 0, got -1",
    ]


def test_bad_names_and_bad_defaults_are_reported():
    """Section tables, names and defaults are checked as well."""
    with pytest.raises(TypeError) as exc:
        recoverly.configure(
            {
                "retries": ["a"],
                "breakers": {"a:b": {}, "": {}},
                "defaults": {"pipelines": {}, "timeouts": 3, "breakers": {"treshold": 1}},
            }
        )
    assert problems(exc) == [
        (
            "defaults.pipelines: unknown section (known: breakers, retries, timeouts, bulkheads, "
            "rate_limiters, budgets, hedges, throttles, chaos), got {}"
        ),
        "defaults.timeouts: must be a table of settings, got 3",
        "defaults.breakers.treshold: unknown setting (did you mean failure_threshold?), got 1",
        "breakers: names must be non-empty strings without ':', got 'a:b'",
        "breakers: names must be non-empty strings without ':', got ''",
        "retries: must be a table of names, got ['a']",
    ]


def test_defaults_must_be_a_table():
    """A defaults value that is not a table is reported."""
    with pytest.raises(TypeError) as exc:
        recoverly.configure({"defaults": 1})
    assert problems(exc) == ["defaults: must be a table of sections, got 1"]


def test_wrong_source_and_prefix_types_raise_type_error():
    """configure() refuses a source that is neither a mapping nor a path, and a bad prefix."""
    with pytest.raises(TypeError, match=r"configure\(\) takes a mapping, a path .*got 3"):
        recoverly.configure(3)
    with pytest.raises(TypeError, match="env_prefix must be a non-empty string or None, got ''"):
        recoverly.configure({}, env_prefix="")


def test_a_bad_reconfiguration_changes_nothing(clock):
    """After a failed configure(), every name still gives the objects and settings from before."""
    recoverly.configure(PAYMENTS, clock=clock)
    before = {
        "breaker": recoverly.breaker("payments"),
        "retry": recoverly.retry_policy("payments"),
        "bulkhead": recoverly.bulkhead_policy("payments"),
        "limiter": recoverly.rate_limiter("payments"),
    }
    bad = {
        **PAYMENTS,
        "breakers": {"payments": {"failure_threshold": 9}, "new": {}},
        "bulkheads": {"payments": {"max_concurrent": 1}},
        "rate_limiters": {"payments": {"rate": 1}},
        "retries": {"payments": {"max_attempts": -1}},
    }
    with pytest.raises(ValueError, match=r"retries\.payments\.max_attempts"):
        recoverly.configure(bad, clock=clock)
    assert recoverly.breaker("payments") is before["breaker"]
    assert before["breaker"].config.failure_threshold == 2
    assert recoverly.retry_policy("payments") is before["retry"]
    assert recoverly.bulkhead_policy("payments") is before["bulkhead"]
    assert registry.bulkheads()["payments"] is before["bulkhead"]
    assert registry.limiters()["payments"] is before["limiter"]
    assert "new" not in registry.breakers()
    with pytest.raises(LookupError):
        recoverly.breaker("new")


def test_a_warning_raised_as_error_while_building_changes_nothing(clock):
    """A constructor warning turned into an error (filterwarnings=error) aborts cleanly."""
    recoverly.configure(PAYMENTS, clock=clock)
    bulkhead = recoverly.bulkhead_policy("payments")
    own = RateLimiter(10, name="mine")  # the configuration below reuses its name: a warning
    bad = {
        "bulkheads": {"payments": {"max_concurrent": 1}},  # replaced before the limiter warns
        "rate_limiters": {"mine": {"rate": 5}},
    }
    with pytest.raises(UserWarning, match="another live RateLimiter is named 'mine'"):
        recoverly.configure(bad, clock=clock)
    assert recoverly.bulkhead_policy("payments") is bulkhead
    assert registry.bulkheads()["payments"] is bulkhead
    assert registry.limiters()["mine"] is own
    with pytest.raises(LookupError):
        recoverly.rate_limiter("mine")


# ---------------------------------------------------------------- reconfiguration
def test_reconfiguring_keeps_an_open_breaker_open(clock):
    """A breaker that stays configured keeps its state and takes the new settings in place."""
    recoverly.configure(PAYMENTS, clock=clock)
    breaker = recoverly.breaker("payments")
    failing = Flaky(failures=10)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(failing)
    assert breaker.state is CircuitState.OPEN
    recoverly.configure(
        {"breakers": {"payments": {"failure_threshold": 5, "recovery_timeout": 60}}}, clock=clock
    )
    assert recoverly.breaker("payments") is breaker
    assert breaker.state is CircuitState.OPEN
    assert breaker.config.failure_threshold == 5
    with pytest.raises(CircuitBreakerError):
        breaker.call(failing)
    assert failing.calls == 2
    clock.advance(30)  # the running OPEN period keeps the deadline it was opened with
    assert breaker.state is CircuitState.HALF_OPEN
    with pytest.raises(ConnectionError):
        breaker.call(failing)
    assert breaker.statistics().retry_after == 60.0  # the next opening uses the new timeout


def test_reconfiguring_keeps_the_consecutive_failure_count(clock):
    """Counted failures survive a settings change; the new threshold applies to them."""
    recoverly.configure({"breakers": {"db": {"failure_threshold": 5}}}, clock=clock)
    breaker = recoverly.breaker("db")
    failing = Flaky(failures=10)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(failing)
    recoverly.configure({"breakers": {"db": {"failure_threshold": 3}}}, clock=clock)
    assert breaker.failure_count == 2
    with pytest.raises(ConnectionError):
        breaker.call(failing)
    assert breaker.state is CircuitState.OPEN


def test_reconfiguring_replaces_the_window_only_when_its_shape_changes(clock):
    """The sliding window keeps its calls unless the window type or size changes."""
    settings = {"failure_rate_threshold": 0.5, "sliding_window_size": 10, "minimum_calls": 5}
    recoverly.configure({"breakers": {"db": settings}}, clock=clock)
    breaker = recoverly.breaker("db")
    for _ in range(3):
        breaker.call(lambda: None)
    recoverly.configure(
        {"breakers": {"db": {**settings, "failure_rate_threshold": 0.9}}}, clock=clock
    )
    assert breaker.statistics().window_calls == 3
    recoverly.configure({"breakers": {"db": {**settings, "sliding_window_size": 20}}}, clock=clock)
    assert breaker.statistics().window_calls == 0
    assert breaker.config.window_size == 20


def test_adopting_settings_needs_a_store_that_can_change_them():
    """CircuitBreaker._adopt_settings refuses a store without in-place reconfiguration."""

    class FixedStore(InMemoryBreakerStore):
        __slots__ = ()
        _reconfigure = None

    breaker = CircuitBreaker(failure_threshold=3, store=FixedStore())
    with pytest.raises(TypeError, match="cannot change settings in place"):
        breaker._adopt_settings(CircuitBreaker(failure_threshold=1))
    assert breaker.config.failure_threshold == 3


def test_bulkheads_are_kept_when_unchanged_and_replaced_when_changed(clock):
    """An unchanged bulkhead is the same object; a changed one is new and listed instead."""
    recoverly.configure(PAYMENTS, clock=clock)
    first = recoverly.bulkhead_policy("payments")
    limiter = recoverly.rate_limiter("payments")
    recoverly.configure(PAYMENTS, clock=clock)
    assert recoverly.bulkhead_policy("payments") is first
    assert recoverly.rate_limiter("payments") is limiter
    changed = {**PAYMENTS, "bulkheads": {"payments": {"max_concurrent": 1}}}
    recoverly.configure(changed, clock=clock)
    second = recoverly.bulkhead_policy("payments")
    assert second is not first
    assert second.statistics().max_concurrent == 1
    assert registry.bulkheads()["payments"] is second
    assert recoverly.rate_limiter("payments") is limiter


def test_an_integer_setting_given_as_float_is_checked_again(clock):
    """5.0 is not taken as 'unchanged' from 5: it is validated and refused."""
    recoverly.configure({"breakers": {"a": {"failure_threshold": 5}}}, clock=clock)
    with pytest.raises(TypeError, match=r"breakers\.a\.failure_threshold: must be an integer"):
        recoverly.configure({"breakers": {"a": {"failure_threshold": 5.0}}}, clock=clock)


# ---------------------------------------------------------------- pipelines by name
def test_named_pipeline_runs_sync_calls_through_its_parts(clock):
    """A function decorated with a named pipeline is retried and counted by the breaker."""
    recoverly.configure(PAYMENTS, clock=clock)
    flaky = Flaky(failures=1)

    @recoverly.pipeline("payments")
    def charge() -> str:
        return flaky()

    assert charge() == "ok"
    assert flaky.calls == 2
    assert clock.sleeps == [0.2]
    assert recoverly.breaker("payments").statistics().failed_calls == 1
    assert recoverly.pipeline("payments").call(flaky) == "ok"


def test_named_pipeline_follows_a_reconfiguration(clock):
    """A function decorated once uses the new parts after configure() changes them."""
    recoverly.configure(PAYMENTS, clock=clock)
    flaky = Flaky(failures=4)

    @recoverly.pipeline("payments")
    def charge() -> str:
        return flaky()

    with pytest.raises(CircuitBreakerError):
        charge()  # two failures open the breaker; the third attempt is rejected
    assert flaky.calls == 2
    recoverly.configure(
        {
            "breakers": {"payments": {"failure_threshold": 10}},
            "retries": {"payments": {"max_attempts": 5, "delay": 0}},
            "pipelines": {"payments": ["retry", "breaker"]},
        },
        clock=clock,
    )
    recoverly.breaker("payments").reset()
    assert charge() == "ok"
    assert flaky.calls == 5
    recoverly.configure({}, clock=clock)
    with pytest.raises(LookupError, match="no pipeline named 'payments'"):
        charge()


@pytest.mark.anyio
async def test_named_pipeline_runs_async_calls(clock):
    """An async function keeps its kind and is retried through the configured pipeline."""
    recoverly.configure(PAYMENTS, clock=clock)
    flaky = Flaky(failures=1)

    @recoverly.pipeline("payments")
    async def charge() -> str:
        return flaky()

    assert inspect.iscoroutinefunction(charge)
    assert await charge() == "ok"
    assert flaky.calls == 2
    assert clock.sleeps == [0.2]

    async def direct() -> str:
        return flaky()

    assert await recoverly.pipeline("payments").acall(direct) == "ok"


def test_named_pipeline_repr_and_describe(clock):
    """repr shows the name and the current parts, or that the name is gone."""
    recoverly.configure({"retries": {"a": {}}, "pipelines": {"a": ["retry"]}}, clock=clock)
    named = recoverly.pipeline("a")
    assert isinstance(named, NamedPipeline)
    assert repr(named) == "<NamedPipeline 'a': retry 'a' max_attempts=3 strategy=EXPONENTIAL>"
    assert named.describe_part() == "configured pipeline 'a'"
    recoverly.configure({"pipelines": {"a": []}})
    assert repr(named) == "<NamedPipeline 'a': (no parts)>"
    recoverly.configure({})
    assert repr(named) == "<NamedPipeline 'a': (not configured)>"


def test_named_pipeline_refuses_generator_functions(clock):
    """Decorating a generator function raises TypeError, as Pipeline does."""
    recoverly.configure({"pipelines": {"a": []}}, clock=clock)

    def gen():
        yield 1

    with pytest.raises(TypeError):
        recoverly.pipeline("a")(gen)


def test_concurrent_reconfiguration_and_calls_stay_consistent(clock):
    """Threads reconfiguring while others call always see one whole configuration."""
    configs = [
        {"retries": {"p": {"max_attempts": n, "delay": 0}}, "pipelines": {"p": ["retry"]}}
        for n in (1, 2)
    ]
    recoverly.configure(configs[0], clock=clock)
    errors: list[BaseException] = []

    def reconfigure() -> None:
        for i in range(40):
            recoverly.configure(configs[i % 2], clock=clock)

    def call() -> None:
        named = recoverly.pipeline("p")
        try:
            for _ in range(200):
                assert named.call(lambda: 1) == 1
                assert len(named.current.parts) == 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reconfigure) for _ in range(2)]
    threads += [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert recoverly.retry_policy("p").max_attempts in (1, 2)


def test_toml_without_a_parser_names_tomli(monkeypatch, tmp_path: Path):
    """Without a TOML parser (Python 3.10, no tomli), reading a file says to install tomli."""
    monkeypatch.setitem(sys.modules, "tomllib", None)
    monkeypatch.setitem(sys.modules, "tomli", None)
    path = tmp_path / "a.toml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(
        ImportError, match=r"needs a TOML parser on Python 3\.10: pip install tomli"
    ):
        recoverly.configure(path)
