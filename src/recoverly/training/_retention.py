"""Which checkpoints to delete after a save (keep the newest N and the best K), and metrics.

Pure logic, no I/O: :func:`doomed` gets what the store holds and returns the
names to delete. The checkpoint just committed is always kept, so the only
good checkpoint is never deleted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from recoverly._core.validate import Problems

__all__ = ["check_metrics", "doomed"]


def doomed(
    good: Sequence[tuple[int, str, Mapping[str, float]]],
    damaged: Sequence[tuple[int, str]],
    *,
    keep: str,
    keep_last: int | None,
    keep_best: int,
    monitor: str | None,
    mode: str,
) -> list[str]:
    """Return the entry names to delete.

    Args:
        good: ``(step, name, metrics)`` of entries whose manifest is intact.
        damaged: ``(step, name)`` of entries whose manifest is not.
        keep: The entry just committed (never deleted).
        keep_last: Keep this many newest good entries (``None``: all).
        keep_best: Keep this many best good entries by ``metrics[monitor]``.
        monitor: The metric to rank by.
        mode: ``"min"`` or ``"max"``.
    """
    ordered = sorted(good, key=lambda e: e[0])
    kept = {keep}
    newest = ordered if keep_last is None else ordered[len(ordered) - keep_last :]
    kept |= {name for _, name, _ in newest}
    if keep_best and monitor is not None:
        ranked = [
            (float(metrics[monitor]), step, name)
            for step, name, metrics in ordered
            if _usable(metrics.get(monitor))
        ]
        ranked.sort(key=lambda r: (-r[0] if mode == "max" else r[0], -r[1]))
        kept |= {name for _, _, name in ranked[:keep_best]}
    steps = {name: step for step, name, _ in ordered} | {name: step for step, name in damaged}
    oldest_kept = min(steps.get(name, 0) for name in kept)
    out = [name for _, name, _ in ordered if name not in kept]
    # A damaged entry older than everything kept can never be the one to fall back to.
    out += [name for step, name in damaged if step < oldest_kept and name not in kept]
    return out


def _usable(value: object) -> bool:
    return type(value) in (int, float) and not math.isnan(value)  # type: ignore[arg-type]


def check_metrics(p: Problems, metrics: object) -> dict[str, float]:
    """Validate ``save(metrics=)``: str keys, real numbers (numpy/torch scalars become floats)."""
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        p._bad(f"metrics must be a dict of str to numbers, got {metrics!r}", kind=True)
        return {}
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or isinstance(value, bool):
            p._bad(f"metrics[{key!r}] must be a number under a str key, got {value!r}", kind=True)
        elif type(value) in (int, float):
            out[key] = float(value) if type(value) is float else value
        elif hasattr(value, "__float__"):
            out[key] = float(value)  # numpy and torch scalars
        else:
            p._bad(f"metrics[{key!r}] must be a number, got {value!r}", kind=True)
    return out
