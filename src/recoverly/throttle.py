"""AdaptiveThrottle: stop sending work to a backend that keeps refusing it.

Client-side adaptive throttling, as described in Google's *Site Reliability
Engineering* book (chapter "Handling Overload"). The client remembers, over a
sliding window, how many requests it tried (``requests``, including the ones
it refused itself) and how many the backend accepted (``accepts``), and refuses
a new request locally with probability::

    max(0, (requests - k * accepts) / (requests + 1))

While the backend accepts everything the probability is 0. When it starts
refusing, the client sends fewer and fewer requests, so the backend spends its
capacity on work instead of on refusals; as soon as it accepts again the
probability falls back. ``k`` sets how many requests per accepted one are still
sent: 2 (the default) lets through twice the backend's current acceptance rate.

**Two horizons.** Over one long window the release is slow: after an outage
the share of calls let through grows by about ``k`` per window (it is bounded
by ``k`` times what was accepted in the window), so a client that went down to
1 call in 1 000 needs several windows (minutes, with the book's 120 s) to send
at full rate again, long after the backend has recovered. The throttle
therefore evaluates the same formula over the whole ``window`` *and* over its
last ``release_window`` seconds (``window / 8`` by default) and uses the
smaller probability: it takes a sustained run of refusals over the long window
to start throttling hard, and recent accepts are enough to release it.
``release_window=window`` gives the book's single window exactly. It never
refuses more than the single-window rule would.

In a :class:`~recoverly.Pipeline` the throttle sits **outside** the retry, so
one call counts as one request however many attempts it takes, and a refused
call is not retried::

    Pipeline(AdaptiveThrottle(), retry(max_attempts=3, budget=budget), timeout(2.0))

Together with a :class:`~recoverly.RetryBudget` it keeps a fleet of clients from
multiplying an outage's load.

.. versionadded:: 0.2
"""

from __future__ import annotations

import random as _random
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast

from recoverly._core.bus import BUS
from recoverly._core.callables import decoratable_kind, guess_name, wrap
from recoverly._core.clock import Clock, resolve
from recoverly._core.predicates import Predicate, compile_filter
from recoverly._core.validate import Duration, Problems
from recoverly._core.windows import TimeWindow
from recoverly.errors import ThrottledError
from recoverly.events import CallRejected

__all__ = ["AdaptiveThrottle", "AdaptiveThrottleStatistics"]

P = ParamSpec("P")
T = TypeVar("T")

KIND = "adaptive_throttle"


@dataclass(frozen=True, slots=True)
class AdaptiveThrottleStatistics:
    """A snapshot of an :class:`AdaptiveThrottle`.

    Attributes:
        requests: Requests in the window, including the ones refused locally.
        accepts: Requests the backend accepted in the window.
        throttled: Calls refused locally since the throttle was created.
        probability: The rejection probability a call would face now.
        recent_requests: Requests in the last ``release_window`` seconds.
        recent_accepts: Accepted requests in the last ``release_window`` seconds.

    .. versionadded:: 0.2
    """

    requests: int
    accepts: int
    throttled: int
    probability: float
    recent_requests: int = 0
    recent_accepts: int = 0


