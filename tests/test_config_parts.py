"""Named configuration of budgets, hedges, adaptive throttles and chaos parts."""

from __future__ import annotations

import asyncio
import http.client
import inspect
from pathlib import Path

import pytest

import recoverly
from recoverly import AdaptiveThrottle, Hedge, RetryBudget, ThrottledError, chaos, registry
from recoverly.chaos import Fault, Latency, Outcome
from recoverly.testing import ManualClock

PARTS = {
    "budgets": {"api": {"ratio": 0.5, "min_per_second": 0, "window": "10s", "buckets": 5}},
    "retries": {"orders": {"max_attempts": 3, "delay": 0, "budget": "api"}},
    "hedges": {"orders": {"delay": "20ms", "max_hedged": 2, "budget": "api"}},
    "throttles": {"orders": {"k": 3, "window": "1m", "buckets": 6}},
    "chaos": {
        "gateway": {
            "type": "fault",
            "rate": 0.25,
            "exception": "http.client.RemoteDisconnected",
            "message": "injected",
            "seed": 7,
        },
        "slow": {"type": "latency", "rate": 1, "seconds": "2s"},
        "canned": {"type": "outcome", "rate": 1, "value": "2s"},
    },
    "pipelines": {"orders": ["throttle", "retry", "hedge", "chaos:gateway"]},
}


def problems(exc: pytest.ExceptionInfo[BaseException]) -> list[str]:
    """Return the problem lines of a configuration error, without the heading."""
    heading, *lines = str(exc.value).splitlines()
    assert heading.startswith("invalid recoverly configuration (")
    return [line.strip() for line in lines]


def refuse(n: int, throttle: AdaptiveThrottle) -> None:
    """Make ``n`` calls through ``throttle`` that the backend refuses."""

    def refused() -> None:
        raise ConnectionError("overloaded")

    for _ in range(n):
        with pytest.raises(ConnectionError):
            throttle.call(refused)


def injects(fault: object) -> bool:
    """Call a no-op through ``fault``; return whether it raised the configured exception."""
    assert isinstance(fault, Fault)
    try:
        fault(lambda: None)()
    except http.client.RemoteDisconnected:
        return True
    return False


def never_refuse_locally() -> float:
    """A throttle dice roll that never falls under the rejection probability."""
    return 0.999999


# ---------------------------------------------------------------- building from a dict
def test_dict_builds_budgets_hedges_throttles_and_chaos_parts(clock):
    """Each new section builds its object with the settings given (durations parsed)."""
    recoverly.configure(PARTS, clock=clock)
    budget = recoverly.retry_budget("api")
    assert isinstance(budget, RetryBudget)
    assert (budget.ratio, budget.min_per_second, budget.window, budget.buckets) == (
        0.5,
        0.0,
        10.0,
        5,
    )
    hedge = recoverly.hedge_policy("orders")
    assert isinstance(hedge, Hedge)
    assert (hedge.name, hedge.delay, hedge.max_hedged) == ("orders", 0.02, 2)
    throttle = recoverly.throttle_policy("orders")
    assert isinstance(throttle, AdaptiveThrottle)
    assert (throttle.name, throttle.k, throttle.window) == ("orders", 3.0, 60.0)
    fault = recoverly.chaos_policy("gateway")
    assert isinstance(fault, Fault)
    assert (fault.name, fault.rate, fault.seed, fault.enabled) == ("gateway", 0.25, 7, None)
    latency = recoverly.chaos_policy("slow")
    assert isinstance(latency, Latency)
    assert latency.seconds == 2.0
    assert isinstance(recoverly.chaos_policy("canned"), Outcome)
    assert recoverly.pipeline("orders").describe() == (
        "adaptive_throttle 'orders' k=3 window=60 release_window=7.5",
        "retry 'orders' max_attempts=3 strategy=EXPONENTIAL",
        "hedge 'orders' delay=0.02 max_hedged=2 budget",
        "chaos.fault 'gateway' rate=0.25 exception=http.client.RemoteDisconnected",
    )


