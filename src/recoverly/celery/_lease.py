"""Lease: the running copy's claim on a task, kept alive by a heartbeat thread."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from recoverly._core.clock import SystemClock
from recoverly.celery.errors import LeaseLost
from recoverly.celery.store import RedisTaskStore

__all__ = ["Lease"]

_log = logging.getLogger("recoverly")


class Lease:
    """The lease a running task holds, with its fencing token.

    The process's heartbeat thread renews the lease every third of ``seconds``. When a renewal
    finds the lease gone (it expired while the process was stalled, and another
    copy may have taken over), :attr:`lost` becomes true and :meth:`check`
    raises :class:`~recoverly.celery.LeaseLost`: long loops call it once per
    step. Writes never depend on the heartbeat alone: the result and
    :meth:`fenced` writes compare the token inside Redis.

    Instances are made by :class:`~recoverly.celery.ResilientTask`; read them
    as ``self.lease`` inside the task.

    Attributes:
        key: The task's idempotency key.
        token: The fencing token: larger than every earlier owner's.
        seconds: The lease's time to live.

    .. versionadded:: 0.2
    """

    __slots__ = ("_lost", "key", "seconds", "store", "token")

    def __init__(self, store: RedisTaskStore, key: str, token: int, seconds: float) -> None:
        self.store = store
        self.key = key
        self.token = token
        self.seconds = seconds
        self._lost = threading.Event()

    def __repr__(self) -> str:
        state = "lost" if self.lost else "held"
        return f"<Lease {self.key!r} token={self.token} {state} ttl={self.seconds:g}s>"

    @property
    def lost(self) -> bool:
        """Whether a renewal found that this copy no longer holds the lease."""
        return self._lost.is_set()

    def check(self) -> None:
        """Raise :class:`~recoverly.celery.LeaseLost` if the lease was lost.

        Raises:
            LeaseLost: The heartbeat could not renew the lease.
        """
        if self._lost.is_set():
            raise LeaseLost(self.key, self.token)

    def fenced(self, write: Callable[[Any], object]) -> None:
        """Queue Redis writes on a pipeline; apply them only while this token is the newest.

        Args:
            write: Receives a ``redis`` pipeline (MULTI mode) and queues commands.

        Raises:
            LeaseLost: Another copy took over: nothing was written.
        """
        self.store.fenced(self.key, self.token, write)

    # ------------------------------------------------------------ heartbeat
    def start(self) -> None:
        """Have the process's heartbeat thread renew this lease from now on."""
        HEARTBEAT.add(self)

    def stop(self) -> None:
        """Stop renewing this lease (it is released by the commit or the finish)."""
        HEARTBEAT.remove(self)

    def _renew(self) -> bool:
        """Renew once; a Redis error counts as "still ours" until the TTL says otherwise."""
        try:
            return self.store.renew(self.key, self.token, self.seconds)
        except Exception:
            _log.warning("could not renew the lease of task %s", self.key, exc_info=True)
            return True


class _Heartbeat:
    """One daemon thread per process that renews every held lease when it falls due.

    Started on first use and again in a forked child (a pool process), so a
    delivery costs no thread start. Renewals run outside the lock.
    """

    __slots__ = ("_clock", "_cond", "_due", "_pid")

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[Lease, float] = {}
        self._pid = 0
        self._clock = SystemClock()  # leases live in Redis time, never a test clock

    def add(self, lease: Lease) -> None:
        with self._cond:
            if self._pid != os.getpid():  # first lease in this process
                self._pid = os.getpid()
                self._due = {}
                threading.Thread(target=self._run, name="recoverly-leases", daemon=True).start()
            self._due[lease] = self._clock.monotonic() + lease.seconds / 3.0
            self._cond.notify()

    def remove(self, lease: Lease) -> None:
        with self._cond:
            self._due.pop(lease, None)

    def _held(self, lease: Lease) -> bool:
        with self._cond:
            return lease in self._due

    def _run(self) -> None:
        while True:
            with self._cond:
                now = self._clock.monotonic()
                due = [lease for lease, at in self._due.items() if at <= now]
                for lease in due:
                    self._due[lease] = now + lease.seconds / 3.0
                if not due:
                    self._cond.wait(min(self._due.values(), default=now + 60.0) - now)
                    continue
            for lease in due:
                if not lease._renew() and self._held(lease):
                    _log.warning("task %s lost its lease (token %d)", lease.key, lease.token)
                    lease._lost.set()
                    self.remove(lease)


HEARTBEAT = _Heartbeat()
