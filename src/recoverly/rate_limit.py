"""RateLimiter: at most ``rate`` calls per ``per`` seconds, with bursts of ``burst``.

The limiter is GCRA (a token bucket kept as one number per key): a bucket holds
``burst`` tokens and refills at ``rate / per`` tokens per second. Over *any*
window of ``w`` seconds it admits at most ``burst + rate * w / per`` tokens,
whatever the arrival pattern and however many threads and tasks share it.

::

    api = RateLimiter(10, per=1.0, name="api")   # 10 per second, bursts of 10

    @api                          # waits for a token (up to `timeout`), then calls
    def call_api(): ...

    if api.try_acquire():         # never waits
        ...
    api.acquire(timeout=2.0)      # waits up to 2 s, else RateLimitExceeded
    await api.aacquire()          # the async twin (asyncio and Trio)

Per-key limits (one bucket per user, per tenant, ...) take ``key=``:
``RateLimiter(5, per=60, key=lambda user, **kw: user.id)``.

The buckets live in a :class:`~recoverly.stores.LimiterStore`: in memory by
default (bounded, see :class:`~recoverly.stores.InMemoryLimiterStore`), or a
shared store such as Redis for many processes. Waiting sleeps through the
limiter's clock; nothing is reserved while a caller sleeps, so a cancelled
waiter leaves the bucket as it was.

.. versionadded:: 0.2
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Awaitable, Callable, Hashable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar, cast

from recoverly._core.bus import BUS
from recoverly._core.callables import Kind, decoratable_kind, guess_name
from recoverly._core.clock import DEFAULT_CLOCK, Clock
from recoverly._core.registry import REGISTRY
from recoverly._core.validate import Problems
from recoverly._rate_store import SLACK
from recoverly._rate_support import UNSET, RateLimiterStatistics, count_of, positive_number
from recoverly.errors import RateLimitExceeded
from recoverly.events import CallRejected, RateLimitDelayed
from recoverly.stores import InMemoryLimiterStore, LimiterStore

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["KIND", "RateLimiter", "RateLimiterStatistics"]

P = ParamSpec("P")
T = TypeVar("T")

#: The registry kind of rate limiters.
KIND: Final = "rate_limiter"
_STRATEGY: Final = "rate_limit"
_STATE: Final = "exhausted"


class RateLimiter:
    """Admits at most ``rate`` calls per ``per`` seconds, with bursts up to ``burst``.

    Use it as ``@limiter`` (sync or ``async def``: each call first waits for a
    token, up to ``timeout``), ``with limiter:`` / ``async with limiter:``, or
    call :meth:`try_acquire`, :meth:`acquire` and :meth:`aacquire` directly.

    Args:
        rate: Tokens added per ``per`` seconds (a positive number).
        per: The period of ``rate`` in seconds (or a ``timedelta``).
        burst: The bucket size, an integer >= 1; ``None`` means ``rate`` rounded
            down (at least 1): after a quiet period, a whole period's worth of
            calls may go at once.
        name: Name for errors, events and :func:`recoverly.registry.limiters`.
            Unnamed limiters are labelled after the first function they decorate.
        key: For the decorator: ``key(*args, **kwargs)`` picks the bucket of a
            call (one bucket per returned value); ``None``: one shared bucket.
        timeout: The longest wait for a token in the decorator, the ``with``
            forms and :meth:`acquire` (unless given there); ``0`` never waits,
            ``None`` waits as long as it takes.
        store: Where the buckets live (default: a new bounded in-memory store).
        clock: Time source for refills and waits (default: the process clock).

    Raises:
        ValueError: A setting is out of range (every bad setting is listed).
        TypeError: A setting has the wrong type.

    .. versionadded:: 0.2
    """

    __slots__ = (
        "__weakref__",
        "_admitted",
        "_burst",
        "_clock",
        "_delayed",
        "_interval",
        "_key",
        "_label",
        "_per",
        "_rate",
        "_rejected",
        "_store",
        "_timeout",
        "name",
    )

    def __init__(
        self,
        rate: float,
        per: Any = 1.0,
        burst: int | None = None,
        name: str | None = None,
        *,
        key: Callable[..., Hashable] | None = None,
        timeout: Any = 30.0,
        store: LimiterStore | None = None,
        clock: Clock | None = None,
    ) -> None:
        p = Problems()
        self._rate = positive_number(p, "rate", rate)
        self._per = p.duration("per", per, positive=True) or 1.0
        self._burst = (
            max(1, int(self._rate)) if burst is None else p.int_at_least("burst", burst, 1)
        )
        self.name = p.optional_name("name", name)
        self._key = p.optional_callable("key", key)
        self._timeout = p.optional_duration("timeout", timeout)
        if clock is not None and not isinstance(cast("object", clock), Clock):
            p._bad(f"clock must be a Clock or None, got {clock!r}", kind=True)
        self._clock = clock
        if store is not None and not isinstance(cast("object", store), LimiterStore):
            p._bad(f"store must be a LimiterStore or None, got {store!r}", kind=True)
        self._interval = self._per / self._rate
        if not p.messages and not (0 < self._interval < math.inf):
            p._bad(f"per / rate must be a finite interval > 0, got {self._per!r} / {self._rate!r}")
        p.raise_if_any()
        self._store: LimiterStore = store if store is not None else InMemoryLimiterStore()
        self._label = self.name or "RateLimiter"
        self._admitted = itertools.count()  # next() is atomic: exact without a lock
        self._rejected = itertools.count()
        self._delayed = itertools.count()
        if self.name is not None and REGISTRY.register(KIND, self.name, self) is not None:
            warnings.warn(
                f"another live RateLimiter is named {self.name!r}; "
                "recoverly.registry.limiters() now lists this one",
                UserWarning,
                stacklevel=2,
            )

    # ------------------------------------------------------------ settings, read-only
    @property
    def rate(self) -> float:
        """Tokens added per :attr:`per` seconds."""
        return self._rate

    @property
    def per(self) -> float:
        """The period of :attr:`rate`, in seconds."""
        return self._per

    @property
    def burst(self) -> int:
        """The bucket size: the most tokens that may be taken at once."""
        return self._burst

    @property
    def key(self) -> Callable[..., Hashable] | None:
        """The decorator's key function (``None``: one shared bucket)."""
        return self._key

    @property
    def timeout(self) -> float | None:
        """The default longest wait for tokens, in seconds (``None``: no limit)."""
        return self._timeout

    # ------------------------------------------------------------ decisions
    def _check_tokens(self, tokens: object) -> int:
        if isinstance(tokens, bool) or not isinstance(tokens, int):
            msg = f"tokens must be an integer >= 1, got {tokens!r}"
            raise TypeError(msg)
        if not 1 <= tokens <= self._burst:
            msg = f"tokens must be an integer in [1, burst={self._burst}], got {tokens!r}"
            raise ValueError(msg)
        return tokens

    def _deadline(self, clock: Clock, timeout: object) -> float | None:
        if timeout is UNSET:
            seconds = self._timeout
        else:
            p = Problems()
            seconds = p.optional_duration("timeout", timeout)
            p.raise_if_any()
        return None if seconds is None else clock.monotonic() + seconds

    def _refuse(self, key: Hashable, retry_after: float) -> RateLimitExceeded:
        next(self._rejected)
        if BUS.wants(CallRejected):
            BUS.emit(CallRejected(self._label, _STRATEGY, _STATE, retry_after))
        message = f"Rate limit exceeded for {self._label!r}"
        if key is not None:
            message += f" (key {key!r})"
        message += f"; next token in {retry_after:.3f} s"
        return RateLimitExceeded(message, name=self._label, state=_STATE, retry_after=retry_after)

    def _step(self, clock: Clock, tokens: int, key: Hashable, deadline: float | None) -> float:
        """Take the tokens now (return 0.0) or return how long to sleep first.

        Raises:
            RateLimitExceeded: The tokens would be free only after ``deadline``.
        """
        now = clock.monotonic()
        admitted, retry_after = self._store.take(key, tokens, now, self._interval, self._burst)
        if admitted:
            next(self._admitted)
            return 0.0
        if deadline is not None and now + retry_after > deadline + SLACK:
            raise self._refuse(key, retry_after)
        next(self._delayed)
        if BUS.wants(RateLimitDelayed):
            BUS.emit(RateLimitDelayed(self._label, key, tokens, retry_after))
        return retry_after

    # ------------------------------------------------------------ acquiring
    def try_acquire(self, tokens: int = 1, key: Hashable = None) -> bool:
        """Take ``tokens`` from ``key``'s bucket if they are free now; never waits.

        Returns:
            Whether the tokens were taken.

        Raises:
            ValueError: ``tokens`` is outside ``[1, burst]`` (it could never succeed).
            TypeError: ``tokens`` is not an integer.
        """
        if tokens.__class__ is not int or tokens != 1:
            self._check_tokens(tokens)
        clock = self._clock or DEFAULT_CLOCK[0]
        admitted, retry_after = self._store.take(
            key, tokens, clock.monotonic(), self._interval, self._burst
        )
        if admitted:
            next(self._admitted)
            return True
        next(self._rejected)
        if BUS.wants(CallRejected):
            BUS.emit(CallRejected(self._label, _STRATEGY, _STATE, retry_after))
        return False

    def acquire(self, tokens: int = 1, *, timeout: Any = UNSET, key: Hashable = None) -> float:
        """Take ``tokens`` from ``key``'s bucket, sleeping until they are free.

        Args:
            tokens: How many tokens to take (``1`` to ``burst``).
            timeout: The longest wait in seconds; default: the limiter's
                ``timeout``; ``None`` waits as long as it takes.
            key: The bucket (``None``: the shared one).

        Returns:
            The seconds spent sleeping (``0.0`` when the tokens were free).

        Raises:
            RateLimitExceeded: The tokens would not be free within ``timeout``;
                ``retry_after`` says when they would. Nothing was taken.
            ValueError: ``tokens`` or ``timeout`` is out of range.
            TypeError: ``tokens`` or ``timeout`` has the wrong type.
        """
        self._check_tokens(tokens)
        clock = self._clock or DEFAULT_CLOCK[0]
        deadline = self._deadline(clock, timeout)
        waited = 0.0
        while delay := self._step(clock, tokens, key, deadline):
            clock.sleep(delay)
            waited += delay
        return waited

    async def aacquire(
        self, tokens: int = 1, *, timeout: Any = UNSET, key: Hashable = None
    ) -> float:
        """Async twin of :meth:`acquire`: awaits the clock's ``asleep`` (asyncio or Trio).

        Cancelling the waiting task takes nothing from the bucket.

        Returns:
            The seconds spent sleeping.

        Raises:
            RateLimitExceeded: The tokens would not be free within ``timeout``.
            ValueError: ``tokens`` or ``timeout`` is out of range.
            TypeError: ``tokens`` or ``timeout`` has the wrong type.
        """
        self._check_tokens(tokens)
        clock = self._clock or DEFAULT_CLOCK[0]
        deadline = self._deadline(clock, timeout)
        waited = 0.0
        while delay := self._step(clock, tokens, key, deadline):
            await clock.asleep(delay)
            waited += delay
        return waited

    # ------------------------------------------------------------ decorator and blocks
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate ``fn``: each call first takes one token (waiting up to ``timeout``).

        Raises:
            TypeError: ``fn`` is a generator or async generator function.
        """
        kind = decoratable_kind("RateLimiter", fn)
        if self.name is None and self._label == "RateLimiter":
            self._label = guess_name(fn)
        key_of = self._key
        if kind is Kind.ASYNC:
            afn = cast("Callable[..., Awaitable[Any]]", fn)

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                await self.aacquire(key=None if key_of is None else key_of(*args, **kwargs))
                return await afn(*args, **kwargs)

            return cast("Callable[P, T]", async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            self.acquire(key=None if key_of is None else key_of(*args, **kwargs))
            return fn(*args, **kwargs)

        return wrapper

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def __aenter__(self) -> Self:
        await self.aacquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    # ------------------------------------------------------------ inspection
    @property
    def store(self) -> LimiterStore:
        """The store holding this limiter's buckets."""
        return self._store

    def available(self, key: Hashable = None) -> float:
        """Return the tokens free now in ``key``'s bucket (``0.0`` to ``burst``)."""
        clock = self._clock or DEFAULT_CLOCK[0]
        return self._store.available(key, clock.monotonic(), self._interval, self._burst)

    def reset(self) -> None:
        """Refill every bucket (forget every key)."""
        self._store.clear()

    def statistics(self) -> RateLimiterStatistics:
        """Return a snapshot of the settings and counters."""
        return RateLimiterStatistics(
            name=self._label,
            rate=self.rate,
            per=self.per,
            burst=self._burst,
            available=self.available(),
            admitted=count_of(self._admitted),
            rejected=count_of(self._rejected),
            delayed=count_of(self._delayed),
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<RateLimiter {s.name!r} {s.rate:g}/{s.per:g}s burst={s.burst} "
            f"available={s.available:.3g} admitted={s.admitted} rejected={s.rejected}>"
        )


RateLimiter.__module__ = "recoverly"
RateLimiterStatistics.__module__ = "recoverly"
