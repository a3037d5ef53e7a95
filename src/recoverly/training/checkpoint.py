"""CheckpointManager: save training state atomically, keep a few, load the newest good one.

A save writes the state's files next to the existing checkpoints under a
hidden name, fsyncs them, writes the manifest last and renames the entry into
place (see :mod:`recoverly.training.storage`). Older checkpoints are deleted
only after the new one is committed. Loading verifies every file against the
manifest's SHA-256; a damaged newest checkpoint is skipped with a WARNING on
the ``recoverly.training`` logger and the previous good one is loaded.

.. versionadded:: 0.2
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from recoverly._core.bus import BUS
from recoverly._core.clock import Clock, resolve
from recoverly._core.validate import Problems
from recoverly.events import CheckpointSaved, CheckpointSaveFailed
from recoverly.retry import Retry
from recoverly.training import _codec
from recoverly.training._atomic import is_transient_io_error, lower_thread_priority
from recoverly.training._format import (
    CheckpointCorrupt,
    CheckpointInfo,
    info_from_manifest,
    read_manifest,
    read_state,
    write_entry,
)
from recoverly.training._retention import check_metrics, doomed
from recoverly.training.storage import LocalStore, Store

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Checkpoint", "CheckpointInfo", "CheckpointManager"]

_log = logging.getLogger("recoverly.training")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A loaded, verified checkpoint.

    Attributes:
        step: The step it was saved at.
        state: The state, with the same types and bits as when it was saved.
        metrics: The metrics passed to ``save``.
        info: The rest of its manifest (location, creation time, versions).

    .. versionadded:: 0.2
    """

    step: int
    state: dict[str, Any]
    metrics: dict[str, float]
    info: CheckpointInfo


def entry_name(step: int) -> str:
    """Return the store entry name of ``step`` (``step-000000000100``)."""
    return f"step-{step:012d}"


def _step_of(name: str) -> int:
    return int(name.removeprefix("step-"))


def default_io_retry(clock: Clock | None = None) -> Retry:
    """Three attempts, 50 ms then 100 ms apart, on transient ``OSError`` (EIO, EAGAIN, ...)."""
    return Retry(
        max_attempts=3,
        delay=0.05,
        exceptions=is_transient_io_error,
        name="checkpoint-io",
        clock=clock,
    )


