"""Chaos parts: off unless switched on, reproducible with a seed, usable in a pipeline."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable

import pytest

from recoverly import Pipeline, chaos, retry
from recoverly import events as ev
from recoverly.testing import FlakyCall, ManualClock


def _ok() -> str:
    return "real"


def _outcomes(part: chaos.Fault, n: int) -> list[str]:
    guarded = part(_ok)
    return [_one(guarded) for _ in range(n)]


def _one(guarded: Callable[[], str]) -> str:
    try:
        return guarded()
    except ConnectionError:
        return "fault"


def test_parts_inject_nothing_unless_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no switch, rate 1 parts call the function and count no injection."""
    monkeypatch.setattr(chaos, "ENV_ENABLED", False)
    part = chaos.fault(1.0, ConnectionError)
    assert _outcomes(part, 5) == ["real"] * 5
    assert part.statistics() == chaos.ChaosStatistics(calls=0, injected=0)


def test_enabled_argument_switches_one_part_on_and_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """``enabled=True`` injects without any switch; ``enabled=False`` ignores every switch."""
    monkeypatch.setattr(chaos, "ENV_ENABLED", True)
    assert _outcomes(chaos.fault(1.0, ConnectionError, enabled=True), 2) == ["fault"] * 2
    with chaos.enabled():
        assert _outcomes(chaos.fault(1.0, ConnectionError, enabled=False), 2) == ["real"] * 2


def test_context_manager_switches_on_inside_the_block_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``with chaos.enabled():`` injects inside the block, not after it."""
    monkeypatch.setattr(chaos, "ENV_ENABLED", False)
    part = chaos.fault(1.0, ConnectionError)
    with chaos.enabled():
        assert chaos.is_enabled()
        assert _outcomes(part, 2) == ["fault"] * 2
    assert not chaos.is_enabled()
    assert _outcomes(part, 1) == ["real"]


def test_environment_variable_switches_on_and_block_can_switch_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The environment switch enables chaos; ``enabled(False)`` turns it off in a block."""
    part = chaos.fault(1.0, ConnectionError)
    monkeypatch.setattr(chaos, "ENV_ENABLED", True)
    assert _outcomes(part, 1) == ["fault"]
    with chaos.enabled(False):
        assert _outcomes(part, 1) == ["real"]
    monkeypatch.setattr(chaos, "ENV_ENABLED", False)
    assert _outcomes(part, 1) == ["real"]


