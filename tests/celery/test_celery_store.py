"""RedisTaskStore and ResilientTask on a real Redis: idempotency, leases, fencing, dead letter."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

pytest.importorskip("celery")

from recoverly import events as ev
from recoverly import retry
from recoverly.celery import (
    KEY_ARGUMENT,
    Lease,
    LeaseHeld,
    LeaseLost,
    RedisTaskStore,
    TaskDeadLettered,
    resilient_task,
)


def expire_lease(store: RedisTaskStore, key: str) -> None:
    """What a dead owner leaves behind once its lease TTL runs out: no lease key."""
    store.client.delete(store.key(key, "lease"))


def lose_delivery(store: RedisTaskStore, key: str, hostname: str) -> int:
    """A delivery that started on ``hostname`` and whose worker died (lease expired)."""
    begin = store.begin(key, 30.0, record={"hostname": hostname})
    assert begin.kind == "owner"
    expire_lease(store, key)
    return begin.token


# ---------------------------------------------------------------- the store's protocol
def test_first_copy_owns_second_is_busy_then_result_is_returned(store):
    """begin: owner with token 1, a second copy sees the lease busy, then the stored result."""
    first = store.begin("k", 30.0)
    assert (first.kind, first.token, first.losses) == ("owner", 1, 0)
    busy = store.begin("k", 30.0)
    assert busy.kind == "busy"
    assert 29.0 < busy.retry_after <= 30.0
    store.commit("k", first.token, {"rows": 3})
    done = store.begin("k", 30.0)
    assert (done.kind, done.result) == ("done", {"rows": 3})
    assert store.result("k") == (True, {"rows": 3})
    assert store.client.exists(store.key("k", "lease")) == 0  # commit freed the lease


def test_stale_owner_cannot_write_its_result(store):
    """After its lease expired and a new owner got token 2, the old owner's commit is refused."""
    old = store.begin("k", 30.0)
    expire_lease(store, "k")
    new = store.begin("k", 30.0)
    assert (new.kind, new.token, new.losses) == ("owner", 2, 1)
    with pytest.raises(LeaseLost) as info:
        store.commit("k", old.token, "stale result")
    assert (info.value.key, info.value.token) == ("k", 1)
    assert store.result("k") == (False, None)  # nothing was written
    store.commit("k", new.token, "fresh result")
    assert store.result("k") == (True, "fresh result")


def test_stale_owner_commit_refused_even_without_a_live_lease(store):
    """The fence, not the lease key, decides: a token older than the newest is refused."""
    old = store.begin("k", 30.0)
    expire_lease(store, "k")
    new = store.begin("k", 30.0)
    expire_lease(store, "k")  # the new owner's lease lapsed too
    with pytest.raises(LeaseLost):
        store.commit("k", old.token, "stale")
    store.commit("k", new.token, "newest token still writes")
    assert store.result("k") == (True, "newest token still writes")


def test_fenced_writes_apply_only_for_the_newest_token(store, redis_client):
    """A fenced side effect from the stale owner is refused; the new owner's is applied."""
    effects = f"{store.prefix}:effects"
    old = Lease(store, "k", store.begin("k", 30.0).token, 30.0)
    expire_lease(store, "k")
    new = Lease(store, "k", store.begin("k", 30.0).token, 30.0)
    with pytest.raises(LeaseLost):
        old.fenced(lambda pipe: pipe.rpush(effects, "old"))
    new.fenced(lambda pipe: pipe.rpush(effects, "new"))
    assert redis_client.lrange(effects, 0, -1) == [b"new"]


def test_fenced_write_refused_when_a_new_owner_arrives_mid_write(store, redis_client):
    """WATCH on the fence: a token issued between the check and EXEC aborts the write."""
    effects = f"{store.prefix}:effects"
    lease = Lease(store, "k", store.begin("k", 30.0).token, 30.0)

    def write_while_taken_over(pipe):
        pipe.rpush(effects, "stale")
        redis_client.incr(store.key("k", "fence"))  # another owner, from another client

    with pytest.raises(LeaseLost):
        lease.fenced(write_while_taken_over)
    assert redis_client.exists(effects) == 0


def test_non_json_result_is_refused_with_a_clear_error(store):
    """A result that cannot be stored for redeliveries raises TypeError naming the task."""
    token = store.begin("k", 30.0).token
    with pytest.raises(TypeError, match=r"'k' must be JSON-serialisable.*object"):
        store.commit("k", token, object())


