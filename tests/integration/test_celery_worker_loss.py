"""A worker killed mid-task: the task is redelivered, resumes from its checkpoint, finishes once.

Real Celery worker processes (``--pool=solo``) run ``celery_loss_app.train``, a
loop that checkpoints after every step. The test kills the first worker with
SIGKILL in the middle of the loop and starts a second one. With the Redis broker
the message comes back after the short ``visibility_timeout`` (4 s); with
RabbitMQ it comes back as soon as the dead worker's connection drops, finds the
dead copy's lease still alive, and waits for it with a countdown. Either way the
second delivery resumes at the checkpointed step, and the result and its side
effect are written exactly once, under the new fencing token.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
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

from celery import Celery  # noqa: E402
from recoverly.celery import RedisTaskStore  # noqa: E402

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


def training_importable() -> bool:
    """Whether recoverly.training (and so CheckpointManager) imports here."""
    try:
        importlib.import_module("recoverly.training")
    except ImportError:
        return False
    return True


class Worker:
    """One ``celery worker`` process; its log goes to a file the test can poll."""

    def __init__(self, name: str, env: dict[str, str], queue: str, log: Path) -> None:
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
                "--pool=solo",
                "-c",
                "1",
                "-Q",
                queue,
                "-n",
                f"{name}@%h",
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


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def cleanup(run_id: str) -> Iterator[list[Callable[[], object]]]:
    """Callables run after the test (stop workers, delete keys and queues)."""
    jobs: list[Callable[[], object]] = []
    yield jobs
    for job in reversed(jobs):
        with contextlib.suppress(Exception):
            job()


@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_killed_worker_task_resumes_from_checkpoint_and_finishes_once(
    broker: str, run_id: str, tmp_path: Path, cleanup: list[Callable[[], object]]
) -> None:
    """SIGKILL mid-loop: the redelivered task resumes at its checkpoint; one result, one effect."""
    client = redis_or_skip()
    if broker == "amqp":
        amqp_or_skip()
    broker_url = db1(REDIS_URL) if broker == "redis" else AMQP_URL
    prefix = f"test:celery-loss:{run_id}"
    queue = f"recoverly-loss-{run_id}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "LOSS_BROKER_URL": broker_url,
        "LOSS_REDIS_URL": db1(REDIS_URL),
        "LOSS_PREFIX": prefix,
        "LOSS_QUEUE": queue,
        "LOSS_CKPT_ROOT": str(tmp_path / "checkpoints"),
        "LOSS_STEP_SECONDS": str(STEP_SECONDS),
        # RabbitMQ redelivers at once: a 6 s lease is surely still held by the dead
        # copy when the second worker gets the message, so the wait path runs.
        "LOSS_LEASE_SECONDS": "2" if broker == "redis" else "6",
    }

    def delete_keys() -> None:
        keys = [*client.scan_iter(match=f"{prefix}:*", count=500), queue]
        client.delete(*keys)

    cleanup.append(delete_keys)
    caller = Celery("caller", broker=broker_url, backend=db1(REDIS_URL))
    cleanup.append(caller.close)
    if broker == "amqp":

        def delete_queue() -> None:
            with caller.connection_for_write() as conn:
                conn.default_channel.queue_delete(queue)

        cleanup.append(delete_queue)

    started = time.monotonic()
    first = Worker("w1", env, queue, tmp_path / "w1.log")
    cleanup.append(first.stop)
    first.wait_ready()
    result = caller.send_task("loss.train", args=(STEPS,), queue=queue)
    cleanup.append(result.forget)
    wait_for(lambda: client.llen(f"{prefix}:begun") >= 3, 20, "three steps on the first worker")
    first.kill()
    killed_at = time.monotonic()
    second = Worker("w2", env, queue, tmp_path / "w2.log")
    cleanup.append(second.stop)
    second.wait_ready()
    try:
        value = result.get(timeout=30)
    except Exception:
        pytest.fail(f"no result; worker log:\n{second.log.read_text()[-4000:]}")
    finished_at = time.monotonic()

    starts = [int(x) for x in client.lrange(f"{prefix}:starts", 0, -1)]
    begun = [int(x) for x in client.lrange(f"{prefix}:begun", 0, -1)]
    effects = client.lrange(f"{prefix}:effects", 0, -1)
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
    assert effects == [f"total={expected}".encode()]  # the side effect, exactly once

    store = RedisTaskStore(client, prefix=prefix)
    key = next(h for h in (client.keys(f"{prefix}:{{*}}:history")) if h).decode()[
        len(prefix) + 2 : -len("}:history")
    ]
    history = store.history(key)
    owners = [h for h in history if h["event"] == "started"]
    assert [h["hostname"].split("@")[0] for h in owners] == ["w1", "w2"]
    assert [h["token"] for h in owners] == [1, 2]
    assert owners[1]["lost_before"] == 1
    assert history[-1]["event"] == "succeeded"
    checkpointer = {x.decode() for x in client.lrange(f"{prefix}:checkpointer", 0, -1)}
    assert checkpointer == {"CheckpointManager" if training_importable() else "JsonCheckpoints"}
    if broker == "amqp":  # redelivered at once, while the dead copy's lease still ran
        assert "busy" in [h["event"] for h in history]
    print(  # noqa: T201 - the timings go into the report
        f"\n[{broker}] kill after {killed_at - started:.1f} s, "
        f"result {finished_at - killed_at:.1f} s after the kill, resumed at step {resumed}"
    )
