"""ResumableRun: a training loop that picks up exactly where it stopped.

A checkpoint holds the registered objects' state, ``run.state``, every random
state and the loop position (epoch, batches of it consumed, the random state at
the top of the epoch). A mid-epoch resume replays the top of the epoch (same
shuffle order), skips the consumed batches and puts back the random state of
the last step, so the rest of the run draws what an uninterrupted run draws.
See ``docs/training.md`` ("Resumable loops") for the rules a loop follows.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from recoverly._core.clock import Clock, resolve
from recoverly._core.validate import Duration, Problems
from recoverly.training._attempts import (
    CRASHED,
    FINISHED,
    PREEMPTED,
    Attempt,
    AttemptJournal,
    RunStatistics,
)
from recoverly.training._cursor import LoopCursor
from recoverly.training._lock import RunLock
from recoverly.training.adapters import load_object_state, object_state, skip_batches
from recoverly.training.checkpoint import Checkpoint, CheckpointInfo, CheckpointManager
from recoverly.training.preemption import Preempted, PreemptionGuard
from recoverly.training.state import LoopPosition, capture_rng, is_generator, seed_all
from recoverly.training.storage import Store

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["ResumableRun"]

_log = logging.getLogger("recoverly.training")
_T = TypeVar("_T")
_FORMAT = "recoverly.run/1"


class ResumableRun:
    """A training loop position, its checkpoints and its restart history.

    Args:
        directory: The run directory: checkpoints go to ``checkpoints/``
            (unless ``store`` is given), the attempt history to ``attempts.json``.
        seed: Seeds :mod:`random`, NumPy and PyTorch (those imported) when the
            run object is created, so a fresh run is reproducible; on resume the
            checkpoint's random states replace these.
        checkpoint_every: Save every this many steps; ``None`` for no step rule.
        checkpoint_every_seconds: Also save when this much time (float seconds
            or ``timedelta``, from ``clock``) passed since the last save.
        keep_last: Checkpoints kept (``None`` keeps all).
        async_save: Write checkpoints on a background thread.
        max_restarts_without_progress: Refuse to start (:class:`CrashLoopError`)
            when this many attempts in a row crashed without getting past the
            furthest step reached before them; ``None`` never refuses.
        preemption: ``True`` installs a :class:`PreemptionGuard` with the
            default signals while the loop runs, a guard uses that one,
            ``False`` handles no signal.
        clock: Time source for ``checkpoint_every_seconds`` and timestamps.
        store: Where checkpoints go instead of ``directory/checkpoints``: a
            :class:`Store` such as ``FsspecStore("s3://bucket/run")``.

    Raises:
        TypeError, ValueError: Every bad argument, in one message.

    .. versionadded:: 0.2
    """

    __slots__ = (
        "_clock", "_cursor", "_every", "_every_s", "_finished", "_generators", "_journal",
        "_last_save_step", "_last_save_time", "_loaded", "_lock", "_manager", "_max_restarts",
        "_objects", "_resumed_from", "_saves", "_started", "_store", "async_save", "directory",
        "guard", "keep_last", "state",
    )  # fmt: skip

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        seed: int | None = None,
        checkpoint_every: int | None = 100,
        checkpoint_every_seconds: Duration | None = None,
        keep_last: int | None = 3,
        async_save: bool = False,
        max_restarts_without_progress: int | None = 3,
        preemption: bool | PreemptionGuard = True,
        clock: Clock | None = None,
        store: Store | None = None,
    ) -> None:
        p = Problems()
        if not isinstance(cast("object", directory), (str, os.PathLike)):
            p._bad(f"directory must be a path, got {directory!r}", kind=True)
        seed = p.optional_int_at_least("seed", seed, 0)
        self._every = p.optional_int_at_least("checkpoint_every", checkpoint_every, 1)
        self._every_s = p.optional_duration(
            "checkpoint_every_seconds", checkpoint_every_seconds, positive=True
        )
        self.keep_last = p.optional_int_at_least("keep_last", keep_last, 1)
        if not isinstance(cast("object", async_save), bool):
            p._bad(f"async_save must be a bool, got {async_save!r}", kind=True)
        self._max_restarts = p.optional_int_at_least(
            "max_restarts_without_progress", max_restarts_without_progress, 1
        )
        if not isinstance(cast("object", preemption), (bool, PreemptionGuard)):
            p._bad(f"preemption must be a bool or a PreemptionGuard, got {preemption!r}", kind=True)
        if store is not None and not isinstance(cast("object", store), Store):
            p._bad(f"store must be a Store or None, got {store!r}", kind=True)
        self._store = store
        p.raise_if_any()
        self.directory = Path(directory)
        self.async_save = async_save
        self.guard = (
            (preemption if isinstance(preemption, PreemptionGuard) else PreemptionGuard())
            if preemption
            else None
        )
        self._clock = resolve(clock)
        self.state: dict[str, Any] = {}
        self._objects: dict[str, object] = {}
        self._generators: dict[str, object] = {}
        self._journal = AttemptJournal(self.directory / "attempts.json", self._clock)
        self._lock = RunLock(self.directory / "run.lock")
        self._manager: CheckpointManager | None = None
        self._cursor = LoopCursor(self._generators)
        self._started = self._finished = False
        self._saves = 0
        self._loaded: dict[str, Any] = {}
        self._resumed_from: int | None = None
        self._last_save_step = -1
        self._last_save_time = self._clock.monotonic()
        if seed is not None:
            seed_all(seed)

    # ------------------------------------------------------------------ registration
    def register(self, name: str, obj: _T) -> _T:
        """Save and restore ``obj`` with the run; return it.

        ``obj`` may have ``state_dict()``/``load_state_dict()`` (PyTorch
        modules, optimizers, schedulers, :class:`ArrayState`), or
        ``get_state()``/``set_state()``, or be a scikit-learn estimator; a
        random generator (``numpy.random.Generator``, ``random.Random``,
        ``torch.Generator``) joins the random state that is captured at every
        step boundary and at the top of each epoch. Registering after the run
        resumed restores the object at once.

        Raises:
            ValueError: The name is taken.
            TypeError: The object offers no way to save its state.
        """
        if name in self._objects or name in self._generators:
            raise ValueError(f"name {name!r} is already registered")
        if is_generator(obj) and not callable(getattr(obj, "state_dict", None)):
            self._generators[name] = obj
            return obj
        object_state(obj)  # fails now, not at the first checkpoint
        self._objects[name] = obj
        if name in self._loaded:
            load_object_state(obj, self._loaded.pop(name))
        return obj

    # ------------------------------------------------------------------ resuming
    def resume(self) -> Checkpoint | None:
        """Load the newest valid checkpoint into the registered objects (once).

        Called by :meth:`epochs`; call it yourself to read ``run.state`` first.

        Returns:
            The checkpoint resumed from, or ``None`` for a fresh run.

        Raises:
            CrashLoopError: The run keeps crashing without progress.
            RunInUseError: Another process (or run object) is running this directory.
        """
        if self._started:
            return None  # already resumed (or started fresh)
        self._lock.acquire()
        try:
            self._manager = CheckpointManager(
                self._store or self.directory / "checkpoints",
                keep_last=self.keep_last,
                async_save=self.async_save,
                clock=self._clock,
            )
            ckpt = self._manager.load_latest()
            self._journal.begin(ckpt.step if ckpt else 0, self._max_restarts)
        except BaseException:
            if self._manager is not None:
                self._manager.close()
            self._lock.release()
            raise
        self._started = True
        if ckpt is not None:
            self._load(ckpt)
        if self.guard is not None:
            self.guard.install()
        self._last_save_time = self._clock.monotonic()
        return ckpt

    def _load(self, ckpt: Checkpoint) -> None:
        payload = ckpt.state
        if payload.get("format") != _FORMAT:
            raise ValueError(f"checkpoint {ckpt.step} was not written by ResumableRun")
        position = LoopPosition.from_state(payload["loop"])
        self._loaded = dict(payload["objects"])
        for name, obj in self._objects.items():
            if name in self._loaded:
                load_object_state(obj, self._loaded.pop(name))
            else:
                _log.warning("checkpoint %s holds no state for %r", ckpt.step, name)
        self.state.clear()
        self.state.update(payload["user"])
        self._cursor.load(position, payload["rng"])
        self._resumed_from = self._last_save_step = ckpt.step
        where = (position.epoch, position.batch, position.step)
        _log.info("resuming %s at epoch %d, batch %d, step %d", self.directory, *where)

    # ------------------------------------------------------------------ the loop
    def epochs(self, n: int) -> Iterator[int]:
        """Yield the epoch numbers still to run, ``start..n-1``.

        Code at the top of an epoch runs again on a mid-epoch resume (with the
        same random state), so keep it free of one-off side effects; code after
        the batch loop runs once.
        """
        count = Problems()
        count.int_at_least("n", n, 0)
        count.raise_if_any()
        self.resume()
        cursor = self._cursor
        while cursor.epoch < n:
            cursor.top_of_epoch()
            yield cursor.epoch
            cursor.end_of_epoch()

    def batches(self, loader: Iterable[_T]) -> Iterator[_T]:
        """Yield ``loader``'s batches for this epoch, after those already consumed.

        Use it once per epoch. A ``torch.utils.data.DataLoader`` skips by
        dropping sampler indices (no sample is loaded twice); other iterables
        are advanced batch by batch.

        Raises:
            RuntimeError: Used outside ``run.epochs()`` or twice in one epoch.
        """
        cursor = self._cursor
        skip, resumed = cursor.begin_batches()
        try:
            for batch in skip_batches(loader, skip, resumed):
                cursor.batch += 1
                yield batch
        finally:
            cursor.end_batches()

    def step_done(self, metrics: Mapping[str, Any] | None = None, /, **more: Any) -> bool:
        """Mark one step done; checkpoint when due; stop here when pre-empted.

        Call it after the optimizer step (with gradient accumulation, after
        the batch that completes it). Outside ``batches()`` it marks the epoch
        finished: a resume starts at the next epoch.

        Args:
            metrics: Numbers stored with the checkpoint.
            **more: More metrics as keywords (``loss=0.3``).

        Returns:
            Whether a checkpoint was saved.

        Raises:
            Preempted: A pre-emption was requested; the checkpoint is saved.
        """
        self._cursor.step += 1
        step = self._cursor.step
        values = {**(metrics or {}), **more}
        preempted = self.guard is not None and self.guard.requested
        due = (
            preempted
            or (self._every is not None and step % self._every == 0)
            or (
                self._every_s is not None
                and self._clock.monotonic() - self._last_save_time >= self._every_s
            )
        )
        if due:
            self.checkpoint(values)
        if preempted and self.guard is not None:
            stop = self.guard.preempted(step)
            self._end(PREEMPTED, str(stop))
            raise stop
        return due

    def checkpoint(self, metrics: Mapping[str, Any] | None = None) -> CheckpointInfo:
        """Save a checkpoint of the current position now.

        The position follows the same rule as :meth:`step_done`: inside
        ``batches()`` it is mid-epoch, elsewhere in an epoch it closes the epoch.

        Raises:
            RuntimeError: The run has ended (after :meth:`finish` or a pre-emption).
        """
        self.resume()
        if self._manager is None or self._finished:
            raise RuntimeError(f"{self!r} has ended; no more checkpoints")
        position = self._cursor.position()
        payload = {
            "format": _FORMAT,
            "loop": position.to_state(),
            "rng": capture_rng(self._generators),
            "objects": {name: object_state(obj) for name, obj in self._objects.items()},
            "user": dict(self.state),
        }
        numbers = {k: float(v) for k, v in (metrics or {}).items()}
        info = self._manager.save(position.step, payload, metrics=numbers)
        self._saves += 1
        self._last_save_step = position.step
        self._last_save_time = self._clock.monotonic()
        return info

    def finish(self, metrics: Mapping[str, Any] | None = None) -> None:
        """Save the final checkpoint (unless this step is saved), record the run finished."""
        if self._finished:
            return
        if self._last_save_step != self._cursor.step or not self._started:
            self.checkpoint(metrics)
        self._end(FINISHED, None)

    def _end(self, outcome: str, reason: str | None) -> None:
        self._finished = True
        try:
            if self._manager is not None:
                self._manager.close()
        finally:
            if self.guard is not None:
                self.guard.uninstall()
            if self._started:
                self._journal.end(outcome, self._cursor.step, reason)
            self._lock.release()

    def reset_crash_loop(self) -> None:
        """Forget the crash streak that makes :meth:`resume` raise (after fixing its cause)."""
        self._journal.reset()

    # ------------------------------------------------------------------ inspection
    @property
    def epoch(self) -> int:
        """The current (or next) epoch."""
        return self._cursor.epoch

    @property
    def batch(self) -> int:
        """Batches of the current epoch consumed so far, those skipped on resume included."""
        return self._cursor.batch

    @property
    def step(self) -> int:
        """Steps completed since the run began, resumes included."""
        return self._cursor.step

    @property
    def resumed_from(self) -> int | None:
        """The step of the checkpoint this process resumed from, or ``None``."""
        return self._resumed_from

    @property
    def history(self) -> tuple[Attempt, ...]:
        """Every attempt recorded for this run directory, oldest first."""
        return self._journal.history

    def statistics(self) -> RunStatistics:
        """Return a snapshot of the position and the restart counts."""
        history = self._journal.history
        return RunStatistics(
            epoch=self._cursor.epoch,
            batch=self._cursor.batch,
            step=self._cursor.step,
            resumed_from=self._resumed_from,
            attempt=history[-1].number if history else 0,
            preemptions=self._journal.preemptions,
            crashes=self._journal.crashes,
            checkpoints_saved=self._saves,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._finished:
            return
        if exc is None:
            self.finish()
        elif isinstance(exc, Preempted):  # pragma: no cover - step_done already ended the attempt
            self._end(PREEMPTED, str(exc))
        else:
            self._end(CRASHED, f"{type(exc).__name__}: {exc}"[:500])

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<ResumableRun {str(self.directory)!r} epoch={s.epoch} batch={s.batch} step={s.step} "
            f"attempt={s.attempt} preemptions={s.preemptions} crashes={s.crashes}>"
        )


# Shown where users import them from.
ResumableRun.__module__ = "recoverly.training"
