"""Argument checks for a progress report (a bad argument is a programming error: raise at once)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from recoverly._core.validate import Problems
from recoverly.training._journal import Metric

__all__ = ["MAX_STATUS", "Checked", "check_progress", "check_run_id"]

#: Longest status text (the models' column is ``String(64)``).
MAX_STATUS = 64


@dataclass(frozen=True, slots=True)
class Checked:
    """A validated progress report."""

    epoch: int
    step: int
    status: str
    progress_percentage: float | None
    metrics: dict[str, Metric]


def _metric(p: Problems, key: object, value: object) -> Metric | None:
    if not isinstance(key, str):
        p._bad(f"metrics keys must be strings, got {key!r}", kind=True)
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        p._bad(f"metrics[{key!r}] must be a real number, got {value!r}", kind=True)
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value)


def check_progress(
    epoch: Any, step: Any, metrics: Any, status: Any, progress_percentage: Any
) -> Checked:
    """Return the normalised report, or raise one error naming every bad argument."""
    p = Problems()
    epoch = p.int_at_least("epoch", epoch, 0)
    step = p.int_at_least("step", step, 0)
    checked: dict[str, Metric] = {}
    if metrics is not None and not isinstance(metrics, Mapping):
        p._bad(f"metrics must be a mapping of names to numbers, got {metrics!r}", kind=True)
    elif metrics is not None:
        for key, value in metrics.items():
            number = _metric(p, key, value)
            if number is not None:
                checked[key] = number
    if not isinstance(status, str):
        p._bad(f"status must be a string, got {status!r}", kind=True)
    elif not 0 < len(status) <= MAX_STATUS:
        p._bad(f"status must be 1 to {MAX_STATUS} characters, got {status!r}")
    pct = None
    if progress_percentage is not None:
        if isinstance(progress_percentage, bool) or not isinstance(
            progress_percentage, numbers.Real
        ):
            p._bad(
                f"progress_percentage must be a number in [0, 100] or None, "
                f"got {progress_percentage!r}",
                kind=True,
            )
        else:
            pct = float(progress_percentage)
            if not (math.isfinite(pct) and 0.0 <= pct <= 100.0):  # noqa: PLR2004 - percent
                p._bad(
                    f"progress_percentage must be a number in [0, 100] or None, "
                    f"got {progress_percentage!r}"
                )
    p.raise_if_any()
    return Checked(epoch, step, status, pct, checked)


def check_run_id(p: Problems, run_id: Any) -> Any:
    """Check a run id: an integer ``>= 0`` or a non-empty string."""
    if isinstance(run_id, str):
        if not run_id:
            p._bad("run_id must not be empty")
        return run_id
    return p.int_at_least("run_id", run_id, 0)
