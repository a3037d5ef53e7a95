"""The benchmark suite still runs: every case executes and returns the right value.

These tests never look at how long anything takes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
from dataclasses import replace
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


bench_pipeline = importlib.import_module("bench_pipeline")


def test_pipeline_cases_answer_and_report_their_targets(tmp_path, loop):
    """Every pipeline case gives x + 1; a tiny run yields three targets and a section."""
    cases = _harness.base_cases() + bench_pipeline.cases()
    for case in cases:
        assert _harness.probe_case(case, loop) == case.expected, case.key
    results = _harness.measure(cases, repeats=1, target_ms=0.05, log=lambda _s: None)
    found = bench_pipeline.targets(results)
    assert [text for text, _m, _ok in found] == [
        "sync pipeline overhead <= 1.1x the sum of its parts alone",
        "async pipeline overhead <= 1.1x the sum of its parts alone",
        "Pipeline(retry, breaker) overhead >= 15x less than tenacity + pybreaker",
    ]
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# head\n")
    _harness.write_section(results_md, "pipeline", bench_pipeline.section(results, 1, 0.05))
    written = results_md.read_text()
    assert "<!-- pipeline -->" in written
    assert "| Pipeline(fallback, retry, breaker) |" in written
    assert "| tenacity @retry over pybreaker |" in written


def test_runner_writes_the_pipeline_section(tmp_path, monkeypatch):
    """run.py's main writes the pipeline section after the main table."""
    monkeypatch.setattr(bench_run, "RESULTS", tmp_path / "RESULTS.md")
    monkeypatch.setattr(bench_run, "quiet_instrumentation", lambda: None)
    (tmp_path / "RESULTS.md").write_text(f"old\n{bench_run.KEEP_MARKER}\nnotes\n")
    assert (
        bench_run.main(["--only", "pipe2", "--repeats", "1", "--target-ms", "0.05", "--write"]) == 0
    )
    written = (tmp_path / "RESULTS.md").read_text()
    assert written.count("<!-- pipeline -->") == 1
    assert "Pipeline(retry, breaker) overhead >= 15x less" in written


bench_hedge = importlib.import_module("bench_hedge")


@pytest.mark.realtime
def test_hedge_bench_counts_attempts_and_reports_quantiles():
    """A tiny hedging run counts one attempt per unhedged call and reports both runs."""
    bare, hedged = bench_hedge.run(
        calls=60, concurrency=6, delay=0.004, fast=0.001, slow=0.05, slow_share=0.2
    )
    assert len(bare.latencies) == len(hedged.latencies) == 60
    assert bare.attempts == 60
    assert 60 < hedged.attempts <= 120  # slow first attempts were hedged, once at most
    assert bare.quantile(0.99) >= 0.05  # some unhedged calls were slow
    tbare, thedged = bench_hedge.run_threads(
        calls=60, concurrency=6, delay=0.004, fast=0.001, slow=0.05, slow_share=0.2
    )
    assert len(tbare.latencies) == len(thedged.latencies) == 60
    assert tbare.attempts == 60
    assert 60 < thedged.attempts <= 120
    text = bench_hedge.section((bare, hedged), (tbare, thedged), calls=60, concurrency=6)
    assert "| unhedged |" in text
    assert "| hedge(delay=0.004) |" in text
    assert "| hedge(delay=0.004) (threads) |" in text
    assert text.count("extra attempts:") == 2


bench_overload = importlib.import_module("bench_overload")


@pytest.fixture(scope="module")
def overload_runs():
    """The four strategies on the quick overload scenario (simulated time, about a second)."""
    logging.disable(logging.CRITICAL)  # thousands of retries would be logged
    try:
        return bench_overload.run_all(bench_overload.QUICK)
    finally:
        logging.disable(logging.NOTSET)


def test_overload_backend_refuses_when_full_and_wastes_work_on_late_callers():
    """A full queue refuses at once; a caller that timed out still costs the backend a serve."""
    scenario = bench_overload.Scenario(capacity=100.0, queue=2, timeout=0.05, tick=0.01)
    clock = bench_overload.SimClock()
    series = bench_overload.Series(100)
    backend = bench_overload.Backend(scenario, clock, series)
    outcomes: list[str] = []

    async def send() -> None:
        try:
            outcomes.append(await backend.attempt())
        except bench_overload.OverloadedError:
            outcomes.append("refused")
        except bench_overload.AttemptTimeoutError:
            outcomes.append("timed out")

    async def scenario_run() -> None:
        tasks = [asyncio.ensure_future(send()) for _ in range(3)]
        await asyncio.sleep(0)
        assert outcomes == ["refused"]  # the third found both places taken
        clock.now = 0.01
        backend.serve()  # one credit: the first is served
        await asyncio.sleep(0)
        assert outcomes == ["refused", "ok"]
        clock.now = 0.05
        backend._credit = -10.0  # no capacity left this tick: the second times out
        backend.serve()
        await asyncio.gather(*tasks)
        backend._credit = 0.0
        clock.now = 0.06
        backend.serve()  # its turn comes after its caller left

    asyncio.run(scenario_run())
    assert outcomes == ["refused", "ok", "timed out"]
    assert sum(series.attempts) == 3
    assert sum(series.wasted) == 1