def test_store_arguments_are_validated_together(redis_client):
    """Bad client, ttl and limit are all reported in one error."""
    with pytest.raises(TypeError) as info:
        RedisTaskStore(42, result_ttl=-1, dead_letter_limit=0)  # type: ignore[arg-type]
    text = str(info.value)
    assert "client must be a redis.Redis or a redis:// URL, got 42" in text
    assert "result_ttl must be a finite number of seconds > 0, got -1" in text
    assert "dead_letter_limit must be an integer >= 1, got 0" in text


def test_forget_keeps_the_fencing_counter(store):
    """forget() drops result and counters but never hands out an old token again."""
    first = store.begin("k", 30.0)
    store.commit("k", first.token, 1)
    store.forget("k")
    again = store.begin("k", 30.0)
    assert (again.kind, again.token, again.losses) == ("owner", 2, 0)


# ---------------------------------------------------------------- the heartbeat
@pytest.mark.realtime
def test_heartbeat_keeps_a_short_lease_alive(store, redis_client):
    """A 0.3 s lease is still held after 1 s of work, and lapses once the heartbeat stops."""
    lease = Lease(store, "k", store.begin("k", 0.3).token, 0.3)
    lease.start()
    try:
        time.sleep(1.0)
        assert redis_client.pttl(store.key("k", "lease")) > 0
        assert not lease.lost
    finally:
        lease.stop()
    time.sleep(0.5)
    assert redis_client.exists(store.key("k", "lease")) == 0


@pytest.mark.realtime
def test_heartbeat_notices_a_lost_lease(store):
    """When the lease is gone the heartbeat marks it lost and check() raises LeaseLost."""
    lease = Lease(store, "k", store.begin("k", 0.3).token, 0.3)
    lease.start()
    try:
        expire_lease(store, "k")
        deadline = time.monotonic() + 2.0
        while not lease.lost and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lease.lost
        with pytest.raises(LeaseLost):
            lease.check()
        assert "lost" in repr(lease)
    finally:
        lease.stop()


# ---------------------------------------------------------------- tasks with a store
def test_redelivered_task_returns_the_stored_result_without_running(app, store):
    """The same work sent twice runs once; the second delivery gets the stored result."""
    runs: list[int] = []

    @resilient_task(app, store=store)
    def job(self, x):
        runs.append(x)
        return {"double": x * 2, "token": self.fencing_token}

    first = job.apply(args=(5,)).get()
    second = job.apply(args=(5,)).get()
    assert first == second == {"double": 10, "token": 1}
    assert runs == [5]
    other = job.apply(args=(6,)).get()
    assert other == {"double": 12, "token": 1}  # another key, its own fence
    assert runs == [5, 6]


def test_explicit_key_shares_the_result_across_arguments(app, store):
    """Two calls with one idempotency_key run once, whatever their arguments."""
    runs: list[str] = []

    @resilient_task(app, store=store)
    def charge(self, amount):
        runs.append(amount)
        return amount

    assert charge.apply(args=(10,), kwargs={KEY_ARGUMENT: "order-1"}).get() == 10
    assert charge.apply(args=(99,), kwargs={KEY_ARGUMENT: "order-1"}).get() == 10
    assert runs == [10]


def test_copy_that_finds_the_lease_held_does_not_run(app, store):
    """While another copy holds the lease, an eager copy raises LeaseHeld and does not run."""
    runs: list[int] = []

    @resilient_task(app, store=store, lease_seconds=20.0)
    def job(self):
        runs.append(1)

    holder = store.begin("busy-key", 20.0)
    assert holder.kind == "owner"
    with pytest.raises(LeaseHeld) as info:
        job.apply(kwargs={KEY_ARGUMENT: "busy-key"}).get()
    assert runs == []
    assert 19.0 < info.value.retry_after <= 21.0
    assert [h["event"] for h in store.history("busy-key")] == ["busy"]


def test_failures_are_counted_across_deliveries(app, store, events):
    """Policy attempts come from the store: two failures, then success, with history."""
    calls: list[int] = []

    @resilient_task(app, retry=retry(max_attempts=3, delay=1.0), store=store)
    def job(self):
        calls.append(self.fencing_token)
        if len(calls) < 3:
            raise ConnectionError(f"down {len(calls)}")
        return "ok"

    assert job.apply(kwargs={KEY_ARGUMENT: "f"}).get() == "ok"
    assert calls == [1, 2, 3]  # each delivery took the lease with a new token
    delays = [e.delay for e in events if isinstance(e, ev.RetryScheduled)]
    assert delays == [1.0, 2.0]
    assert [e for e in events if isinstance(e, ev.RetrySucceeded)] != []
    history = store.history("f")
    assert [h["event"] for h in history] == [
        "started",
        "failed",
        "started",
        "failed",
        "started",
        "succeeded",
    ]
    assert history[1]["exception"] == "ConnectionError: down 1"
    assert store.begin("f", 1.0).result == "ok"


