"""Run by test_forked_child_keeps_its_copy_in_sync in a fresh interpreter (not collected).

A store is bound before ``fork`` (gunicorn --preload); the child must follow the shared
state. Forking is done here, in a process with no other test's threads, because a fork
taken while another thread holds a lock can leave the child waiting on it forever.
Prints the child's verdict; exit code 0 when the child saw the breaker open.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
import threading
import time
from typing import Any

from recoverly import CircuitBreaker
from recoverly._core.clock import SystemClock
from recoverly.redis import RedisBreakerStore


def breaker_on(store: RedisBreakerStore) -> CircuitBreaker:
    """A breaker with threshold 3 and a 10 s recovery over ``store``."""
    return CircuitBreaker(
        store=store, clock=SystemClock(), failure_threshold=3, recovery_timeout=10.0
    )


def child(store: RedisBreakerStore, ready: Any, result: Any) -> None:
    """Wait for the store's watcher to run in this child, then for the parent's opening."""
    deadline = time.monotonic() + 5.0
    while not any(t.name.startswith("recoverly-redis-breaker") for t in threading.enumerate()):
        if time.monotonic() > deadline:
            result.put("no watcher")
            return
        time.sleep(0.01)
    time.sleep(0.1)  # let it subscribe
    ready.set()
    while store.fast >= 0:
        if time.monotonic() > deadline:
            result.put("never saw the opening")
            return
        time.sleep(0.001)
    result.put(store.snapshot().state.name)


def boom() -> None:
    """Always fails."""
    raise RuntimeError("boom")


def main(url: str, prefix: str) -> int:
    """Fork with a bound store; open the breaker from the parent; report what the child saw."""
    ctx = multiprocessing.get_context("fork")
    store = RedisBreakerStore(url, "svc", prefix=prefix)
    breaker_on(store)
    ready, result = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=child, args=(store, ready, result))
    proc.start()
    other = RedisBreakerStore(url, "svc", prefix=prefix)
    try:
        if not ready.wait(10):
            sys.stdout.write("child not ready\n")
            return 1
        opener = breaker_on(other)
        for _ in range(3):
            with contextlib.suppress(RuntimeError):
                opener.call(boom)
        seen = result.get(timeout=10)
        sys.stdout.write(f"{seen}\n")
    finally:
        proc.join(10)
        other.close()
        store.close()
    return 0 if seen == "OPEN" and proc.exitcode == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
