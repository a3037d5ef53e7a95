"""RedisBreakerStore: one breaker state in Redis, shared by every store that names it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

redis = pytest.importorskip("redis")

from recoverly import CircuitBreaker, CircuitBreakerError, CircuitState  # noqa: E402
from recoverly._core.clock import SystemClock  # noqa: E402
from recoverly.redis import RedisBreakerStore  # noqa: E402
from recoverly.testing import ManualClock  # noqa: E402

MakeStore = Callable[..., RedisBreakerStore]


class Boom(Exception):
    """The failure the protected functions raise."""


def boom() -> None:
    """Fail."""
    raise Boom


def ok() -> int:
    """Succeed."""
    return 1


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    """Run ``boom`` through ``breaker`` ``times`` times, swallowing the failures."""
    for _ in range(times):
        with pytest.raises(Boom):
            breaker.call(boom)


@pytest.fixture
def client(redis_url: str) -> Iterator[Any]:
    """A client of the shared server."""
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def make_store(redis_url: str, redis_prefix: str) -> Iterator[MakeStore]:
    """Build stores on the shared server under the test's prefix; close them afterwards."""
    made: list[RedisBreakerStore] = []

    def make(name: str = "svc", *, url: str | None = None, **kwargs: Any) -> RedisBreakerStore:
        kwargs.setdefault("prefix", redis_prefix)
        store = RedisBreakerStore(url or redis_url, name, **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def breaker_on(store: RedisBreakerStore, clock: Any = None, **kwargs: Any) -> CircuitBreaker:
    """A breaker with threshold 3 and a 10 s recovery over ``store``."""
    kwargs.setdefault("failure_threshold", 3)
    kwargs.setdefault("recovery_timeout", 10.0)
    return CircuitBreaker(store=store, clock=clock, **kwargs)


def hash_key(prefix: str, name: str = "svc") -> str:
    """The Redis hash holding breaker ``name``."""
    return f"{prefix}breaker:{{{name}}}"


def wait_for(predicate: Callable[[], bool], seconds: float = 3.0) -> float:
    """Poll ``predicate`` on the real clock; return the seconds it took (fail after ``seconds``)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > seconds:
            pytest.fail(f"condition not met within {seconds} s")
        time.sleep(0.001)
    return time.monotonic() - start


# ------------------------------------------------------------------ shared state
def test_failures_in_one_store_open_the_breaker_for_another(
    make_store: MakeStore, clock: ManualClock
) -> None:
    """Three failures through one store open the breaker that a second store reads."""
    a, b = breaker_on(make_store(), clock), breaker_on(make_store(), clock)
    fail(a, 3)
    assert a.state is CircuitState.OPEN
    assert b.store.snapshot().state is CircuitState.OPEN
    wait_for(lambda: b.store.reject_until > clock.monotonic())
    with pytest.raises(CircuitBreakerError) as info:
        b.call(ok)
    assert info.value.state is CircuitState.OPEN
    assert info.value.retry_after is not None
    assert 9.0 < info.value.retry_after <= 10.0


def test_recovery_timeout_is_kept_in_fractions_of_a_second(
    make_store: MakeStore, clock: ManualClock
) -> None:
    """The OPEN duration survives the trip through Redis as float seconds, not whole seconds."""
    breaker = breaker_on(make_store(), clock, recovery_timeout=0.35)
    fail(breaker, 3)
    left = breaker.store.snapshot().retry_after
    assert left is not None
    assert 0.2 < left <= 0.35
    assert left != round(left)


def test_failures_are_counted_across_stores(make_store: MakeStore, clock: ManualClock) -> None:
    """Two failures in one process and one in another reach the shared threshold of three."""
    a, b = breaker_on(make_store(), clock), breaker_on(make_store(), clock)
    fail(a, 2)
    assert b.store.snapshot().consecutive_failures == 2
    fail(b, 1)
    assert a.store.snapshot().state is CircuitState.OPEN
    assert a.statistics().failed_calls == 3


def test_success_after_failures_clears_the_shared_count(
    make_store: MakeStore, clock: ManualClock
) -> None:
    """A success reported after failures resets the consecutive count in Redis."""
    breaker = breaker_on(make_store(), clock)
    fail(breaker, 2)
    assert breaker.store.fast == -1
    assert breaker.call(ok) == 1
    snap = breaker.store.snapshot()
    assert snap.consecutive_failures == 0
    assert snap.failed_calls == 2
    assert breaker.store.fast == snap.generation


def test_half_open_admits_the_configured_probes_across_stores(
    make_store: MakeStore, client: Any, redis_prefix: str, clock: ManualClock
) -> None:
    """With half_open_max_calls=2, two probes pass among three stores and the rest are refused."""
    stores = [make_store() for _ in range(3)]
    breakers = [breaker_on(s, clock, half_open_max_calls=2) for s in stores]
    fail(breakers[0], 3)
    wait_for(lambda: all(s.fast < 0 for s in stores))  # every store saw the opening
    client.hset(hash_key(redis_prefix), "u", "0")  # the open period is over (server time)
    clock.advance(11)
    admitted = [s.acquire() for s in stores] + [stores[0].acquire()]
    permits = [a[0] for a in admitted]
    assert sum(p >= 0 for p in permits) == 2
    assert [a[1] for a in admitted] == [CircuitState.HALF_OPEN] * 4
    assert stores[2].snapshot().probes_in_flight == 2
    # The first admission moved OPEN -> HALF_OPEN and reported it, once.
    changes = [c for a in admitted for c in a[3]]
    assert [(c.previous, c.state) for c in changes] == [(CircuitState.OPEN, CircuitState.HALF_OPEN)]


def test_released_probe_slot_admits_another_probe(
    make_store: MakeStore, client: Any, redis_prefix: str, clock: ManualClock
) -> None:
    """A probe ending without a counted outcome gives its slot back to any process."""
    a, b = make_store(), make_store()
    breaker_on(a, clock)
    breaker_on(b, clock)
    for _ in range(3):
        permit = a.acquire()[0]
        a.on_failure(permit, 0.0)
    wait_for(lambda: b.fast < 0)
    client.hset(hash_key(redis_prefix), "u", "0")
    clock.advance(11)
    first = a.acquire()[0]
    assert first >= 0
    assert b.acquire()[0] < 0
    a.release(first)
    assert b.snapshot().probes_in_flight == 0
    clock.advance(0.02)  # b asks Redis again no sooner than 10 ms after its refusal
    assert b.acquire()[0] == first


def test_lost_probe_slot_is_reclaimed_after_its_lease(
    make_store: MakeStore, client: Any, redis_prefix: str, clock: ManualClock
) -> None:
    """A probe slot held by a dead process is free again once its lease has expired."""
    a, b = make_store(), make_store()
    breaker_on(a, clock)
    breaker_on(b, clock)
    for _ in range(3):
        a.on_failure(a.acquire()[0], 0.0)
    wait_for(lambda: b.fast < 0)
    client.hset(hash_key(redis_prefix), "u", "0")
    clock.advance(11)
    assert a.acquire()[0] >= 0  # this "process" dies holding the slot
    assert b.acquire()[0] < 0
    client.hset(hash_key(redis_prefix), "l", "0")  # the lease ran out
    clock.advance(0.02)
    assert b.acquire()[0] >= 0
    assert b.snapshot().probes_in_flight == 1


def test_outcome_with_a_stale_generation_is_ignored(
    make_store: MakeStore, client: Any, redis_prefix: str, clock: ManualClock
) -> None:
    """A failure reported with a permit from before a state change moves nothing."""
    store = make_store()
    breaker_on(store, clock)
    old_permit = store.acquire()[0]
    store.force(CircuitState.CLOSED)  # a reset: new generation
    changes = store.on_failure(old_permit, 0.0)
    snap = store.snapshot()
    assert changes == ()
    assert snap.generation == old_permit + 1
    assert snap.consecutive_failures == 0
    assert snap.failed_calls == 1  # counted in the total, as the in-memory store does
    for _ in range(3):
        assert store.on_failure(old_permit, 0.0) == ()
    assert client.hget(hash_key(redis_prefix), "s") == b"closed"


def test_probe_success_closes_for_every_store_and_late_probe_outcome_is_ignored(
    make_store: MakeStore, client: Any, redis_prefix: str, clock: ManualClock
) -> None:
    """The first probe's success closes the breaker; the second probe's failure is stale."""
    a, b = make_store(), make_store()
    breaker_on(a, clock, half_open_max_calls=2)
    breaker_on(b, clock, half_open_max_calls=2)
    for _ in range(3):
        a.on_failure(a.acquire()[0], 0.0)
    wait_for(lambda: b.fast < 0)
    client.hset(hash_key(redis_prefix), "u", "0")
    clock.advance(11)
    pa, pb = a.acquire()[0], b.acquire()[0]
    assert pa == pb >= 0
    closed = a.on_success(pa, 0.0)
    assert [(c.previous, c.state) for c in closed] == [
        (CircuitState.HALF_OPEN, CircuitState.CLOSED)
    ]
    assert b.on_failure(pb, 0.0) == ()
    assert b.snapshot().state is CircuitState.CLOSED
    wait_for(lambda: b.fast == pa + 1)


def test_force_open_and_reset_reach_other_stores(make_store: MakeStore, clock: ManualClock) -> None:
    """force_open() in one process rejects calls in another; reset() lets them through again."""
    a, b = breaker_on(make_store(), clock), breaker_on(make_store(), clock)
    a.force_open()
    wait_for(lambda: b.store.reject_until == float("inf"))
    with pytest.raises(CircuitBreakerError) as info:
        b.call(ok)
    assert info.value.state is CircuitState.FORCED_OPEN
    a.reset()
    wait_for(lambda: b.store.fast >= 0)
    assert b.call(ok) == 1


def test_opening_fires_events_only_where_it_happened(
    make_store: MakeStore, clock: ManualClock
) -> None:
    """on_open runs in the process whose failure opened the shared breaker, not in the others."""
    opened: list[str] = []
    a = breaker_on(make_store(), clock, on_open=lambda _: opened.append("a"))
    b = breaker_on(make_store(), clock, on_open=lambda _: opened.append("b"))
    fail(a, 3)
    wait_for(lambda: b.store.reject_until > clock.monotonic())
    with pytest.raises(CircuitBreakerError):
        b.call(ok)
    assert opened == ["a"]


# ------------------------------------------------------------------ hot path and staleness
def test_closed_success_path_sends_no_command(private_redis: Any, clock: ManualClock) -> None:
    """A thousand successful calls on a CLOSED breaker make zero Redis commands."""
    store = RedisBreakerStore(private_redis.url, "hot", cache_ttl=60)
    try:
        breaker = breaker_on(store, clock)
        protected = breaker(ok)
        assert protected() == 1  # warm up
        # The watcher subscribes, then re-reads the state once.
        wait_for(lambda: private_redis.command_calls("subscribe") == 1)
        wait_for(lambda: private_redis.command_calls("evalsha") >= 2)
        time.sleep(0.05)
        before = private_redis.commands_except_info()
        counts = private_redis.command_counts()
        assert sum(protected() for _ in range(1000)) == 1000
        with breaker:
            pass
        assert private_redis.commands_except_info() == before, (
            counts,
            private_redis.command_counts(),
        )
    finally:
        store.close()


def test_change_reaches_other_store_through_pubsub_fast(
    make_store: MakeStore, client: Any, redis_prefix: str, clock: ManualClock
) -> None:
    """With pub/sub, another store sees an opening long before its cache_ttl re-read."""
    a = breaker_on(make_store(cache_ttl=30.0), clock)
    b_store = make_store(cache_ttl=30.0)
    breaker_on(b_store, clock)
    channel = hash_key(redis_prefix) + ":changes"
    wait_for(lambda: client.pubsub_numsub(channel)[0][1] == 2)  # both watchers listen
    fail(a, 3)
    took = wait_for(lambda: b_store.fast < 0, seconds=1.0)
    assert took < 1.0


@pytest.mark.realtime
def test_without_pubsub_the_cache_ttl_bounds_staleness(
    make_store: MakeStore, clock: ManualClock
) -> None:
    """With pub/sub off, another store sees the opening within cache_ttl plus a socket timeout."""
    ttl = 0.3
    a = breaker_on(make_store(), clock)
    b_store = make_store(cache_ttl=ttl, subscribe=False)
    breaker_on(b_store, clock)
    fail(a, 3)
    took = wait_for(lambda: b_store.fast < 0, seconds=5.0)
    assert took <= ttl + 0.25
    assert b_store.snapshot().state is CircuitState.OPEN


def test_script_is_loaded_again_after_the_server_forgets_it(
    private_redis: Any, clock: ManualClock
) -> None:
    """After SCRIPT FLUSH, the next transition reloads the script (NOSCRIPT) and succeeds."""
    store = RedisBreakerStore(private_redis.url, "flush")
    try:
        breaker = breaker_on(store, clock)
        fail(breaker, 1)
        admin = redis.Redis.from_url(private_redis.url)
        admin.script_flush()
        admin.close()
        fail(breaker, 2)
        assert breaker.state is CircuitState.OPEN
        assert not store.degraded
        assert private_redis.command_calls("script|load") >= 1
    finally:
        store.close()


# ------------------------------------------------------------------ settings
def test_rate_rules_are_refused(make_store: MakeStore) -> None:
    """A breaker with a failure-rate rule cannot use the Redis store (ValueError names it)."""
    with pytest.raises(ValueError, match="failure_rate_threshold"):
        CircuitBreaker(failure_rate_threshold=0.5, store=make_store())


def test_bad_settings_are_all_reported(redis_url: str) -> None:
    """Every bad setting is named in one error."""
    with pytest.raises(ValueError, match="name") as info:
        RedisBreakerStore(redis_url, "", cache_ttl=0, probe_lease=-1)
    assert "cache_ttl" in str(info.value)
    assert "probe_lease" in str(info.value)


def test_store_cannot_serve_two_breakers(make_store: MakeStore) -> None:
    """Binding a store to a second breaker raises RuntimeError."""
    store = make_store()
    breaker_on(store)
    with pytest.raises(RuntimeError, match="already belongs"):
        breaker_on(store)


def test_repr_names_the_key_and_state(make_store: MakeStore, redis_prefix: str) -> None:
    """The repr shows the name, the key, the cached state and the generation."""
    store = make_store("payments")
    breaker_on(store)
    text = repr(store)
    assert f"key='{redis_prefix}breaker:{{payments}}'" in text
    assert "CLOSED generation=0" in text


# ------------------------------------------------------------------ outages
@pytest.mark.realtime
def test_outage_falls_back_to_a_local_breaker_and_recovers(
    private_redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis killed: one WARNING, a local breaker opens; Redis back: the shared state resumes."""
    caplog.set_level(logging.INFO, logger="recoverly.redis")
    real = SystemClock()
    store = RedisBreakerStore(private_redis.url, "outage", reconnect_interval=0.2)
    other = RedisBreakerStore(private_redis.url, "outage", reconnect_interval=0.2)
    try:
        breaker = breaker_on(store, real, recovery_timeout=30.0)
        breaker_on(other, real)
        fail(breaker, 1)
        private_redis.stop()
        assert breaker.call(ok) == 1  # nothing to report: no Redis needed
        fail(breaker, 3)  # reaches Redis, falls back, counts locally
        assert store.degraded
        assert breaker.state is CircuitState.OPEN
        with pytest.raises(CircuitBreakerError):
            breaker.call(ok)
        # The other store's watcher notices on its own and logs its own warning.
        wait_for(lambda: sum(r.levelno == logging.WARNING for r in caplog.records) >= 2)
        time.sleep(0.3)  # more reconnection attempts fail meanwhile: they must not warn again
        assert other.degraded
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len([r for r in warnings if "'outage'" in r.getMessage()]) == 2  # one per store
        assert all("local in-memory breaker" in r.getMessage() for r in warnings)

        private_redis.start()
        wait_for(lambda: not store.degraded and not other.degraded, seconds=5.0)
        state: CircuitState = breaker.state
        assert state is CircuitState.CLOSED  # the fresh server's state wins
        assert breaker.call(ok) == 1
        fail(breaker, 3)
        assert other.snapshot().state is CircuitState.OPEN
        assert any("reachable again" in r.getMessage() for r in caplog.records)
    finally:
        store.close()
        other.close()


@pytest.mark.realtime
def test_fail_closed_rejects_while_redis_is_down(private_redis: Any) -> None:
    """With fail_open=False, calls are rejected while Redis is unreachable, and pass after."""
    store = RedisBreakerStore(private_redis.url, "closed", fail_open=False, reconnect_interval=0.2)
    try:
        breaker = breaker_on(store, SystemClock())
        private_redis.stop()
        wait_for(lambda: store.degraded)  # the watcher's pub/sub connection noticed
        with pytest.raises(CircuitBreakerError) as info:
            breaker.call(ok)
        assert info.value.state is CircuitState.OPEN
        private_redis.start()
        wait_for(lambda: not store.degraded, seconds=5.0)
        assert breaker.call(ok) == 1
    finally:
        store.close()


def test_unreachable_redis_at_start_runs_locally(clock: ManualClock) -> None:
    """A store whose Redis never answered still protects calls with local state."""
    from redis_servers import free_port

    store = RedisBreakerStore(f"redis://127.0.0.1:{free_port()}/0", "never", reconnect_interval=60)
    try:
        breaker = breaker_on(store, clock)
        assert store.degraded
        assert breaker.call(ok) == 1
        fail(breaker, 3)
        with pytest.raises(CircuitBreakerError):
            breaker.call(ok)
    finally:
        store.close()


@pytest.mark.realtime
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_keeps_its_copy_in_sync(redis_url: str, redis_prefix: str) -> None:
    """A store bound before a fork (gunicorn --preload) follows the shared state in the child."""
    script = Path(__file__).with_name("fork_scenario.py")
    done = subprocess.run(  # noqa: S603 - our own script, fixed arguments
        [sys.executable, str(script), redis_url, redis_prefix],
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "OPEN"), done.stderr


@pytest.mark.anyio
async def test_async_calls_share_the_state(make_store: MakeStore, clock: ManualClock) -> None:
    """An async breaker on the Redis store opens the shared state after three failures."""
    breaker = breaker_on(make_store(), clock)

    @breaker
    async def flaky() -> None:
        raise Boom

    for _ in range(3):
        with pytest.raises(Boom):
            await flaky()
    with pytest.raises(CircuitBreakerError):
        await flaky()
    other = make_store()
    breaker_on(other, clock)
    assert other.snapshot().state is CircuitState.OPEN


def test_close_leaves_a_client_passed_in_open(client: Any, redis_prefix: str) -> None:
    """close() stops the watcher but does not close the application's own client."""
    store = RedisBreakerStore(client, "own", prefix=redis_prefix)
    breaker_on(store)
    store.close()
    assert not any(t.name == "recoverly-redis-breaker-own" for t in threading.enumerate())
    assert client.ping() is True


def test_reading_state_moves_open_to_half_open_on_the_server(
    make_store: MakeStore, client: Any, redis_prefix: str, clock: ManualClock
) -> None:
    """breaker.state after the open period asks Redis, which moves OPEN to HALF_OPEN once."""
    half_opened: list[str] = []
    store = make_store()
    breaker = breaker_on(store, clock, on_half_open=lambda _: half_opened.append("b"))
    fail(breaker, 3)
    assert breaker.state is CircuitState.OPEN  # no round trip: the local copy says OPEN
    client.hset(hash_key(redis_prefix), "u", "0")
    clock.advance(11)
    assert breaker.state is CircuitState.HALF_OPEN
    assert half_opened == ["b"]
    assert client.hget(hash_key(redis_prefix), "s") == b"half_open"


def test_uncounted_exception_gives_the_probe_slot_back(
    make_store: MakeStore, client: Any, redis_prefix: str, clock: ManualClock
) -> None:
    """A probe that raises an exception the breaker does not count frees its slot in Redis."""
    breaker = breaker_on(make_store(), clock, expected_exception=Boom)
    fail(breaker, 3)
    client.hset(hash_key(redis_prefix), "u", "0")
    clock.advance(11)
    with pytest.raises(KeyError):
        breaker.call(lambda: {}["missing"])
    assert client.hget(hash_key(redis_prefix), "p") == b"0"
    assert breaker.call(ok) == 1  # the next probe gets the slot and closes the breaker
    assert breaker.state is CircuitState.CLOSED


def test_client_decoding_responses_is_supported(
    redis_url: str, redis_prefix: str, clock: ManualClock
) -> None:
    """A client created with decode_responses=True works the same (replies are str)."""
    text_client = redis.Redis.from_url(redis_url, decode_responses=True)
    store = RedisBreakerStore(text_client, "text", prefix=redis_prefix)
    try:
        breaker = breaker_on(store, clock)
        fail(breaker, 3)
        assert store.snapshot().state is CircuitState.OPEN
        assert breaker.statistics().failed_calls == 3
    finally:
        store.close()
        text_client.close()


def test_every_operation_works_on_the_local_fallback(clock: ManualClock) -> None:
    """With Redis unreachable, state, reset, force_open, statistics and probes run locally."""
    from redis_servers import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    store = RedisBreakerStore(url, "local", reconnect_interval=60)
    try:
        breaker = breaker_on(store, clock, recovery_timeout=5.0)
        fail(breaker, 3)
        assert breaker.state is CircuitState.OPEN
        assert breaker.statistics().failed_calls == 3
        clock.advance(6)
        assert breaker.state is CircuitState.HALF_OPEN
        with pytest.raises(KeyError):
            breaker.call(lambda: {}["missing"])  # not counted: the slot is released
        assert store.snapshot().probes_in_flight == 0
        breaker.force_open()
        with pytest.raises(CircuitBreakerError):
            breaker.call(ok)
        breaker.reset()
        assert breaker.call(ok) == 1
        assert "degraded" in repr(store)
    finally:
        store.close()


def test_fail_closed_store_reports_open_while_down(clock: ManualClock) -> None:
    """With fail_open=False and Redis unreachable, the state reads OPEN and nothing is counted."""
    from redis_servers import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    store = RedisBreakerStore(url, "shut", fail_open=False, reconnect_interval=60)
    try:
        breaker = breaker_on(store, clock)
        assert breaker.state is CircuitState.OPEN
        assert store.snapshot().retry_after == 60
        assert store.force(CircuitState.CLOSED) == ()
        with pytest.raises(CircuitBreakerError) as info:
            breaker.call(ok)
        assert info.value.retry_after == 60
    finally:
        store.close()


def test_full_probe_slots_are_asked_for_at_most_every_10_ms(
    make_store: MakeStore, redis_url: str, redis_prefix: str, clock: ManualClock
) -> None:
    """While another process holds the probe slot, a hundred calls cost one round trip."""
    sent: list[str] = []
    counting = redis.Redis.from_url(redis_url)
    inner = counting.execute_command

    def execute_command(*args: Any, **options: Any) -> Any:
        sent.append(str(args[0]))
        return inner(*args, **options)

    counting.execute_command = execute_command  # type: ignore[method-assign]
    a = make_store()
    b = RedisBreakerStore(counting, "svc", prefix=redis_prefix, cache_ttl=60)
    try:
        breaker_on(a, clock)
        breaker_on(b, clock)
        for _ in range(3):
            a.on_failure(a.acquire()[0], 0.0)
        admin = redis.Redis.from_url(redis_url)
        admin.hset(hash_key(redis_prefix), "u", "0")
        admin.close()
        clock.advance(11)
        assert a.acquire()[0] >= 0  # a holds the only probe slot
        b.snapshot()  # b's copy: HALF_OPEN
        before = len(sent)
        refused = [b.acquire() for _ in range(100)]
        assert all(r[0] < 0 and r[1] is CircuitState.HALF_OPEN for r in refused)
        assert len(sent) - before == 1
        clock.advance(0.011)
        assert b.acquire()[0] < 0
        assert len(sent) - before == 2
    finally:
        b.close()
        counting.close()


@pytest.mark.realtime
def test_lost_message_is_repaired_by_the_periodic_read(
    make_store: MakeStore, client: Any, redis_prefix: str, clock: ManualClock
) -> None:
    """A change that was never published (a lost message) reaches the copy within cache_ttl."""
    ttl = 0.3
    store = make_store(cache_ttl=ttl)
    breaker_on(store, clock)
    channel = hash_key(redis_prefix) + ":changes"
    wait_for(lambda: client.pubsub_numsub(channel)[0][1] == 1)
    client.hset(hash_key(redis_prefix), mapping={"s": "forced_open", "g": 7})  # no PUBLISH
    took = wait_for(lambda: store.reject_until == float("inf"), seconds=5.0)
    assert took <= ttl + 0.25
    assert store.fast == -1
