"""The public surface of the checkpoint layer: exported, documented, shown at its public path."""

from __future__ import annotations

import inspect

from recoverly import training
from recoverly.errors import RecoverlyError

NAMES = [
    "Checkpoint",
    "CheckpointCorrupt",
    "CheckpointInfo",
    "CheckpointManager",
    "FsspecStore",
    "LocalStore",
    "Store",
    "StoreTransaction",
    "UnsafeCheckpointError",
]


def test_checkpoint_names_are_exported_at_the_public_path():
    """Each checkpoint name is in __all__ and says it lives in recoverly.training."""
    for name in NAMES:
        assert name in training.__all__, name
        assert getattr(training, name).__module__ == "recoverly.training", name


def test_checkpoint_names_are_documented_with_their_version():
    """Each checkpoint class has a docstring with `.. versionadded:: 0.2`."""
    for name in NAMES:
        doc = inspect.getdoc(getattr(training, name)) or ""
        assert ".. versionadded:: 0.2" in doc, name


def test_checkpoint_errors_join_the_recoverly_tree():
    """CheckpointCorrupt and UnsafeCheckpointError are RecoverlyErrors; corruption carries data."""
    assert issubclass(training.CheckpointCorrupt, RecoverlyError)
    assert issubclass(training.UnsafeCheckpointError, RecoverlyError)
    exc = training.CheckpointCorrupt("/ckpt/step-000000000001", "arrays.bin is truncated")
    assert exc.location == "/ckpt/step-000000000001"
    assert exc.reason == "arrays.bin is truncated"
    assert str(exc) == "checkpoint /ckpt/step-000000000001 is corrupt: arrays.bin is truncated"


def test_checkpoint_corrupt_survives_pickling():
    """The error keeps its fields through pickle (Celery ships exceptions that way)."""
    import pickle

    exc = pickle.loads(pickle.dumps(training.CheckpointCorrupt("loc", "why")))  # noqa: S301
    assert (exc.location, exc.reason, str(exc)) == ("loc", "why", "checkpoint loc is corrupt: why")
