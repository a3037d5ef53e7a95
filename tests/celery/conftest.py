"""Fixtures for recoverly.celery: an eager Celery app and a Redis task store on db 1.

Redis comes from ``RECOVERLY_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``);
these tests use database 1 of that server and a key prefix of their own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("celery", reason="recoverly.celery tests need the celery extra")
redis = pytest.importorskip("redis", reason="recoverly.celery tests need redis-py")

from celery import Celery  # noqa: E402
from recoverly.celery import RedisTaskStore  # noqa: E402

REDIS_URL = os.environ.get("RECOVERLY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
START_HINT = "start it with ../shared/services.sh or point RECOVERLY_TEST_REDIS_URL at a server"


def redis_db1_url() -> str:
    """The test Redis server's URL with database 1 selected."""
    base = REDIS_URL.split("?")[0]
    head, _, tail = base.rpartition("/")
    return f"{head}/1" if tail.isdigit() and head.count("/") >= 2 else f"{base.rstrip('/')}/1"


@pytest.fixture
def redis_client() -> Iterator[Any]:
    """A client on database 1 of the test Redis; skips with a hint when unreachable."""
    client = redis.Redis.from_url(redis_db1_url(), socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        pytest.skip(f"Redis at {redis_db1_url()} is not reachable ({exc}); {START_HINT}")
    yield client
    client.close()


@pytest.fixture
def store(redis_client: Any) -> Iterator[RedisTaskStore]:
    """A task store with a key prefix of its own; its keys are deleted afterwards."""
    prefix = f"test:celery:{uuid.uuid4().hex[:12]}"
    yield RedisTaskStore(redis_client, prefix=prefix)
    keys = list(redis_client.scan_iter(match=f"{prefix}:*", count=500))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def app() -> Celery:
    """A Celery app that runs tasks eagerly in this process (no broker)."""
    celery_app = Celery(f"t{uuid.uuid4().hex[:8]}", broker="memory://", backend="cache+memory://")
    celery_app.conf.task_always_eager = True
    # Failures are kept on the EagerResult (get() raises them): propagating would
    # also raise the Retry that apply() turns into the next eager attempt.
    celery_app.conf.task_eager_propagates = False
    celery_app.conf.task_store_eager_result = False
    return celery_app