def test_overload_strategies_share_the_calm_phase_and_differ_in_the_outage(overload_runs):
    """Calm traffic is the same for all; in the outage tenacity triples it, the budget does not."""
    runs = overload_runs
    s = bench_overload.QUICK
    calm = round(s.outage_start / s.tick)
    alone = sum(runs["alone"].series.good[:calm])
    for run in runs.values():
        # the wrappers may order requests within a tick differently, not the totals
        assert abs(sum(run.series.good[:calm]) - alone) <= 0.02 * alone
        sent = sum(run.series.attempts[:calm]) + sum(run.series.throttled[:calm])
        assert sent == sum(run.series.requests[:calm])  # no retries while the backend copes
        assert run.goodput_before > 0.5 * s.capacity
    assert runs["alone"].amplification == 1.0
    assert 2.5 <= runs["tenacity"].amplification <= 3.0  # three attempts at most
    assert runs["budget"].amplification < 0.5 * runs["tenacity"].amplification
    assert sum(runs["throttle"].series.throttled) > 0
    assert sum(runs["alone"].series.throttled) == 0
    assert runs["throttle"].load_outage < runs["alone"].load_outage


def test_overload_simulation_is_reproducible(overload_runs):
    """Running a strategy again on the same scenario gives the same counts, tick by tick."""
    again = bench_overload.run("budget", bench_overload.QUICK)
    assert again.series.attempts == overload_runs["budget"].series.attempts
    assert again.series.good == overload_runs["budget"].series.good


def test_overload_recovery_is_measured_after_the_outage(overload_runs):
    """Every strategy regains 90 % of its calm goodput after capacity returns, within the run."""
    for run in overload_runs.values():
        assert run.goodput_outage < 0.1 * run.goodput_before
        took = run.recovery_time
        assert took is not None, run.key
        assert 0.0 < took <= bench_overload.QUICK.after


def test_overload_section_and_plot_are_written(overload_runs, tmp_path):
    """The section lists targets and every strategy; the plot is a PNG file."""
    text = bench_overload.section(overload_runs)
    assert text.count("PASS") + text.count("MISS") == 3
    for run in overload_runs.values():
        assert f"| {run.label} |" in text
    results = tmp_path / "RESULTS.md"
    results.write_text("# head\n")
    _harness.write_section(results, "overload", text)
    assert "<!-- overload -->\n## Overload" in results.read_text()
    pytest.importorskip("matplotlib")
    image = bench_overload.plot(overload_runs, tmp_path / "overload.png")
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overload_sweeps_name_the_single_window_and_count_the_seeds():
    """The window sweep ends with the book's single window; the seed line counts the runs."""
    quick = replace(bench_overload.QUICK, after=3.0)
    runs = bench_overload.run_windows(quick, windows=(2.0,))
    assert [r.scenario.release_window for r in runs] == [None, quick.throttle_window]
    assert runs[-1].label.endswith("(single window 1 s, as in the book)")
    seeds = bench_overload.run_seeds(quick, seeds=(1, 2))
    assert [seed for seed, _, _ in seeds] == [1, 2]
    assert all(alone.key == "alone" and c.key == "throttle" for _, alone, c in seeds)
    faster = sum(
        1
        for _, alone, c in seeds
        if c.recovery_time is not None
        and (alone.recovery_time is None or c.recovery_time <= alone.recovery_time)
    )
    line = bench_overload.seeds_line(seeds)
    expected = f"backend alone in {faster} of 2 runs"
    assert line.startswith("Over seeds 1-2, (c) recovered at least as fast as the ")
    assert expected in line


def test_overload_rejects_an_unknown_strategy():
    """Asking for a strategy that does not exist names the known ones."""
    with pytest.raises(ValueError, match="alone, tenacity, budget, throttle"):
        bench_overload.run("nope", bench_overload.QUICK)
