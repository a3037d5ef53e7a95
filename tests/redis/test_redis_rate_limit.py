"""RedisRateLimiter and RedisLimiterStore: GCRA in Redis, one round trip per decision."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

redis = pytest.importorskip("redis")

from recoverly import RateLimiter, RateLimitExceeded  # noqa: E402
from recoverly._core.clock import SystemClock  # noqa: E402
from recoverly.redis import RedisLimiterStore, RedisRateLimiter  # noqa: E402
from recoverly.stores import LimiterStore  # noqa: E402
from recoverly.testing import ManualClock  # noqa: E402

MakeLimiter = Callable[..., RedisRateLimiter]


@pytest.fixture
def make_limiter(redis_url: str, redis_prefix: str) -> Iterator[MakeLimiter]:
    """Build limiters on the shared server under the test's prefix; close them afterwards."""
    made: list[RedisRateLimiter] = []

    def make(rate: float = 5, **kwargs: Any) -> RedisRateLimiter:
        # Named after the test's prefix: limiters kept alive by an earlier test's
        # traceback must not share the registry name.
        name = kwargs.pop("name", "api-" + redis_prefix.rstrip(":").rsplit("-", 1)[-1])
        kwargs.setdefault("prefix", redis_prefix)
        url = kwargs.pop("url", redis_url)
        limiter = RedisRateLimiter(url, rate, name=name, **kwargs)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        limiter.close()


@pytest.fixture
def twin(redis_url: str, redis_prefix: str) -> Iterator[Callable[[RedisRateLimiter], RateLimiter]]:
    """Another "process" view of a limiter: an unnamed RateLimiter over its own Redis store."""
    stores: list[RedisLimiterStore] = []

    def make(limiter: RedisRateLimiter) -> RateLimiter:
        assert limiter.name is not None
        store = RedisLimiterStore(redis_url, limiter.name, prefix=redis_prefix)
        stores.append(store)
        return RateLimiter(limiter.rate, limiter.per, limiter.burst, store=store)

    yield make
    for store in stores:
        store.close()


def test_store_implements_the_limiter_store_protocol(redis_url: str) -> None:
    """RedisLimiterStore is a LimiterStore, so any RateLimiter can use it."""
    store = RedisLimiterStore(redis_url, "proto")
    try:
        assert isinstance(store, LimiterStore)
    finally:
        store.close()


def test_burst_is_shared_between_limiters_of_the_same_name(
    make_limiter: MakeLimiter, twin: Callable[[RedisRateLimiter], RateLimiter]
) -> None:
    """Two limiters with one Redis name draw from one bucket: five tokens in all, then refusals."""
    a = make_limiter(5, per=60)
    b = twin(a)
    taken = [a.try_acquire(), b.try_acquire(), a.try_acquire(), b.try_acquire(), a.try_acquire()]
    assert taken == [True] * 5
    assert not b.try_acquire()
    assert not a.try_acquire()
    assert a.statistics().admitted == 3
    assert b.statistics().rejected == 1


def test_refusal_says_when_the_next_token_is_free(make_limiter: MakeLimiter) -> None:
    """acquire(timeout=0) on an empty bucket raises RateLimitExceeded with the server's wait."""
    limiter = make_limiter(2, per=10.0)  # one token every 5 s
    limiter.acquire(2, timeout=0)
    with pytest.raises(RateLimitExceeded) as info:
        limiter.acquire(timeout=0)
    assert info.value.retry_after is not None
    assert 4.9 < info.value.retry_after <= 5.0
    assert limiter.available() < 0.05


def test_keys_have_separate_buckets(make_limiter: MakeLimiter, redis_prefix: str) -> None:
    """Each key has its own bucket in its own Redis key."""
    limiter = make_limiter(1, per=60)
    assert limiter.try_acquire(key="alice")
    assert limiter.try_acquire(key="bob")
    assert not limiter.try_acquire(key="alice")
    store = limiter.store
    assert isinstance(store, RedisLimiterStore)
    assert store.key_of("alice") == f"{redis_prefix}rate:{{{limiter.name}}}:alice"


def test_reset_deletes_every_bucket(
    make_limiter: MakeLimiter, redis_url: str, redis_prefix: str
) -> None:
    """reset() removes the limiter's keys from Redis, so every bucket is full again."""
    limiter = make_limiter(1, per=60)
    assert limiter.try_acquire()
    assert limiter.try_acquire(key="k")
    client = redis.Redis.from_url(redis_url)
    try:
        assert len(list(client.scan_iter(match=redis_prefix + "*"))) == 2
        limiter.reset()
        assert list(client.scan_iter(match=redis_prefix + "*")) == []
    finally:
        client.close()
    assert limiter.try_acquire()


