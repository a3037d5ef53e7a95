"""The exceptions ``recoverly.celery`` raises.

The tree (below :class:`~recoverly.RecoverlyError`)::

    RecoverlyError
    ├── LeaseLost           this worker no longer owns the task: another copy took over
    ├── TaskDeadLettered    the task lost its worker too often; it went to the dead letter
    └── RejectedError
        └── LeaseHeld       another live copy owns the task (eager mode only; a worker
                            retries later instead)

.. versionadded:: 0.2
"""

from __future__ import annotations

from recoverly.errors import RecoverlyError, RejectedError

__all__ = ["LeaseHeld", "LeaseLost", "TaskDeadLettered"]


class LeaseLost(RecoverlyError):
    """This copy of the task lost its lease: a newer fencing token was issued.

    Raised when a stale owner tries to write its result (or a fenced side
    effect), and by :meth:`~recoverly.celery.Lease.check` once the heartbeat
    could not renew the lease. Nothing was written.

    Attributes:
        key: The idempotency key of the task.
        token: The fencing token this copy held.

    .. versionadded:: 0.2
    """

    def __init__(self, key: str, token: int) -> None:
        # The data is the args, so result backends that store exceptions as
        # (type, args) rebuild the same error.
        super().__init__(key, token)

    @property
    def key(self) -> str:
        """The idempotency key of the task."""
        return str(self.args[0])

    @property
    def token(self) -> int:
        """The fencing token this copy held."""
        return int(self.args[1])

    def __str__(self) -> str:
        return (
            f"task {self.key!r} lost its lease (fencing token {self.token} is stale); "
            "another copy owns it now and this copy's writes are refused"
        )


class TaskDeadLettered(RecoverlyError):
    """The task's worker died more often than ``max_redeliveries`` allows.

    The task was moved to the dead letter list with its delivery history and is
    not run again; later copies of the same message raise this too.

    Attributes:
        key: The idempotency key of the task.
        losses: How many deliveries ended without finishing (worker lost).

    .. versionadded:: 0.2
    """

    def __init__(self, key: str, losses: int) -> None:
        super().__init__(key, losses)

    @property
    def key(self) -> str:
        """The idempotency key of the task."""
        return str(self.args[0])

    @property
    def losses(self) -> int:
        """How many deliveries ended without finishing."""
        return int(self.args[1])

    def __str__(self) -> str:
        return (
            f"task {self.key!r} was moved to the dead letter after {self.losses} lost "
            "deliveries; it will not run again (inspect RedisTaskStore.dead_letters())"
        )


class LeaseHeld(RejectedError):
    """Another live copy of the task holds its lease (eager mode only).

    In a worker the duplicate copy is retried with a countdown instead; this
    error exists because an eager call has no queue to wait in.

    .. versionadded:: 0.2
    """


for _cls in (LeaseHeld, LeaseLost, TaskDeadLettered):
    _cls.__module__ = "recoverly.celery"
