"""The attempt journal: one record per process that ran a resumable loop.

Stored as ``attempts.json`` in the run directory and replaced atomically. An
attempt starts as ``running``; it ends ``finished``, ``preempted`` (a checkpoint
was saved after a signal) or ``crashed`` (an exception left the loop). A
record still ``running`` when the next process starts belonged to a process
that died without a word (SIGKILL, out of memory, power loss) and is counted
as a crash then.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from recoverly._core.clock import Clock
from recoverly.errors import RecoverlyError
from recoverly.training._atomic import atomic_write_bytes

__all__ = [
    "Attempt",
    "AttemptJournal",
    "CrashLoopError",
    "RunStatistics",
]

_log = logging.getLogger("recoverly.training")

RUNNING, FINISHED, PREEMPTED, CRASHED, RESET = (
    "running",
    "finished",
    "preempted",
    "crashed",
    "reset",
)
_KEEP = 200  # records kept; the counters cover the rest
_SILENT_DEATH = (
    "the process ended without finishing or saving a pre-emption checkpoint "
    "(killed, out of memory, or an error outside `with run:`)"
)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One process's go at a run.

    Attributes:
        number: 1 for the first attempt, then 2, 3, ...
        pid: The process id.
        started: Wall-clock start (Unix seconds).
        start_step: The step it resumed from (0 for a fresh run).
        reached: The furthest step known to be done: for a process that died
            silently, the newest checkpoint found by the next one; otherwise
            the last completed step.
        outcome: ``running``, ``finished``, ``preempted``, ``crashed`` or ``reset``.
        reason: Why it ended, for crashes and pre-emptions.
        ended: Wall-clock end, or ``None`` when unknown.

    .. versionadded:: 0.2
    """

    number: int
    pid: int
    started: float
    start_step: int
    reached: int
    outcome: str
    reason: str | None = None
    ended: float | None = None

    @property
    def progressed(self) -> bool:
        """Whether it got past the step it started from."""
        return self.reached > self.start_step


class CrashLoopError(RecoverlyError):
    """A run that keeps crashing without progress is not started again.

    Attributes:
        directory: The run directory.
        history: Every attempt recorded, oldest first.
        stuck_at: The furthest step any attempt reached.

    .. versionadded:: 0.2
    """

    def __init__(self, message: str, *, directory: str, history: tuple[Attempt, ...]) -> None:
        super().__init__(message)
        self.directory = directory
        self.history = history
        self.stuck_at = max((a.reached for a in history), default=0)


@dataclass(frozen=True, slots=True)
class RunStatistics:
    """A snapshot of a run's position and history.

    .. versionadded:: 0.2
    """

    epoch: int
    batch: int
    step: int
    resumed_from: int | None
    attempt: int
    preemptions: int
    crashes: int
    checkpoints_saved: int


class AttemptJournal:
    """Reads and rewrites ``attempts.json``; one per run directory and process."""

    __slots__ = ("_attempts", "_clock", "_counts", "_open", "path")

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path = path
        self._clock = clock
        self._attempts: list[Attempt] = []
        self._counts = {PREEMPTED: 0, CRASHED: 0, FINISHED: 0}
        self._open = False  # the last record is this process's running attempt
        self._load()

    @property
    def history(self) -> tuple[Attempt, ...]:
        """Every record kept, oldest first."""
        return tuple(self._attempts)

    @property
    def preemptions(self) -> int:
        """Attempts that ended with a pre-emption checkpoint."""
        return self._counts[PREEMPTED]

    @property
    def crashes(self) -> int:
        """Attempts that crashed or died silently."""
        return self._counts[CRASHED]

    def begin(self, start_step: int, max_without_progress: int | None) -> Attempt:
        """Close a silently dead attempt, refuse a crash loop, then record a new attempt.

        Raises:
            CrashLoopError: The last ``max_without_progress`` attempts crashed
                without getting past the furthest step reached before them.
        """
        self._load()  # what the previous process left, read under the run lock
        if self._attempts and self._attempts[-1].outcome == RUNNING:
            last = self._attempts[-1]
            self._replace(
                -1, outcome=CRASHED, reason=_SILENT_DEATH, reached=max(last.reached, start_step)
            )
            self._counts[CRASHED] += 1
        if max_without_progress is not None:
            self._refuse_crash_loop(max_without_progress)
        number = self._attempts[-1].number + 1 if self._attempts else 1
        attempt = Attempt(number, os.getpid(), self._clock.wall(), start_step, start_step, RUNNING)
        self._attempts.append(attempt)
        self._open = True
        self._write()
        return attempt

    def end(self, outcome: str, reached: int, reason: str | None = None) -> None:
        """Close the current attempt with ``outcome``."""
        if not self._open:
            return
        self._replace(-1, outcome=outcome, reached=reached, reason=reason, ended=self._clock.wall())
        self._counts[outcome] = self._counts.get(outcome, 0) + 1
        self._open = False
        self._write()

    def reset(self) -> None:
        """Add a ``reset`` record, which ends any crash streak (after a fix)."""
        if self._open:
            return
        number = self._attempts[-1].number + 1 if self._attempts else 1
        reached = max((a.reached for a in self._attempts), default=0)
        now = self._clock.wall()
        self._attempts.append(
            Attempt(number, 0, now, reached, reached, RESET, "reset by hand", now)
        )
        self._write()

    # ------------------------------------------------------------------ internals
    def _refuse_crash_loop(self, limit: int) -> None:
        streak: list[Attempt] = []
        best = -1
        flags: list[bool] = []
        for attempt in self._attempts:
            flags.append(
                attempt.outcome == CRASHED and attempt.reached <= max(best, attempt.start_step)
            )
            if attempt.outcome == RESET:
                flags[-1] = False
            best = max(best, attempt.reached)
        for attempt, stuck in zip(reversed(self._attempts), reversed(flags), strict=True):
            if not stuck:
                break
            streak.append(attempt)
        if len(streak) < limit:
            return
        streak.reverse()
        causes = "; ".join(f"attempt {a.number}: {a.reason or 'crashed'}" for a in streak[-3:])
        raise CrashLoopError(
            f"run in {str(self.path.parent)!r} crashed {len(streak)} times in a row without "
            f"getting past step {best} (max_restarts_without_progress={limit}); not starting it "
            f"again. Last causes: {causes}. Fix the cause, then call reset_crash_loop() or pass "
            "max_restarts_without_progress=None",
            directory=str(self.path.parent),
            history=self.history,
        )

    def _replace(self, index: int, **changes: Any) -> None:
        old = asdict(self._attempts[index])
        old.update(changes)
        self._attempts[index] = Attempt(**old)

    def _load(self) -> None:
        self._attempts = []
        self._counts = dict.fromkeys(self._counts, 0)
        try:
            raw = json.loads(self.path.read_bytes())
            self._attempts = [Attempt(**record) for record in raw["attempts"]]
            for key in self._counts:
                self._counts[key] = int(raw["counts"][key])
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError) as exc:
            _log.warning("ignoring unreadable attempt journal %s: %r", self.path, exc)
            self._attempts = []
            self._counts = dict.fromkeys(self._counts, 0)

    def _write(self) -> None:
        del self._attempts[:-_KEEP]
        data = {
            "version": 1,
            "counts": self._counts,
            "attempts": [asdict(a) for a in self._attempts],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, json.dumps(data, indent=1, sort_keys=True).encode())


# Shown where users import them from.
Attempt.__module__ = "recoverly.training"
CrashLoopError.__module__ = "recoverly.training"
RunStatistics.__module__ = "recoverly.training"
