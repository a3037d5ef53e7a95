"""recoverly.training: checkpoints, resumable training loops and progress tracking.

Install with ``pip install 'recoverly[training]'`` (NumPy); add ``[torch]`` for
PyTorch tensors (saved through safetensors) and ``[fsspec]`` for object storage.

.. versionadded:: 0.2
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recoverly.training._attempts import Attempt as Attempt
from recoverly.training._attempts import CrashLoopError as CrashLoopError
from recoverly.training._attempts import RunStatistics as RunStatistics
from recoverly.training._format import CheckpointCorrupt as CheckpointCorrupt
from recoverly.training._format import UnsafeCheckpointError as UnsafeCheckpointError
from recoverly.training._journal import ProgressRecord as ProgressRecord
from recoverly.training._lock import RunInUseError as RunInUseError
from recoverly.training.adapters import ArrayState as ArrayState
from recoverly.training.checkpoint import Checkpoint as Checkpoint
from recoverly.training.checkpoint import CheckpointInfo as CheckpointInfo
from recoverly.training.checkpoint import CheckpointManager as CheckpointManager
from recoverly.training.preemption import PREEMPTED_EXIT_CODE as PREEMPTED_EXIT_CODE
from recoverly.training.preemption import Preempted as Preempted
from recoverly.training.preemption import PreemptionGuard as PreemptionGuard
from recoverly.training.preemption import ignore_preemption_signals as ignore_preemption_signals
from recoverly.training.run import ResumableRun as ResumableRun
from recoverly.training.state import capture_rng as capture_rng
from recoverly.training.state import restore_rng as restore_rng
from recoverly.training.state import seed_all as seed_all
from recoverly.training.storage import FsspecStore as FsspecStore
from recoverly.training.storage import LocalStore as LocalStore
from recoverly.training.storage import Store as Store
from recoverly.training.storage import StoreTransaction as StoreTransaction

if TYPE_CHECKING:
    from recoverly.training._progress_db import ProgressWriter as ProgressWriter
    from recoverly.training._progress_db import (
        initialize_progress_tracking as initialize_progress_tracking,
    )
    from recoverly.training._progress_db import (
        update_training_progress as update_training_progress,
    )
    from recoverly.training.models import ModelRun as ModelRun
    from recoverly.training.models import TrainingProgress as TrainingProgress
    from recoverly.training.models import TrainingProgressHistory as TrainingProgressHistory
    from recoverly.training.progress import ProgressStatistics as ProgressStatistics
    from recoverly.training.progress import ProgressTracker as ProgressTracker

# Progress tracking needs SQLAlchemy (the `db` extra): imported on first use, so that
# `import recoverly.training` for checkpoints alone does not load it.
_LAZY = {
    "ModelRun": "recoverly.training.models",
    "ProgressStatistics": "recoverly.training.progress",
    "ProgressTracker": "recoverly.training.progress",
    "ProgressWriter": "recoverly.training._progress_db",
    "TrainingProgress": "recoverly.training.models",
    "TrainingProgressHistory": "recoverly.training.models",
    "initialize_progress_tracking": "recoverly.training._progress_db",
    "update_training_progress": "recoverly.training._progress_db",
}


def __getattr__(name: str) -> Any:
    """Import the progress-tracking names (which need SQLAlchemy) on first use."""
    module = _LAZY.get(name)
    if module is None:
        msg = f"module 'recoverly.training' has no attribute {name!r}"
        raise AttributeError(msg)
    import importlib  # noqa: PLC0415 - only needed for the lazy names

    try:
        value = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != "sqlalchemy":
            raise
        msg = f"recoverly.training.{name} needs SQLAlchemy 2: pip install 'recoverly[db]'"
        raise ImportError(msg) from exc
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """List the public names, the lazily imported ones included."""
    return sorted({*globals(), *_LAZY})


__all__ = [
    "PREEMPTED_EXIT_CODE",
    "ArrayState",
    "Attempt",
    "Checkpoint",
    "CheckpointCorrupt",
    "CheckpointInfo",
    "CheckpointManager",
    "CrashLoopError",
    "FsspecStore",
    "LocalStore",
    "ModelRun",
    "Preempted",
    "PreemptionGuard",
    "ProgressRecord",
    "ProgressStatistics",
    "ProgressTracker",
    "ProgressWriter",
    "ResumableRun",
    "RunInUseError",
    "RunStatistics",
    "Store",
    "StoreTransaction",
    "TrainingProgress",
    "TrainingProgressHistory",
    "UnsafeCheckpointError",
    "capture_rng",
    "ignore_preemption_signals",
    "initialize_progress_tracking",
    "restore_rng",
    "seed_all",
    "update_training_progress",
]