def test_block_switch_does_not_leak_into_other_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The block switch belongs to the current thread; a thread started bare sees it off."""
    monkeypatch.setattr(chaos, "ENV_ENABLED", False)
    seen: list[bool] = []
    with chaos.enabled():
        t = threading.Thread(target=lambda: seen.append(chaos.is_enabled()))
        t.start()
        t.join()
    assert seen == [False]


def test_seed_makes_the_injections_reproducible() -> None:
    """Two parts with one seed inject on the same calls, matching random.Random(seed)."""
    a = chaos.fault(0.3, ConnectionError, seed=42, enabled=True)
    b = chaos.fault(0.3, ConnectionError, seed=42, enabled=True)
    first, second = _outcomes(a, 200), _outcomes(b, 200)
    assert first == second
    rng = random.Random(42)
    assert first == ["fault" if rng.random() < 0.3 else "real" for _ in range(200)]
    assert 40 <= first.count("fault") <= 80


def test_rate_zero_never_injects_and_rate_one_always_does() -> None:
    """The rate bounds are exact: 0 never, 1 always."""
    assert _outcomes(chaos.fault(0.0, ConnectionError, enabled=True), 50) == ["real"] * 50
    assert _outcomes(chaos.fault(1.0, ConnectionError, enabled=True), 50) == ["fault"] * 50


def test_fault_builds_a_fresh_exception_from_a_class_or_factory() -> None:
    """A class or factory gives a new exception per fault; an instance is raised as is."""
    raised = []
    for spec in (ConnectionError, lambda: ConnectionError("made")):
        guarded = chaos.fault(1.0, spec, enabled=True)(_ok)
        for _ in range(2):
            with pytest.raises(ConnectionError) as info:
                guarded()
            raised.append(info.value)
    assert len({id(e) for e in raised}) == 4
    instance = ConnectionError("same")
    guarded = chaos.fault(1.0, instance, enabled=True)(_ok)
    with pytest.raises(ConnectionError) as info:
        guarded()
    assert info.value is instance


def test_fault_factory_must_return_an_exception() -> None:
    """A factory returning something else raises TypeError saying so."""
    guarded = chaos.fault(1.0, lambda: "oops", enabled=True)(_ok)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="returned 'oops', not an exception"):
        guarded()


def test_latency_sleeps_through_the_clock_before_the_call(clock: ManualClock) -> None:
    """An injected delay is slept on the clock, then the function runs."""
    part = chaos.latency(0.5, 2.0, seed=7, clock=clock, enabled=True)
    guarded = part(_ok)
    results = [guarded() for _ in range(20)]
    assert results == ["real"] * 20
    injected = part.statistics().injected
    assert 0 < injected < 20
    assert clock.sleeps == [2.0] * injected


def test_latency_awaits_the_clock_for_async_functions(clock: ManualClock) -> None:
    """For ``async def`` the delay is awaited on the clock."""
    part = chaos.latency(1.0, 0.25, clock=clock, enabled=True)

    async def work() -> int:
        return 3

    assert asyncio.run(part(work)()) == 3
    assert clock.sleeps == [0.25]


def test_outcome_replaces_the_result_without_calling() -> None:
    """An injected outcome returns the value and the function does not run."""
    flaky = FlakyCall(failures=0, result="real")
    guarded = chaos.outcome(1.0, {"status": 503}, enabled=True)(flaky)
    assert guarded() == {"status": 503}
    assert flaky.calls == 0


def test_async_fault_and_outcome() -> None:
    """Fault and outcome parts work on ``async def`` functions."""

    async def work() -> str:
        return "real"

    async def both() -> tuple[str, str]:
        with pytest.raises(ConnectionError):
            await chaos.fault(1.0, ConnectionError, enabled=True)(work)()
        replaced = await chaos.outcome(1.0, "fake", enabled=True)(work)()
        passed = await chaos.outcome(0.0, "fake", enabled=True)(work)()
        return replaced, passed

    assert asyncio.run(both()) == ("fake", "real")


def test_retry_in_a_pipeline_recovers_from_injected_faults(clock: ManualClock) -> None:
    """retry > fault: each attempt rolls the dice again, so retries get through."""
    fault = chaos.fault(0.5, ConnectionError, seed=3, enabled=True)
    pipeline = Pipeline(retry(max_attempts=10, delay=0.1, clock=clock), fault)
    guarded = pipeline(_ok)
    assert [guarded() for _ in range(20)] == ["real"] * 20
    stats = fault.statistics()
    assert stats.injected > 0
    assert stats.calls == 20 + stats.injected  # every injected fault was retried once more
    assert len(clock.sleeps) == stats.injected


def test_describe_and_repr() -> None:
    """Parts describe their kind, rate, settings and switch."""
    pipeline = Pipeline(
        chaos.fault(0.1, ConnectionError, name="net"),
        chaos.latency(0.05, 2, enabled=True),
        chaos.outcome(0.2, None, enabled=False),
    )
    assert pipeline.describe() == (
        "chaos.fault 'net' rate=0.1 exception=ConnectionError",
        "chaos.latency rate=0.05 seconds=2 enabled=True",
        "chaos.outcome rate=0.2 value=None enabled=False",
    )
    assert repr(chaos.outcome(1, 5)) == "<chaos.outcome rate=1 value=5 calls=0 injected=0>"


def test_bad_arguments_are_all_listed() -> None:
    """Rate, seed, switch and exception problems come in one error naming each."""
    with pytest.raises(TypeError) as info:
        chaos.fault(1.5, 3, seed="x", enabled="yes")  # type: ignore[arg-type]
    text = str(info.value)
    for piece in ("exception must be", "rate must be a number in [0, 1]", "seed must", "enabled"):
        assert piece in text
    with pytest.raises(ValueError, match="seconds must be a finite number"):
        chaos.latency(0.1, -1)


def test_each_injection_is_reported_as_an_event(events: list[object]) -> None:
    """An injection emits ChaosInjected naming the part and its kind; a pass emits nothing."""
    guarded = chaos.outcome(1.0, 0, name="db", enabled=True)(_ok)
    guarded()
    chaos.fault(0.0, ConnectionError, enabled=True)(_ok)()
    assert [e for e in events if isinstance(e, ev.ChaosInjected)] == [
        ev.ChaosInjected("db", "outcome")
    ]


@pytest.mark.parametrize(("value", "expected"), [("1", "fault"), ("0", "real"), (None, "real")])
def test_environment_variable_is_read_at_import(value: str | None, expected: str) -> None:
    """A process started with RECOVERLY_CHAOS=1 injects; with 0 or unset it does not."""
    env = {k: v for k, v in os.environ.items() if k != "RECOVERLY_CHAOS"}
    if value is not None:
        env["RECOVERLY_CHAOS"] = value
    code = (
        "from recoverly import chaos\n"
        "def ok(): return 'real'\n"
        "try:\n"
        "    print(chaos.fault(1.0, ConnectionError)(ok)())\n"
        "except ConnectionError:\n"
        "    print('fault')\n"
    )
    out = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == expected


@pytest.mark.anyio
async def test_latency_and_fault_on_asyncio_and_trio(clock: ManualClock) -> None:
    """Chaos parts work on both async backends: the delay is awaited on the clock."""

    async def work() -> str:
        return "real"

    assert await chaos.latency(1.0, 0.5, clock=clock, enabled=True)(work)() == "real"
    assert clock.sleeps == [0.5]
    with pytest.raises(ConnectionError):
        await chaos.fault(1.0, ConnectionError, enabled=True)(work)()


def test_at_injects_into_exactly_the_scheduled_calls() -> None:
    """``at=(3, 7)`` with rate 0 fails the 3rd and the 7th call and no other."""
    part = chaos.fault(0.0, ConnectionError, at=(7, 3), enabled=True)
    expected = ["real"] * 9
    expected[2] = expected[6] = "fault"
    assert _outcomes(part, 9) == expected
    assert part.statistics() == chaos.ChaosStatistics(calls=9, injected=2)
    assert part.at == (3, 7)


def test_at_counts_only_the_calls_made_while_switched_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls made while the part is off are not numbered: ``at=(2,)`` is the block's 2nd call."""
    monkeypatch.setattr(chaos, "ENV_ENABLED", False)
    part = chaos.fault(0.0, ConnectionError, at=(2,))
    assert _outcomes(part, 3) == ["real"] * 3
    with chaos.enabled():
        assert _outcomes(part, 3) == ["real", "fault", "real"]
    assert part.statistics() == chaos.ChaosStatistics(calls=3, injected=1)


