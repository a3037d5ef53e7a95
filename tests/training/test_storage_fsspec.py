"""FsspecStore: checkpoints on object storage (fsspec memory:// and file://)."""

from __future__ import annotations

import logging
import uuid

import pytest

np = pytest.importorskip("numpy", reason="checkpoints of arrays need numpy (recoverly[training])")
fsspec = pytest.importorskip("fsspec", reason="FsspecStore needs fsspec (recoverly[fsspec])")

from recoverly.training import CheckpointManager, FsspecStore  # noqa: E402


@pytest.fixture
def memory_store():
    store = FsspecStore(f"memory://ckpt-{uuid.uuid4().hex}")
    yield store
    store.fs.rm(store.root, recursive=True)


def test_round_trip_and_retention_on_memory_fs(memory_store):
    """Saves land under a token with a commit marker; keep_last prunes; the newest loads."""
    mgr = CheckpointManager(memory_store, keep_last=2)
    for step in range(4):
        mgr.save(step, {"w": np.full(100, float(step)), "t": (step,)}, metrics={"loss": 1.0})
    assert sorted(memory_store.names()) == ["step-000000000002", "step-000000000003"]
    ckpt = mgr.load_latest()
    assert ckpt is not None
    assert ckpt.step == 3
    assert ckpt.state["t"] == (3,)
    assert ckpt.state["w"].tobytes() == np.full(100, 3.0).tobytes()
    token = memory_store._committed("step-000000000003")
    files = sorted(
        p.rsplit("/", 1)[-1] for p in memory_store.fs.find(memory_store._path("step-000000000003"))
    )
    assert files == ["arrays.bin", "commit", "manifest.json", "state.json"]
    assert (
        memory_store.fs.cat_file(memory_store._path("step-000000000003", "commit"))
        == token.encode()
    )
    assert ckpt.info.location == f"{memory_store.url}/step-000000000003"


def test_replacing_a_step_keeps_one_version(memory_store):
    """Saving a step again switches the commit marker to the new token and drops the old one."""
    mgr = CheckpointManager(memory_store)
    mgr.save(1, {"v": 1})
    old = memory_store._committed("step-000000000001")
    mgr.save(1, {"v": 2})
    assert mgr.load(1).state == {"v": 2}
    assert memory_store._tokens("step-000000000001") == [
        memory_store._committed("step-000000000001")
    ]
    assert old not in memory_store._tokens("step-000000000001")


def test_uncommitted_versions_are_invisible_and_cleaned_up(memory_store):
    """Files written without a commit marker are never listed and go on the next open."""
    mgr = CheckpointManager(memory_store)
    mgr.save(1, {"v": 1})
    memory_store.fs.pipe_file(
        memory_store._path("step-000000000002", "999-dead", "state.json"), b"{}"
    )
    memory_store.fs.pipe_file(
        memory_store._path("step-000000000001", "999-beef", "state.json"), b"{}"
    )
    assert memory_store.names() == ["step-000000000001"]
    assert mgr.load_latest().step == 1
    CheckpointManager(memory_store)
    assert memory_store._tokens("step-000000000002") == []
    assert memory_store._tokens("step-000000000001") == [
        memory_store._committed("step-000000000001")
    ]


def test_corrupt_object_falls_back_with_a_warning(memory_store, caplog):
    """A changed object in the newest checkpoint is detected by its SHA-256 and skipped."""
    mgr = CheckpointManager(memory_store, keep_last=None)
    mgr.save(1, {"w": np.zeros(10)})
    mgr.save(2, {"w": np.ones(10)})
    token = memory_store._committed("step-000000000002")
    memory_store.fs.pipe_file(
        memory_store._path("step-000000000002", token, "arrays.bin"), b"\0" * 80
    )
    with caplog.at_level(logging.WARNING, logger="recoverly.training"):
        ckpt = mgr.load_latest()
    assert ckpt.step == 1
    assert "arrays.bin does not match its SHA-256" in caplog.text


def test_file_url_works_too(tmp_path):
    """A file:// URL goes through the same store logic on the local disk."""
    store = FsspecStore(f"file://{tmp_path}/run")
    mgr = CheckpointManager(store, async_save=True)
    mgr.save(5, {"w": np.arange(3)})
    mgr.close()
    assert (tmp_path / "run" / "step-000000000005" / "commit").exists()
    assert CheckpointManager(store).load_latest().state["w"].tolist() == [0, 1, 2]
    assert repr(store) == f"FsspecStore('file://{tmp_path}/run')"