def test_retries_and_hedges_naming_a_budget_share_one_object(clock):
    """`"budget": "api"` gives every retry and hedge that names it the same RetryBudget."""
    recoverly.configure(
        {
            **PARTS,
            "retries": {"a": {"budget": "api"}, "b": {"budget": "api"}, "c": {}},
            "pipelines": {},
        },
        clock=clock,
    )
    budget = recoverly.retry_budget("api")
    assert recoverly.retry_policy("a").budget is budget
    assert recoverly.retry_policy("b").budget is budget
    assert recoverly.retry_policy("c").budget is None
    assert recoverly.hedge_policy("orders").budget is budget


def test_a_budget_object_given_from_python_is_used_as_is(clock):
    """From Python, a retry's budget may be a RetryBudget instead of a name."""
    own = RetryBudget(ratio=0.1)
    recoverly.configure({"retries": {"a": {"budget": own}}}, clock=clock)
    assert recoverly.retry_policy("a").budget is own


def test_defaults_apply_to_the_new_sections(clock):
    """`defaults.budgets`, `defaults.hedges`, `defaults.chaos` fill every entry."""
    recoverly.configure(
        {
            "defaults": {
                "budgets": {"ratio": 0.1},
                "hedges": {"delay": "5ms"},
                "chaos": {"enabled": False, "rate": 0.5, "seconds": 3},
            },
            "budgets": {"a": {}},
            "hedges": {"a": {"max_hedged": 3}},
            "chaos": {
                "f": {"type": "fault", "exception": "TimeoutError"},
                "l": {"type": "latency"},
            },
        },
        clock=clock,
    )
    assert recoverly.retry_budget("a").ratio == 0.1
    assert recoverly.hedge_policy("a").delay == 0.005
    fault, latency = recoverly.chaos_policy("f"), recoverly.chaos_policy("l")
    assert (fault.rate, fault.enabled) == (0.5, False)
    assert isinstance(latency, Latency)
    assert (latency.rate, latency.seconds) == (0.5, 3.0)  # `seconds` applies to latencies only


def test_unknown_names_of_the_new_kinds_raise_lookup_error(clock):
    """Each new accessor says which names are configured."""
    recoverly.configure(PARTS, clock=clock)
    with pytest.raises(LookupError, match=r"no budget named 'x' is configured \(budgets: api\)"):
        recoverly.retry_budget("x")
    with pytest.raises(LookupError, match=r"no hedge named 'x' .*\(hedges: orders\)"):
        recoverly.hedge_policy("x")
    with pytest.raises(LookupError, match=r"no throttle named 'x' .*\(throttles: orders\)"):
        recoverly.throttle_policy("x")
    with pytest.raises(LookupError, match=r"\(chaos: canned, gateway, slow\)"):
        recoverly.chaos_policy("x")


def test_registry_reset_forgets_the_new_sections(clock):
    """recoverly.registry.reset() clears budgets, hedges, throttles and chaos parts too."""
    recoverly.configure(PARTS, clock=clock)
    registry.reset()
    for lookup in (
        recoverly.retry_budget,
        recoverly.hedge_policy,
        recoverly.throttle_policy,
        recoverly.chaos_policy,
    ):
        with pytest.raises(LookupError, match="none"):
            lookup("orders")


# ---------------------------------------------------------------- chaos from plain values
def test_a_configured_fault_raises_a_fresh_exception_of_the_named_class(clock):
    """`exception` + `message` become `Class(message)`, built anew at each injection."""
    recoverly.configure(
        {"chaos": {"f": {"type": "fault", "rate": 1, "exception": "ConnectionResetError"}}},
        clock=clock,
    )
    fault = recoverly.chaos_policy("f")
    seen = []
    with chaos.enabled():
        for _ in range(2):
            with pytest.raises(ConnectionResetError) as exc:
                fault(lambda: "ran")()
            seen.append(exc.value)
    assert seen[0] is not seen[1]
    assert seen[0].args == ()


def test_a_dotted_exception_path_is_imported_and_given_the_message(clock):
    """'module.Class' names an exception outside the builtins; the message is its argument."""
    gateway = {**PARTS["chaos"]["gateway"], "rate": 1}
    recoverly.configure({"chaos": {"gateway": gateway}}, clock=clock)
    with chaos.enabled(), pytest.raises(http.client.RemoteDisconnected) as exc:
        recoverly.chaos_policy("gateway")(lambda: None)()
    assert exc.value.args == ("injected",)


