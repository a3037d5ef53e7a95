"""The parts of a running service, built from its settings and shut down in order.

.. versionadded:: 0.2
"""

from __future__ import annotations

import logging
from typing import Any

from recoverly._core.clock import SystemClock
from recoverly._core.registry import REGISTRY
from recoverly.circuit_breaker import KIND as BREAKER_KIND
from recoverly.db import ConnectionPoolMonitor
from recoverly.service.faults import FaultInjector
from recoverly.service.jobs import TrainingJob
from recoverly.service.model import Dataset, make_dataset
from recoverly.service.predictor import BREAKER_NAME, LocalModels, Predictor
from recoverly.service.schemas import TrainConfig
from recoverly.service.settings import Settings
from recoverly.service.store import Store, make_engine
from recoverly.service.supervision import WorkerExit
from recoverly.service.worker import ProcessWorker, Worker
from recoverly.service.worker_process import WorkerSpec
from recoverly.stores import BreakerStore

__all__ = ["Service"]

_log = logging.getLogger("recoverly.service")
_REAL_CLOCK = SystemClock()
#: Seconds the newest completed run id is cached for /predict.
_NEWEST_TTL = 1.0


def _breaker_store(settings: Settings) -> BreakerStore | None:
    """The breaker's state store: Redis when configured, else in memory."""
    if settings.redis_url is None:
        return None
    try:
        from recoverly.redis import (  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
            RedisBreakerStore,
        )
    except ImportError as exc:
        msg = "RECOVERLY_REDIS_URL is set but recoverly.redis is not available in this install"
        raise RuntimeError(msg) from exc
    store: BreakerStore = RedisBreakerStore(
        settings.redis_url, BREAKER_NAME, prefix=settings.redis_prefix
    )
    return store


class Service:
    """Everything the API uses: database, worker, predictor, local models, faults.

    Args:
        settings: The configuration.
        clock: Time source of the predictor's breaker and retries (tests pass a
            ``ManualClock``).
        faults: Fault hooks (default: none, unless ``settings.fault_injection``,
            which installs an injector with an empty plan for the caller to fill).
        worker: The worker (default: chosen from ``settings.broker_url``).

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Any = None,
        faults: FaultInjector | None = None,
        worker: Worker | None = None,
    ) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(settings.resolved_database_url)
        if faults is None and settings.fault_injection:
            faults = FaultInjector()
        self.faults = faults
        if faults is not None:
            faults.install(self.engine)
        self.store = Store(self.engine)
        self.store.create_schema()
        self.pool = ConnectionPoolMonitor(self.engine, name="service")
        self.job = TrainingJob(
            self.store,
            self.engine,
            settings.resolved_checkpoint_dir,
            settings.journal_dir,
            faults=faults,
            step_delay=settings.training_step_delay,
        )
        self.worker: Worker = worker or self._default_worker()
        self.models = LocalModels(settings.resolved_checkpoint_dir)
        self.predictor = Predictor(
            settings.predictor_url,
            timeout_seconds=settings.predictor_timeout,
            attempts=settings.predictor_attempts,
            failure_threshold=settings.breaker_failure_threshold,
            recovery_timeout=settings.breaker_recovery_timeout,
            breaker_store=_breaker_store(settings),
            clock=clock,
        )
        self.started = False
        self._newest: tuple[int, float] | None = None
        self._dataset: tuple[int, Dataset | None] | None = None

    def newest_model_id(self) -> int | None:
        """Return the id of the newest completed run (cached for a second; ``None``: none yet).

        ``/predict`` asks on every call; the cache spares it a database round trip,
        at the price of answering with the previous model for up to a second.
        """
        now = _REAL_CLOCK.monotonic()
        cached = self._newest
        if cached is not None and now - cached[1] < _NEWEST_TTL:
            return cached[0]
        found = self.store.newest_completed()
        if found is not None:
            self._newest = (found, now)
        return found

    def _default_worker(self) -> Worker:
        if self.settings.broker_url is not None:
            from recoverly.service.celery_worker import CeleryWorker  # noqa: PLC0415 - optional

            return CeleryWorker(self.settings)
        return ProcessWorker(
            self.worker_spec,
            faults=self.faults,
            on_interrupted=self._interrupted,
            on_given_up=self._given_up,
        )

    def worker_spec(self, run_id: int) -> WorkerSpec:
        """Return what a worker process training run ``run_id`` gets.

        The run's dataset is generated here, once per run (from its config's
        seed), and handed to each of its worker processes, which then start
        without importing scikit-learn.
        """
        faults = self.faults
        return WorkerSpec(
            run_id,
            self.settings,
            faults=faults.worker_plan() if faults is not None else None,
            switches=faults.switches() if faults is not None else {},
            dataset=self._dataset_of(run_id),
            progress_interval=self.job.progress_interval,
        )

    def _dataset_of(self, run_id: int) -> Dataset | None:
        cached = self._dataset
        if cached is not None and cached[0] == run_id:
            return cached[1]
        dataset = None
        record = self.store.get_run(run_id)
        if record is not None:
            try:
                config = TrainConfig.model_validate(record["config"])
            except ValueError:  # the worker process records the run as failed
                config = None
            if config is not None:
                seed = config.seed
                dataset = make_dataset(config.n_samples, config.n_features, config.n_classes, seed)
        self._dataset = (run_id, dataset)
        return dataset

    def _interrupted(self, run_id: int, ended: WorkerExit) -> None:
        self.store.set_status(run_id, "interrupted", error=str(ended))

    def _given_up(self, run_id: int, ended: WorkerExit) -> None:
        self.store.set_status(run_id, "failed", error=f"worker died too often: {ended}")

    def start(self) -> None:
        """Start the worker and queue the runs a previous process left unfinished."""
        if self.started:
            return
        self.started = True
        self.worker.start()
        for run_id in self.store.unfinished():
            _log.info("resuming unfinished run %s", run_id)
            self.worker.submit(run_id)

    async def aclose(self) -> None:
        """Stop the worker, close the HTTP client and the database."""
        self.worker.stop(timeout=10)
        await self.predictor.aclose()
        self.close_sync()

    def close_sync(self) -> None:
        """Close what needs no event loop: the breaker's listing, the pool monitor, the engine."""
        # A new service in this process (tests, the demo) may name its breaker the same.
        REGISTRY.unregister(BREAKER_KIND, BREAKER_NAME, self.predictor.breaker)
        close_store = getattr(self.predictor.breaker.store, "close", None)
        if callable(close_store):  # the Redis store's connection and subscriber thread
            close_store()
        if self.faults is not None:
            self.faults.uninstall(self.engine)
        self.pool.close()
        self.engine.dispose()
