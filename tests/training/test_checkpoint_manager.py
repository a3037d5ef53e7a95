"""CheckpointManager: saving, retention, validation, async saves and I/O retries."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

np = pytest.importorskip("numpy", reason="checkpoints of arrays need numpy (recoverly[training])")

from recoverly.retry import Retry  # noqa: E402
from recoverly.training import (  # noqa: E402
    CheckpointCorrupt,
    CheckpointManager,
    LocalStore,
    StoreTransaction,
)


def state_for(step: int) -> dict[str, object]:
    """A small state whose content depends on the step."""
    return {"w": np.full(16, step, dtype=np.float64), "epoch": step // 10, "tag": f"s{step}"}


def listing(path: Path) -> list[str]:
    """Every name in a directory, hidden ones included, sorted."""
    return sorted(p.name for p in path.iterdir())


def steps_on_disk(path: Path) -> list[str]:
    """Visible entries of a LocalStore directory, sorted."""
    return sorted(p.name for p in path.iterdir() if not p.name.startswith("."))


def test_save_writes_files_and_a_manifest_that_hashes_them(tmp_path, clock):
    """An entry holds state.json, arrays.bin and a manifest with their SHA-256, step and time."""
    clock.advance(1234.5)
    mgr = CheckpointManager(tmp_path, clock=clock)
    info = mgr.save(5, state_for(5), metrics={"loss": 0.25})
    entry = tmp_path / "step-000000000005"
    assert sorted(p.name for p in entry.iterdir()) == ["arrays.bin", "manifest.json", "state.json"]
    manifest = json.loads((entry / "manifest.json").read_text())
    for name, meta in manifest["files"].items():
        data = (entry / name).read_bytes()
        assert meta == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert manifest["step"] == 5
    assert manifest["created_at"] == clock.wall() == info.created_at
    assert set(manifest["versions"]) >= {"python", "numpy", "recoverly"}
    assert info.step == 5
    assert info.metrics == {"loss": 0.25}
    assert info.location == str(entry)
    assert info.size == sum(m["size"] for m in manifest["files"].values())
    assert [p.name for p in tmp_path.iterdir()] == ["step-000000000005"]  # no temporaries left


def test_load_latest_returns_the_newest_state(tmp_path):
    """load_latest gives the highest step with its state and metrics; list() is oldest first."""
    mgr = CheckpointManager(tmp_path, keep_last=None)
    assert mgr.load_latest() is None
    for step in (10, 30, 20):
        mgr.save(step, state_for(step), metrics={"loss": step / 100})
    ckpt = mgr.load_latest()
    assert ckpt is not None
    assert ckpt.step == 30
    assert ckpt.metrics == {"loss": 0.3}
    assert np.array_equal(ckpt.state["w"], np.full(16, 30.0))
    assert ckpt.state["tag"] == "s30"
    assert [i.step for i in mgr.list()] == [10, 20, 30]
    assert mgr.load(20).state["tag"] == "s20"


def test_keep_last_deletes_older_checkpoints_after_commit(tmp_path):
    """keep_last=2 leaves the two newest entries on disk."""
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for step in range(5):
        mgr.save(step, state_for(step))
    assert steps_on_disk(tmp_path) == ["step-000000000003", "step-000000000004"]
    assert [i.step for i in mgr.list()] == [3, 4]


def test_keep_last_keeps_every_checkpoint_while_there_are_fewer(tmp_path):
    """keep_last=3 with fewer than three saves keeps them all, so there is one to fall back to."""
    mgr = CheckpointManager(tmp_path, keep_last=3)
    for step in range(3):
        mgr.save(step, state_for(step))
        assert [i.step for i in mgr.list()] == list(range(step + 1))
    mgr.save(3, state_for(3))
    assert [i.step for i in mgr.list()] == [1, 2, 3]


@pytest.mark.parametrize(("mode", "best"), [("min", 1), ("max", 3)])
def test_keep_best_keeps_the_best_by_metric(tmp_path, mode, best):
    """keep_best=1 keeps the best checkpoint by the monitored metric besides the newest."""
    losses = {0: 0.9, 1: 0.1, 2: 0.5, 3: 2.0, 4: 0.7, 5: 0.8}
    mgr = CheckpointManager(tmp_path, keep_last=1, keep_best=1, monitor="loss", mode=mode)
    for step, loss in losses.items():
        mgr.save(step, state_for(step), metrics={"loss": loss, "other": 1})
    assert [i.step for i in mgr.list()] == [best, 5]


def test_keep_last_none_keeps_everything(tmp_path):
    """keep_last=None never deletes."""
    mgr = CheckpointManager(tmp_path, keep_last=None)
    for step in range(6):
        mgr.save(step, {"s": step})
    assert len(steps_on_disk(tmp_path)) == 6


def test_saving_a_step_again_replaces_it(tmp_path):
    """A second save of the same step replaces the entry and leaves no trash behind."""
    mgr = CheckpointManager(tmp_path)
    mgr.save(3, {"v": 1})
    mgr.save(3, {"v": 2})
    assert mgr.load(3).state == {"v": 2}
    assert listing(tmp_path) == ["step-000000000003"]


def test_opening_cleans_up_after_crashed_saves(tmp_path):
    """Stale staging directories of dead processes go; an entry left in trash is put back."""
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, {"v": 1})
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    pid = int(dead.stdout)
    (tmp_path / f".tmp-step-000000000002-{pid}-abcd1234").mkdir()
    (tmp_path / f".tmp-step-000000000002-{pid}-abcd1234" / "arrays.bin").write_bytes(b"x")
    (tmp_path / "step-000000000001").rename(tmp_path / f".trash-step-000000000001-{pid}-0f0f0f0f")
    alive = tmp_path / f".tmp-step-000000000009-{os.getppid()}-00000000"
    alive.mkdir()
    CheckpointManager(tmp_path)
    assert listing(tmp_path) == [alive.name, "step-000000000001"]
    assert CheckpointManager(tmp_path).load_latest().state == {"v": 1}


def test_bad_arguments_are_all_reported_at_once(tmp_path):
    """Every bad constructor argument is named in one ValueError, or TypeError for bad kinds."""
    with pytest.raises(ValueError, match="keep_last") as info:
        CheckpointManager(tmp_path, keep_last=0, keep_best=2, mode="avg")
    text = str(info.value)
    assert "keep_last must be an integer >= 1, got 0" in text
    assert "keep_best=2 needs monitor=" in text
    assert "mode must be 'min' or 'max', got 'avg'" in text
    with pytest.raises(TypeError, match="directory must be a path or a Store, got 3"):
        CheckpointManager(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async_save must be a bool, got 'yes'"):
        CheckpointManager(tmp_path, async_save="yes")  # type: ignore[arg-type]


def test_bad_save_arguments_are_refused_before_writing(tmp_path):
    """A bad step, state or metric raises and writes nothing."""
    mgr = CheckpointManager(tmp_path)
    with pytest.raises(ValueError, match="step must be an integer >= 0, got -1"):
        mgr.save(-1, {})
    with pytest.raises(TypeError, match="step must be an integer >= 0, got True"):
        mgr.save(True, {})
    with pytest.raises(TypeError, match="state must be a dict, got list"):
        mgr.save(1, [])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"metrics\['loss'\] must be a number, got 'low'"):
        mgr.save(1, {}, metrics={"loss": "low"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="allow_pickle=True"):
        mgr.save(1, {"x": object()})
    assert listing(tmp_path) == []


def test_numpy_metrics_are_stored_as_floats(tmp_path):
    """A numpy scalar metric is saved as a plain float."""
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, {}, metrics={"loss": np.float32(0.5)})
    assert mgr.load(1).metrics == {"loss": 0.5}
    assert type(mgr.list()[0].metrics["loss"]) is float


def test_load_of_a_missing_step_raises_file_not_found(tmp_path):
    """load(step) of a step never saved raises FileNotFoundError naming it."""
    with pytest.raises(FileNotFoundError, match="no checkpoint for step 4"):
        CheckpointManager(tmp_path).load(4)


def test_closed_manager_refuses_saves(tmp_path):
    """After close() (or the with block) save raises RuntimeError; loading still works."""
    with CheckpointManager(tmp_path) as mgr:
        mgr.save(1, {"a": 1})
    with pytest.raises(RuntimeError, match="is closed"):
        mgr.save(2, {"a": 2})
    assert mgr.load_latest().step == 1
    assert "CheckpointManager" in repr(mgr)
    assert "keep_last=3" in repr(mgr)


# ---------------------------------------------------------------- fault-injecting stores
class FlakyStore(LocalStore):
    """A LocalStore whose transactions fail their first writes with chosen OSErrors."""

    def __init__(self, path, errors, gate=None):
        super().__init__(path)
        self.errors = list(errors)
        self.begun = 0
        self.gate = gate
        self.active = 0
        self.max_active = 0

    def begin(self, name):
        self.begun += 1
        txn = super().begin(name)
        store = self

        class Txn(StoreTransaction):
            def write(self, filename, chunks):
                store.active += 1
                store.max_active = max(store.max_active, store.active)
                try:
                    if store.gate is not None:
                        store.gate.wait(10)
                    if store.errors:
                        code = store.errors.pop(0)
                        raise OSError(code, os.strerror(code), filename)
                    txn.write(filename, chunks)
                finally:
                    store.active -= 1

            def commit(self, manifest):
                txn.commit(manifest)

            def abort(self):
                txn.abort()

        return Txn()


def test_transient_io_error_is_retried(tmp_path, clock):
    """An EIO on write is retried through recoverly.retry; the save succeeds, no temporaries."""
    store = FlakyStore(tmp_path, [errno.EIO])
    mgr = CheckpointManager(store, clock=clock)
    mgr.save(1, state_for(1))
    assert store.begun == 2
    assert mgr.load_latest().step == 1
    assert listing(tmp_path) == ["step-000000000001"]


def test_disk_full_is_not_retried_and_keeps_the_previous_checkpoint(tmp_path, clock):
    """ENOSPC fails at once (one attempt) and the previous checkpoint stays loadable."""
    store = FlakyStore(tmp_path, [])
    mgr = CheckpointManager(store, clock=clock)
    mgr.save(1, state_for(1))
    store.errors = [errno.ENOSPC]
    with pytest.raises(OSError, match="No space left") as info:
        mgr.save(2, state_for(2))
    assert info.value.errno == errno.ENOSPC
    assert store.begun == 2
    assert listing(tmp_path) == ["step-000000000001"]
    assert mgr.load_latest().step == 1


def test_persistent_io_error_gives_up_after_the_retry_policy(tmp_path, clock):
    """EIO on every attempt raises the original OSError after io_retry's attempts."""
    store = FlakyStore(tmp_path, [errno.EIO] * 5)
    retry = Retry(max_attempts=4, delay=0.01, exceptions=OSError, clock=clock)
    mgr = CheckpointManager(store, io_retry=retry)
    with pytest.raises(OSError, match="Input/output error"):
        mgr.save(1, {"a": 1})
    assert store.begun == 4
    assert listing(tmp_path) == []