def test_keys_expire_once_the_bucket_is_full(make_limiter: MakeLimiter, redis_url: str) -> None:
    """A bucket's key carries a TTL no longer than the time to refill it."""
    limiter = make_limiter(10, per=1.0)
    assert limiter.try_acquire(3)
    client = redis.Redis.from_url(redis_url)
    try:
        store = limiter.store
        assert isinstance(store, RedisLimiterStore)
        ttl = client.pttl(store.key_of(None))
    finally:
        client.close()
    assert 0 < ttl <= 301


@pytest.mark.realtime
def test_acquire_waits_for_the_next_token(make_limiter: MakeLimiter) -> None:
    """With the bucket empty, acquire() sleeps about one interval and then succeeds."""
    limiter = make_limiter(4, per=1.0, burst=1, clock=SystemClock())  # a token every 250 ms
    assert limiter.acquire() == 0.0
    start = time.monotonic()
    waited = limiter.acquire(timeout=2.0)
    elapsed = time.monotonic() - start
    assert 0.1 < waited <= 0.25
    assert 0.1 < elapsed < 2.0


def test_decorator_takes_a_token_per_call(make_limiter: MakeLimiter, clock: ManualClock) -> None:
    """The decorated function runs while tokens last, then raises RateLimitExceeded."""
    limiter = make_limiter(3, per=60, timeout=0, clock=clock)
    calls: list[int] = []

    @limiter
    def work(x: int) -> int:
        calls.append(x)
        return x * 2

    assert [work(1), work(2), work(3)] == [2, 4, 6]
    with pytest.raises(RateLimitExceeded):
        work(4)
    assert calls == [1, 2, 3]


@pytest.mark.anyio
async def test_aacquire_takes_from_the_shared_bucket(
    make_limiter: MakeLimiter, twin: Callable[[RedisRateLimiter], RateLimiter]
) -> None:
    """aacquire() works on asyncio and Trio and spends the same shared tokens."""
    limiter = make_limiter(2, per=60)
    assert await limiter.aacquire(timeout=0) == 0.0
    assert twin(limiter).try_acquire()
    with pytest.raises(RateLimitExceeded):
        await limiter.aacquire(timeout=0)


class CountingRedis(redis.Redis):  # type: ignore[misc,name-defined]
    """A client that counts the commands it sends (each one is a round trip)."""

    sent: list[str]

    def execute_command(self, *args: Any, **options: Any) -> Any:
        """Count, then send."""
        self.sent.append(str(args[0]))
        return super().execute_command(*args, **options)


def test_one_round_trip_per_decision(private_redis: Any, clock: ManualClock) -> None:
    """Every try_acquire sends exactly one command, EVALSHA, and the server runs one EVALSHA."""
    client = CountingRedis.from_url(private_redis.url)
    client.sent = []
    limiter = RedisRateLimiter(client, 50, per=60.0, name="rt", clock=clock)
    try:
        limiter.try_acquire()  # loads the script (NOSCRIPT) and opens the connection
        client.sent.clear()
        evalsha_before = private_redis.command_calls("evalsha")
        results = [limiter.try_acquire() for _ in range(100)]
        evalsha_after = private_redis.command_calls("evalsha")
    finally:
        client.close()
    assert sum(results) == 49  # the rest of the burst of 50
    assert client.sent == ["EVALSHA"] * 100
    assert evalsha_after - evalsha_before == 100


def test_name_is_required(redis_url: str) -> None:
    """A RedisRateLimiter without a name is refused: the name is its Redis key."""
    with pytest.raises(TypeError, match="needs a name"):
        RedisRateLimiter(redis_url, 5)


def test_settings_are_validated_together(redis_url: str) -> None:
    """Bad store settings are all named in one error."""
    with pytest.raises(ValueError, match="name") as info:
        RedisLimiterStore(redis_url, "", reconnect_interval=0)
    assert "reconnect_interval" in str(info.value)


