"""benchmarks/bench_checkpoint.py still runs end to end (tiny sizes; times are not checked)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

pytest.importorskip("numpy", reason="the checkpoint benchmark needs numpy")

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_benchmark_produces_its_section(monkeypatch):
    """A tiny run prints the throughput tables, the stall table and a verdict per target."""
    monkeypatch.syspath_prepend(str(BENCH))
    bench = importlib.import_module("bench_checkpoint")
    monkeypatch.setattr(bench, "calibrate_step", lambda target_s=0.02: lambda: None)
    section = bench.run(mb=0.5, repeats=1, stall_mb=0.2, steps=4, every=2)
    sys.modules.pop("bench_checkpoint", None)
    assert section.startswith("## Training: checkpoint throughput and stall")
    assert "| CheckpointManager save + load_latest |" in section
    assert "| np.savez + fsync + np.load |" in section
    assert "NumPy arrays" in section
    assert "Save+load vs the plain save with fsync: NumPy arrays" in section
    for mode in ("none", "sync", "async"):
        assert f"| {mode} |" in section
    assert "Target: async slowdown < 5%" in section