def test_max_injections_stops_the_part_after_that_many() -> None:
    """A rate 1 part capped at 2 fails twice, then lets every call through (still counted)."""
    part = chaos.fault(1.0, ConnectionError, max_injections=2, enabled=True)
    assert _outcomes(part, 5) == ["fault", "fault", "real", "real", "real"]
    assert part.statistics() == chaos.ChaosStatistics(calls=5, injected=2)


def test_schedule_and_cap_keep_the_seeded_sequence_of_the_other_calls() -> None:
    """The dice roll on every call, so ``at`` and the cap change only what they name."""
    part = chaos.fault(0.3, ConnectionError, seed=42, at=(1, 2), max_injections=5, enabled=True)
    got = _outcomes(part, 60)
    rng = random.Random(42)
    expected, injected = [], 0
    for n in range(1, 61):
        hit = rng.random() < 0.3 or n in (1, 2)
        if hit and injected < 5:
            injected += 1
            expected.append("fault")
        else:
            expected.append("real")
    assert got == expected
    assert got.count("fault") == 5
    again = chaos.fault(0.3, ConnectionError, seed=42, at=(1, 2), max_injections=5, enabled=True)
    assert _outcomes(again, 60) == got


def test_latency_schedule_on_the_manual_clock(clock: ManualClock) -> None:
    """``at=(2, 5)`` delays the 2nd and 5th calls: the clock moves before those two only."""
    part = chaos.latency(0.0, 2.0, at=(2, 5), clock=clock, enabled=True)
    seen: list[float] = []
    guarded = part(lambda: seen.append(clock.monotonic()))
    for _ in range(6):
        guarded()
    start = seen[0]
    assert [t - start for t in seen] == [0.0, 2.0, 2.0, 2.0, 4.0, 4.0]
    assert clock.sleeps == [2.0, 2.0]