def test_stale_copy_returns_the_newer_copys_result(app, store):
    """A copy whose lease was taken over mid-run does not overwrite; it returns the winner's."""

    @resilient_task(app, store=store)
    def job(self):
        # While this copy runs, its lease lapses and a newer copy finishes first.
        expire_lease(store, self.idempotency_key)
        newer = store.begin(self.idempotency_key, 30.0)
        store.commit(self.idempotency_key, newer.token, "from the newer copy")
        return "from the stale copy"

    assert job.apply(kwargs={KEY_ARGUMENT: "s"}).get() == "from the newer copy"
    assert store.result("s") == (True, "from the newer copy")


def test_stale_copy_without_a_newer_result_raises_lease_lost(app, store):
    """Eagerly, a superseded copy with no newer result raises LeaseLost and writes nothing."""

    @resilient_task(app, store=store)
    def job(self):
        expire_lease(store, self.idempotency_key)
        store.begin(self.idempotency_key, 30.0)  # a newer copy owns it and is still running
        return "stale"

    with pytest.raises(LeaseLost):
        job.apply(kwargs={KEY_ARGUMENT: "s2"}).get()
    assert store.result("s2") == (False, None)


def test_lost_deliveries_beyond_the_cap_go_to_the_dead_letter(app, store, caplog):
    """After 2 allowed redeliveries, a third lost worker sends the task to the dead letter."""
    runs: list[int] = []

    @resilient_task(app, store=store, max_redeliveries=2)
    def job(self, x):
        runs.append(x)
        return x

    for host in ("w1", "w2", "w3"):
        lose_delivery(store, "d", host)
    filed: list[ev.DeadLettered] = []
    ev.subscribe(filed.append, ev.DeadLettered)
    with (
        caplog.at_level(logging.ERROR, logger="recoverly"),
        pytest.raises(TaskDeadLettered) as info,
    ):
        job.apply(args=(1,), kwargs={KEY_ARGUMENT: "d"}).get()
    assert info.value.losses == 3
    assert f"task {job.name} (d) moved to the dead letter after 3 lost deliveries" in (
        caplog.messages
    )
    assert runs == []
    (letter,) = store.dead_letters()
    assert (letter["key"], letter["losses"], letter["task"]) == ("d", 3, job.name)
    assert letter["args"] == [1]
    assert [h["hostname"] for h in letter["history"]] == ["w1", "w2", "w3"]
    # A later copy of the same message does not run either.
    with pytest.raises(TaskDeadLettered):
        job.apply(args=(1,), kwargs={KEY_ARGUMENT: "d"}).get()
    assert runs == []
    assert len(store.dead_letters()) == 1
    # One event, from the copy that filed it; not from the later copy.
    assert filed == [ev.DeadLettered(job.name, "d", 3)]


def test_deliveries_within_the_cap_run_and_report_earlier_losses(app, store):
    """Two lost workers with max_redeliveries=2: the third delivery runs and knows it."""

    @resilient_task(app, store=store, max_redeliveries=2)
    def job(self):
        return self.fencing_token

    lose_delivery(store, "r", "w1")
    lose_delivery(store, "r", "w2")
    assert job.apply(kwargs={KEY_ARGUMENT: "r"}).get() == 3
    started = [h for h in store.history("r") if h["event"] == "started"]
    assert started[-1]["lost_before"] == 2
    assert store.dead_letters() == []


def test_unlimited_redeliveries_with_none(app, store):
    """max_redeliveries=None never dead-letters."""

    @resilient_task(app, store=store, max_redeliveries=None)
    def job(self):
        return "ran"

    for i in range(5):
        lose_delivery(store, "u", f"w{i}")
    assert job.apply(kwargs={KEY_ARGUMENT: "u"}).get() == "ran"


def test_lease_is_visible_to_the_task_and_released_after(app, store, redis_client):
    """Inside the task the lease is held under its token; after success it is gone."""
    seen: dict[str, Any] = {}

    @resilient_task(app, store=store, lease_seconds=10.0)
    def job(self):
        seen["holder"] = redis_client.get(store.key(self.idempotency_key, "lease"))
        seen["token"] = self.fencing_token
        self.lease.check()

    job.apply(kwargs={KEY_ARGUMENT: "l"}).get()
    assert seen == {"holder": b"1", "token": 1}
    assert redis_client.exists(store.key("l", "lease")) == 0


