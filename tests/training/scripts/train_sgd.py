"""A small scikit-learn + NumPy training program that can be killed and resumed.

Trains an ``SGDClassifier`` with ``partial_fit`` and, on the same batches, a
NumPy logistic regression, for a few epochs of shuffled mini-batches with
random augmentation from three sources (NumPy's global state, a registered
``numpy.random.Generator`` and Python's ``random``). On success it writes the
final arrays to ``OUT`` and exits 0; resuming from ``RUN_DIR`` is automatic.

usage: python train_sgd.py RUN_DIR OUT  (the tests run it through launcher.py)
env:   RECOVERLY_KILL_AT_IO, RECOVERLY_STEP_LOG (see _chaos.py),
       RECOVERLY_STEP_SLEEP (seconds slept per step), RECOVERLY_CRASH_AT (raise at that step),
       RECOVERLY_ASYNC_SAVE (write checkpoints on a background thread)
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import numpy as np
from _chaos import StepLog, install_io_kill
from sklearn.linear_model import SGDClassifier

from recoverly.training import ArrayState, ResumableRun

EPOCHS, SAMPLES, BATCH, FEATURES = 3, 320, 8, 6


def main(run_dir: str, out: str) -> None:
    """Train, checkpointing every 4 steps; write the final weights to ``out``."""
    install_io_kill()
    log = StepLog()
    # The kill test kills attempts before they checkpoint anything on purpose.
    limit = None if os.environ.get("RECOVERLY_NO_CRASH_LOOP") else 3
    pause = float(os.environ.get("RECOVERLY_STEP_SLEEP", "0"))
    crash_at = int(os.environ.get("RECOVERLY_CRASH_AT", "-1"))
    data = np.random.default_rng(123)  # the data set itself is fixed
    x = data.normal(size=(SAMPLES, FEATURES))
    y = (x @ data.normal(size=FEATURES) + 0.3 * data.normal(size=SAMPLES) > 0).astype(np.int64)

    run = ResumableRun(
        run_dir,
        seed=7,
        checkpoint_every=4,
        max_restarts_without_progress=limit,
        async_save=bool(os.environ.get("RECOVERLY_ASYNC_SAVE")),
    )
    clf = run.register("sgd", SGDClassifier(loss="log_loss", alpha=1e-3, random_state=0))
    params = run.register("logreg", ArrayState(w=np.zeros(FEATURES), b=np.zeros(1)))
    noise = run.register("noise", np.random.default_rng(99))

    def shuffled():
        order = np.random.permutation(SAMPLES)  # noqa: NPY002 - NumPy's global state, on purpose
        for start in range(0, SAMPLES, BATCH):
            yield order[start : start + BATCH]

    with run:
        for _epoch in run.epochs(EPOCHS):
            for idx in run.batches(shuffled()):
                xb = x[idx] + noise.normal(scale=0.05, size=(len(idx), FEATURES))
                clf.partial_fit(xb, y[idx], classes=[0, 1])
                lr = 0.1 * (0.5 + random.random())  # Python's random
                p = 1.0 / (1.0 + np.exp(-(xb @ params["w"] + params["b"])))
                params["w"] -= lr * xb.T @ (p - y[idx]) / len(idx)
                params["b"] -= lr * np.sum(p - y[idx]) / len(idx)
                if pause:
                    time.sleep(pause)
                if run.step + 1 == crash_at:
                    raise RuntimeError(f"deliberate crash at step {crash_at}")
                log.write(run.step + 1)
                run.step_done(loss=float(np.mean(np.abs(p - y[idx]))))
    Path(out).write_bytes(
        b"".join(a.tobytes() for a in (clf.coef_, clf.intercept_, params["w"], params["b"]))
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
