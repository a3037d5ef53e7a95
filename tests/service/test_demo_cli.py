"""`recoverly demo --no-serve --fast` runs unattended and reports every fault recovered."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sklearn")


@pytest.mark.realtime
def test_fast_demo_recovers_from_every_fault(tmp_path):
    """Each fault kind is injected and recovered; the model equals the fault-free one."""
    report_path = tmp_path / "report.json"
    completed = subprocess.run(  # noqa: S603 - fixed command
        [
            sys.executable,
            "-m",
            "recoverly.service.cli",
            "demo",
            "--no-serve",
            "--fast",
            "--data-dir",
            str(tmp_path / "data"),
            "--json-report",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=55,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = json.loads(report_path.read_text())
    assert set(report["faults"]) == {
        "db_connection_dropped",
        "data_load_failed",
        "worker_killed",
        "predictor_timed_out",
        "predictor_down",
    }
    faults = report["faults"]
    for kind, row in faults.items():
        assert row["injected"] > 0, kind
        assert row["recovered"] is True, kind
        # Each fault came from a recoverly.chaos part: its statistics and its events agree.
        assert row["events"] == row["injected"], kind
        assert row["chaos"].startswith(("chaos.fault", "chaos.latency", "chaos.outcome")), kind
    assert faults["worker_killed"]["injected"] == 2
    assert faults["data_load_failed"]["injected"] == 3  # the data part's max_injections
    # Batch loads happen in the worker processes: their parts injected, and reported back.
    assert faults["data_load_failed"]["in_worker_processes"] == 3
    assert faults["worker_killed"]["in_worker_processes"] == 0  # decided in the service process
    # The kill part (at=37,77) counts every step the worker processes ran: 100, plus 7 redone
    # after the kill at step 37 (checkpoint 30), plus 10 after the 77th step run (step 70,
    # killed while writing its checkpoint, so the previous one, step 60, is resumed from).
    assert faults["worker_killed"]["calls"] == 117
    # Chaos was switched on only in the faulty phases.
    phases = report["injections_by_phase"]
    assert phases["reference"] == phases["predictor ok"] == phases["predictor recovered"] == {}
    assert phases["training"] == {
        "db_connection_dropped": faults["db_connection_dropped"]["injected"],
        "data_load_failed": 3,
        "worker_killed": 2,
    }
    assert phases["predictor slow"] == {"predictor_slow": faults["predictor_timed_out"]["injected"]}
    assert phases["predictor down"] == {"predictor_down": faults["predictor_down"]["injected"]}
    assert report["checkpoint_resumes"] == 2
    assert report["worker_restarts"] == 2
    # Each kill is a real process death: SIGKILL, exit code -9, and a new process resumed.
    pids = report["worker_pids"]
    assert len(pids) == len(set(pids)) == 3
    kills = report["worker_kills"]
    assert [(k["signal"], k["returncode"], k["killed_by_service"]) for k in kills] == [
        ("SIGKILL", -9, True),
        ("SIGKILL", -9, True),
    ]
    assert [k["pid"] for k in kills] == pids[:2]
    assert [k["resumed_by_pid"] for k in kills] == pids[1:]
    assert [(k["after_step"], k["in_checkpoint_write"]) for k in kills] == [(37, False), (70, True)]
    assert [k["resumed_at_step"] for k in kills] == [31, 61]  # after checkpoints 30 and 60
    for kill in kills:
        assert f"worker process {kill['pid']} killed by SIGKILL (exit code -9)" in completed.stdout
    assert report["model_equal"] is True
    assert report["final_sha256"] == report["reference_sha256"]
    assert report["run_status"] == "completed"
    assert report["api_errors"] == 0
    assert report["retries"]["load_batch"] == faults["data_load_failed"]["injected"]
    assert report["retries_gave_up"].get("load_batch", 0) == 0
    transitions = [line.split("s ", 1)[1] for line in report["breaker_transitions"]]
    assert transitions[0] == "CLOSED -> OPEN"
    assert transitions[-1] == "HALF_OPEN -> CLOSED"
    assert report["breaker_final"] == "CLOSED"
    assert report["predictions"]["local"] > 0
    assert report["predictions"]["external"] > 0
    assert "error" not in report["predictions"]
    assert report["all_recovered"] is True
    assert "every fault was recovered" in completed.stdout
    # The checkpoints and the database stayed in the data directory.
    assert (tmp_path / "data" / "recoverly.db").exists()
    checkpoints = tmp_path / "data" / "checkpoints" / "run-1"
    assert any(checkpoints.iterdir())
    # The staging directory of the checkpoint write the kill interrupted was cleaned up.
    assert not [p.name for p in checkpoints.iterdir() if p.name.startswith(".")]
