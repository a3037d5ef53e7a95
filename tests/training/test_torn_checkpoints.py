"""A damaged newest checkpoint is skipped with a WARNING and the previous good one is loaded."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

np = pytest.importorskip("numpy", reason="checkpoints of arrays need numpy (recoverly[training])")

from recoverly.training import CheckpointCorrupt, CheckpointManager  # noqa: E402

NEWEST = "step-000000000002"


def truncate(name: str, keep: float) -> Callable[[Path], None]:
    def damage(entry: Path) -> None:
        path = entry / name
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])

    return damage


def flip_byte(name: str) -> Callable[[Path], None]:
    def damage(entry: Path) -> None:
        path = entry / name
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))

    return damage


def delete(name: str) -> Callable[[Path], None]:
    return lambda entry: (entry / name).unlink()


def append(name: str) -> Callable[[Path], None]:
    def damage(entry: Path) -> None:
        with (entry / name).open("ab") as f:
            f.write(b"\0" * 8)

    return damage


def edit_manifest(entry: Path) -> None:
    """Valid JSON whose content was changed (a metric) without fixing its checksum."""
    doc = json.loads((entry / "manifest.json").read_text())
    doc["metrics"]["loss"] = 0.0
    (entry / "manifest.json").write_text(json.dumps(doc))


def foreign_manifest(entry: Path) -> None:
    """The manifest of another (intact) checkpoint copied in."""
    shutil.copy(entry.parent / "step-000000000001" / "manifest.json", entry / "manifest.json")


def garble_manifest(entry: Path) -> None:
    (entry / "manifest.json").write_bytes(b"\x00\xffnot json")


DAMAGES = {
    "arrays truncated to half": (truncate("arrays.bin", 0.5), "arrays.bin is truncated"),
    "arrays truncated to zero": (truncate("arrays.bin", 0.0), "arrays.bin is truncated"),
    "arrays byte flipped": (flip_byte("arrays.bin"), "arrays.bin does not match its SHA-256"),
    "arrays extra bytes": (append("arrays.bin"), "arrays.bin has 4008 bytes"),
    "arrays deleted": (delete("arrays.bin"), "arrays.bin is missing"),
    "state truncated": (truncate("state.json", 0.7), "state.json has"),
    "state byte flipped": (flip_byte("state.json"), "state.json does not match its SHA-256"),
    "state deleted": (delete("state.json"), "state.json is missing"),
    "manifest deleted": (delete("manifest.json"), "manifest.json is missing"),
    "manifest empty": (truncate("manifest.json", 0.0), "manifest.json is not valid"),
    "manifest truncated": (truncate("manifest.json", 0.6), "manifest.json is not valid"),
    "manifest garbled": (garble_manifest, "manifest.json is not valid"),
    "manifest edited": (edit_manifest, "manifest.json does not match its checksum"),
    "manifest of another step": (foreign_manifest, "is for step 1, not step-000000000002"),
}


def saved(tmp_path: Path) -> CheckpointManager:
    """Three checkpoints (steps 0, 1, 2) of 500 float64s each."""
    mgr = CheckpointManager(tmp_path, keep_last=None)
    for step in range(3):
        mgr.save(step, {"w": np.full(500, float(step)), "step": step}, metrics={"loss": 1.0})
    return mgr


@pytest.mark.parametrize("kind", list(DAMAGES))
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog, kind):
    """load_latest skips the damaged step 2 with a WARNING naming it and why, and loads step 1."""
    mgr = saved(tmp_path)
    damage, reason = DAMAGES[kind]
    damage(tmp_path / NEWEST)
    with caplog.at_level(logging.WARNING, logger="recoverly.training"):
        ckpt = mgr.load_latest()
    assert ckpt is not None
    assert ckpt.step == 1
    assert ckpt.state["w"].tobytes() == np.full(500, 1.0).tobytes()
    assert ckpt.state["step"] == 1
    text = caplog.text
    assert f"skipping checkpoint {tmp_path / NEWEST}" in text
    assert reason in text
    assert f"loaded step 1 from {tmp_path / 'step-000000000001'} instead of" in text
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    with pytest.raises(CheckpointCorrupt, match=NEWEST) as info:
        mgr.load(2)
    assert reason in info.value.reason


def test_several_damaged_checkpoints_are_all_skipped(tmp_path, caplog):
    """With steps 2 and 1 damaged, step 0 is loaded and both are named in warnings."""
    mgr = saved(tmp_path)
    flip_byte("arrays.bin")(tmp_path / NEWEST)
    delete("manifest.json")(tmp_path / "step-000000000001")
    with caplog.at_level(logging.WARNING, logger="recoverly.training"):
        ckpt = mgr.load_latest()
    assert ckpt is not None
    assert ckpt.step == 0
    assert "instead of the newer damaged step-000000000002, step-000000000001" in caplog.text


def test_all_damaged_gives_none_and_a_warning(tmp_path, caplog):
    """When no checkpoint verifies, load_latest returns None and says so."""
    mgr = saved(tmp_path)
    for step in range(3):
        delete("state.json")(tmp_path / f"step-{step:012d}")
    with caplog.at_level(logging.WARNING, logger="recoverly.training"):
        assert mgr.load_latest() is None
    assert f"no usable checkpoint in {tmp_path}" in caplog.text
    assert caplog.text.count("skipping checkpoint") == 3


def test_list_leaves_out_entries_with_a_damaged_manifest(tmp_path):
    """list() only shows entries whose manifest verifies."""
    mgr = saved(tmp_path)
    garble_manifest(tmp_path / NEWEST)
    assert [i.step for i in mgr.list()] == [0, 1]
