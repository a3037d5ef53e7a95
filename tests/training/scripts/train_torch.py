"""A tiny PyTorch MLP that can be killed and resumed bit-exactly.

Shuffled ``DataLoader`` with two worker processes, dropout (the global torch
generator), gradient accumulation over two batches, SGD with momentum and a
per-epoch ``StepLR``, deterministic algorithms on the CPU. On success it
writes the final parameters (and the optimizer's momentum buffers) to ``OUT``.

usage: run through launcher.py (``main(run_dir, out)``)
env:   RECOVERLY_KILL_AT_IO, RECOVERLY_STEP_LOG (see _chaos.py),
       RECOVERLY_STEP_SLEEP (seconds slept per step)
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from _chaos import StepLog, install_io_kill
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from recoverly.training import ResumableRun, ignore_preemption_signals

EPOCHS, SAMPLES, BATCH, ACCUMULATE = 4, 160, 8, 2

# Bit-exact on the CPU. (On a GPU also: CUBLAS_WORKSPACE_CONFIG=:4096:8 in the
# environment and torch.backends.cudnn.benchmark = False.)
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


def main(run_dir: str, out: str) -> None:
    """Train, checkpointing every 2 optimizer steps; write the final tensors to ``out``."""
    install_io_kill()
    log = StepLog()
    # The kill test kills attempts before they checkpoint anything on purpose.
    pause = float(os.environ.get("RECOVERLY_STEP_SLEEP", "0"))
    limit = None if os.environ.get("RECOVERLY_NO_CRASH_LOOP") else 3
    data = torch.Generator().manual_seed(123)  # the data set itself is fixed
    x = torch.randn(SAMPLES, 5, generator=data)
    y = (x[:, 0] - x[:, 1] > 0).long()
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=BATCH,
        shuffle=True,
        num_workers=2,
        persistent_workers=False,
        worker_init_fn=ignore_preemption_signals,  # a signal to the group must not kill them
    )

    run = ResumableRun(run_dir, seed=11, checkpoint_every=2, max_restarts_without_progress=limit)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    run.register("model", model)
    run.register("optimizer", optimizer)
    run.register("scheduler", scheduler)

    with run:
        for _epoch in run.epochs(EPOCHS):
            model.train()
            for xb, yb in run.batches(loader):
                loss = nn.functional.cross_entropy(model(xb), yb) / ACCUMULATE
                loss.backward()
                if run.batch % ACCUMULATE == 0:  # batches consumed this epoch, resumes included
                    optimizer.step()
                    optimizer.zero_grad()
                    if pause:
                        time.sleep(pause)
                    log.write(run.step + 1)
                    run.step_done(loss=loss.item())
            scheduler.step()
    tensors = [p.detach() for p in model.parameters()]
    tensors += [optimizer.state[p]["momentum_buffer"] for p in model.parameters()]
    Path(out).write_bytes(b"".join(t.contiguous().numpy().tobytes() for t in tensors))