class CheckpointManager:
    """Saves, retains and loads checkpoints of a training run.

    Args:
        directory: A path (a :class:`LocalStore` is made for it) or a :class:`Store`.
        keep_last: How many of the newest checkpoints to keep (``>= 1``); ``None`` keeps all.
        keep_best: Also keep this many best checkpoints by ``metrics[monitor]``.
        monitor: The metric ranking checkpoints for ``keep_best``.
        mode: ``"min"`` (lower is better) or ``"max"``.
        async_save: Copy the state in memory and write it on a background
            thread; one save at a time, the next waits. Its error is raised by
            the next ``save``, ``wait`` or ``close``.
        allow_pickle: Pickle values with no safe format when saving, and load
            pickles. Off by default: loading a pickle runs code from the file.
        name: A label for logs and ``repr``.
        clock: Source of ``created_at`` and of the waits between I/O retries.
        io_retry: Policy for transient I/O errors; default :func:`default_io_retry`.

    Raises:
        TypeError, ValueError: Every bad argument, in one message.

    .. versionadded:: 0.2
    """

    __slots__ = (
        "_clock",
        "_closed",
        "_error",
        "_lock",
        "_retry",
        "_save_lock",
        "_spare",
        "_thread",
        "allow_pickle",
        "async_save",
        "keep_best",
        "keep_last",
        "mode",
        "monitor",
        "name",
        "store",
    )

    def __init__(
        self,
        directory: str | os.PathLike[str] | Store,
        *,
        keep_last: int | None = 3,
        keep_best: int = 0,
        monitor: str | None = None,
        mode: str = "min",
        async_save: bool = False,
        allow_pickle: bool = False,
        name: str | None = None,
        clock: Clock | None = None,
        io_retry: Retry | None = None,
    ) -> None:
        p = Problems()
        if not isinstance(cast("object", directory), (str, os.PathLike, Store)):
            p._bad(f"directory must be a path or a Store, got {directory!r}", kind=True)
        self.keep_last = p.optional_int_at_least("keep_last", keep_last, 1)
        self.keep_best = p.int_at_least("keep_best", keep_best, 0)
        self.monitor = p.optional_name("monitor", monitor)
        if mode not in ("min", "max"):
            kind = not isinstance(cast("object", mode), str)
            p._bad(f"mode must be 'min' or 'max', got {mode!r}", kind=kind)
        if self.keep_best and monitor is None:
            p._bad(f"keep_best={keep_best!r} needs monitor= (the metric to rank by), got None")
        for flag, value in (("async_save", async_save), ("allow_pickle", allow_pickle)):
            if not isinstance(cast("object", value), bool):
                p._bad(f"{flag} must be a bool, got {value!r}", kind=True)
        self.name = p.optional_name("name", name)
        self._retry = p.optional_instance("io_retry", io_retry, Retry) or default_io_retry(clock)
        p.raise_if_any()
        self.mode = mode
        self.async_save = async_save
        self.allow_pickle = allow_pickle
        self.store = directory if isinstance(directory, Store) else LocalStore(directory)
        self._clock = clock
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._spare: _codec.Encoded | None = None
        self._closed = False
        self._save_lock = threading.Lock()
        self._cleanup()

    # ------------------------------------------------------------------ saving
    def save(
        self, step: int, state: Mapping[str, Any], metrics: Mapping[str, float] | None = None
    ) -> CheckpointInfo:
        """Save ``state`` as the checkpoint of ``step``.

        Synchronous saves return once the checkpoint is committed on disk.
        With ``async_save`` the state is copied first and the method returns
        at once; the write happens in the background.

        Args:
            step: The training step (an int ``>= 0``); saving a step again replaces it.
            state: A dict with str keys of plain values, arrays and tensors.
            metrics: Numbers describing the checkpoint (used by ``keep_best``).

        Returns:
            The new checkpoint's info (``size`` is ``None`` until a background save ends).

        Raises:
            TypeError: A value has no safe format (and ``allow_pickle`` is off).
            OSError: The write failed (disk full, I/O error after retries);
                the previous checkpoints are untouched.
            RuntimeError: The manager is closed.
        """
        p = Problems()
        p.int_at_least("step", step, 0)
        if not isinstance(cast("object", state), Mapping):
            p._bad(f"state must be a dict, got {type(state).__name__}", kind=True)
        clean = check_metrics(p, metrics)
        p.raise_if_any()
        with self._save_lock:  # saves from several threads run one after the other
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            self.wait()
            with self._lock:
                spare, self._spare = self._spare, None
            enc = _codec.encode(
                dict(state), allow_pickle=self.allow_pickle, copy=self.async_save, pool=spare
            )
            created_at = resolve(self._clock).wall()
            name = entry_name(step)
            if not self.async_save:
                return self._write(name, enc, step, clean, created_at)
            thread = threading.Thread(
                target=self._background,
                args=(name, enc, step, clean, created_at),
                name=f"recoverly-checkpoint-{step}",
            )
            with self._lock:
                self._thread = thread
            thread.start()
            return CheckpointInfo(step, name, self.store.location(name), created_at, clean)

    def _write(
        self, name: str, enc: _codec.Encoded, step: int, metrics: dict[str, float], at: float
    ) -> CheckpointInfo:
        clock = resolve(self._clock)
        started = clock.monotonic()
        label = self.name or str(self.store.location(""))
        try:
            self._cleanup()
            info: CheckpointInfo = self._retry(write_entry)(
                self.store, name, enc, step=step, metrics=metrics, created_at=at
            )
            self._prune(keep=name)
        except Exception as exc:
            if BUS.wants(CheckpointSaveFailed):
                BUS.emit(CheckpointSaveFailed(label, step, exc))
            raise
        if BUS.wants(CheckpointSaved):
            BUS.emit(CheckpointSaved(label, step, clock.monotonic() - started, info.size))
        return info

    def _background(
        self, name: str, enc: _codec.Encoded, step: int, metrics: dict[str, float], at: float
    ) -> None:
        lower_thread_priority()
        try:
            self._write(name, enc, step, metrics, at)
        except BaseException as exc:
            with self._lock:
                self._error = exc
            _log.warning(  # also logged now, in case no save/wait/close ever comes
                "%r: background save of step %d failed (raised by the next save, wait or "
                "close): %r",
                self,
                step,
                exc,
            )
        with self._lock:
            self._spare = enc  # its buffers are free again: the next snapshot reuses them

    def wait(self) -> None:
        """Block until the background save (if any) is committed.

        Raises:
            Exception: The error of the background save, once.
        """
        self._join()
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def _join(self) -> None:
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join()
            with self._lock:
                if self._thread is thread:
                    self._thread = None

    def close(self) -> None:
        """Wait for the background save and refuse further saves.

        Raises:
            Exception: The error of the background save, if it failed.
        """
        self._closed = True
        self.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except Exception:
            _log.exception("%r: the background save failed while another error was raised", self)

    # ------------------------------------------------------------------ retention
    def _cleanup(self) -> None:
        try:
            removed = self.store.cleanup()
        except OSError as exc:
            _log.warning("%r: could not clean up after crashed saves: %s", self, exc)
            return
        if removed:
            _log.info("%r: removed leftovers of interrupted saves: %s", self, ", ".join(removed))

    def _prune(self, keep: str) -> None:
        good: list[tuple[int, str, dict[str, float]]] = []
        damaged: list[tuple[int, str]] = []
        for name in self.store.names():
            try:
                info = info_from_manifest(self.store, name, read_manifest(self.store, name))
                good.append((info.step, name, info.metrics))
            except CheckpointCorrupt:  # noqa: PERF203 - damaged entries are rare
                damaged.append((_step_of(name), name))
        for name in doomed(
            good,
            damaged,
            keep=keep,
            keep_last=self.keep_last,
            keep_best=self.keep_best,
            monitor=self.monitor,
            mode=self.mode,
        ):
            try:
                self.store.delete(name)
            except OSError as exc:  # noqa: PERF203 - deletions are few
                _log.warning("%r: could not delete old checkpoint %s: %s", self, name, exc)

    # ------------------------------------------------------------------ loading
    def list(self) -> list[CheckpointInfo]:
        """Return the committed checkpoints whose manifest is intact, oldest first.

        Data files are not verified here (``load`` does that).
        """
        self._join()
        out = []
        for name in self.store.names():
            try:
                out.append(info_from_manifest(self.store, name, read_manifest(self.store, name)))
            except CheckpointCorrupt:  # noqa: PERF203 - damaged entries are rare
                continue
        return sorted(out, key=lambda info: info.step)

    def load(self, step: int) -> Checkpoint:
        """Load and verify the checkpoint of ``step``.

        Raises:
            FileNotFoundError: There is no checkpoint for ``step``.
            CheckpointCorrupt: It does not match its manifest.
            UnsafeCheckpointError: It holds pickles and ``allow_pickle`` is off.
        """
        self._join()
        name = entry_name(step)
        if name not in self.store.names():
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.store.location()}")
        return self._retry(self._load)(name)

    def _load(self, name: str) -> Checkpoint:
        doc = read_manifest(self.store, name)
        state = read_state(self.store, name, doc, allow_pickle=self.allow_pickle)
        info = info_from_manifest(self.store, name, doc)
        return Checkpoint(info.step, state, dict(info.metrics), info)

    def load_latest(self) -> Checkpoint | None:
        """Load the newest checkpoint that verifies, or ``None`` if there is none.

        Damaged checkpoints are skipped, each with a WARNING naming it and why.

        Raises:
            UnsafeCheckpointError: The newest good checkpoint holds pickles and
                ``allow_pickle`` is off (never skipped silently).
        """
        self._join()
        skipped: list[str] = []
        for name in sorted(self.store.names(), key=_step_of, reverse=True):
            try:
                ckpt = self._retry(self._load)(name)
            except CheckpointCorrupt as exc:
                _log.warning(
                    "%r: skipping checkpoint %s: %s; trying the previous one",
                    self,
                    exc.location,
                    exc.reason,
                )
                skipped.append(name)
                continue
            if skipped:
                _log.warning(
                    "%r: loaded step %d from %s instead of the newer damaged %s",
                    self,
                    ckpt.step,
                    ckpt.info.location,
                    ", ".join(skipped),
                )
            return ckpt
        if skipped:
            _log.warning("%r: no usable checkpoint in %s", self, self.store.location())
        return None

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        busy = " saving" if self._thread is not None else ""
        return (
            f"<CheckpointManager{label} {self.store!r} keep_last={self.keep_last} "
            f"keep_best={self.keep_best} async_save={self.async_save}{busy}>"
        )


Checkpoint.__module__ = CheckpointManager.__module__ = "recoverly.training"
