"""The progress journal: append-only lines with checksums, acks, torn-line recovery, the bound."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from recoverly.training._journal import Journal, decode, encode


def _append(journal: Journal, step: int, **extra: float) -> int:
    return journal.append(7, 0, step, "running", None, {"loss": 1.0 / step, **extra}, 1.5).seq


def _lines(path: Path) -> list[dict[str, object]]:
    out = []
    for line in path.read_bytes().splitlines():
        obj = decode(line)
        assert obj is not None
        out.append(obj)
    return out


def test_each_record_is_one_checksummed_json_line(tmp_path: Path):
    """An append writes one line: 8 hex digits of CRC-32, a space, the record's JSON."""
    path = tmp_path / "p.journal"
    journal = Journal(path, 1 << 20, fsync=False)
    _append(journal, 1)
    data = path.read_bytes()
    assert data.endswith(b"\n")
    assert data.count(b"\n") == 1
    crc, body = data[:-1].split(b" ", 1)
    assert len(crc) == 8
    assert json.loads(body) == {
        "seq": 1,
        "run": 7,
        "epoch": 0,
        "step": 1,
        "status": "running",
        "pct": None,
        "metrics": {"loss": 1.0},
        "t": 1.5,
    }
    assert decode(data[:-1]) is not None
    journal.close()


def test_checksum_mismatch_is_detected():
    """A line whose body changed after writing does not decode."""
    line = encode({"seq": 1, "step": 5})[:-1]
    assert decode(line) == {"seq": 1, "step": 5}
    assert decode(line.replace(b"5", b"6")) is None
    assert decode(b"garbage") is None
    assert decode(b"zzzzzzzz {}") is None


def test_a_new_journal_replays_what_was_not_acknowledged(tmp_path: Path):
    """Records after the last ack come back, in order, in a journal reopened on the same file."""
    path = tmp_path / "p.journal"
    journal = Journal(path, 1 << 20, fsync=False)
    for step in range(1, 6):
        _append(journal, step)
    journal.ack(2)
    journal.close()

    again = Journal(path, 1 << 20, fsync=False)
    assert again.recovered == 3
    assert [r.step for r in again.pending(100)] == [3, 4, 5]
    assert again.acked == 2
    assert _append(again, 6) == 6  # numbering goes on after the old records
    again.close()