def test_a_numeric_message_from_the_environment_becomes_text(monkeypatch, clock):
    """APP__CHAOS__X__MESSAGE=404 arrives as a number and is used as the text '404'."""
    monkeypatch.setenv("APP__CHAOS__X__TYPE", "fault")
    monkeypatch.setenv("APP__CHAOS__X__RATE", "1")
    monkeypatch.setenv("APP__CHAOS__X__EXCEPTION", "LookupError")
    monkeypatch.setenv("APP__CHAOS__X__MESSAGE", "404")
    recoverly.configure(env_prefix="APP", clock=clock)
    with chaos.enabled(), pytest.raises(LookupError) as exc:
        recoverly.chaos_policy("x")(lambda: None)()
    assert exc.value.args == ("404",)


def test_configured_chaos_stays_off_unless_switched_on(clock):
    """Without `enabled`, a part follows chaos.enabled(); `enabled: true/false` fixes it."""
    recoverly.configure(
        {
            "chaos": {
                "follows": {"type": "fault", "rate": 1, "exception": "OSError"},
                "on": {"type": "fault", "rate": 1, "exception": "OSError", "enabled": True},
                "off": {"type": "fault", "rate": 1, "exception": "OSError", "enabled": False},
            }
        },
        clock=clock,
    )
    calls: list[str] = []

    def work(label: str) -> str:
        calls.append(label)
        return label

    follows, on, off = (recoverly.chaos_policy(n) for n in ("follows", "on", "off"))
    assert follows(work)("a") == "a"
    assert off(work)("b") == "b"
    with pytest.raises(OSError):
        on(work)("c")
    with chaos.enabled():
        with pytest.raises(OSError):
            follows(work)("d")
        assert off(work)("e") == "e"
    assert calls == ["a", "b", "e"]
    assert follows.statistics().injected == 1
    assert off.statistics().calls == 0


def test_outcome_values_are_returned_as_plain_data(tmp_path: Path, clock):
    """An outcome's value is returned as given: strings are not durations nor import paths."""
    path = tmp_path / "chaos.toml"
    path.write_text(
        "[chaos.duration_like]\ntype = 'outcome'\nrate = 1\nvalue = '2s'\n"
        "[chaos.path_like]\ntype = 'outcome'\nrate = 1\nvalue = 'json.loads'\n"
        "[chaos.table]\ntype = 'outcome'\nrate = 1\nenabled = true\n"
        "[chaos.table.value]\nstatus = 'degraded'\nitems = [1, 2]\n",
        encoding="utf-8",
    )
    recoverly.configure(path, clock=clock)
    with chaos.enabled():
        assert recoverly.chaos_policy("duration_like")(lambda: "real")() == "2s"
        assert recoverly.chaos_policy("path_like")(lambda: "real")() == "json.loads"
    assert recoverly.chaos_policy("table")(lambda: "real")() == {
        "status": "degraded",
        "items": [1, 2],
    }


def test_a_configured_latency_waits_on_the_clock(clock):
    """A latency part's `seconds` ("2s") is slept through the configured clock."""
    recoverly.configure(PARTS, clock=clock)
    with chaos.enabled():
        assert recoverly.chaos_policy("slow")(lambda: "done")() == "done"
    assert clock.sleeps == [2.0]


