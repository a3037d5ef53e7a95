"""Two replicas of the service share the predictor's breaker through Redis."""

from __future__ import annotations

import os
import uuid

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("redis")

import redis
from service_support import service

from recoverly.service.predictor_server import PredictorServer

REDIS_URL = os.environ.get("RECOVERLY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROW = {"features": [[1.0, 2.0]]}


@pytest.fixture
def redis_prefix():
    """A key prefix of its own on the test Redis (keys deleted afterwards); skips if unreachable."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        pytest.skip(
            f"Redis at {REDIS_URL} is not reachable ({exc}); start it with "
            "../shared/services.sh or point RECOVERLY_TEST_REDIS_URL at a server"
        )
    prefix = f"test:service:{uuid.uuid4().hex[:12]}:"
    yield prefix
    keys = list(client.scan_iter(match=f"{prefix}*", count=500))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.mark.realtime
def test_a_breaker_opened_by_one_replica_is_open_in_the_other(tmp_path, redis_prefix):
    """Replica A's failures open the shared breaker; replica B rejects without calling it."""
    with PredictorServer(lambda rows: [0] * len(rows)) as predictor:
        predictor.set_mode("down")
        common = {
            "predictor_url": predictor.url,
            "predictor_attempts": 1,
            "breaker_failure_threshold": 2,
            "breaker_recovery_timeout": 60,
            "redis_url": REDIS_URL,
            "redis_prefix": redis_prefix,
        }
        # One process holds one service here (a breaker name is unique per process), so
        # replica B starts after A stopped: it finds the breaker A opened, in Redis.
        with service(tmp_path / "a", **common) as a:
            assert [a.post("/predict", json=ROW).status_code for _ in range(2)] == [502, 502]
            assert a.get("/health").json()["breakers"]["external-predictor"]["state"] == "OPEN"
        with service(tmp_path / "b", **common) as b:
            health = b.get("/health").json()
            rejected = b.post("/predict", json=ROW)
    assert health["breakers"]["external-predictor"]["state"] == "OPEN"
    assert rejected.status_code == 503
    assert rejected.json()["error"] == "circuit_open"
    assert int(rejected.headers["retry-after"]) > 0
    assert predictor.requests["down"] == 2  # replica B never called the predictor
