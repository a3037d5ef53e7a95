"""The demo's report: what it saw, and the rows it is built from.

:class:`DemoReport` is what ``recoverly demo`` prints and writes as JSON;
:class:`Recorder` collects the events it needs (per phase), and the functions
below turn the chaos parts' statistics and the worker's process exits into
its rows.

.. versionadded:: 0.2
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from recoverly import events
from recoverly.chaos import ChaosStatistics, Fault, Latency, Outcome
from recoverly.service.predictor import BREAKER_NAME

__all__ = ["PHASES", "DemoReport", "Recorder", "death_line", "fault_row", "kills_of"]


@dataclass
class DemoReport:
    """What the demo saw; ``all_recovered`` is the verdict.

    .. versionadded:: 0.2
    """

    faults: dict[str, dict[str, Any]] = field(default_factory=dict)
    injections_by_phase: dict[str, dict[str, int]] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    retries_gave_up: dict[str, int] = field(default_factory=dict)
    breaker_transitions: list[str] = field(default_factory=list)
    checkpoint_resumes: int = 0
    worker_restarts: int = 0
    worker_pids: list[int] = field(default_factory=list)
    worker_kills: list[dict[str, Any]] = field(default_factory=list)
    run_status: str = ""
    reference_sha256: str = ""
    final_sha256: str | None = None
    model_equal: bool = False
    accuracy: float | None = None
    predictions: dict[str, int] = field(default_factory=dict)
    api_errors: int = 0
    breaker_final: str = ""
    all_recovered: bool = False
    seconds: float = 0.0
    url: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready data."""
        return asdict(self)


#: The demo's phases, in order (the first covers the reference fit and the start-up).
PHASES = (
    "reference",
    "training",
    "predictor ok",
    "predictor slow",
    "predictor down",
    "predictor recovered",
)


class Recorder:
    """Collects the events the report needs: injections per phase, retries, breaker transitions.

    .. versionadded:: 0.2
    """

    def __init__(self) -> None:
        self.retries: Counter[str] = Counter()
        self.gave_up: Counter[str] = Counter()
        self.transitions: list[str] = []
        self.phase = PHASES[0]
        self.injections: dict[str, Counter[str]] = {phase: Counter() for phase in PHASES}
        self.started = time.monotonic()

    def injected(self, name: str) -> int:
        """Return the ChaosInjected events of part ``name`` in all phases."""
        return sum(counts[name] for counts in self.injections.values())

    def __call__(self, event: events.Event) -> None:
        """Count ``event`` (a subscriber of the event stream)."""
        if isinstance(event, events.ChaosInjected):
            self.injections[self.phase][event.name] += 1
        elif isinstance(event, events.RetryScheduled):
            self.retries[event.name] += 1
        elif isinstance(event, events.RetryGaveUp):
            self.gave_up[event.name] += 1
        elif isinstance(event, events.CircuitStateChanged) and event.name == BREAKER_NAME:
            at = time.monotonic() - self.started
            self.transitions.append(f"{at:6.2f}s {event.previous.name} -> {event.state.name}")


def fault_row(
    part: Fault | Latency | Outcome,
    recorder: Recorder,
    recovered: bool,
    total: ChaosStatistics | None = None,
) -> dict[str, Any]:
    """One row of the report: the chaos part, its injections (counted and seen), the verdict.

    ``total`` counts the worker processes' parts of that kind too (``None``:
    the part alone); ``in_worker_processes`` is their share.

    .. versionadded:: 0.2
    """
    own = part.statistics()
    stats = total or own
    return {
        "injected": stats.injected,
        "in_worker_processes": stats.injected - own.injected,
        "events": recorder.injected(part.name or ""),
        "calls": stats.calls,
        # The part is switched off by now; show its settings without that.
        "chaos": part.describe_part().removesuffix(" enabled=False"),
        "recovered": recovered,
    }


def death_line(death: dict[str, Any]) -> str:
    """Return a worker process's death (a ``/health`` exit) as the demo prints it.

    .. versionadded:: 0.2
    """
    where = ""
    if death.get("last_step") is not None:
        where = (
            f" while writing the checkpoint of step {death['last_step']}"
            if death.get("in_checkpoint_write")
            else f" after step {death['last_step']}"
        )
    how = f"killed by {death['signal']}" if death.get("signal") else "exited"
    return f"worker process {death['pid']} {how} (exit code {death['returncode']}){where}"


def kills_of(lives: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the deaths among a run's worker processes, each with the process that took over.

    .. versionadded:: 0.2
    """
    kills = []
    for n, life in enumerate(lives):
        if life["returncode"] == 0:
            continue
        after = lives[n + 1] if n + 1 < len(lives) else {}
        kills.append(
            {
                "pid": life["pid"],
                "signal": life["signal"],
                "returncode": life["returncode"],
                "killed_by_service": life["killed"],
                "after_step": life["last_step"],
                "in_checkpoint_write": life["in_checkpoint_write"],
                "resumed_by_pid": after.get("pid"),
                "resumed_at_step": after.get("first_step"),
            }
        )
    return kills