# ---------------------------------------------------------------- TOML and environment
def test_toml_configures_every_new_section(tmp_path: Path, clock):
    """A TOML file gives budgets, hedges, throttles, chaos parts and pipelines using them."""
    path = tmp_path / "resilience.toml"
    path.write_text(
        "[budgets.api]\nratio = 0.3\nwindow = '30s'\n"
        "[retries.orders]\nmax_attempts = 4\nbudget = 'api'\n"
        "[hedges.orders]\ndelay = '50ms'\nbudget = 'api'\n"
        "[throttles.orders]\nk = 1.5\n"
        "[chaos.gateway]\ntype = 'fault'\nrate = 1\n"
        "exception = 'TimeoutError'\nmessage = 'gateway timed out'\n"
        "[pipelines]\norders = ['throttle', 'retry', 'hedge', 'chaos:gateway']\n",
        encoding="utf-8",
    )
    recoverly.configure(path, clock=clock)
    budget = recoverly.retry_budget("api")
    assert (budget.ratio, budget.window) == (0.3, 30.0)
    assert recoverly.retry_policy("orders").budget is budget
    assert recoverly.hedge_policy("orders").budget is budget
    assert recoverly.hedge_policy("orders").delay == 0.05
    assert recoverly.throttle_policy("orders").k == 1.5
    assert recoverly.pipeline("orders").current.parts == (
        recoverly.throttle_policy("orders"),
        recoverly.retry_policy("orders"),
        recoverly.hedge_policy("orders"),
        recoverly.chaos_policy("gateway"),
    )
    with chaos.enabled(), pytest.raises(TimeoutError, match="gateway timed out"):
        recoverly.chaos_policy("gateway")(lambda: None)()


def test_environment_variables_configure_every_new_section(monkeypatch, clock):
    """PREFIX__BUDGET/HEDGE/THROTTLE/CHAOS__NAME__SETTING variables, singular or plural."""
    for key, value in {
        "APP__BUDGET__API__RATIO": "0.5",
        "APP__BUDGETS__API__WINDOW": "30s",
        "APP__RETRY__ORDERS__BUDGET": "api",
        "APP__HEDGE__ORDERS__DELAY": "20ms",
        "APP__HEDGES__ORDERS__BUDGET": "api",
        "APP__THROTTLE__ORDERS__K": "3",
        "APP__THROTTLES__ORDERS__WINDOW": "2m",
        "APP__CHAOS__GATEWAY__TYPE": "fault",
        "APP__CHAOS__GATEWAY__RATE": "0.25",
        "APP__CHAOS__GATEWAY__EXCEPTION": "http.client.RemoteDisconnected",
        "APP__CHAOS__GATEWAY__MESSAGE": "injected",
        "APP__CHAOS__GATEWAY__SEED": "7",
        "APP__CHAOS__CANNED__TYPE": "outcome",
        "APP__CHAOS__CANNED__RATE": "1",
        "APP__CHAOS__CANNED__VALUE": "2s",
        "APP__DEFAULTS__CHAOS__ENABLED": "false",
        "APP__PIPELINE__ORDERS": "throttle, retry, hedge, chaos:gateway",
    }.items():
        monkeypatch.setenv(key, value)
    recoverly.configure(env_prefix="APP", clock=clock)
    budget = recoverly.retry_budget("api")
    assert (budget.ratio, budget.window) == (0.5, 30.0)
    assert recoverly.retry_policy("orders").budget is budget
    hedge = recoverly.hedge_policy("orders")
    assert (hedge.delay, hedge.budget) == (0.02, budget)
    throttle = recoverly.throttle_policy("orders")
    assert (throttle.k, throttle.window) == (3.0, 120.0)
    fault = recoverly.chaos_policy("gateway")
    assert isinstance(fault, Fault)
    assert (fault.rate, fault.seed, fault.enabled) == (0.25, 7, False)
    canned = recoverly.chaos_policy("canned")
    assert isinstance(canned, Outcome)
    assert canned.value == "2s"
    assert [type(p) for p in recoverly.pipeline("orders").current.parts] == [
        AdaptiveThrottle,
        recoverly.Retry,
        Hedge,
        Fault,
    ]