def test_async_save_snapshots_the_state(tmp_path):
    """In-place updates after an async save() returns do not reach the checkpoint."""
    gate = threading.Event()
    store = FlakyStore(tmp_path, [], gate=gate)
    mgr = CheckpointManager(store, async_save=True)
    weights = np.zeros(1000)
    info = mgr.save(1, {"w": weights, "nested": [weights]})
    assert info.size is None
    weights += 1  # the training step goes on while the write is held back
    gate.set()
    mgr.wait()
    loaded = mgr.load_latest().state
    assert not loaded["w"].any()
    assert not loaded["nested"][0].any()


def test_async_saves_run_one_at_a_time(tmp_path):
    """A second async save waits for the first: never two writes in flight."""
    store = FlakyStore(tmp_path, [])
    mgr = CheckpointManager(store, async_save=True, keep_last=None)
    for step in range(6):
        mgr.save(step, state_for(step))
    mgr.close()
    assert store.max_active == 1
    assert [i.step for i in mgr.list()] == list(range(6))


def test_async_error_surfaces_on_the_next_call(tmp_path, clock, caplog):
    """An error raised in the background is raised by the next save, and only once."""
    store = FlakyStore(tmp_path, [errno.ENOSPC])
    mgr = CheckpointManager(store, async_save=True, clock=clock)
    with caplog.at_level("WARNING", logger="recoverly.training"):
        mgr.save(1, state_for(1))  # returns; fails in the background
        with pytest.raises(OSError, match="No space left") as info:
            mgr.save(2, state_for(2))
    assert "background save of step 1 failed" in caplog.text
    assert info.value.errno == errno.ENOSPC
    assert mgr.list() == []  # the failing call did not start a save of step 2
    mgr.save(3, state_for(3))
    mgr.wait()
    assert [i.step for i in mgr.list()] == [3]


