"""Label caps and concurrency of the event-to-sample table the exporters share."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("prometheus_client")

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

import recoverly
import recoverly.prometheus as rp
from recoverly._core.telemetry import MAX_VALUE_LENGTH, OTHER, LabelLimiter


@given(
    cap=st.integers(min_value=1, max_value=5),
    values=st.lists(st.text(min_size=0, max_size=200), max_size=40),
)
def test_a_label_never_takes_more_than_its_cap_of_distinct_values(cap, values):
    """Whatever arrives, at most ``cap`` distinct values come out, plus '_other'."""
    limiter = LabelLimiter(cap)
    out = [limiter("name", v) for v in values]
    kept = {v for v in out if v != OTHER}
    assert len(kept) <= cap
    assert all(len(v) <= MAX_VALUE_LENGTH for v in out)
    # The first values seen are the ones kept, and they stay kept.
    first = list(dict.fromkeys(v[:MAX_VALUE_LENGTH] for v in values))[:cap]
    assert kept == set(first)
    assert limiter.overflowed.get("name", 0) == sum(1 for v in out if v == OTHER)


def test_caps_are_per_label():
    """The 'error' cap does not consume the 'name' cap."""
    limiter = LabelLimiter(1, {"error": 2})
    assert [limiter("error", e) for e in ("A", "B", "C")] == ["A", "B", OTHER]
    assert [limiter("name", n) for n in ("x", "y")] == ["x", OTHER]
    assert limiter.distinct("error") == 2


def test_counts_are_exact_under_concurrent_retries():
    """8 threads x 200 recovered calls: exactly 1600 retries and 1600 successes are counted."""
    registry = CollectorRegistry()
    handle = rp.install(registry)
    try:

        def worker():
            for _ in range(200):
                left = [1]

                def call(left=left):
                    if left[0]:
                        left[0] -= 1
                        raise ConnectionError
                    return 1

                recoverly.retry(2, 0.0, name="shared")(call)()

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        labels = {"name": "shared", "error": "ConnectionError"}
        assert registry.get_sample_value("recoverly_retries_total", labels) == 1600
        outcome = {"name": "shared", "outcome": "succeeded", "reason": ""}
        assert registry.get_sample_value("recoverly_retry_outcomes_total", outcome) == 1600
    finally:
        handle.uninstall()
