"""ResilientTask and @resilient_task: Celery tasks that survive retries and lost workers.

What a resilient task does on each delivery, in order:

1. works out its **idempotency key** (the ``idempotency_key=`` argument, or a
   hash of the task name and arguments);
2. with a :class:`~recoverly.celery.RedisTaskStore`, asks it for the key: a
   stored result is returned without running again; a task in the dead letter
   raises :class:`~recoverly.celery.TaskDeadLettered`; a lease held by another
   live copy sends this copy back to the queue with a countdown until the lease
   would expire; otherwise this copy takes the lease with a new **fencing
   token** and a heartbeat thread renews it;
3. counts the deliveries that started and never finished (their worker died):
   more than ``max_redeliveries`` moves the task to the dead letter instead of
   running it again;
4. runs the function; a failure that the ``retry`` policy accepts becomes
   Celery's own ``Task.retry`` with the policy's backoff as the countdown;
5. stores the result under the fencing token (refused if a newer copy took
   over) and frees the lease.

The class sets ``acks_late = True`` and ``reject_on_worker_lost = True``; see
:func:`~recoverly.celery.configure_app` and ``docs/celery.md`` for why.
:func:`~recoverly.celery.resilient_task` (in ``decorator.py``) registers a
function on it.

.. versionadded:: 0.2
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import redis
from celery.exceptions import Ignore, Reject  # type: ignore[import-untyped]
from celery.exceptions import Retry as CeleryRetry

from celery import Task  # type: ignore[import-untyped]
from recoverly._core.bus import BUS
from recoverly.celery._lease import Lease
from recoverly.celery._options import validate_options
from recoverly.celery.errors import LeaseHeld, LeaseLost, TaskDeadLettered
from recoverly.celery.store import Begin, RedisTaskStore
from recoverly.events import DeadLettered
from recoverly.retry import Retry

if TYPE_CHECKING:
    from recoverly.training import CheckpointManager

__all__ = ["KEY_ARGUMENT", "ResilientTask"]

#: The keyword argument that carries an explicit idempotency key; it is removed
#: before the function is called.
KEY_ARGUMENT = "idempotency_key"

_log = logging.getLogger("recoverly")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True, slots=True)
class _Run:
    """What one delivery knows about itself (kept on ``task.request``)."""

    key: str
    lease: Lease | None
    checkpoint_dir: Path | None
    on_commit: list[Callable[[Any], object]] = field(default_factory=list)


class ResilientTask(Task):  # type: ignore[misc]
    """A Celery task base class with recoverly's retry, idempotency and leases.

    Use it as a base class, with the options as task attributes::

        @app.task(base=ResilientTask, bind=True, retry_policy=retry(max_attempts=4),
                  task_store=store, checkpoint_root="/var/ckpt")
        def train(self, run_id): ...

    or through :func:`~recoverly.celery.resilient_task`, which validates the options at once.

    Attributes:
        retry_policy: A :class:`~recoverly.Retry` (from ``retry(...)``); a failure it
            accepts is retried through Celery with the policy's wait as the
            countdown. ``None``: failures are not retried.
        task_store: A :class:`~recoverly.celery.RedisTaskStore` for results, leases
            and delivery counts. ``None``: no idempotency, no lease, no cap.
        lease_seconds: The lease's time to live; the heartbeat renews it every
            third of it. After a worker dies, another copy can start this long
            after the last renewal.
        max_redeliveries: How often a task whose worker died runs again; the next
            loss sends it to the dead letter. ``None``: no cap.
        checkpoint_root: The directory under which each task gets
            ``checkpoint_dir``, named after its idempotency key.
        idempotency_key_from: ``(*args, **kwargs) -> str`` computing the key from
            the arguments instead of hashing them.

    .. versionadded:: 0.2
    """

    # A message is acknowledged after the task ran, not when it was received: if
    # the worker dies midway, the broker still holds the message and delivers it again.
    acks_late = True
    # When a pool child is killed (OOM, SIGKILL), requeue the message instead of
    # marking the task failed with WorkerLostError.
    reject_on_worker_lost = True

    retry_policy: Retry | None = None
    task_store: RedisTaskStore | None = None
    lease_seconds: float = 30.0
    max_redeliveries: int | None = 3
    checkpoint_root: Path | None = None
    idempotency_key_from: Callable[..., str] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        key_from = cls.__dict__.get("idempotency_key_from")
        if isinstance(key_from, staticmethod):
            key_from = key_from.__func__
        options = validate_options(
            cls.retry_policy,
            cls.task_store,
            cls.lease_seconds,
            cls.max_redeliveries,
            cls.checkpoint_root,
            key_from if "idempotency_key_from" in cls.__dict__ else None,
        )
        for name, value in options.items():
            if name == "idempotency_key_from":
                if "idempotency_key_from" in cls.__dict__:
                    setattr(cls, name, None if value is None else staticmethod(value))
            else:
                setattr(cls, name, value)
        policy = options["retry_policy"]
        if policy is not None and "max_retries" not in cls.__dict__:
            cls.max_retries = None if policy.max_attempts is None else policy.max_attempts - 1

    # ------------------------------------------------------------ what the task sees
    def _current(self) -> _Run:
        run = getattr(self.request, "recoverly_run", None)
        if run is None:
            msg = f"{self.name}: this is only known while the task runs as a Celery task"
            raise RuntimeError(msg)
        return run  # type: ignore[no-any-return]

    @property
    def idempotency_key(self) -> str:
        """The idempotency key of the running delivery."""
        return self._current().key

    @property
    def lease(self) -> Lease | None:
        """The lease this delivery holds (``None`` without a ``task_store``)."""
        return self._current().lease

    @property
    def fencing_token(self) -> int | None:
        """This delivery's fencing token: larger than every earlier owner's."""
        lease = self._current().lease
        return None if lease is None else lease.token

    @property
    def checkpoint_dir(self) -> Path:
        """The checkpoint directory of this task, the same on every redelivery.

        Raises:
            RuntimeError: The task has no ``checkpoint_root``.
        """
        path = self._current().checkpoint_dir
        if path is None:
            msg = f"{self.name}: set checkpoint_root to get a checkpoint directory"
            raise RuntimeError(msg)
        return path

    def commit_with(self, write: Callable[[Any], object]) -> None:
        """Apply Redis writes together with this delivery's result, exactly once.

        ``write`` receives a ``redis`` pipeline (MULTI mode) when the task
        returns and queues commands on it; they run in the same transaction
        that stores the result, and only if this copy still holds the newest
        fencing token. A copy that died or was superseded writes nothing, and a
        redelivery after success returns the stored result without running, so
        the writes happen once.

        Args:
            write: Queues commands on the pipeline (its return value is ignored).

        Raises:
            RuntimeError: The task has no ``task_store``.
        """
        run = self._current()
        if run.lease is None:
            msg = f"{self.name}: commit_with needs a task_store"
            raise RuntimeError(msg)
        run.on_commit.append(write)

    def checkpoints(self, **options: Any) -> CheckpointManager:
        """Return a ``recoverly.training.CheckpointManager`` on :attr:`checkpoint_dir`.

        Args:
            **options: Passed to ``CheckpointManager`` (``keep_last=``, ...).
        """
        from recoverly.training import CheckpointManager  # noqa: PLC0415 - numpy on first use

        return CheckpointManager(self.checkpoint_dir, **options)

    def idempotency_key_for(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """Return the key a call with these arguments gets when none is given.

        ``idempotency_key_from(*args, **kwargs)`` when set; otherwise the task
        name and a SHA-256 of the arguments as canonical JSON.
        """
        key_from = self.idempotency_key_from
        if key_from is not None:
            return str(key_from(*args, **kwargs))
        payload = json.dumps([list(args), kwargs], sort_keys=True, default=repr)
        digest = hashlib.sha256(payload.encode()).hexdigest()[:32]
        return f"{self.name}:{digest}"

    def _checkpoint_dir(self, key: str) -> Path | None:
        root = self.checkpoint_root
        if root is None:
            return None
        short = hashlib.sha256(key.encode()).hexdigest()[:12]
        return root / f"{_UNSAFE.sub('_', key)[:80]}-{short}"

    # ------------------------------------------------------------ one delivery
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run one delivery (see the module docstring); a direct call is one local delivery."""
        explicit = kwargs.pop(KEY_ARGUMENT, None)
        if self.request_stack.top is not None:  # a worker or apply() pushed the request
            return self._deliver(explicit, args, kwargs)
        # task(...) called like a function: same protection, but no Celery retry.
        self.push_request(args=args, kwargs=kwargs)
        try:
            return self._deliver(explicit, args, kwargs)
        finally:
            self.pop_request()

    def _deliver(self, explicit: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        key = str(explicit) if explicit is not None else self.idempotency_key_for(args, kwargs)
        store = self.task_store
        if store is None:
            self.request.recoverly_run = _Run(key, None, self._checkpoint_dir(key))
            try:
                return self.run(*args, **kwargs)
            except (CeleryRetry, Ignore, Reject):
                raise
            except Exception as exc:
                wait = self._retry_wait(exc, self.request.retries + 1)
                if wait is not None:
                    self._retry(exc, wait)
                raise
        request = self.request
        where = {"hostname": request.hostname, "task_id": request.id}
        try:
            begin = store.begin(
                key,
                self.lease_seconds,
                max_redeliveries=self.max_redeliveries,
                record={**where, "retries": request.retries},
            )
        except redis.RedisError as exc:
            # The store is unreachable: keep the message (bounded by max_retries)
            # rather than run unguarded or fail for good.
            if request.is_eager or request.called_directly:
                raise
            raise self.retry(exc=exc, countdown=self.lease_seconds) from exc
        if begin.kind != "owner":
            return self._not_owner(store, key, begin, args, kwargs)
        return self._own(store, key, begin, args, kwargs)

    def _not_owner(
        self,
        store: RedisTaskStore,
        key: str,
        begin: Begin,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        request = self.request
        if begin.kind == "done":
            return begin.result
        if begin.kind == "dead":
            if begin.newly_dead:  # this copy found one loss too many: file it
                _log.error(
                    "task %s (%s) moved to the dead letter after %d lost deliveries",
                    self.name,
                    key,
                    begin.losses,
                )
                store.dead_letter(
                    key,
                    begin.losses,
                    task=self.name,
                    args=args,
                    kwargs=kwargs,
                    hostname=request.hostname,
                    task_id=request.id,
                )
                if BUS.wants(DeadLettered):
                    BUS.emit(DeadLettered(self.name, key, begin.losses))
            raise TaskDeadLettered(key, begin.losses)
        # Another live copy holds the lease: come back when it would have expired.
        wait = begin.retry_after + min(1.0, self.lease_seconds / 10.0)
        _log.info(
            "task %s (%s) is running elsewhere; checking again in %.1fs", self.name, key, wait
        )
        store.record(key, "busy", hostname=request.hostname, task_id=request.id, wait=wait)
        if request.is_eager or request.called_directly:
            msg = f"task {key!r} is running elsewhere; retry in {wait:.1f} s"
            raise LeaseHeld(msg, name=key, state="held", retry_after=wait)
        raise self.retry(countdown=wait, max_retries=request.retries + 1)

    def _own(
        self,
        store: RedisTaskStore,
        key: str,
        begin: Begin,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        request = self.request
        where = {"hostname": request.hostname, "task_id": request.id, "token": begin.token}
        lease = Lease(store, key, begin.token, self.lease_seconds)
        run = _Run(key, lease, self._checkpoint_dir(key))
        request.recoverly_run = run
        lease.start()
        try:
            result = self.run(*args, **kwargs)
        except LeaseLost:
            lease.stop()
            store.finish(key, begin.token)
            return self._superseded(store, key, begin.token)
        except (CeleryRetry, Ignore, Reject):
            lease.stop()
            store.finish(key, begin.token)
            raise
        except Exception as exc:
            lease.stop()
            wait = self._retry_wait(exc, begin.failures + 1)
            store.finish(
                key,
                begin.token,
                outcome="gave-up" if wait is None else "retry",
                record={**where, "exception": f"{type(exc).__name__}: {exc}"},
            )
            if wait is not None:
                self._retry(exc, wait)
            raise
        except BaseException:
            lease.stop()
            store.finish(key, begin.token)
            raise
        lease.stop()
        try:
            store.commit(key, begin.token, result, run.on_commit, record=where)
        except LeaseLost:
            return self._superseded(store, key, begin.token)
        if begin.failures and self.retry_policy is not None:
            self.retry_policy._finished(self.name, begin.failures + 1, None, None)
        return result

    def _superseded(self, store: RedisTaskStore, key: str, token: int) -> Any:
        """This copy lost its lease: return the newer copy's result, or step aside."""
        found, result = store.result(key)
        if found:
            return result
        if self.request.is_eager or self.request.called_directly:
            raise LeaseLost(key, token)
        # The newer copy reports the task's state; this one must not overwrite it.
        raise Ignore

    def _retry_wait(self, exc: Exception, failures: int) -> float | None:
        """Return the policy's countdown for retrying ``exc``, or ``None`` to give up."""
        policy = self.retry_policy
        if policy is None or self.request.called_directly or not policy._retryable(exc):
            return None
        decision = policy._next_delay(failures, exc, None, 0.0)
        if isinstance(decision, str):
            policy._finished(self.name, failures, exc, decision)
            return None
        policy._scheduled(self.name, failures, exc, decision)
        return decision

    def _retry(self, exc: Exception, countdown: float) -> NoReturn:
        """Send the task back to the queue through Celery's own retry."""
        # recoverly's policy is the limit: Celery's max_retries must not stop it first.
        raise self.retry(exc=exc, countdown=countdown, max_retries=self.request.retries + 1)


ResilientTask.__module__ = "recoverly.celery"
