"""Property: any crash schedule and any checkpoint cadence leave the final weights unchanged."""

from __future__ import annotations

import contextlib
import hashlib
import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

np = pytest.importorskip("numpy", reason="the training extra needs numpy")

from recoverly.training import ArrayState, ResumableRun  # noqa: E402

EPOCHS, N, B = 3, 15, 4  # 4 batches an epoch (the last one short), 12 steps


class Boom(Exception):
    """The injected crash."""


def _train(directory: Path, *, every: int, accumulate: int, crash_at: int | None = None) -> str:
    run = ResumableRun(directory, seed=4, checkpoint_every=every, preemption=False)
    params = run.register("params", ArrayState(w=np.zeros(2), grad=np.zeros(2)))
    noise = run.register("noise", random.Random(8))
    with run:
        for _epoch in run.epochs(EPOCHS):
            offset = np.random.normal(size=2)
            order = np.random.permutation(N)
            for start in run.batches(range(0, N, B)):
                idx = order[start : start + B]
                params["grad"] += idx.mean() * offset + noise.random()
                if run.batch % accumulate == 0 or run.batch == -(-N // B):
                    params["w"] -= 0.1 * params["grad"] + np.random.normal(size=2)
                    params["grad"][:] = 0
                    if run.step + 1 == crash_at:
                        raise Boom
                    run.step_done()
            params["w"] *= 0.9
    return hashlib.sha256(params["w"].tobytes()).hexdigest()


_REFERENCE: dict[tuple[int, int], str] = {}


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    every=st.integers(1, 4),
    accumulate=st.integers(1, 2),
    crashes=st.lists(st.integers(1, 12), max_size=4),
)
def test_any_crash_schedule_resumes_to_the_same_weights(every, accumulate, crashes):
    """Crashes at arbitrary steps, any cadence, accumulation or not: same final weights."""
    root = Path(tempfile.mkdtemp(prefix="recoverly-property-"))
    try:
        key = (every, accumulate)
        if key not in _REFERENCE:
            _REFERENCE[key] = _train(root / "ref", every=every, accumulate=accumulate)
        for crash_at in crashes:
            with contextlib.suppress(Boom):
                _train(root / "run", every=every, accumulate=accumulate, crash_at=crash_at)
        assert _train(root / "run", every=every, accumulate=accumulate) == _REFERENCE[key]
    finally:
        shutil.rmtree(root)