def test_capped_outcome_calls_the_function_again_after_its_last_injection() -> None:
    """A capped outcome part answers with its value, then calls the function again."""
    flaky = FlakyCall(failures=0, result="real")
    guarded = chaos.outcome(1.0, "made up", max_injections=1, enabled=True)(flaky)
    assert [guarded(), guarded()] == ["made up", "real"]
    assert flaky.calls == 1


def test_enabled_attribute_switches_a_part_in_every_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Setting ``part.enabled`` reaches threads the block switch misses; bad values are refused."""
    monkeypatch.setattr(chaos, "ENV_ENABLED", False)
    part = chaos.fault(1.0, ConnectionError, enabled=False)
    guarded = part(_ok)
    seen: list[str] = []

    def call_in_a_thread() -> None:
        t = threading.Thread(target=lambda: seen.append(_one(guarded)))
        t.start()
        t.join()

    call_in_a_thread()
    part.enabled = True
    call_in_a_thread()
    part.enabled = None  # follows the global switch again: off here
    call_in_a_thread()
    assert seen == ["real", "fault", "real"]
    assert part.statistics() == chaos.ChaosStatistics(calls=1, injected=1)
    with pytest.raises(TypeError, match="enabled must be True, False or None, got 'yes'"):
        part.enabled = "yes"  # type: ignore[assignment]
    assert part.enabled is None


def test_bad_schedule_and_cap_are_all_listed() -> None:
    """``at`` and ``max_injections`` are checked with the other arguments, in one error."""
    with pytest.raises(TypeError) as info:
        chaos.fault(0.1, ConnectionError, at="3", max_injections=True)  # type: ignore[arg-type]
    text = str(info.value)
    assert "at must be None or an iterable of call numbers (integers >= 1), got '3'" in text
    assert "max_injections must be an integer >= 1, got True" in text
    with pytest.raises(TypeError, match=r"got 1.5 in \[1, 1.5\]"):
        chaos.latency(0.1, 1.0, at=[1, 1.5])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"at must be .* got 0 in \(0, 2\); max_injections"):
        chaos.outcome(0.1, None, at=(0, 2), max_injections=0)


def test_describe_shows_the_schedule_and_the_cap() -> None:
    """``describe_part`` lists ``at`` (sorted, once each) and ``max_injections`` when set."""
    part = chaos.fault(0, ConnectionError, at=(7, 3, 3), max_injections=2, name="kill")
    assert part.describe_part() == (
        "chaos.fault 'kill' rate=0 exception=ConnectionError at=3,7 max_injections=2"
    )
    assert part.max_injections == 2