# ---------------------------------------------------------------- errors
def test_every_problem_of_the_new_sections_is_reported_with_its_key_path():
    """Unknown settings, bad values, bad chaos types and exceptions, bad references: one error."""
    with pytest.raises(TypeError) as exc:
        recoverly.configure(
            {
                "budgets": {"api": {"ratio": -1, "windw": 3}},
                "retries": {"a": {"budget": "nope"}, "b": {"budget": 3}},
                "hedges": {"h": {"delay": -1, "budget": "api"}},
                "throttles": {"t": {"k": 0.5, "name": "x"}},
                "chaos": {
                    "a": {"type": "faults", "rate": 1},
                    "b": {"rate": 1},
                    "c": {"type": "fault", "rate": 2, "exception": "ConnectonError"},
                    "d": {"type": "fault", "rate": 1, "exception": "KeyboardInterrupt"},
                    "e": {"type": "latency", "rate": 1, "seconds": 1, "message": "x"},
                    "f": {"type": "outcome", "rate": 1},
                },
                "pipelines": {"p": ["budget:api", "chaos:zz", "hedge:h", "throttle:t"]},
            }
        )
    assert problems(exc) == [
        "budgets.api.windw: unknown setting (did you mean window?), got 3",
        (
            "throttles.t.name: unknown setting (known: k, window, release_window, exceptions, "
            "buckets, random), got 'x'"
        ),
        (
            "chaos.e.message: unknown setting (known: type, rate, seconds, seed, enabled, at, "
            "max_injections), got 'x'"
        ),
        "budgets.api.ratio: must be a finite number >= 0, got -1",
        "retries.a.budget: no budget named 'nope' is configured (budgets: api), got 'nope'",
        "retries.b.budget: must name a budget (budgets: api), got 3",
        "hedges.h.delay: must be a finite number of seconds >= 0, got -1",
        "throttles.t.k: must be a finite number >= 1, got 0.5",
        (
            "chaos.a.type: must be one of 'fault', 'latency', 'outcome' (did you mean 'fault'?), "
            "got 'faults'"
        ),
        "chaos.b.type: required setting is missing",
        (
            "chaos.c.exception: names nothing (no builtin 'ConnectonError', did you mean "
            "ConnectionError?), got 'ConnectonError'"
        ),
        "chaos.c.rate: must be a number in [0, 1], got 2",
        "chaos.d.exception: must be an Exception subclass, got 'KeyboardInterrupt'",
        "chaos.f.value: required setting is missing",
        (
            "pipelines.p[0]: unknown part kind (known: breaker, retry, timeout, bulkhead, "
            "rate_limiter, hedge, throttle, chaos), got 'budget:api'"
        ),
        (
            "pipelines.p[1]: no chaos named 'zz' is configured (chaos: a, b, c, d, e, f), "
            "got 'chaos:zz'"
        ),
    ]


@pytest.mark.parametrize(
    ("settings", "line"),
    [
        (
            {"exception": "json.JSONDecodeError", "message": "bad"},
            "chaos.x.exception: JSONDecodeError cannot be built from a message (TypeError: ",
        ),
        (
            {"exception": "no_such_module_here.Error"},
            (
                "chaos.x.exception: cannot be imported (ModuleNotFoundError: No module named "
                "'no_such_module_here'), got 'no_such_module_here.Error'"
            ),
        ),
        (
            {"exception": "http.client.NoSuchError"},
            (
                "chaos.x.exception: names nothing (module http.client has no 'NoSuchError'), "
                "got 'http.client.NoSuchError'"
            ),
        ),
        (
            {"exception": "not a name"},
            (
                "chaos.x.exception: must name an exception class, such as ConnectionError or "
                "module.Class, got 'not a name'"
            ),
        ),
        (
            {"exception": "ValueError", "message": ["a"]},
            "chaos.x.message: must be a string, got ['a']",
        ),
        (
            {"exception": ValueError("made"), "message": "text"},
            (
                "chaos.x.message: needs an exception class or its name, "
                "got exception=ValueError('made')"
            ),
        ),
        ({"exception": 3}, "chaos.x.exception: must be an exception, an exception class or a"),
        ({}, "chaos.x.exception: required setting is missing"),
    ],
)
def test_bad_fault_exceptions_name_the_key_path_and_the_value(settings, line):
    """Each way of naming a fault's exception wrongly is reported at chaos.x.exception/message."""
    with pytest.raises((TypeError, ValueError)) as exc:
        recoverly.configure({"chaos": {"x": {"type": "fault", "rate": 1, **settings}}})
    (found,) = problems(exc)
    assert found.startswith(line)


