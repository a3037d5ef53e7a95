"""The training job: fit a run's model with checkpoints, progress reports and retried data loads.

:func:`fit` is the loop itself (usable with no database: the demo's fault-free
reference run calls it directly). :class:`TrainingJob` wraps it for a
worker process (the service's own, see :mod:`recoverly.service.worker`, or a
Celery worker): it reads the run's config, resumes from the run's newest
checkpoint, reports progress through a
:class:`~recoverly.training.ProgressTracker` (a local journal replayed to the
database in the background, so a database outage never stops training, and a
killed process's unsent reports are replayed by the next one) and records the
result.

.. versionadded:: 0.2
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.engine import Engine

from recoverly._core.clock import resolve
from recoverly.retry import Retry, retry
from recoverly.service.model import (
    Dataset,
    FloatArray,
    IntArray,
    SoftmaxModel,
    batch_order,
    make_dataset,
)
from recoverly.service.schemas import TrainConfig
from recoverly.service.store import Store
from recoverly.training import Checkpoint, CheckpointManager, ProgressTracker
from recoverly.training import Store as CheckpointStore

__all__ = ["FitResult", "StepHooks", "TrainingJob", "fit", "load_model", "total_steps"]

_log = logging.getLogger("recoverly.service")

OnStep = Callable[[int, int, float], None]


class StepHooks(Protocol):
    """Where the training loop lets faults in: before each batch load, after each step.

    :class:`~recoverly.service.faults.FaultInjector` is one; a worker process
    uses its own, which also asks the service process whether to go on.

    .. versionadded:: 0.2
    """

    def data_load(self) -> None:
        """Called before each batch load (may raise ``ConnectionError``)."""

    def after_step(self, run_id: object, step: int, *, saving: bool = False) -> None:
        """Called after each step; ``saving``: a checkpoint save follows it."""


def total_steps(config: TrainConfig) -> int:
    """Return the number of gradient steps a run of ``config`` takes.

    .. versionadded:: 0.2
    """
    n_train = int(config.n_samples * 0.8)
    return config.epochs * -(-n_train // config.batch_size)


@dataclass(frozen=True, slots=True)
class FitResult:
    """How a fit ended.

    .. versionadded:: 0.2
    """

    model: SoftmaxModel
    steps: int
    loss: float
    accuracy: float
    resumed_from: int | None


def _data_retry() -> Retry:
    return retry(
        max_attempts=6, delay=0.01, backoff=2.0, exceptions=ConnectionError, name="load_batch"
    )


def fit(
    config: TrainConfig,
    *,
    checkpoints: CheckpointManager | None = None,
    on_step: OnStep | None = None,
    faults: StepHooks | None = None,
    run_id: object = None,
    dataset: Dataset | None = None,
) -> FitResult:
    """Train ``config``'s model, resuming from ``checkpoints``' newest one if there is one.

    Args:
        config: What to train.
        checkpoints: Where to save (every ``config.checkpoint_every`` steps and at
            each epoch's end) and resume from; ``None``: no checkpoints.
        on_step: Called as ``on_step(epoch, step, loss)`` after each step.
        faults: Fault hooks for data loading and worker kills.
        run_id: Identifies the run to the fault hooks.
        dataset: The data (default: generated from ``config``).

    Returns:
        The trained model and how the fit went.

    Raises:
        WorkerKilled: An injected kill (the worker restarts the run).

    .. versionadded:: 0.2
    """
    data = dataset or make_dataset(
        config.n_samples, config.n_features, config.n_classes, config.seed
    )
    model = SoftmaxModel(config.n_features, config.n_classes)
    n_train = len(data.y_train)
    n_batches = -(-n_train // config.batch_size)
    epoch0, batch0, step, loss = 0, 0, 0, float("nan")
    latest: Checkpoint | None = checkpoints.load_latest() if checkpoints else None
    if latest is not None:
        model.set_state(latest.state["model"])
        epoch0, batch0 = int(latest.state["epoch"]), int(latest.state["batch"])
        step, loss = latest.step, float(latest.state["loss"])

    def load(rows: IntArray) -> tuple[FloatArray, IntArray]:
        if faults is not None:
            faults.data_load()
        return data.x_train[rows], data.y_train[rows]

    load_batch = _data_retry()(load)
    for epoch in range(epoch0, config.epochs):
        order = batch_order(config.seed, epoch, n_train)
        for index in range(batch0 if epoch == epoch0 else 0, n_batches):
            x, y = load_batch(order[index * config.batch_size : (index + 1) * config.batch_size])
            loss = model.step(x, y, config.learning_rate)
            step += 1
            if on_step is not None:
                on_step(epoch, step, loss)
            last = index == n_batches - 1
            saving = checkpoints is not None and (last or step % config.checkpoint_every == 0)
            if faults is not None:
                faults.after_step(run_id, step, saving=saving)
            if checkpoints is not None and saving:
                position = (epoch + 1, 0) if last else (epoch, index + 1)
                state = {"model": model.get_state(), "epoch": position[0], "batch": position[1]}
                state["loss"] = loss
                checkpoints.save(step, state, metrics={"loss": loss})
    accuracy = model.accuracy(data.x_test, data.y_test)
    return FitResult(model, step, loss, accuracy, latest.step if latest else None)


def load_model(directory: Path) -> SoftmaxModel | None:
    """Return the model of the newest checkpoint in ``directory``, or ``None``.

    .. versionadded:: 0.2
    """
    if not directory.exists():
        return None
    with CheckpointManager(directory) as manager:
        latest = manager.load_latest()
    if latest is None:
        return None
    state: dict[str, Any] = latest.state["model"]
    model = SoftmaxModel(*state["weights"].shape)
    model.set_state(state)
    return model


class TrainingJob:
    """Runs one training run for a worker: resume, train, report progress, record the result.

    Args:
        store: The service's database access.
        engine: The engine the progress tracker writes with.
        checkpoint_dir: Parent of the per-run checkpoint directories.
        journal_dir: Where the per-run progress journals live.
        faults: Fault hooks (``None``: no faults).
        progress_interval: Seconds between the tracker's database writes.
        step_delay: Seconds to pause after each step (through the recoverly clock).
        checkpoint_store: Makes the checkpoint store of a run's directory
            (``None``: a :class:`~recoverly.training.LocalStore`).

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        store: Store,
        engine: Engine,
        checkpoint_dir: Path,
        journal_dir: Path,
        *,
        faults: StepHooks | None = None,
        progress_interval: float = 0.2,
        step_delay: float = 0.0,
        checkpoint_store: Callable[[Path], CheckpointStore] | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.checkpoint_dir = checkpoint_dir
        self.journal_dir = journal_dir
        self.faults = faults
        self.progress_interval = progress_interval
        self.step_delay = step_delay
        self.checkpoint_store = checkpoint_store

    def checkpoints_of(self, run_id: int) -> Path:
        """Return the checkpoint directory of run ``run_id``."""
        return self.checkpoint_dir / f"run-{run_id}"

    def __call__(self, run_id: int, dataset: Dataset | None = None) -> None:
        """Train run ``run_id`` to the end (or until the worker is killed).

        A run whose config no longer validates, or whose training raises, is
        recorded as ``failed`` with the error; nothing is raised.

        Args:
            run_id: The run.
            dataset: Its data (default: generated from its config).
        """
        record = self.store.get_run(run_id)
        if record is None or record["status"] == "completed":
            return
        config = TrainConfig.model_validate(record["config"])
        total = total_steps(config)
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        directory = self.checkpoints_of(run_id)
        where = self.checkpoint_store(directory) if self.checkpoint_store else directory
        with CheckpointManager(where, keep_last=3) as checkpoints:
            resumed = bool(checkpoints.list())
            self.store.set_status(run_id, "running", resumed=resumed)
            tracker = ProgressTracker(
                self.engine,
                run_id,
                self.journal_dir / f"run-{run_id}.journal",
                total_steps=total,
                interval=self.progress_interval,
            )

            def on_step(epoch: int, step: int, loss: float) -> None:
                tracker.update(epoch, step, {"loss": loss})
                if self.step_delay:
                    resolve(None).sleep(self.step_delay)

            try:
                result = fit(
                    config,
                    checkpoints=checkpoints,
                    on_step=on_step,
                    faults=self.faults,
                    run_id=run_id,
                    dataset=dataset,
                )
            except Exception as exc:
                _log.exception("training run %s failed", run_id)
                tracker.update(0, 0, status="failed")
                tracker.close(timeout=5)
                self.store.set_status(run_id, "failed", error=f"{type(exc).__name__}: {exc}")
                return
            except BaseException:
                tracker.close(timeout=5)
                raise
            tracker.update(
                config.epochs - 1,
                result.steps,
                {"loss": result.loss, "accuracy": result.accuracy},
                status="completed",
                progress_percentage=100.0,
            )
            tracker.close(timeout=10)
        self.store.set_status(
            run_id,
            "completed",
            accuracy=result.accuracy,
            final_loss=result.loss,
            weights_sha256=result.model.weights_hash(),
        )
