"""A worker killed mid-task: the task is redelivered, resumes from its checkpoint, finishes once.

Real Celery worker processes (``--pool=solo``) run ``celery_loss_app.train``, a
loop that checkpoints after every step. The test kills the first worker with
SIGKILL in the middle of the loop and starts a second one. With the Redis broker
the message comes back after the short ``visibility_timeout`` (4 s); with
RabbitMQ it comes back as soon as the dead worker's connection drops, finds the
dead copy's lease still alive, and waits for it with a countdown. Either way the
second delivery resumes at the checkpointed step, and the result and its side
effect are written exactly once, under the new fencing token.

With the prefork pool, killing only the pool process shows ``reject_on_worker_lost``:
the worker requeues the message and a new pool process resumes it.

Two more cases with real workers: a Redis visibility timeout shorter than the
task (the broker hands a second copy to an idle worker while the first still
runs; the copy waits for the lease and never reruns the work), and a task that
kills its worker every time (after ``max_redeliveries`` it goes to the dead
letter instead of looping forever). And the store's own Redis down when a task
arrives: the message is kept through Celery's retry and runs once Redis is back. And
the policy's backoff as the countdown Celery really waits in a worker.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("celery")
redis = pytest.importorskip("redis")
pytest.importorskip("recoverly.training", reason="checkpoints need the training extra")

from celery import Celery  # noqa: E402
from recoverly.celery import RedisTaskStore  # noqa: E402
from recoverly.training import CheckpointManager  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.realtime]

HERE = Path(__file__).resolve().parent
REDIS_URL = os.environ.get("RECOVERLY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("RECOVERLY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
HINT = "start it with ../shared/services.sh or point {var} at a server"
STEPS = 8
STEP_SECONDS = 0.3


def db1(url: str) -> str:
    """``url`` with Redis database 1 selected (the celery tests' database)."""
    head, _, tail = url.split("?", maxsplit=1)[0].rpartition("/")
    return f"{head}/1" if tail.isdigit() and head.count("/") >= 2 else f"{url.rstrip('/')}/1"


def redis_or_skip() -> Any:
    client = redis.Redis.from_url(db1(REDIS_URL), socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(
            f"Redis at {db1(REDIS_URL)} is not reachable ({exc}); "
            + HINT.format(var="RECOVERLY_TEST_REDIS_URL")
        )
    return client


def amqp_or_skip() -> None:
    from kombu import Connection

    try:
        with Connection(AMQP_URL, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        pytest.skip(
            f"RabbitMQ at {AMQP_URL} is not reachable ({exc}); "
            + HINT.format(var="RECOVERLY_TEST_AMQP_URL")
        )


class Worker:
    """One ``celery worker`` process; its log goes to a file the test can poll."""

    def __init__(
        self, name: str, env: dict[str, str], queue: str, log: Path, pool: str = "solo"
    ) -> None:
        self.name = name
        self.log = log
        self.handle = log.open("wb")
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argument list
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "celery_loss_app",
                "worker",
                f"--pool={pool}",
                "-c",
                "1",
                "-Q",
                queue,
                "-n",
                f"{name}@{queue}",  # unique per run: the broker is shared
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel=INFO",
            ],
            cwd=HERE,
            env=env,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b" ready." in self.log.read_bytes():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        pytest.fail(f"worker {self.name} did not start:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill()  # the test is over: nothing left to acknowledge
        self.handle.close()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def checkpoint_dir(h: Harness) -> Path:
    """The one task checkpoint directory of the run."""
    (directory,) = (h.tmp_path / "checkpoints").iterdir()
    return directory


class Harness:
    """One test run: its queue, key prefix, environment, caller app and workers."""

    def __init__(self, broker: str, tmp_path: Path, jobs: list[Callable[[], object]]) -> None:
        self.client = redis_or_skip()
        if broker == "amqp":
            amqp_or_skip()
        run_id = uuid.uuid4().hex[:10]
        self.broker = broker
        self.broker_url = db1(REDIS_URL) if broker == "redis" else AMQP_URL
        self.prefix = f"test:celery-loss:{run_id}"
        self.queue = f"recoverly-loss-{run_id}"
        self.tmp_path = tmp_path
        self.jobs = jobs
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            "LOSS_BROKER_URL": self.broker_url,
            "LOSS_REDIS_URL": db1(REDIS_URL),
            "LOSS_PREFIX": self.prefix,
            "LOSS_QUEUE": self.queue,
            "LOSS_CKPT_ROOT": str(tmp_path / "checkpoints"),
            "LOSS_STEP_SECONDS": str(STEP_SECONDS),
        }
        jobs.append(self._delete_keys)
        self.caller = Celery("caller", broker=self.broker_url, backend=db1(REDIS_URL))
        jobs.append(self.caller.close)
        if broker == "amqp":
            jobs.append(self._delete_queue)
        self.store = RedisTaskStore(self.client, prefix=self.prefix)

    def _delete_keys(self) -> None:
        keys = [*self.client.scan_iter(match=f"{self.prefix}:*", count=500), self.queue]
        self.client.delete(*keys)

    def _delete_queue(self) -> None:
        with self.caller.connection_for_write() as conn:
            conn.default_channel.queue_delete(self.queue)

    def worker(self, name: str, pool: str = "solo") -> Worker:
        """Start a worker on this run's queue and wait until it consumes."""
        worker = Worker(name, self.env, self.queue, self.tmp_path / f"{name}.log", pool)
        self.jobs.append(worker.stop)
        worker.wait_ready()
        return worker

    def send(self, name: str, *args: Any) -> Any:
        result = self.caller.send_task(name, args=args, queue=self.queue)
        self.jobs.append(result.forget)
        return result

    def ints(self, name: str) -> list[int]:
        return [int(x) for x in self.client.lrange(f"{self.prefix}:{name}", 0, -1)]

    def strings(self, name: str) -> list[str]:
        return [x.decode() for x in self.client.lrange(f"{self.prefix}:{name}", 0, -1)]

    def history(self) -> list[dict[str, Any]]:
        """The delivery history of the run's only task."""
        (name,) = self.client.keys(f"{self.prefix}:{{*}}:history")
        return self.store.history(name.decode()[len(self.prefix) + 2 : -len("}:history")])


@pytest.fixture
def jobs() -> Iterator[list[Callable[[], object]]]:
    """Callables run after the test, last first (stop workers, delete keys and queues)."""
    todo: list[Callable[[], object]] = []
    yield todo
    for job in reversed(todo):
        with contextlib.suppress(Exception):
            job()


@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_killed_worker_task_resumes_from_checkpoint_and_finishes_once(
    broker: str, tmp_path: Path, jobs: list[Callable[[], object]]
) -> None:
    """SIGKILL mid-loop: the redelivered task resumes at its checkpoint; one result, one effect."""
    h = Harness(broker, tmp_path, jobs)
    # RabbitMQ redelivers at once: a 6 s lease is surely still held by the dead
    # copy when the second worker gets the message, so the wait path runs.
    h.env["LOSS_LEASE_SECONDS"] = "2" if broker == "redis" else "6"
    client, prefix = h.client, h.prefix
    started = time.monotonic()
    first = h.worker("w1")
    result = h.send("loss.train", STEPS)
    wait_for(lambda: client.llen(f"{prefix}:begun") >= 3, 20, "three steps on the first worker")
    first.kill()
    killed_at = time.monotonic()
    second = h.worker("w2")
    try:
        value = result.get(timeout=30)
    except Exception:
        pytest.fail(f"no result; worker log:\n{second.log.read_text()[-4000:]}")
    finished_at = time.monotonic()

    starts, begun = h.ints("starts"), h.ints("begun")
    assert starts[0] == 0
    assert len(starts) == 2, starts
    resumed = starts[1]
    assert resumed > 0  # the second delivery resumed from a checkpoint
    # Steps before the checkpoint ran once; at most the step cut short ran twice.
    done_first = begun[: len(begun) - (STEPS - resumed)]
    assert done_first in (list(range(resumed)), list(range(resumed + 1)))
    assert begun[len(done_first) :] == list(range(resumed, STEPS))
    expected = sum(range(STEPS))
    assert value == {"total": expected, "resumed_from": resumed, "token": 2}
    assert h.strings("effects") == [f"total={expected}"]  # the side effect, exactly once

    history = h.history()
    owners = [e for e in history if e["event"] == "started"]
    assert [e["hostname"].split("@")[0] for e in owners] == ["w1", "w2"]
    assert [e["token"] for e in owners] == [1, 2]
    assert owners[1]["lost_before"] == 1
    assert history[-1]["event"] == "succeeded"
    # The checkpoints are CheckpointManager's: committed steps, the newest two kept.
    assert [info.step for info in CheckpointManager(checkpoint_dir(h)).list()] == [
        STEPS - 1,
        STEPS,
    ]
    if broker == "amqp":  # redelivered at once, while the dead copy's lease still ran
        assert "busy" in [e["event"] for e in history]
    print(  # noqa: T201 - the timings go into the report
        f"\n[{broker}] kill after {killed_at - started:.1f} s, "
        f"result {finished_at - killed_at:.1f} s after the kill, resumed at step {resumed}"
    )


def test_copy_delivered_while_the_task_runs_waits_for_the_lease(
    tmp_path: Path, jobs: list[Callable[[], object]]
) -> None:
    """Redis visibility timeout shorter than the task: the second copy waits, never reruns."""
    h = Harness("redis", tmp_path, jobs)
    steps = 10
    h.env.update(LOSS_VISIBILITY_SECONDS="2", LOSS_STEP_SECONDS="0.5", LOSS_LEASE_SECONDS="1.5")
    started = time.monotonic()
    h.worker("w1")
    h.worker("w2")
    result = h.send("loss.train", steps)
    value = result.get(timeout=40)
    elapsed = time.monotonic() - started
    expected = sum(range(steps))
    assert value == {"total": expected, "resumed_from": 0, "token": 1}
    assert h.ints("starts") == [0]  # one run only
    assert h.ints("begun") == list(range(steps))  # no step ran twice
    assert h.strings("effects") == [f"total={expected}"]
    history = h.history()
    (owner,) = [e for e in history if e["event"] == "started"]
    busy = [e for e in history if e["event"] == "busy"]
    assert busy, "the broker did not deliver a second copy while the task ran"
    (succeeded,) = [e for e in history if e["event"] == "succeeded"]
    assert all(owner["at"] < e["at"] < succeeded["at"] for e in busy)  # while it ran
    print(f"\n[redis visibility] {len(busy)} early copies waited; {elapsed:.1f} s")  # noqa: T201


def test_task_that_kills_every_worker_goes_to_the_dead_letter(
    tmp_path: Path, jobs: list[Callable[[], object]]
) -> None:
    """max_redeliveries=1: two lost workers, then the task is dead-lettered, not run again."""
    from recoverly.celery import TaskDeadLettered

    h = Harness("amqp", tmp_path, jobs)
    h.env["LOSS_LEASE_SECONDS"] = "1"
    started = time.monotonic()
    result = h.send("loss.crash")
    workers = []
    while not result.ready():
        assert len(workers) < 4, h.strings("crashes")
        workers.append(h.worker(f"w{len(workers) + 1}"))
        wait_for(
            lambda: result.ready() or workers[-1].proc.poll() is not None,
            20,
            "the crash or the verdict",
        )
    with pytest.raises(TaskDeadLettered) as info:
        result.get(timeout=5)
    elapsed = time.monotonic() - started
    assert info.value.losses == 2
    crashed = [c.split("@")[0] for c in h.strings("crashes")]
    assert crashed == ["w1", "w2"]  # it ran twice, then never again
    assert len(workers) == 3
    assert workers[2].proc.poll() is None  # the third worker survived
    (letter,) = h.store.dead_letters()
    assert letter["task"] == "loss.crash"
    assert letter["losses"] == 2
    started_on = [e["hostname"].split("@")[0] for e in letter["history"] if e["event"] == "started"]
    assert started_on == ["w1", "w2"]
    print(f"\n[dead letter] after {elapsed:.1f} s, 3 workers")  # noqa: T201


@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_killed_pool_process_is_requeued_and_resumes(
    broker: str, tmp_path: Path, jobs: list[Callable[[], object]]
) -> None:
    """Prefork child SIGKILLed: reject_on_worker_lost requeues; a new child resumes once."""
    h = Harness(broker, tmp_path, jobs)
    h.env["LOSS_LEASE_SECONDS"] = "2"
    started = time.monotonic()
    worker = h.worker("w1", pool="prefork")
    result = h.send("loss.train", STEPS)
    wait_for(lambda: len(h.ints("begun")) >= 3, 20, "three steps in the pool process")
    (child,) = h.ints("pids")
    os.kill(child, signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        value = result.get(timeout=30)
    except Exception:
        pytest.fail(f"no result; worker log:\n{worker.log.read_text()[-4000:]}")
    elapsed = time.monotonic() - killed_at
    assert worker.proc.poll() is None  # the main process lived on
    starts = h.ints("starts")
    assert len(starts) == 2, starts
    assert starts[0] == 0
    assert starts[1] > 0
    first_pid, second_pid = h.ints("pids")
    assert first_pid != second_pid  # a new pool process ran the requeued message
    expected = sum(range(STEPS))
    assert value == {"total": expected, "resumed_from": starts[1], "token": 2}
    assert h.strings("effects") == [f"total={expected}"]
    assert "WorkerLostError" in worker.log.read_text()
    print(  # noqa: T201
        f"\n[{broker} prefork] child killed after {killed_at - started:.1f} s, "
        f"result {elapsed:.1f} s later, resumed at step {starts[1]}"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_store_outage_keeps_the_message_until_redis_is_back(
    tmp_path: Path, jobs: list[Callable[[], object]]
) -> None:
    """The store's Redis is down when the task arrives: Celery retries it, it then runs once."""
    server_binary = shutil.which("redis-server")
    if server_binary is None:
        pytest.skip("redis-server is not installed (needed for a private store server)")
    h = Harness("redis", tmp_path, jobs)
    port = free_port()
    h.env.update(LOSS_STORE_URL=f"redis://127.0.0.1:{port}/0", LOSS_LEASE_SECONDS="2")
    worker = h.worker("w1")
    result = h.send("loss.train", 3)
    wait_for(lambda: result.state == "RETRY", 20, "the retry after the store failed")
    assert h.ints("starts") == []  # nothing ran unguarded
    assert "ConnectionError" in worker.log.read_text()
    server = subprocess.Popen(  # noqa: S603 - a private server on a free port
        [server_binary, "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    jobs.append(lambda: (server.kill(), server.wait(10)))
    value = result.get(timeout=30)
    assert value == {"total": 3, "resumed_from": 0, "token": 1}
    assert h.ints("starts") == [0]
    private = redis.Redis(port=port)
    jobs.append(private.close)
    assert private.lrange(f"{h.prefix}:effects", 0, -1) == [b"total=3"]


def test_policy_backoff_is_the_real_worker_countdown(
    tmp_path: Path, jobs: list[Callable[[], object]]
) -> None:
    """In a real worker, two failures come back after the policy's 1 s and 2 s countdowns."""
    h = Harness("redis", tmp_path, jobs)
    h.worker("w1")
    result = h.send("loss.flaky", 2)
    assert result.get(timeout=30) == 2
    attempts = [line.split() for line in h.strings("attempts")]
    assert [int(retries) for _, retries in attempts] == [0, 1, 2]  # Celery's own retries
    times = [float(at) for at, _ in attempts]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps[0] >= 1.0  # the first countdown: delay
    assert gaps[1] >= 2.0  # the second: delay * backoff
    history = [e["event"] for e in h.history()]
    assert history == ["started", "failed", "started", "failed", "started", "succeeded"]