def test_async_error_surfaces_on_wait_and_close(tmp_path, clock):
    """wait() and close() re-raise a background failure instead of losing it."""
    store = FlakyStore(tmp_path, [errno.ENOSPC, errno.ENOSPC])
    mgr = CheckpointManager(store, async_save=True, clock=clock)
    mgr.save(1, {"a": 1})
    with pytest.raises(OSError, match="No space left"):
        mgr.wait()
    mgr.wait()  # reported once
    mgr.save(2, {"a": 2})
    with pytest.raises(OSError, match="No space left"):
        mgr.close()


def test_failed_save_deletes_nothing(tmp_path, clock):
    """Retention runs only after a commit: a failed save leaves every old checkpoint."""
    store = FlakyStore(tmp_path, [])
    mgr = CheckpointManager(store, keep_last=1, clock=clock)
    mgr.save(1, {"a": 1})
    before = {p.name: p.read_bytes() for p in (tmp_path / "step-000000000001").iterdir()}
    store.errors = [errno.ENOSPC]
    with pytest.raises(OSError, match="No space"):
        mgr.save(2, {"a": 2})
    after = {p.name: p.read_bytes() for p in (tmp_path / "step-000000000001").iterdir()}
    assert before == after


def test_damaged_old_entries_are_pruned_but_not_newer_ones(tmp_path):
    """An entry with a broken manifest older than all kept ones is deleted; a newer one stays."""
    mgr = CheckpointManager(tmp_path, keep_last=1)
    mgr.save(1, {"a": 1})
    mgr.save(9, {"a": 9})
    (tmp_path / "step-000000000009" / "manifest.json").write_text("{")
    (tmp_path / "step-000000000000").mkdir()
    mgr.save(5, {"a": 5})
    assert steps_on_disk(tmp_path) == ["step-000000000005", "step-000000000009"]
    with pytest.raises(CheckpointCorrupt, match=r"manifest\.json is not valid"):
        mgr.load(9)


