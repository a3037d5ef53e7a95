"""The loop cursor: where a resumable loop stands, and what a resume must replay.

No I/O and no user code: :class:`~recoverly.training.ResumableRun` drives it
from ``epochs()``, ``batches()`` and ``step_done()``. The phases inside an
epoch decide what a checkpoint means:

* ``idle``: between epochs; a resume starts at :attr:`LoopCursor.epoch`.
* ``before batches`` / ``after batches``: the epoch's batch loop has not
  started or is over; a checkpoint here closes the epoch (resume at the next).
* ``in batches``: a resume replays the top of this epoch and skips the
  batches already consumed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from recoverly.training.state import LoopPosition, capture_rng, restore_rng

__all__ = ["LoopCursor"]

IDLE, BEFORE, ACTIVE, AFTER = "idle", "before batches", "in batches", "after batches"


class LoopCursor:
    """Epoch, batch, step and the random states a mid-epoch resume needs."""

    __slots__ = (
        "_after_skip",
        "_epoch_rng",
        "_replay",
        "_skip",
        "batch",
        "epoch",
        "generators",
        "phase",
        "step",
    )

    def __init__(self, generators: Mapping[str, object]) -> None:
        self.generators = generators
        self.epoch = self.batch = self.step = self._skip = 0
        self.phase = IDLE
        self._epoch_rng: dict[str, Any] | None = None
        self._after_skip: dict[str, Any] | None = None
        self._replay: tuple[dict[str, Any], LoopPosition] | None = None

    def load(self, position: LoopPosition, rng: dict[str, Any]) -> None:
        """Adopt a checkpointed position; the random states come back at the next epoch top."""
        self.epoch, self.step = position.epoch, position.step
        self._replay = (rng, position)

    def top_of_epoch(self) -> None:
        """Enter :attr:`epoch`: replay its start on a mid-epoch resume, else snapshot it."""
        replay, self._replay = self._replay, None
        if replay is not None and replay[1].mid_epoch:
            rng, position = replay
            restore_rng(position.epoch_rng or {}, self.generators)
            self._epoch_rng = position.epoch_rng
            self._skip, self._after_skip = position.batch, rng
        else:
            if replay is not None:
                restore_rng(replay[0], self.generators)
            self._epoch_rng = capture_rng(self.generators)
        self.phase, self.batch = BEFORE, 0

    def end_of_epoch(self) -> None:
        """Leave the epoch: the next one starts from its first batch."""
        self.epoch += 1
        self.phase, self.batch, self._epoch_rng = IDLE, 0, None

    def begin_batches(self) -> tuple[int, Callable[[], None]]:
        """Start the epoch's batch loop; return the batches to skip and the resume callback.

        Raises:
            RuntimeError: Not at the top of an epoch (outside ``epochs()`` or a
                second batch loop in the same epoch).
        """
        if self.phase != BEFORE:
            raise RuntimeError(
                f"batches() runs once per epoch inside run.epochs(); now {self.phase}"
            )
        self.phase = ACTIVE
        skip, after = self._skip, self._after_skip
        self._skip, self._after_skip, self.batch = 0, None, skip
        generators = self.generators

        def resumed() -> None:
            if after is not None:
                restore_rng(after, generators)

        return skip, resumed

    def end_batches(self) -> None:
        """The batch loop is over (exhausted, left early or closed)."""
        self.phase = AFTER

    def position(self) -> LoopPosition:
        """Return where a resume from a checkpoint taken now must start."""
        if self.phase == ACTIVE:
            return LoopPosition(self.epoch, self.batch, self.step, self._epoch_rng)
        if self.phase == IDLE:
            return LoopPosition(self.epoch, 0, self.step)
        return LoopPosition(self.epoch + 1, 0, self.step)
