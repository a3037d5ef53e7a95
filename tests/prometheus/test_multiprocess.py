"""prometheus_client's multiprocess mode adds up recoverly's counters across processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("prometheus_client")

WORKER = textwrap.dedent(
    """
    import recoverly, recoverly.prometheus
    from prometheus_client import CollectorRegistry

    recoverly.prometheus.install(CollectorRegistry())
    left = [2]

    @recoverly.retry(3, 0.0, name="shared")
    def call():
        if left[0]:
            left[0] -= 1
            raise ConnectionError
        return 1

    call()
    """
)

SCRAPE = textwrap.dedent(
    """
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    labels = {"name": "shared", "error": "ConnectionError"}
    print(registry.get_sample_value("recoverly_retries_total", labels))
    """
)


def test_counters_from_two_worker_processes_are_summed(tmp_path):
    """Two processes retry twice each: the multiprocess scrape reports 4 retries."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", WORKER], env=env, check=True, timeout=60)  # noqa: S603 - fixed command
    out = subprocess.run(  # noqa: S603 - fixed command
        [sys.executable, "-c", SCRAPE],
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == "4.0"
