"""The Celery app that test_celery_worker_loss.py runs in real worker processes.

Configured through environment variables set by the test:

- ``LOSS_BROKER_URL``  the broker (Redis or RabbitMQ)
- ``LOSS_REDIS_URL``   Redis for the result backend and the lists the test reads
- ``LOSS_STORE_URL``   Redis for the task store (default: ``LOSS_REDIS_URL``)
- ``LOSS_PREFIX``      key prefix of this test run (store keys and observation lists)
- ``LOSS_QUEUE``       the queue of this test run
- ``LOSS_CKPT_ROOT``   the checkpoint root
- ``LOSS_STEP_SECONDS`` how long one training step takes
- ``LOSS_LEASE_SECONDS`` the task's lease time to live
- ``LOSS_VISIBILITY_SECONDS`` the Redis broker's visibility timeout

The task appends to Redis lists the test reads: ``<prefix>:starts`` (the step each
delivery started from), ``<prefix>:pids`` (the process running each delivery) and
``<prefix>:begun`` (each step as it begins).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import redis

from celery import Celery
from recoverly import retry
from recoverly.celery import RedisTaskStore, configure_app, resilient_task

BROKER = os.environ.get("LOSS_BROKER_URL", "redis://127.0.0.1:6379/1")
REDIS_URL = os.environ.get("LOSS_REDIS_URL", "redis://127.0.0.1:6379/1")
PREFIX = os.environ.get("LOSS_PREFIX", "test:celery-loss")
QUEUE = os.environ.get("LOSS_QUEUE", "celery-loss")
CKPT_ROOT = os.environ.get("LOSS_CKPT_ROOT", "/tmp/celery-loss")  # noqa: S108 - overridden
STEP_SECONDS = float(os.environ.get("LOSS_STEP_SECONDS", "0.3"))
LEASE_SECONDS = float(os.environ.get("LOSS_LEASE_SECONDS", "2"))

app = Celery("celery_loss_app", broker=BROKER, backend=REDIS_URL)
VISIBILITY = float(os.environ.get("LOSS_VISIBILITY_SECONDS", "4"))
configure_app(app, visibility_timeout=VISIBILITY if BROKER.startswith("redis") else None)
app.conf.task_default_queue = QUEUE
app.conf.broker_connection_retry_on_startup = True
app.conf.result_expires = 600
if BROKER.startswith("redis"):
    # Look for expired unacknowledged messages every second (default: rarely), keep
    # this run's bookkeeping under its own keys, and let a restore lock held by a
    # killed worker expire in seconds rather than five minutes.
    app.conf.broker_transport_options.update(
        unacked_restore_interval=1,
        unacked_restore_throttle=1,
        unacked_key=f"{PREFIX}:unacked",
        unacked_index_key=f"{PREFIX}:unacked_index",
        unacked_mutex_key=f"{PREFIX}:unacked_mutex",
        unacked_mutex_expire=3,
    )

client = redis.Redis.from_url(REDIS_URL)  # the lists the test reads
STORE_URL = os.environ.get("LOSS_STORE_URL", REDIS_URL)
store = RedisTaskStore(STORE_URL, prefix=PREFIX, result_ttl=600, state_ttl=600)


@resilient_task(
    app,
    store=store,
    lease_seconds=LEASE_SECONDS,
    max_redeliveries=2,
    checkpoint_root=CKPT_ROOT,
    name="loss.train",
)
def train(self: Any, steps: int) -> dict[str, Any]:
    """Sum the step numbers, one step at a time, checkpointing after every step."""
    checkpoints = self.checkpoints(keep_last=2)
    latest = checkpoints.load_latest()
    start = latest.step if latest is not None else 0
    total = latest.state["total"] if latest is not None else 0
    client.rpush(f"{PREFIX}:starts", start)
    client.rpush(f"{PREFIX}:pids", os.getpid())
    for step in range(start, steps):
        self.lease.check()
        client.rpush(f"{PREFIX}:begun", step)
        time.sleep(STEP_SECONDS)  # the work of one step
        total += step
        checkpoints.save(step + 1, {"total": total})
    checkpoints.close()
    # The side effect lands in the same transaction as the result, under the fence.
    self.commit_with(lambda pipe: pipe.rpush(f"{PREFIX}:effects", f"total={total}"))
    return {"total": total, "resumed_from": start, "token": self.fencing_token}


@resilient_task(
    app, store=store, lease_seconds=LEASE_SECONDS, max_redeliveries=1, name="loss.crash"
)
def crash(self: Any) -> None:
    """Kill the worker running it, every time (an OOM in a native library, say)."""
    client.rpush(f"{PREFIX}:crashes", self.request.hostname)
    os.kill(os.getpid(), signal.SIGKILL)


@resilient_task(
    app,
    retry=retry(max_attempts=3, delay=1.0, backoff=2.0, exceptions=ConnectionError),
    store=store,
    name="loss.flaky",
)
def flaky(self: Any, failures: int) -> int:
    """Fail with ConnectionError the first ``failures`` times, recording when each attempt ran."""
    client.rpush(f"{PREFIX}:attempts", f"{time.time()} {self.request.retries}")
    if client.llen(f"{PREFIX}:attempts") <= failures:
        msg = "upstream down"
        raise ConnectionError(msg)
    return failures