def test_an_exception_from_python_is_taken_as_is(clock):
    """From a Python mapping, `exception` may be a class, an instance or a factory."""
    error = ValueError("shared")
    recoverly.configure(
        {
            "chaos": {
                "cls": {"type": "fault", "rate": 1, "exception": KeyError, "message": "k"},
                "obj": {"type": "fault", "rate": 1, "exception": error},
            }
        },
        clock=clock,
    )
    with chaos.enabled():
        with pytest.raises(KeyError) as exc:
            recoverly.chaos_policy("cls")(lambda: None)()
        assert exc.value.args == ("k",)
        with pytest.raises(ValueError, match="shared") as raised:
            recoverly.chaos_policy("obj")(lambda: None)()
        assert raised.value is error


# ---------------------------------------------------------------- state across reconfiguration
def test_a_budget_keeps_its_tokens_across_reconfigurations(clock):
    """Same object; unchanged or ratio-only changes keep the window, a new window empties it."""
    settings = {"ratio": 0.5, "min_per_second": 0, "window": 10}
    config = {"budgets": {"api": settings}, "retries": {"r": {"budget": "api"}}}
    recoverly.configure(config, clock=clock)
    budget = recoverly.retry_budget("api")
    for _ in range(4):
        budget.deposit()
    assert budget.try_withdraw()
    assert budget.statistics().available == 1  # 0.5 * 4 calls - 1 retry

    recoverly.configure(config, clock=clock)
    assert recoverly.retry_budget("api") is budget
    assert budget.statistics().available == 1

    changed = {"budgets": {"api": {**settings, "ratio": 1.0}}, "retries": {"r": {"budget": "api"}}}
    recoverly.configure(changed, clock=ManualClock())  # a new clock: the budget keeps its own
    assert recoverly.retry_budget("api") is budget
    assert recoverly.retry_policy("r").budget is budget
    s = budget.statistics()
    assert (s.calls, s.retries, s.available) == (4, 1, 3)  # the new ratio, the same window

    assert [budget.try_withdraw() for _ in range(4)] == [True, True, True, False]
    assert budget.statistics().rejected == 1

    reshaped = {"budgets": {"api": {**settings, "window": 20}}}
    recoverly.configure(reshaped, clock=clock)
    assert recoverly.retry_budget("api") is budget
    s = budget.statistics()
    assert (s.calls, s.retries, s.rejected, budget.window) == (0, 0, 1, 20.0)
    budget.deposit()
    budget.deposit()
    assert budget.statistics().available == 1  # the new window counts from empty


def test_a_throttle_keeps_its_window_across_reconfigurations(clock):
    """Same object; a new k applies to the requests already seen; a new window starts empty."""
    settings = {"k": 2, "window": 60, "random": never_refuse_locally}
    recoverly.configure({"throttles": {"api": settings}}, clock=clock)
    throttle = recoverly.throttle_policy("api")
    refuse(4, throttle)
    assert throttle.call(lambda: "ok") == "ok"
    assert throttle.call(lambda: "ok") == "ok"
    assert throttle.probability() == pytest.approx((6 - 2 * 2) / 7)

    recoverly.configure({"throttles": {"api": settings}}, clock=clock)
    assert recoverly.throttle_policy("api") is throttle
    assert throttle.statistics().requests == 6

    recoverly.configure({"throttles": {"api": {**settings, "k": 3}}}, clock=clock)
    assert recoverly.throttle_policy("api") is throttle
    s = throttle.statistics()
    assert (s.requests, s.accepts, throttle.k) == (6, 2, 3.0)
    assert throttle.probability() == 0.0  # 6 - 3 * 2 accepted

    recoverly.configure({"throttles": {"api": {**settings, "window": 30}}}, clock=clock)
    assert recoverly.throttle_policy("api") is throttle
    s = throttle.statistics()
    assert (s.requests, s.accepts, throttle.window, throttle.k) == (0, 0, 30.0, 2.0)


