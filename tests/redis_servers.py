"""Fixtures for tests that talk to Redis (a pytest plugin module).

- ``redis_url``: the shared server (``RECOVERLY_TEST_REDIS_URL``, default
  ``redis://127.0.0.1:6379/0``); the test is skipped with a hint when it does not answer.
- ``redis_prefix``: a key prefix unique to the test; its keys are deleted afterwards.
- ``private_redis``: a ``redis-server`` process of the test's own on a free port, which
  the test may stop and start again (outages are never simulated on the shared server).

redis-py is imported inside the fixtures, so this module loads without the ``redis`` extra.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REDIS_URL = os.environ.get("RECOVERLY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
START_HINT = "start it with ../shared/services.sh or point RECOVERLY_TEST_REDIS_URL at a server"

_reachable: dict[str, str | None] = {}


def _client(url: str) -> Any:
    redis = pytest.importorskip("redis", reason="recoverly.redis tests need the redis extra")
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


@pytest.fixture
def redis_url() -> str:
    """URL of the shared Redis server (skips the test when it is unreachable)."""
    if REDIS_URL not in _reachable:
        client = _client(REDIS_URL)
        try:
            client.ping()
            _reachable[REDIS_URL] = None
        except Exception as exc:
            _reachable[REDIS_URL] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        finally:
            client.close()
    problem = _reachable[REDIS_URL]
    if problem is not None:
        pytest.skip(f"Redis at {REDIS_URL} is not reachable ({problem}); {START_HINT}")
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to this test; every key under it is deleted afterwards."""
    prefix = f"recoverly-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = _client(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A ``redis-server`` owned by one test: no persistence, stoppable, restartable on its port."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self._admin: Any = None

    def start(self) -> None:
        """Start the server on :attr:`port` and wait until it answers PING."""
        self.proc = subprocess.Popen(  # noqa: S603 - a fixed binary and arguments
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = _client(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    client.close()
                    raise
                time.sleep(0.02)
        self._admin = client  # one connection for the counts: no connection setup in them

    def stop(self) -> None:
        """Kill the server (an abrupt outage) and wait for it to exit."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def _stats(self) -> dict[str, Any]:
        if self._admin is None:
            msg = "the private Redis server is stopped"
            raise RuntimeError(msg)
        return dict(self._admin.info("commandstats"))

    def command_calls(self, command: str) -> int:
        """How many times the server ran ``command`` (from ``INFO commandstats``)."""
        entry = self._stats().get(f"cmdstat_{command.lower()}")
        return int(entry["calls"]) if entry else 0

    def command_counts(self) -> dict[str, int]:
        """Calls per command name, except ``INFO``."""
        return {
            k.removeprefix("cmdstat_"): int(v["calls"])
            for k, v in self._stats().items()
            if k != "cmdstat_info"
        }

    def commands_except_info(self) -> int:
        """Commands the server ran, except ``INFO`` (used to read the counts)."""
        stats = self._stats()
        return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A running redis-server of this test's own (skips when redis-server is not installed)."""
    pytest.importorskip("redis", reason="recoverly.redis tests need the redis extra")
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = PrivateRedis(binary, tmp_path)
    server.start()
    yield server
    server.stop()