def test_numpy_checkpoints_do_not_import_torch(tmp_path):
    """Saving and loading arrays never imports torch (it is loaded only when a tensor is met)."""
    code = (
        "import sys; from recoverly.training import CheckpointManager; import numpy as np\n"
        f"m = CheckpointManager({str(tmp_path)!r}); m.save(1, {{'w': np.ones(3)}})\n"
        "assert m.load_latest().step == 1\n"
        "print('torch' in sys.modules, 'safetensors' in sys.modules)\n"
    )
    out = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    assert out.stdout.split() == ["False", "False"]


def test_async_snapshots_reuse_the_previous_buffers_without_mixing_states(tmp_path):
    """The second snapshot copies into the first one's buffer; each checkpoint keeps its data."""
    gate = threading.Event()
    store = FlakyStore(tmp_path, [], gate=gate)
    mgr = CheckpointManager(store, async_save=True, keep_last=None)
    weights = np.zeros(1000)
    gate.set()
    mgr.save(1, {"w": weights})
    mgr.wait()
    buffer = mgr._spare.arrays[0]
    gate.clear()
    weights += 1
    mgr.save(2, {"w": weights})
    weights += 1  # not seen by checkpoint 2
    gate.set()
    mgr.wait()
    assert mgr._spare.arrays[0] is buffer
    assert not mgr.load(1).state["w"].any()
    assert (mgr.load(2).state["w"] == 1).all()


def test_saves_from_several_threads_never_overlap(tmp_path):
    """Concurrent save() calls from four threads run one at a time; every one is committed."""
    store = FlakyStore(tmp_path, [])
    mgr = CheckpointManager(store, async_save=True, keep_last=None)
    threads = [
        threading.Thread(target=lambda i=i: [mgr.save(i * 10 + k, state_for(k)) for k in range(3)])
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    mgr.close()
    assert store.max_active == 1
    assert len(mgr.list()) == 12


def test_saves_and_failed_saves_are_events(tmp_path, clock):
    """CheckpointSaved carries step, duration and size; a failed save emits CheckpointSaveFailed."""
    from recoverly import events as ev

    seen: list[object] = []
    ev.subscribe(seen.append, (ev.CheckpointSaved, ev.CheckpointSaveFailed))
    store = FlakyStore(tmp_path, [])
    mgr = CheckpointManager(store, clock=clock, name="trainer")
    info = mgr.save(1, state_for(1))
    store.errors = [errno.ENOSPC]
    with pytest.raises(OSError, match="No space left"):
        mgr.save(2, state_for(2))
    saved, failed = seen
    assert isinstance(saved, ev.CheckpointSaved)
    assert (saved.name, saved.step, saved.size) == ("trainer", 1, info.size)
    assert saved.duration >= 0
    assert isinstance(failed, ev.CheckpointSaveFailed)
    assert (failed.name, failed.step, failed.exception.errno) == ("trainer", 2, errno.ENOSPC)
