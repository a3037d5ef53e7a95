"""What :mod:`recoverly.rate_limit` needs besides the limiter: its statistics and checks."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Final

from recoverly._core.validate import Problems

__all__ = ["UNSET", "RateLimiterStatistics", "count_of", "positive_number"]


class _Unset:
    """The default of ``acquire(timeout=...)``: use the limiter's own timeout."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


@dataclass(frozen=True, slots=True)
class RateLimiterStatistics:
    """A snapshot of a :class:`RateLimiter`.

    Attributes:
        name: The limiter's label.
        rate: Tokens per ``per`` seconds.
        per: The period of ``rate``, in seconds.
        burst: The bucket size: tokens that may be taken at once.
        available: Tokens free now in the shared bucket (``key=None``).
        admitted: Acquisitions granted since the limiter was created.
        rejected: Acquisitions refused (``try_acquire`` false or ``RateLimitExceeded``).
        delayed: Sleeps taken by callers waiting for tokens.

    .. versionadded:: 0.2
    """

    name: str
    rate: float
    per: float
    burst: int
    available: float
    admitted: int
    rejected: int
    delayed: int


def count_of(counter: itertools.count[int]) -> int:
    """Return the next value of ``counter`` without consuming it."""
    return int(repr(counter)[6:-1])  # "count(N)": read without consuming


def positive_number(p: Problems, name: str, value: object) -> float:
    """Check a finite number ``> 0`` (recorded in ``p`` otherwise; ``1.0`` stands in)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        p._bad(f"{name} must be a number > 0, got {value!r}", kind=True)
        return 1.0
    if not math.isfinite(value) or value <= 0:
        p._bad(f"{name} must be a finite number > 0, got {value!r}")
        return 1.0
    return float(value)
