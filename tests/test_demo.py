"""The demo that `make demo` runs shows retry, the breaker and the fallback at work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"


@pytest.mark.realtime
def test_demo_recovers_and_reports():
    """The demo retries, opens and closes the breaker, serves fallbacks, and exits 0."""
    out = subprocess.run(  # noqa: S603 - fixed command
        [sys.executable, str(DEMO)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    assert "Retry successful on attempt 3 (load_batch)" in out
    assert "loaded [3, 1, 4, 1, 5] after 3 reads" in out
    assert "Circuit breaker OPENED for prediction-service after 3 failures" in out
    assert "Circuit breaker HALF_OPEN, attempting recovery" in out
    assert "Circuit breaker CLOSED, service recovered" in out
    assert "served by the local fallback" in out
    assert "breaker now: CLOSED" in out
    assert "every one answered" in out
