"""Lease: the running copy's claim on a task, kept alive by a heartbeat thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from recoverly.celery.errors import LeaseLost
from recoverly.celery.store import RedisTaskStore

__all__ = ["Lease"]

_log = logging.getLogger("recoverly")


class Lease:
    """The lease a running task holds, with its fencing token.

    A daemon thread renews the lease every third of ``seconds``. When a renewal
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

    __slots__ = ("_lost", "_stop", "_thread", "key", "seconds", "store", "token")

    def __init__(self, store: RedisTaskStore, key: str, token: int, seconds: float) -> None:
        self.store = store
        self.key = key
        self.token = token
        self.seconds = seconds
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
        """Start the heartbeat thread."""
        self._thread = threading.Thread(
            target=self._beat, name=f"recoverly-lease-{self.token}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the heartbeat thread and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _beat(self) -> None:
        interval = self.seconds / 3.0
        while not self._stop.wait(interval):
            if not self._renew():
                _log.warning("task %s lost its lease (token %d)", self.key, self.token)
                self._lost.set()
                return

    def _renew(self) -> bool:
        """Renew once; a Redis error counts as "still ours" until the TTL says otherwise."""
        try:
            return self.store.renew(self.key, self.token, self.seconds)
        except Exception:
            _log.warning("could not renew the lease of task %s", self.key, exc_info=True)
            return True