def test_torn_last_line_is_ignored_and_cut_off(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """A half-written last line (no newline) is dropped, truncated away, and appends stay clean."""
    path = tmp_path / "p.journal"
    journal = Journal(path, 1 << 20, fsync=False)
    _append(journal, 1)
    _append(journal, 2)
    journal.close()
    whole = path.read_bytes()
    torn = encode({"seq": 3, "run": 7})[:-7]  # the process died mid-write
    path.write_bytes(whole + torn)

    with caplog.at_level(logging.WARNING, logger="recoverly"):
        again = Journal(path, 1 << 20, fsync=False)
    assert "torn last line" in caplog.text
    assert [r.step for r in again.pending(10)] == [1, 2]
    assert path.read_bytes() == whole
    _append(again, 3)
    again.close()
    assert [obj["step"] for obj in _lines(path)] == [1, 2, 3]


def test_corrupt_complete_line_is_skipped(tmp_path: Path):
    """A full line with a bad checksum is counted and skipped; the lines around it survive."""
    path = tmp_path / "p.journal"
    journal = Journal(path, 1 << 20, fsync=False)
    for step in (1, 2, 3):
        _append(journal, step)
    journal.close()
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"step":2', b'"step":9')
    path.write_bytes(b"".join(lines))

    again = Journal(path, 1 << 20, fsync=False)
    assert again.corrupt_lines == 1
    assert [r.step for r in again.pending(10)] == [1, 3]
    again.close()


def test_ack_is_journaled_and_removes_pending(tmp_path: Path):
    """ack(seq) writes an ack line and leaves only later records pending."""
    path = tmp_path / "p.journal"
    journal = Journal(path, 1 << 20, fsync=False)
    for step in (1, 2, 3):
        _append(journal, step)
    journal.ack(2)
    journal.ack(1)  # an older ack changes nothing
    assert journal.pending_count == 1
    assert _lines(path)[-1] == {"ack": 2}
    assert [r.seq for r in journal.pending(10)] == [3]
    journal.close()


def test_pending_keeps_journal_order_and_limit(tmp_path: Path):
    """pending(n) returns the n oldest undelivered records, oldest first."""
    journal = Journal(tmp_path / "p.journal", 1 << 20, fsync=False)
    for step in (5, 3, 9, 1):  # steps out of order are kept in the order reported
        _append(journal, step)
    assert [r.step for r in journal.pending(3)] == [5, 3, 9]
    journal.close()


def test_bound_compacts_acknowledged_records_away(tmp_path: Path):
    """Past max_bytes the file is rewritten without acknowledged records, nothing pending lost."""
    path = tmp_path / "p.journal"
    journal = Journal(path, 4096, fsync=False)
    for step in range(1, 200):
        seq = _append(journal, step)
        journal.ack(seq - 1)  # the sender keeps up, one behind
    assert path.stat().st_size <= 4096
    assert journal.dropped == 0
    assert [r.step for r in journal.pending(10)] == [199]
    journal.close()
    again = Journal(path, 4096, fsync=False)
    assert [r.step for r in again.pending(10)] == [199]
    again.close()


def test_bound_drops_the_oldest_undelivered_and_keeps_the_newest(tmp_path: Path):
    """With nothing delivered, the file stays bounded and the newest records are the ones kept."""
    path = tmp_path / "p.journal"
    journal = Journal(path, 4096, fsync=False)
    for step in range(1, 1001):
        _append(journal, step)
    assert path.stat().st_size <= 4096
    kept = [r.step for r in journal.pending(10_000)]
    assert kept[-1] == 1000
    assert kept == list(range(kept[0], 1001))  # a contiguous newest tail
    assert journal.dropped == 1000 - len(kept)
    assert journal.dropped > 0
    journal.close()
    again = Journal(path, 4096, fsync=False)
    assert [r.step for r in again.pending(10_000)] == kept
    assert _append(again, 1001) == 1001
    again.close()


def test_a_single_oversized_record_is_still_kept(tmp_path: Path):
    """The newest record survives compaction even when it alone exceeds the bound."""
    journal = Journal(tmp_path / "p.journal", 4096, fsync=False)
    big = {f"m{i}": float(i) for i in range(400)}
    journal.append(7, 0, 1, "running", None, big, 1.0)
    assert [r.step for r in journal.pending(10)] == [1]
    assert journal.pending(1)[0].metrics == big
    journal.close()


def test_non_finite_metrics_round_trip(tmp_path: Path):
    """NaN and infinities in metrics survive the journal."""
    path = tmp_path / "p.journal"
    journal = Journal(path, 1 << 20, fsync=False)
    journal.append(7, 0, 1, "running", None, {"a": float("nan"), "b": float("-inf")}, 1.0)
    journal.close()
    record = Journal(path, 1 << 20, fsync=False).pending(1)[0]
    assert record.metrics["a"] != record.metrics["a"]
    assert record.metrics["b"] == float("-inf")


def test_fsync_mode_writes_the_same_lines(tmp_path: Path):
    """fsync=True journals exactly what fsync=False does."""
    a, b = tmp_path / "a", tmp_path / "b"
    for path, sync in ((a, False), (b, True)):
        journal = Journal(path, 1 << 20, fsync=sync)
        _append(journal, 1)
        journal.sync()
        journal.close()
    assert a.read_bytes() == b.read_bytes()


def test_unwritable_path_keeps_records_in_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """When the journal file cannot be created, appends still queue records (and log once)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING, logger="recoverly"):
        journal = Journal(blocker / "sub" / "p.journal", 4096, fsync=False)
        for step in range(1, 4):
            _append(journal, step)
    assert [r.step for r in journal.pending(10)] == [1, 2, 3]
    assert caplog.text.count("keeping progress in memory") == 1
    journal.ack(3)
    assert journal.pending_count == 0
    journal.close()


def test_writes_after_close_are_not_journaled(tmp_path: Path):
    """A late ack after close() does not reopen the file."""
    path = tmp_path / "p.journal"
    journal = Journal(path, 1 << 20, fsync=False)
    _append(journal, 1)
    journal.close()
    size = path.stat().st_size
    journal.ack(1)
    assert path.stat().st_size == size
    assert "pending=0" in repr(journal)


def test_sync_flushes_only_when_something_was_written(tmp_path: Path, monkeypatch):
    """sync() fsyncs after new writes and does nothing when there is nothing new."""
    import recoverly.training._journal as journal_module

    calls: list[int] = []
    real = journal_module.os.fsync
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: calls.append(fd) or real(fd))
    journal = Journal(tmp_path / "p.journal", 1 << 20, fsync=False)
    journal.sync()
    assert calls == []
    _append(journal, 1)
    _append(journal, 2)
    journal.sync()
    journal.sync()
    assert len(calls) == 1
    journal.ack(2)
    journal.close()  # close syncs the ack line
    assert len(calls) == 2


def test_failed_compaction_is_not_retried_on_every_append(tmp_path: Path, monkeypatch):
    """When the rewrite fails, appends go on and the next try waits for another half bound."""
    path = tmp_path / "p.journal"
    journal = Journal(path, 4096, fsync=False)
    tries: list[int] = []

    def broken(self: Path, data: bytes) -> int:
        tries.append(len(data))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", broken)
    for step in range(1, 80):
        seq = _append(journal, step)
        journal.ack(seq)  # everything delivered: only the file size triggers compaction
    assert 1 <= len(tries) <= 5  # not once per append past the bound (~50 of them)
    assert journal.pending_count == 0
    monkeypatch.undo()
    for step in range(80, 200):
        journal.ack(_append(journal, step))
    assert path.stat().st_size <= 4096  # compaction works again once the disk does
    journal.close()


# One operation: (kind, size). Kind 0 reopens the journal after a torn write of size % 31
# bytes, 1-2 acknowledge size % 3 of the oldest pending records, 3-9 append a record whose
# metric name is size characters long (so appends dominate and the bound is reached).
_OPS = st.lists(st.tuples(st.integers(0, 9), st.integers(1, 120)), min_size=30, max_size=80)


@given(ops=_OPS)
@settings(max_examples=25)
def test_journal_invariants_hold_for_any_sequence_of_operations(ops, tmp_path_factory):
    """Pending stays ordered, bounded, the newest tail, across reopening and torn writes."""
    path = tmp_path_factory.mktemp("j") / "p.journal"
    journal = Journal(path, 1024, fsync=False)
    appended: list[int] = []  # seqs in order
    acked = dropped = 0
    pending: list[int] = []
    for kind, arg in ops:
        if kind >= 3:
            seq = journal.append(1, 0, len(appended), "r", None, {"x" * arg: 1.0}, 0.0).seq
            assert seq == (appended[-1] + 1 if appended else seq)
            appended.append(seq)
        elif kind >= 1:
            oldest = journal.pending(arg % 3)
            if oldest:
                acked = oldest[-1].seq
                journal.ack(acked)
        else:
            dropped += journal.dropped
            journal.close()
            if arg % 31:
                with path.open("ab") as f:
                    f.write(encode({"seq": 10**6, "run": 1})[: arg % 31])
            journal = Journal(path, 1024, fsync=False)
        pending = [r.seq for r in journal.pending(10**6)]
        assert pending == sorted(pending)
        assert all(seq > acked for seq in pending)
        undelivered = [seq for seq in appended if seq > acked]
        assert pending == undelivered[len(undelivered) - len(pending) :]  # a newest tail
        if undelivered:
            assert pending, "the newest undelivered record is always kept"
        assert path.stat().st_size <= 1024
    event(f"records dropped: {dropped + journal.dropped > 0}")
    journal.close()
    assert [r.seq for r in Journal(path, 1024, fsync=False).pending(10**6)] == pending