def test_commit_with_applies_side_effects_once_with_the_result(app, store, redis_client):
    """Writes queued with commit_with land with the result; a redelivery adds none."""
    effects = f"{store.prefix}:effects"

    @resilient_task(app, store=store)
    def pay(self, amount):
        self.commit_with(lambda pipe: pipe.rpush(effects, f"paid {amount}"))
        return amount

    assert pay.apply(args=(5,), kwargs={KEY_ARGUMENT: "p"}).get() == 5
    assert pay.apply(args=(5,), kwargs={KEY_ARGUMENT: "p"}).get() == 5
    assert redis_client.lrange(effects, 0, -1) == [b"paid 5"]


def test_superseded_copy_side_effects_are_not_applied(app, store, redis_client):
    """The stale copy's commit_with writes are dropped; only the newer copy's land."""
    effects = f"{store.prefix}:effects"

    @resilient_task(app, store=store)
    def pay(self):
        self.commit_with(lambda pipe: pipe.rpush(effects, "stale"))
        key = self.idempotency_key
        expire_lease(store, key)
        newer = store.begin(key, 30.0)
        store.commit(key, newer.token, "newer", [lambda pipe: pipe.rpush(effects, "newer")])
        return "stale"

    assert pay.apply(kwargs={KEY_ARGUMENT: "p2"}).get() == "newer"
    assert redis_client.lrange(effects, 0, -1) == [b"newer"]


def test_commit_with_needs_a_store(app):
    """Without a task_store, commit_with says what is missing."""

    @resilient_task(app)
    def job(self):
        self.commit_with(lambda pipe: None)

    with pytest.raises(RuntimeError, match="commit_with needs a task_store"):
        job.apply().get()


def test_giving_up_starts_the_attempt_count_afresh(app, store):
    """After the policy gave up, the same work submitted again gets every attempt again."""
    calls: list[int] = []

    @resilient_task(app, retry=retry(max_attempts=3, delay=1.0), store=store)
    def job(self):
        calls.append(self.fencing_token)
        raise ConnectionError("still down")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            job.apply(kwargs={KEY_ARGUMENT: "g"}).get()
    assert calls == [1, 2, 3, 4, 5, 6]  # 3 attempts, then 3 more
    assert [h["event"] for h in store.history("g")].count("failed") == 6


def test_unreachable_store_fails_before_running(app):
    """With the store's Redis down, an eager delivery raises its error and runs nothing."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry as RedisRetry

    runs: list[int] = []
    client = redis.Redis(port=1, socket_connect_timeout=0.5, retry=RedisRetry(NoBackoff(), 0))
    down = RedisTaskStore(client)

    @resilient_task(app, store=down)
    def job(self):
        runs.append(1)

    with pytest.raises(redis.ConnectionError):
        job.apply().get()
    assert runs == []


def test_store_from_a_url_has_bounded_socket_waits():
    """A store built from a URL gets connect and read timeouts (a hung Redis cannot stall it)."""
    store = RedisTaskStore("redis://127.0.0.1:6379/1")
    kwargs = store.client.connection_pool.connection_kwargs
    assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"]) == (5.0, 10.0)


def test_copies_racing_for_one_key_get_exactly_one_owner(store):
    """Eight threads begin the same key at once: one owner, seven busy, one token issued."""
    import threading

    barrier = threading.Barrier(8)
    kinds: list[str] = []
    lock = threading.Lock()

    def copy() -> None:
        barrier.wait()
        begin = store.begin("race", 30.0)
        with lock:
            kinds.append(begin.kind)

    threads = [threading.Thread(target=copy) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(kinds) == ["busy"] * 7 + ["owner"]
    assert int(store.client.get(store.key("race", "fence"))) == 1


def test_only_the_newest_of_many_stale_owners_can_commit(store):
    """Five takeovers in a row: every older token is refused, the newest writes."""
    tokens = []
    for _ in range(5):
        tokens.append(store.begin("t", 30.0).token)
        expire_lease(store, "t")
    assert tokens == [1, 2, 3, 4, 5]
    for stale in tokens[:-1]:
        with pytest.raises(LeaseLost):
            store.commit("t", stale, f"from {stale}")
    store.commit("t", tokens[-1], "from 5")
    assert store.result("t") == (True, "from 5")
