"""The decision of a chaos part: count the call, roll the dice, follow the schedule, obey the cap.

:class:`ChaosDice` is the part's state. It never sleeps, raises into the caller
or calls user code; it answers "inject into this call?" under one lock and
keeps the counters :class:`ChaosStatistics` reports. It is asked only for calls
made while the part is switched on (the switch itself lives in
:mod:`recoverly.chaos`).

For each call it is asked about, in this order:

1. the call is counted (``calls``, numbered from 1);
2. the dice roll once, whatever happens next, so a schedule or a cap never shifts
   the random sequence of the other calls;
3. the call injects when the roll is below ``rate`` or its number is in ``at``;
4. unless ``max_injections`` injections were already made.
"""

from __future__ import annotations

import random as _random
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from recoverly._core.validate import Problems

__all__ = ["ChaosDice", "ChaosStatistics"]


@dataclass(frozen=True, slots=True)
class ChaosStatistics:
    """Counters of one chaos part.

    Attributes:
        calls: Calls made while the part was switched on (each rolled the dice).
        injected: Calls into which the part injected its chaos.

    .. versionadded:: 0.2
    """

    calls: int
    injected: int


def _schedule(p: Problems, at: object) -> tuple[int, ...]:
    """Check ``at``: ``None`` or an iterable of call numbers (integers >= 1); return them sorted."""
    if at is None:
        return ()
    rule = "at must be None or an iterable of call numbers (integers >= 1)"
    if isinstance(at, (str, bytes)) or not isinstance(at, Iterable):
        p._bad(f"{rule}, got {at!r}", kind=True)
        return ()
    numbers = list(at)
    wrong_kind = [n for n in numbers if isinstance(n, bool) or not isinstance(n, int)]
    if wrong_kind:
        p._bad(f"{rule}, got {wrong_kind[0]!r} in {at!r}", kind=True)
        return ()
    too_small = [n for n in numbers if n < 1]
    if too_small:
        p._bad(f"{rule}, got {too_small[0]!r} in {at!r}")
        return ()
    return tuple(sorted(set(numbers)))


class ChaosDice:
    """Decides, call by call, whether a switched-on chaos part injects.

    Args:
        p: Collects the problems of the part's arguments (raised by the part).
        rate: Share of calls that inject, in [0, 1].
        seed: Seed of the random generator (``None``: seeded by the system).
        at: Call numbers (1 = the first call made while switched on) that
            inject whatever the dice say.
        max_injections: Injections after which the part injects no more
            (``None``: no limit).
    """

    __slots__ = ("_at", "_calls", "_injected", "_lock", "_random", "at", "max_injections", "rate")

    def __init__(
        self,
        p: Problems,
        rate: float,
        seed: int | None,
        at: Iterable[int] | None,
        max_injections: int | None,
    ) -> None:
        self.rate = p.fraction("rate", rate)
        self.at = _schedule(p, at)
        self._at = frozenset(self.at)
        self.max_injections = p.optional_int_at_least("max_injections", max_injections, 1)
        given: object = seed
        if given is not None and (isinstance(given, bool) or not isinstance(given, int)):
            p._bad(f"seed must be an integer or None, got {seed!r}", kind=True)
            seed = None
        self._random = _random.Random(seed)
        self._lock = threading.Lock()
        self._calls = self._injected = 0

    def roll(self) -> bool:
        """Count one call and return whether it injects (counting the injection)."""
        with self._lock:
            self._calls += 1
            hit = self._random.random() < self.rate or self._calls in self._at
            if not hit or (
                self.max_injections is not None and self._injected >= self.max_injections
            ):
                return False
            self._injected += 1
            return True

    def statistics(self) -> ChaosStatistics:
        """Return a snapshot of the counters."""
        with self._lock:
            return ChaosStatistics(self._calls, self._injected)

    def settings(self) -> str:
        """Describe the schedule and the cap (empty when neither is set)."""
        text = ""
        if self.at:
            text += f" at={','.join(map(str, self.at))}"
        if self.max_injections is not None:
            text += f" max_injections={self.max_injections}"
        return text


ChaosStatistics.__module__ = "recoverly.chaos"
