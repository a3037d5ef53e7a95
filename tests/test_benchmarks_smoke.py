"""The benchmark suite still runs: every case executes and returns the right value.

These tests never look at how long anything takes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

_harness = importlib.import_module("_harness")
bench_bulkhead = importlib.import_module("bench_bulkhead")
bench_circuit_breaker = importlib.import_module("bench_circuit_breaker")
bench_rate_limit = importlib.import_module("bench_rate_limit")
bench_retry = importlib.import_module("bench_retry")


def _load_run():
    spec = importlib.util.spec_from_file_location("recoverly_bench_run", BENCH / "run.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench_run = _load_run()


def _all_cases():
    return (
        _harness.base_cases()
        + bench_retry.cases()
        + bench_circuit_breaker.cases()
        + bench_rate_limit.cases()
        + bench_bulkhead.cases()
    )


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(autouse=True)
def _no_logging():
    """The libraries log every retry; thousands of records would only slow the tests."""
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)


def test_case_keys_are_unique_and_baselines_exist():
    """Every case has its own key and its baseline is a case of the suite."""
    cases = _all_cases()
    keys = [c.key for c in cases]
    assert len(keys) == len(set(keys))
    assert all(c.baseline in keys for c in cases if c.baseline)


def test_every_library_has_a_retry_case_on_each_path():
    """Floor, recoverly, tenacity, backoff and stamina appear on every retry path."""
    keys = {c.key for c in bench_retry.cases()}
    for path in ("retry.ok", "retry.fail", "aretry.ok", "aretry.fail"):
        for lib in ("floor", "recoverly", "tenacity", "backoff", "stamina"):
            assert f"{path}.{lib}" in keys


def test_every_case_returns_its_expected_value(loop):
    """One call of each case gives x + 1, or a rejection for OPEN breakers."""
    for case in _all_cases():
        assert _harness.probe_case(case, loop) == case.expected, case.key


def test_every_case_runs_a_few_iterations_and_still_answers(loop):
    """Running each case's loop a few times leaves it giving the expected value."""
    for case in _all_cases():
        if case.setup:
            case.setup()
        try:
            if case.is_async:
                loop.run_until_complete(case.run(5))
            else:
                case.run(5)
        finally:
            if case.teardown:
                case.teardown()
        assert _harness.probe_case(case, loop) == case.expected, case.key


def test_flaky_function_fails_on_every_odd_call():
    """The failure-path function alternates failure and success."""
    flaky = bench_retry.make_flaky()
    with pytest.raises(ValueError, match="odd call"):
        flaky(1)
    assert flaky(1) == 2
    with pytest.raises(ValueError, match="odd call"):
        flaky(1)


def test_floor_retry_reraises_after_the_last_attempt():
    """The hand-written floor gives up after three failures with the original error."""
    calls = []

    def always(x):
        calls.append(x)
        raise KeyError(x)

    with pytest.raises(KeyError):
        bench_retry.floor_retry(always)(7)
    assert calls == [7, 7, 7]


def test_floor_breaker_opens_after_the_threshold():
    """The lock-free floor breaker rejects calls after five failures in a row."""
    breaker = bench_circuit_breaker.FloorBreaker()
    wrapped = breaker(bench_circuit_breaker.always_fails)
    for _ in range(5):
        with pytest.raises(ValueError):
            wrapped(1)
    with pytest.raises(bench_circuit_breaker.FloorOpenError):
        wrapped(1)


def test_bus_check_counter_counts_the_failure_path_events():
    """A recoverly retry that recovers once checks the bus at least once."""
    flaky = bench_retry.recoverly.retry(max_attempts=3, delay=0)(bench_retry.make_flaky())
    assert bench_retry.count_bus_checks(lambda: flaky(1)) >= 1
    assert bench_retry.count_bus_checks(lambda: None) == 0


def test_every_rate_limiter_appears_on_both_paths():
    """The floor, recoverly, pyrate-limiter and limits cases exist for free and empty buckets."""
    keys = {c.key for c in bench_rate_limit.cases()}
    for path in ("ok", "reject"):
        for lib in ("floor", "recoverly", "pyrate", "pyrate_gcra", "limits_moving", "limits_fixed"):
            assert f"rl.{path}.{lib}" in keys


def test_floor_gcra_admits_the_burst_then_refuses():
    """The hand-written GCRA floor lets `burst` decisions through, then refuses."""
    floor = bench_rate_limit.FloorGCRA(1, 3600.0, 2)
    assert [floor.try_acquire() for _ in range(3)] == [True, True, False]


def test_rate_limit_section_lists_every_case(tmp_path, loop):
    """The RESULTS.md section names every rate limiter and the bulkhead floors."""
    cases = _harness.base_cases() + bench_rate_limit.cases() + bench_bulkhead.cases()
    results = _harness.measure(cases, repeats=1, target_ms=0.05, log=lambda _s: None)
    text = bench_rate_limit.section(results)
    for label in ("pyrate-limiter InMemoryBucket", "limits FixedWindow", "free slot, async"):
        assert label in text
    target = tmp_path / "RESULTS.md"
    target.write_text("top\n")
    _harness.write_section(target, "rate-limit", text)
    written = target.read_text()
    assert written.startswith("top\n")
    assert "<!-- rate-limit -->\n## Rate limiter and bulkhead" in written


def test_runner_measures_prints_and_writes_results(tmp_path, monkeypatch, loop):
    """A tiny end-to-end run fills the table, lists every target and keeps notes."""
    monkeypatch.setattr(bench_run, "RESULTS", tmp_path / "RESULTS.md")
    (tmp_path / "RESULTS.md").write_text(f"STALE TABLE\n{bench_run.KEEP_MARKER}\nhand notes\n")
    notes: list[str] = []
    cases = bench_run.collect(notes)
    results = _harness.measure(cases, repeats=1, target_ms=0.05, log=lambda _s: None)
    assert set(results) == {c.key for c in cases}
    assert all(len(r.samples) == 1 for r in results.values())
    table = bench_run.text_table(results)
    assert "tenacity @retry" in table
    assert "lock-free floor" in table
    targets = bench_run.evaluate(results, bench_run.bus_checks(cases))
    assert len(targets) == 14
    args = bench_run.argparse.Namespace(repeats=1, target_ms=0.05, quick=True)
    bench_run.write_results(results, targets, notes, args)
    written = (tmp_path / "RESULTS.md").read_text()
    assert "| **retry, success path (sync)** |" in written
    assert "stamina" in written
    assert written.rstrip().endswith("hand notes")
    assert "STALE TABLE" not in written.split(bench_run.KEEP_MARKER)[0]
