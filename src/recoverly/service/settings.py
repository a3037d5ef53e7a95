"""Settings of the reference service, read from ``RECOVERLY_*`` variables and ``.env``.

Every setting has an embedded default, so the service runs with nothing
configured: a SQLite file and checkpoints in ``./recoverly-data``, the service's
own worker (a worker process per run), breaker state in memory, no fault
injection and no API token.

.. versionadded:: 0.2
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Configuration of the service (environment variables prefixed ``RECOVERLY_``).

    Attributes:
        data_dir: Where the default database, checkpoints and journals live.
        database_url: SQLAlchemy URL; ``None``: a SQLite file in ``data_dir``.
        broker_url: Celery broker URL; ``None``: the service's own worker processes.
        celery_queue: The Celery queue training runs are sent to.
        redis_url: Redis URL for shared breaker state; ``None``: in memory.
        redis_prefix: Prefix of the service's Redis keys.
        checkpoint_dir: Checkpoint directory; ``None``: ``data_dir/checkpoints``.
        predictor_url: Base URL of the external predictor; ``None``: the local
            model answers every prediction.
        predictor_timeout: Seconds one call to the external predictor may take.
        predictor_attempts: Attempts per prediction (first call included).
        breaker_failure_threshold: Consecutive failures that open the breaker.
        breaker_recovery_timeout: Seconds the breaker stays open before a probe.
        fault_injection: Turn the fault injection hooks on (off by default).
        training_step_delay: Seconds to pause after each training step, so that
            a demo's progress can be watched (``0``: full speed).
        api_token: Bearer token required on write endpoints; ``None``: no check.
        host: Address ``recoverly serve`` binds.
        port: Port ``recoverly serve`` binds.

    .. versionadded:: 0.2
    """

    model_config = SettingsConfigDict(
        env_prefix="RECOVERLY_", env_file=".env", extra="ignore", frozen=True
    )

    data_dir: Path = Path("recoverly-data")
    database_url: str | None = None
    broker_url: str | None = None
    celery_queue: str = Field(default="recoverly-training", min_length=1, max_length=200)
    redis_url: str | None = None
    redis_prefix: str = Field(default="recoverly:", max_length=100)
    checkpoint_dir: Path | None = None
    predictor_url: str | None = None
    predictor_timeout: float = Field(default=0.5, gt=0, le=60)
    predictor_attempts: int = Field(default=2, ge=1, le=10)
    breaker_failure_threshold: int = Field(default=3, ge=1, le=1000)
    breaker_recovery_timeout: float = Field(default=5.0, gt=0, le=3600)
    fault_injection: bool = False
    training_step_delay: float = Field(default=0.0, ge=0, le=1)
    api_token: SecretStr | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)

    @property
    def resolved_database_url(self) -> str:
        """The database URL in use (the SQLite default filled in)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'recoverly.db').resolve()}"

    @property
    def resolved_checkpoint_dir(self) -> Path:
        """The checkpoint directory in use."""
        return self.checkpoint_dir or self.data_dir / "checkpoints"

    @property
    def journal_dir(self) -> Path:
        """Where the progress journals of the training runs live."""
        return self.data_dir / "journals"
