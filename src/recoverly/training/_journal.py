"""The progress journal: a bounded, append-only file of progress records and acknowledgements.

One line per entry: the CRC-32 of the JSON as 8 hex digits, a space, compact
JSON, a newline::

    3f1c2a9b {"seq":7,"run":42,"epoch":1,"step":700,"status":"running",...,"t":1700000000.5}
    0a77e2c4 {"ack":7}

A record is *pending* until an ``ack`` line with a ``seq`` at least its own
follows it. Reading the file back (a new journal after a crash) keeps every
line whose checksum matches: a last line without its newline (the process died
mid-write) is cut off the file, and a complete line whose checksum does not
match is skipped with a warning.

**Durability.** Appends go straight to the kernel with one ``write`` on an
``O_APPEND`` descriptor (no user-space buffer), so a record survives the
process crashing the moment ``append`` returns. Surviving a power loss takes an
``fsync``: ``fsync=True`` does one per append (on the caller's thread);
otherwise :meth:`Journal.sync` (which the tracker's sender thread calls at
most once a second) flushes what was written so far.

**Bound.** The file never grows past ``max_bytes`` for long: when it does, or
when the pending records alone exceed it, it is *compacted*: rewritten with the
pending records only (acknowledged ones are dropped), and if those still take
more than half of ``max_bytes`` the oldest are dropped until they fit, always
keeping the newest. Progress only moves forward, so the newest record is the
one that matters; dropped records are counted in :attr:`Journal.dropped`.

Nothing here raises :class:`OSError` into the caller: a failing disk is
logged, the records stay in memory (within the same bound) and the next append
tries the disk again.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import threading
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Journal", "Metric", "ProgressRecord"]

_log = logging.getLogger("recoverly")

#: A metric value as recorded: a number (non-finite floats included).
Metric = int | float


@dataclass(frozen=True, slots=True)
class ProgressRecord:
    """One progress report, as journaled and replayed to the database.

    Attributes:
        seq: Position in the journal (increases by one per record).
        run_id: The run it belongs to (``ModelRun.id``).
        epoch: Epoch number.
        step: Global step number; the database keeps progress by ``(run_id, step)``.
        status: Free-form status (``"running"``, ``"completed"``, ...).
        progress_percentage: 0 to 100, or ``None`` when unknown.
        metrics: Metric names to numbers.
        recorded_at: Wall-clock time of the report (seconds since the epoch).

    .. versionadded:: 0.2
    """

    seq: int
    run_id: int | str
    epoch: int
    step: int
    status: str
    progress_percentage: float | None
    metrics: dict[str, Metric]
    recorded_at: float

    def to_json(self) -> dict[str, Any]:
        """Return the journal's JSON object for this record."""
        return {
            "seq": self.seq,
            "run": self.run_id,
            "epoch": self.epoch,
            "step": self.step,
            "status": self.status,
            "pct": self.progress_percentage,
            "metrics": self.metrics,
            "t": self.recorded_at,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ProgressRecord:
        """Build a record from its journal JSON (``KeyError``/``TypeError`` if malformed)."""
        metrics = obj["metrics"]
        if not isinstance(metrics, dict):
            raise TypeError(metrics)
        return cls(
            seq=int(obj["seq"]),
            run_id=obj["run"],
            epoch=int(obj["epoch"]),
            step=int(obj["step"]),
            status=str(obj["status"]),
            progress_percentage=None if obj["pct"] is None else float(obj["pct"]),
            metrics=metrics,
            recorded_at=float(obj["t"]),
        )


def encode(obj: dict[str, Any]) -> bytes:
    """Return one journal line: checksum, space, compact JSON, newline."""
    body = json.dumps(obj, separators=(",", ":"), allow_nan=True).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def decode(line: bytes) -> dict[str, Any] | None:
    """Return the JSON object of a complete line (newline removed), or ``None`` if corrupt."""
    if len(line) < 10 or line[8:9] != b" ":  # noqa: PLR2004 - 8 hex digits and a space
        return None
    body = line[9:]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        obj = json.loads(body)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


class Journal:
    """A bounded append-only journal of :class:`ProgressRecord` (see the module docs).

    Thread-safe: one thread appends while another reads pending records and
    acknowledges them.

    Args:
        path: The journal file (created with its folder if missing).
        max_bytes: The bound on the file (and on the pending records).
        fsync: ``fsync`` after every append.
    """

    __slots__ = (
        "_closed",
        "_compact_at",
        "_compacted",
        "_disk_failing",
        "_fd",
        "_file_bytes",
        "_lock",
        "_next_seq",
        "_pending",
        "_pending_bytes",
        "_unsynced",
        "acked",
        "appended",
        "corrupt_lines",
        "dropped",
        "fsync",
        "max_bytes",
        "path",
        "recovered",
    )

    def __init__(self, path: str | os.PathLike[str], max_bytes: int, *, fsync: bool) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._compact_at = max_bytes  # file size that triggers a compaction
        self.fsync = fsync
        self._lock = threading.Lock()
        self._pending: deque[tuple[ProgressRecord, int]] = deque()  # (record, line size)
        self._pending_bytes = 0
        self._file_bytes = 0
        self._next_seq = 1
        self._fd: int | None = None
        self._disk_failing = False
        self._compacted = False
        self._closed = False
        self._unsynced = False
        self.acked = 0
        self.appended = 0
        self.dropped = 0
        self.corrupt_lines = 0
        self.recovered = 0
        self._recover()

    # ------------------------------------------------------------------ opening
    def _recover(self) -> None:
        """Read an existing file back: pending records, last ack, next seq; cut a torn tail."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        except OSError as exc:
            self._disk_trouble("reading", exc)
            data = b""
        end = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
        if end < len(data):
            _log.warning(
                "Progress journal %s: ignoring a torn last line (%d bytes)",
                self.path,
                len(data) - end,
            )
        records, acked = self._parse(data[:end])
        if self.corrupt_lines:
            _log.warning(
                "Progress journal %s: skipped %d corrupt line(s)", self.path, self.corrupt_lines
            )
        self.acked = acked
        for seq in sorted(records):
            if seq > acked:
                record, size = records[seq]
                self._pending.append((record, size))
                self._pending_bytes += size
        self._next_seq = max([acked, *records]) + 1
        self.recovered = len(self._pending)
        self._fd = self._open()
        if self._fd is not None and end < len(data):
            try:
                os.ftruncate(self._fd, end)
            except OSError as exc:  # pragma: no cover - a file we could open for writing
                self._disk_trouble("truncating the torn line", exc)
        self._file_bytes = end

    def _parse(self, data: bytes) -> tuple[dict[int, tuple[ProgressRecord, int]], int]:
        """Return the records by seq (with their line sizes) and the highest ack in ``data``."""
        records: dict[int, tuple[ProgressRecord, int]] = {}
        acked = 0
        for line in data.splitlines():
            obj = decode(line)
            try:
                if obj is not None and "ack" in obj:
                    acked = max(acked, int(obj["ack"]))
                elif obj is not None:
                    record = ProgressRecord.from_json(obj)
                    records[record.seq] = (record, len(line) + 1)
                else:
                    self.corrupt_lines += 1
            except (KeyError, TypeError, ValueError):
                self.corrupt_lines += 1
        return records, acked

    def _open(self) -> int | None:
        try:
            return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            self._disk_trouble("open", exc)
            return None

    def _disk_trouble(self, what: str, exc: OSError) -> None:
        if not self._disk_failing:
            _log.warning(
                "Progress journal %s: %s failed (%s); keeping progress in memory until it works",
                self.path,
                what,
                exc,
            )
        self._disk_failing = True

    def _write(self, line: bytes) -> None:
        """Append ``line`` to the file (lock held); log, never raise, on a disk error."""
        if self._closed:
            return
        if self._fd is None:
            self._fd = self._open()
            if self._fd is None:
                return
        try:
            os.write(self._fd, line)
            if self.fsync:
                os.fsync(self._fd)
        except OSError as exc:
            self._disk_trouble("write", exc)
            return
        self._file_bytes += len(line)
        self._unsynced = not self.fsync
        if self._disk_failing:
            _log.warning("Progress journal %s: writing works again", self.path)
            self._disk_failing = False

    # ------------------------------------------------------------------ the API
    def append(
        self,
        run_id: int | str,
        epoch: int,
        step: int,
        status: str,
        progress_percentage: float | None,
        metrics: dict[str, Metric],
        recorded_at: float,
    ) -> ProgressRecord:
        """Journal one record (numbered here) and return it."""
        with self._lock:
            record = ProgressRecord(
                self._next_seq,
                run_id,
                epoch,
                step,
                status,
                progress_percentage,
                metrics,
                recorded_at,
            )
            line = encode(record.to_json())
            self._next_seq += 1
            self._pending.append((record, len(line)))
            self._pending_bytes += len(line)
            self.appended += 1
            self._write(line)
            if self._file_bytes > self._compact_at or self._pending_bytes > self.max_bytes:
                self._compact()
            return record

    def pending(self, limit: int) -> list[ProgressRecord]:
        """Return up to ``limit`` of the oldest pending records, in journal order."""
        with self._lock:
            return [record for record, _ in itertools.islice(self._pending, limit)]

    @property
    def pending_count(self) -> int:
        """How many records are not acknowledged yet."""
        return len(self._pending)

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the newest record ever appended (0 if none)."""
        return self._next_seq - 1

    @property
    def file_bytes(self) -> int:
        """The size of the journal file as written by this process."""
        return self._file_bytes

    def ack(self, seq: int) -> None:
        """Mark every record up to ``seq`` as delivered (journaled as an ``ack`` line)."""
        with self._lock:
            if seq <= self.acked:
                return
            self.acked = seq
            while self._pending and self._pending[0][0].seq <= seq:
                _, size = self._pending.popleft()
                self._pending_bytes -= size
            self._write(encode({"ack": seq}))
            if self._file_bytes > self._compact_at:
                self._compact()

    def sync(self) -> None:
        """Flush what was written since the last sync to disk (``fsync``), never raising."""
        with self._lock:
            if not self._unsynced or self._fd is None:
                return
            fd = os.dup(self._fd)
            compacted, self._compacted = self._compacted, False
            self._unsynced = False
        try:
            os.fsync(fd)
            if compacted:
                _fsync_dir(self.path.parent)
        except OSError as exc:
            _log.warning("Progress journal %s: fsync failed (%s)", self.path, exc)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Sync and close the file; the journal must not be used afterwards."""
        self.sync()
        with self._lock:
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    # ------------------------------------------------------------------ the bound
    def _compact(self) -> None:
        """Rewrite the file with the pending records only, dropping the oldest beyond the bound."""
        if self._closed:
            return
        budget = self.max_bytes // 2
        dropped = 0
        while len(self._pending) > 1 and self._pending_bytes > budget:
            _, size = self._pending.popleft()
            self._pending_bytes -= size
            dropped += 1
        if dropped:
            self.dropped += dropped
            _log.warning(
                "Progress journal %s is full (%d bytes): dropped the %d oldest undelivered "
                "record(s); the newest progress is kept",
                self.path,
                self.max_bytes,
                dropped,
            )
        # Keep the ack watermark so record numbers keep increasing after a restart.
        lines = [encode({"ack": self.acked})]
        lines += [encode(record.to_json()) for record, _ in self._pending]
        data = b"".join(lines)
        tmp = self.path.with_name(self.path.name + ".compact")
        try:
            tmp.write_bytes(data)
            if self.fsync:
                _fsync_file(tmp)
            tmp.replace(self.path)
        except OSError as exc:
            self._disk_trouble("compaction", exc)
            # Try again only after another half bound of writes, not on every append.
            self._compact_at = self._file_bytes + budget
            return
        self._compact_at = self.max_bytes
        if self._fd is not None:
            os.close(self._fd)
        self._fd = self._open()
        self._file_bytes = len(data)
        self._compacted = True
        self._unsynced = True

    def __repr__(self) -> str:
        return (
            f"<Journal {str(self.path)!r} pending={len(self._pending)} acked={self.acked} "
            f"bytes={self._file_bytes}/{self.max_bytes} dropped={self.dropped}>"
        )


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":  # pragma: no cover - directories cannot be opened on Windows
        return
    _fsync_file(path)


def finite_or_text(value: Metric) -> Metric | str:
    """Return ``value``, or its JSON spelling (``"NaN"``, ``"Infinity"``) when not finite."""
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)
    return value


ProgressRecord.__module__ = "recoverly.training"
