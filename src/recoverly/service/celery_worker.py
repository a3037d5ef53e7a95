"""Training on Celery workers: the same job as the service's own worker, behind a broker.

When ``RECOVERLY_BROKER_URL`` is set, ``POST /train`` sends the run id to a
Celery queue instead of the service's own worker. Run the workers with the same
settings (database, data directory shared with the API)::

    export RECOVERLY_BROKER_URL=amqp://guest:guest@127.0.0.1:5672//
    export RECOVERLY_DATABASE_URL=postgresql+psycopg://app@db/app
    celery -A recoverly.service.celery_worker worker --pool=solo --concurrency=1

The task is a :class:`recoverly.celery.ResilientTask`: acknowledged late and
requeued when its worker dies, so a worker killed mid-training hands the run to
another worker, which resumes it from its newest checkpoint
(:class:`~recoverly.service.jobs.TrainingJob` does that for every delivery).
With ``RECOVERLY_REDIS_URL`` set, a :class:`recoverly.celery.RedisTaskStore`
adds leases (two copies of a run never train at once) and caps redeliveries.

.. versionadded:: 0.2
"""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery  # type: ignore[import-untyped]
from recoverly.celery import RedisTaskStore, configure_app, resilient_task
from recoverly.retry import retry
from recoverly.service.jobs import TrainingJob
from recoverly.service.settings import Settings
from recoverly.service.store import Store, make_engine

__all__ = ["TASK_NAME", "CeleryWorker", "build_celery"]

#: The Celery name of the training task.
TASK_NAME = "recoverly.service.train"


class _JobHolder:
    """Builds the worker process's training job on first use (one engine per process)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._job: TrainingJob | None = None
        self._lock = threading.Lock()

    def __call__(self) -> TrainingJob:
        with self._lock:
            if self._job is None:
                settings = self.settings
                engine = make_engine(settings.resolved_database_url)
                store = Store(engine)
                store.create_schema()
                self._job = TrainingJob(
                    store,
                    engine,
                    settings.resolved_checkpoint_dir,
                    settings.journal_dir,
                    step_delay=settings.training_step_delay,
                )
            return self._job


def build_celery(settings: Settings) -> tuple[Celery, Any]:
    """Return the Celery app for ``settings`` and its training task.

    .. versionadded:: 0.2
    """
    app = Celery("recoverly.service", broker=settings.broker_url)
    configure_app(app, visibility_timeout=3600)
    app.conf.task_default_queue = settings.celery_queue
    app.conf.broker_connection_retry_on_startup = True
    store = RedisTaskStore(settings.redis_url) if settings.redis_url else None
    job = _JobHolder(settings)

    @resilient_task(
        app,
        retry(max_attempts=3, delay=2.0, exceptions=(ConnectionError, OSError)),
        store=store,
        lease_seconds=15,
        max_redeliveries=5,
        key=lambda run_id: f"train-{run_id}",
        name=TASK_NAME,
    )
    def train(_task: Any, run_id: int) -> None:
        job()(run_id)

    return app, train


class CeleryWorker:
    """Send training runs to Celery workers (``RECOVERLY_BROKER_URL``).

    The workers are separate processes (see the module documentation); this
    object only queues runs and reports on the broker.

    Args:
        settings: The service's settings (``broker_url`` must be set).

    .. versionadded:: 0.2
    """

    kind = "celery"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app, self.task = build_celery(settings)

    def submit(self, run_id: int) -> None:
        """Queue run ``run_id`` on the training queue."""
        self.task.apply_async(args=[run_id], queue=self.settings.celery_queue)

    def start(self) -> None:
        """Nothing to start here: the workers run on their own."""

    def stop(self, timeout: float = 10.0) -> None:
        """Release the broker connections (``timeout`` is unused)."""
        del timeout
        self.app.close()

    def status(self) -> dict[str, Any]:
        """Return whether the broker answers (for ``/health``)."""
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
        except Exception as exc:
            return {"kind": self.kind, "ok": False, "error": type(exc).__name__}
        return {"kind": self.kind, "ok": True, "queue": self.settings.celery_queue}

    def __repr__(self) -> str:
        return f"<CeleryWorker queue={self.settings.celery_queue!r}>"


def __getattr__(name: str) -> Any:
    """``celery -A recoverly.service.celery_worker`` finds ``app`` here (built from the env)."""
    if name in ("app", "celery"):
        app, _task = build_celery(Settings())
        globals()["app"] = globals()["celery"] = app
        return app
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