def test_a_throttle_keeps_its_recent_horizon_unless_release_window_changes(clock):
    """release_window comes from the configuration; a new one empties only the recent horizon."""
    settings = {"k": 2, "window": 60, "release_window": "10s", "random": never_refuse_locally}
    recoverly.configure({"throttles": {"api": settings}}, clock=clock)
    throttle = recoverly.throttle_policy("api")
    refuse(4, throttle)
    s = throttle.statistics()
    assert (throttle.release_window, s.requests, s.recent_requests) == (10.0, 4, 4)

    recoverly.configure({"throttles": {"api": {**settings, "k": 3}}}, clock=clock)
    s = throttle.statistics()
    assert (s.requests, s.recent_requests) == (4, 4)

    recoverly.configure({"throttles": {"api": {**settings, "release_window": 5}}}, clock=clock)
    assert recoverly.throttle_policy("api") is throttle
    s = throttle.statistics()
    assert (throttle.release_window, s.requests, s.recent_requests) == (5.0, 4, 0)
    with pytest.raises(
        ValueError, match=r"throttles\.api\.release_window: must be at most window \(60\), got 90$"
    ):
        recoverly.configure({"throttles": {"api": {**settings, "release_window": 90}}}, clock=clock)


def test_a_throttle_refuses_by_its_adopted_settings(clock):
    """After k changes in place, the kept window throttles by the new k."""
    always = {"k": 1, "window": 60, "random": lambda: 0.0}
    recoverly.configure({"throttles": {"api": {**always, "k": 10}}}, clock=clock)
    throttle = recoverly.throttle_policy("api")
    assert throttle.call(lambda: "ok") == "ok"
    assert throttle.call(lambda: "ok") == "ok"
    refuse(3, throttle)  # 5 requests, 2 accepted: under k=10 nothing is refused locally
    assert throttle.statistics().throttled == 0
    recoverly.configure({"throttles": {"api": always}}, clock=clock)
    with pytest.raises(ThrottledError):
        throttle.call(lambda: "never runs")
    assert throttle.statistics().throttled == 1


def test_a_failed_reconfiguration_changes_no_budget_or_throttle(clock):
    """Settings adopted in place are adopted only when the whole configuration is valid."""
    config = {"budgets": {"api": {"ratio": 0.5}}, "throttles": {"api": {"k": 2}}}
    recoverly.configure(config, clock=clock)
    budget, throttle = recoverly.retry_budget("api"), recoverly.throttle_policy("api")
    bad = {
        "budgets": {"api": {"ratio": 0.9, "window": 99}},
        "throttles": {"api": {"k": 4}},
        "hedges": {"h": {"max_hedged": 0}},
    }
    with pytest.raises(ValueError, match=r"hedges\.h\.max_hedged"):
        recoverly.configure(bad, clock=clock)
    assert (budget.ratio, budget.window, throttle.k) == (0.5, 10.0, 2.0)
    assert recoverly.retry_budget("api") is budget


def test_hedges_and_chaos_parts_are_kept_when_unchanged_and_replaced_when_changed(clock):
    """Counters survive an unchanged reconfiguration; a changed setting builds a fresh part."""
    recoverly.configure(PARTS, clock=clock)
    hedge, fault = recoverly.hedge_policy("orders"), recoverly.chaos_policy("gateway")
    assert hedge(lambda: "ok")() == "ok"
    with chaos.enabled():
        hits = [injects(fault) for _ in range(8)]
    injected = fault.statistics().injected
    assert fault.statistics().calls == 8
    recoverly.configure(PARTS, clock=clock)
    assert recoverly.hedge_policy("orders") is hedge
    assert recoverly.chaos_policy("gateway") is fault
    assert hedge.statistics().calls == 1
    changed = {
        **PARTS,
        "hedges": {"orders": {**PARTS["hedges"]["orders"], "delay": "30ms"}},
        "chaos": {**PARTS["chaos"], "gateway": {**PARTS["chaos"]["gateway"], "rate": 0.5}},
    }
    recoverly.configure(changed, clock=clock)
    assert recoverly.hedge_policy("orders") is not hedge
    assert recoverly.hedge_policy("orders").delay == 0.03
    assert recoverly.hedge_policy("orders").budget is recoverly.retry_budget("api")
    new_fault = recoverly.chaos_policy("gateway")
    assert new_fault is not fault
    assert new_fault.statistics().calls == 0
    assert fault.statistics().injected == injected == sum(hits)