def test_plain_rate_limiter_accepts_the_redis_store(redis_url: str, redis_prefix: str) -> None:
    """A core RateLimiter over a RedisLimiterStore shares its bucket with a RedisRateLimiter."""
    store = RedisLimiterStore(redis_url, "mixed", prefix=redis_prefix)
    other = RedisRateLimiter(redis_url, 2, per=60, name="mixed", prefix=redis_prefix)
    # ``plain`` stands for another process: unnamed, so the registry holds only ``other``.
    try:
        plain = RateLimiter(2, per=60, store=store)
        assert plain.try_acquire()
        assert other.try_acquire()
        assert not plain.try_acquire()
    finally:
        store.close()
        other.close()


# ------------------------------------------------------------------ outages
@pytest.mark.realtime
def test_outage_decides_locally_and_recovers(
    private_redis: Any, caplog: pytest.LogCaptureFixture, clock: ManualClock
) -> None:
    """Redis killed: one WARNING and local decisions; Redis back: the shared bucket again."""
    caplog.set_level(logging.INFO, logger="recoverly.redis")
    limiter = RedisRateLimiter(
        private_redis.url, 3, per=60, name="out", reconnect_interval=0.2, clock=clock
    )
    try:
        assert [limiter.try_acquire() for _ in range(4)] == [True, True, True, False]
        private_redis.stop()
        local = [limiter.try_acquire() for _ in range(5)]
        assert local == [True, True, True, False, False]  # a fresh local bucket of 3
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "decisions are local" in warnings[0].getMessage()

        private_redis.start()
        time.sleep(0.25)  # the next decision after reconnect_interval tries Redis again
        assert [limiter.try_acquire() for _ in range(4)] == [True, True, True, False]
        assert private_redis.command_calls("evalsha") >= 4
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    finally:
        limiter.close()


def test_fail_closed_refuses_while_redis_is_down(private_redis: Any, clock: ManualClock) -> None:
    """With fail_open=False, every request is refused while Redis is unreachable."""
    limiter = RedisRateLimiter(
        private_redis.url, 100, name="shut", fail_open=False, reconnect_interval=30, clock=clock
    )
    try:
        assert limiter.try_acquire()
        private_redis.stop()
        assert not limiter.try_acquire()
        with pytest.raises(RateLimitExceeded) as info:
            limiter.acquire(timeout=1.0)
        assert info.value.retry_after is not None
        assert info.value.retry_after > 1.0
    finally:
        limiter.close()


def test_missing_redis_py_names_the_extra() -> None:
    """Importing recoverly.redis without redis-py raises ImportError naming recoverly[redis]."""
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "try:\n    import recoverly.redis\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == ("recoverly.redis needs redis-py: pip install 'recoverly[redis]'")


def test_client_decoding_responses_is_supported(
    redis_url: str, redis_prefix: str, clock: ManualClock
) -> None:
    """A client created with decode_responses=True gives the same decisions and waits."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    limiter = RedisRateLimiter(client, 1, per=10, name="text", prefix=redis_prefix, clock=clock)
    try:
        assert limiter.try_acquire()
        with pytest.raises(RateLimitExceeded) as info:
            limiter.acquire(timeout=0)
        assert info.value.retry_after is not None
        assert 9.9 < info.value.retry_after <= 10.0
        assert 0.0 <= limiter.available() < 0.01
    finally:
        client.close()


def test_available_falls_back_with_redis(clock: ManualClock) -> None:
    """available() reads the local bucket (fail open) or zero (fail closed) while Redis is down."""
    from redis_servers import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    opened = RedisRateLimiter(url, 4, per=60, name="down-open", clock=clock)
    closed = RedisRateLimiter(url, 4, per=60, name="down-shut", fail_open=False, clock=clock)
    try:
        assert opened.try_acquire()
        assert opened.available() == pytest.approx(3.0)
        assert closed.available() == 0.0
        opened.reset()  # refills the local bucket; Redis is still unreachable
        assert opened.available() == pytest.approx(4.0)
        assert "degraded" in repr(opened.store)
    finally:
        opened.close()
        closed.close()


def test_an_asyncio_client_is_refused_up_front(redis_url: str) -> None:
    """A redis.asyncio client (or anything else) is a TypeError at construction, not later."""
    from redis import asyncio as aioredis

    aclient = aioredis.Redis.from_url(redis_url)
    with pytest.raises(TypeError, match=r"redis\.Redis client or a URL"):
        RedisRateLimiter(aclient, 5, name="async")
    with pytest.raises(TypeError, match=r"redis\.Redis client or a URL"):
        RedisLimiterStore(42, "number")