class AdaptiveThrottle:
    """Refuses calls locally with a probability that grows while the backend refuses them.

    Use it as a decorator (plain and ``async def`` functions) or as a
    :class:`~recoverly.Pipeline` part, outside the retry. A refused call raises
    :class:`~recoverly.ThrottledError` without running.

    Args:
        k: Requests sent per accepted one before throttling starts (``>= 1``);
            lower is more aggressive.
        window: Seconds of history remembered (``> 0``); 120 in the SRE book.
        release_window: The recent horizon (``0 < release_window <= window``;
            default ``window / 8``): the probability is the smaller of the
            rule over ``window`` and over the last ``release_window`` seconds,
            so the throttle lets go soon after the backend accepts again.
        exceptions: What counts as the backend refusing (an exception class, a
            tuple, or a predicate). Other exceptions count as accepted: the
            backend answered, the answer was an error of the caller's own.
        buckets: Slots of each sliding window (their resolution).
        name: Name used in errors, events and ``repr``.
        clock: Time source (default: the process clock).
        random: Source of floats in [0, 1) (default ``random.random``); pass a
            seeded generator's ``random`` for a reproducible run.

    Raises:
        ValueError: A setting is out of range (every problem is listed).
        TypeError: A setting has the wrong type.

    .. versionadded:: 0.2
    """

    __slots__ = (
        "_accepts",
        "_clock",
        "_lock",
        "_random",
        "_recent_accepts",
        "_recent_requests",
        "_refused",
        "_requests",
        "_throttled",
        "exceptions",
        "k",
        "name",
        "release_window",
        "window",
    )

    def __init__(
        self,
        k: float = 2.0,
        window: Duration = 120.0,
        *,
        release_window: Duration | None = None,
        exceptions: Any = (Exception,),
        buckets: int = 20,
        name: str | None = None,
        clock: Clock | None = None,
        random: Callable[[], float] | None = None,
    ) -> None:
        p = Problems()
        self.k = p.number_at_least("k", k, 1)
        self.window = p.duration("window", window, positive=True)
        recent = (
            None
            if release_window is None
            else p.duration("release_window", release_window, positive=True)
        )
        if recent is not None and self.window > 0 and recent > self.window:
            p._bad(
                f"release_window must be at most window ({self.window:g}), got {release_window!r}"
            )
        buckets = p.int_at_least("buckets", buckets, 1)
        self.name = p.optional_name("name", name)
        rand = p.optional_callable("random", random)
        try:
            self._refused: Predicate = compile_filter("exceptions", exceptions)
        except TypeError as exc:
            p._bad(str(exc), kind=True)
        p.raise_if_any()
        self.exceptions = exceptions
        self._clock = clock
        self._random: Callable[[], float] = rand or _random.random
        self._lock = threading.Lock()
        self.release_window = self.window / 8 if recent is None else recent
        self._requests = TimeWindow(self.window, buckets)
        self._accepts = TimeWindow(self.window, buckets)
        # The recent horizon; none when it is the whole window (the book's rule).
        self._recent_requests: TimeWindow | None = None
        self._recent_accepts: TimeWindow | None = None
        if self.release_window < self.window:
            self._recent_requests = TimeWindow(self.release_window, buckets)
            self._recent_accepts = TimeWindow(self.release_window, buckets)
        self._throttled = 0

    # ------------------------------------------------------------ the rule
    def _rule(self, requests: int, accepts: int) -> float:
        return max(0.0, (requests - self.k * accepts) / (requests + 1))

    def _probability(self, now: float) -> float:
        chance = self._rule(self._requests.totals(now)[0], self._accepts.totals(now)[0])
        if chance > 0.0 and self._recent_requests is not None and self._recent_accepts is not None:
            recent = self._rule(
                self._recent_requests.totals(now)[0], self._recent_accepts.totals(now)[0]
            )
            chance = min(chance, recent)
        return chance

    def _admit(self, label: str) -> None:
        """Count one request; raise :class:`ThrottledError` if it is refused locally."""
        now = resolve(self._clock).monotonic()
        with self._lock:
            chance = self._probability(now)
            self._requests.record(False, False, now)  # noqa: FBT003 - window API
            if self._recent_requests is not None:
                self._recent_requests.record(False, False, now)  # noqa: FBT003
            if chance <= 0.0 or self._random() >= chance:
                return
            self._throttled += 1
        if BUS.wants(CallRejected):
            BUS.emit(CallRejected(label, KIND, "throttled", None))
        raise ThrottledError(name=label, probability=chance)

    def _accepted(self) -> None:
        now = resolve(self._clock).monotonic()
        with self._lock:
            self._accepts.record(False, False, now)  # noqa: FBT003 - window API
            if self._recent_accepts is not None:
                self._recent_accepts.record(False, False, now)  # noqa: FBT003

    def _call_sync(self, label: str, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        self._admit(label)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            if not self._refused(exc):
                self._accepted()
            raise
        self._accepted()
        return result

    async def _call_async(
        self, label: str, fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any
    ) -> T:
        self._admit(label)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            if not self._refused(exc):
                self._accepted()
            raise
        self._accepted()
        return result

    # ------------------------------------------------------------ public API
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate ``fn``; the wrapper has the same kind and signature."""
        kind = decoratable_kind("AdaptiveThrottle", fn)
        label = self.name or guess_name(fn)
        return cast("Callable[P, T]", wrap(fn, kind, label, self._call_sync, self._call_async))

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` through the throttle (sync callables only).

        Raises:
            ThrottledError: The call was refused locally.
        """
        return self._call_sync(self.name or guess_name(fn), fn, args, kwargs)

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args, **kwargs)`` through the throttle.

        Raises:
            ThrottledError: The call was refused locally.
        """
        return await self._call_async(self.name or guess_name(fn), fn, args, kwargs)

    def probability(self) -> float:
        """Return the probability that a call made now is refused locally."""
        now = resolve(self._clock).monotonic()
        with self._lock:
            return self._probability(now)

    def statistics(self) -> AdaptiveThrottleStatistics:
        """Return a snapshot of the window and the counters."""
        now = resolve(self._clock).monotonic()
        with self._lock:
            recent_r, recent_a = self._requests, self._accepts
            if self._recent_requests is not None and self._recent_accepts is not None:
                recent_r, recent_a = self._recent_requests, self._recent_accepts
            return AdaptiveThrottleStatistics(
                requests=self._requests.totals(now)[0],
                accepts=self._accepts.totals(now)[0],
                throttled=self._throttled,
                probability=self._probability(now),
                recent_requests=recent_r.totals(now)[0],
                recent_accepts=recent_a.totals(now)[0],
            )

    def reset(self) -> None:
        """Forget the window (the ``throttled`` counter is kept)."""
        with self._lock:
            for window in (
                self._requests,
                self._accepts,
                self._recent_requests,
                self._recent_accepts,
            ):
                if window is not None:
                    window.reset()

    def _adopt_settings(self, other: AdaptiveThrottle) -> None:
        """Take ``other``'s settings; keep this throttle's window unless its shape changes.

        ``k``, ``exceptions`` and ``random`` apply from the next call, to the
        requests already in the window. A new ``window`` or ``buckets`` starts
        an empty window, a new ``release_window`` an empty recent horizon (the
        ``throttled`` counter stays). The name and clock stay this throttle's.
        Used by :func:`recoverly.configure`.
        """
        with self._lock:
            self.k, self.exceptions = other.k, other.exceptions
            self._refused, self._random = other._refused, other._random
            buckets = self._requests.buckets
            if (other._requests.seconds, other._requests.buckets) != (
                self._requests.seconds,
                buckets,
            ):
                self.window = other.window
                self._requests, self._accepts = other._requests, other._accepts
            if (other.release_window, other._requests.buckets) != (self.release_window, buckets):
                self.release_window = other.release_window
                self._recent_requests = other._recent_requests
                self._recent_accepts = other._recent_accepts

    def describe_part(self) -> str:
        """Return this throttle's one-line description (used by :class:`~recoverly.Pipeline`)."""
        name = f" {self.name!r}" if self.name else ""
        return (
            f"adaptive_throttle{name} k={self.k:g} window={self.window:g} "
            f"release_window={self.release_window:g}"
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<AdaptiveThrottle{' ' + repr(self.name) if self.name else ''} k={self.k:g} "
            f"window={self.window:g} release_window={self.release_window:g} "
            f"requests={s.requests} accepts={s.accepts} "
            f"throttled={s.throttled} probability={s.probability:.3f}>"
        )


AdaptiveThrottle.__module__ = "recoverly"
AdaptiveThrottleStatistics.__module__ = "recoverly"