def test_a_seeded_fault_injects_the_same_calls_after_a_rebuild(clock):
    """`seed` from config makes the injections reproducible, rebuilt or not."""

    def pattern() -> list[bool]:
        fault = recoverly.chaos_policy("gateway")
        with chaos.enabled():
            return [injects(fault) for _ in range(20)]

    recoverly.configure(PARTS, clock=clock)
    before = recoverly.chaos_policy("gateway")
    first = pattern()
    recoverly.configure(PARTS)  # another clock (the process one): rebuilt, same seed
    assert recoverly.chaos_policy("gateway") is not before
    second = pattern()
    assert first == second
    assert 0 < sum(first) < 20


# ---------------------------------------------------------------- pipelines using the new parts
ORDERS = {
    "budgets": {"api": {"ratio": 0, "min_per_second": 0.1, "window": "10s"}},  # 1 retry in 10 s
    "retries": {"orders": {"max_attempts": 3, "delay": 0, "budget": "api"}},
    "hedges": {"orders": {"delay": "1s", "budget": "api"}},
    "throttles": {"orders": {"k": 2, "random": never_refuse_locally}},
    "chaos": {
        "orders": {"type": "fault", "rate": 1, "exception": "ConnectionError", "message": "boom"}
    },
    "pipelines": {"orders": ["throttle", "retry", "hedge", "chaos"]},
}


def assert_orders_outcome(calls: list[str]) -> None:
    """Check the counters after one clean call and one call with chaos switched on."""
    assert calls == ["clean"]  # the faulty call never reached the function
    chaos_stats = recoverly.chaos_policy("orders").statistics()
    assert (chaos_stats.calls, chaos_stats.injected) == (2, 2)  # 2 attempts: 1 retry allowed
    budget = recoverly.retry_budget("api").statistics()
    # deposits: the retry once per call (2) and the hedge once per attempt (1 + 2)
    assert (budget.calls, budget.retries, budget.rejected) == (5, 1, 1)
    throttle = recoverly.throttle_policy("orders").statistics()
    assert (throttle.requests, throttle.accepts) == (2, 1)  # the injected fault was a refusal
    hedge = recoverly.hedge_policy("orders").statistics()
    assert (hedge.calls, hedge.hedges) == (3, 0)
    retry = recoverly.retry_policy("orders").statistics()
    assert retry.retries == 1


def test_a_configured_pipeline_runs_sync_calls_through_the_new_parts(clock):
    """throttle -> retry (budgeted) -> hedge -> chaos fault, built from config, sync."""
    recoverly.configure(ORDERS, clock=clock)
    calls: list[str] = []

    @recoverly.pipeline("orders")
    def place(label: str) -> str:
        calls.append(label)
        return f"placed {label}"

    assert place("clean") == "placed clean"
    with chaos.enabled(), pytest.raises(ConnectionError, match="boom"):
        place("faulty")
    assert_orders_outcome(calls)


def test_a_configured_pipeline_runs_async_calls_through_the_new_parts(clock):
    """The same pipeline around an async function: the wrapper stays a coroutine function."""
    recoverly.configure(ORDERS, clock=clock)
    calls: list[str] = []

    @recoverly.pipeline("orders")
    async def place(label: str) -> str:
        calls.append(label)
        return f"placed {label}"

    assert inspect.iscoroutinefunction(place)

    async def scenario() -> str:
        answer = await place("clean")
        with chaos.enabled(), pytest.raises(ConnectionError, match="boom"):
            await place("faulty")
        return answer

    assert asyncio.run(scenario()) == "placed clean"
    assert_orders_outcome(calls)


def test_a_configured_outcome_answers_inside_a_pipeline(clock):
    """A chaos outcome at the inside of a configured pipeline answers for the function."""
    recoverly.configure(
        {
            "retries": {"p": {"max_attempts": 2}},
            "chaos": {"p": {"type": "outcome", "rate": 1, "value": {"cached": True}}},
            "pipelines": {"p": ["retry", "chaos"]},
        },
        clock=clock,
    )
    named = recoverly.pipeline("p")
    assert named.call(lambda: {"cached": False}) == {"cached": False}
    with chaos.enabled():
        assert named.call(lambda: {"cached": False}) == {"cached": True}
