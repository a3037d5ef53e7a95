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
    for kind, row in report["faults"].items():
        assert row["injected"] > 0, kind
        assert row["recovered"] is True, kind
    assert report["faults"]["worker_killed"]["injected"] == 2
    assert report["checkpoint_resumes"] == 2
    assert report["worker_restarts"] == 2
    assert report["model_equal"] is True
    assert report["final_sha256"] == report["reference_sha256"]
    assert report["run_status"] == "completed"
    assert report["api_errors"] == 0
    assert report["retries"]["load_batch"] == report["faults"]["data_load_failed"]["injected"]
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
    assert any((tmp_path / "data" / "checkpoints" / "run-1").iterdir())
