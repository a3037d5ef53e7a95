"""The seeds' train_model_task rewritten on ResumableRun, run by Celery (eager mode).

The task body is the one in docs/training.md ("Celery"); failures are injected
into the trainer. Celery's eager ``apply()`` follows ``self.retry()``, so a
retried task runs again in this process, from the run directory on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

np = pytest.importorskip("numpy", reason="the training extra needs numpy")
celery = pytest.importorskip("celery")

from recoverly.training import CrashLoopError, Preempted, ResumableRun  # noqa: E402

app = celery.Celery("recoverly-training-tests", broker="memory://", backend="cache+memory://")
app.conf.task_always_eager = True

FAULTS: dict[str, object] = {}
PROGRESS: list[tuple[int, int, float]] = []
FINAL: dict[int, dict[str, object]] = {}


class ModelTrainer:
    """The seeds' trainer: get_state()/load_state(), one train_epoch() call per epoch."""

    def __init__(self, config):
        self.config = config
        self.weights = np.zeros(4)

    def train_epoch(self, epoch):
        fault = FAULTS.get("at_epoch")
        if fault == epoch and FAULTS.get("times", 0) > 0:
            FAULTS["times"] -= 1
            FAULTS["hook"]()
        self.weights += np.random.normal(size=4) * self.config["lr"]
        return {"score": float(-np.abs(self.weights).sum() + epoch)}

    def get_state(self):
        return {"weights": self.weights.copy()}

    def load_state(self, state):
        self.weights = state["weights"].copy()


def update_progress(model_run_id, epoch, metrics):
    PROGRESS.append((model_run_id, epoch, metrics["score"]))


def save_final_model(model_run_id, state, best_score):
    FINAL[model_run_id] = {"state": state, "best_score": best_score}


@app.task(bind=True, acks_late=True, max_retries=None)
def train_model_task(self, model_run_id: int, config: dict):
    trainer = ModelTrainer(config)
    try:
        with ResumableRun(
            f"{config['root']}/{model_run_id}", seed=config.get("seed", 0), checkpoint_every=1
        ) as run:
            run.register("trainer", trainer)
            for epoch in run.epochs(config["num_epochs"]):
                metrics = trainer.train_epoch(epoch)
                update_progress(model_run_id, epoch, metrics)
                run.state["best_score"] = max(run.state.get("best_score", -1e9), metrics["score"])
                run.step_done(**metrics)
    except Preempted as stop:
        raise self.retry(countdown=5, exc=RuntimeError(str(stop))) from stop
    except CrashLoopError:
        raise
    except Exception as exc:
        raise self.retry(exc=exc, countdown=300) from exc
    save_final_model(model_run_id, trainer.get_state(), run.state["best_score"])
    return {
        "status": "success",
        "model_run_id": model_run_id,
        "best_score": run.state["best_score"],
    }


@pytest.fixture(autouse=True)
def _clean():
    FAULTS.clear()
    PROGRESS.clear()
    FINAL.clear()


def _counts(root: Path, model_run_id: int) -> dict[str, int]:
    return json.loads((root / str(model_run_id) / "attempts.json").read_text())["counts"]


def _crash():
    raise OSError("disk hiccup")


def test_retried_task_resumes_at_the_failed_epoch_and_trains_the_same_model(tmp_path):
    """A crash in epoch 3 is retried; epochs 0-2 are not redone and the weights match."""
    config = {"root": str(tmp_path), "num_epochs": 6, "lr": 0.1}
    clean = train_model_task.apply(args=(1, config)).get()
    FAULTS.update(at_epoch=3, times=1, hook=_crash)
    PROGRESS.clear()
    result = train_model_task.apply(args=(2, config)).get()
    assert result["status"] == "success"
    assert result["best_score"] == clean["best_score"]
    assert FINAL[2]["state"]["weights"].tobytes() == FINAL[1]["state"]["weights"].tobytes()
    assert [epoch for _, epoch, _ in PROGRESS] == [0, 1, 2, 3, 4, 5]  # epoch 3 failed before
    assert _counts(tmp_path, 2) == {"crashed": 1, "finished": 1, "preempted": 0}


def test_preempted_task_is_retried_and_counted_as_a_preemption(tmp_path):
    """A pre-emption during epoch 2 checkpoints that epoch, retries, and finishes the rest."""
    config = {"root": str(tmp_path), "num_epochs": 5, "lr": 0.1}
    clean = train_model_task.apply(args=(1, config)).get()

    def preempt():
        import signal

        signal.raise_signal(signal.SIGTERM)  # the guard turns it into a request

    FAULTS.update(at_epoch=2, times=1, hook=preempt)
    PROGRESS.clear()
    result = train_model_task.apply(args=(2, config)).get()
    assert result["best_score"] == clean["best_score"]
    assert FINAL[2]["state"]["weights"].tobytes() == FINAL[1]["state"]["weights"].tobytes()
    assert [epoch for _, epoch, _ in PROGRESS] == [0, 1, 2, 3, 4]
    assert _counts(tmp_path, 2) == {"crashed": 0, "finished": 1, "preempted": 1}


def test_a_task_stuck_at_one_epoch_stops_with_crash_loop_error(tmp_path):
    """Failing at epoch 2 every time is not retried forever: CrashLoopError ends it."""
    config = {"root": str(tmp_path), "num_epochs": 5, "lr": 0.1}
    FAULTS.update(at_epoch=2, times=100, hook=_crash)
    with pytest.raises(CrashLoopError, match="crashed 3 times in a row"):
        train_model_task.apply(args=(7, config)).get()
    assert FAULTS["times"] == 100 - 4  # the first attempt and three restarts
    assert _counts(tmp_path, 7)["crashed"] == 4
