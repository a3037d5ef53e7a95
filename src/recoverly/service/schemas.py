"""Request and response bodies of the service's API (validated by pydantic).

Requests forbid unknown fields and non-finite numbers, so a bad body is a
``422`` before anything is written.

.. versionadded:: 0.2
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "CheckpointView",
    "ErrorBody",
    "ModelList",
    "ModelView",
    "PredictRequest",
    "PredictResponse",
    "ProgressView",
    "TrainConfig",
    "TrainResponse",
]

Finite = Annotated[float, Field(allow_inf_nan=False, ge=-1e6, le=1e6)]


class TrainConfig(BaseModel):
    """What to train: a softmax regression on a generated dataset.

    .. versionadded:: 0.2
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="model", min_length=1, max_length=100)
    model_type: Literal["softmax_regression"] = "softmax_regression"
    n_samples: int = Field(default=2000, ge=50, le=200_000)
    n_features: int = Field(default=8, ge=2, le=64)
    n_classes: int = Field(default=3, ge=2, le=8)
    epochs: int = Field(default=5, ge=1, le=200)
    batch_size: int = Field(default=32, ge=1, le=4096)
    learning_rate: float = Field(default=0.1, gt=0, le=10, allow_inf_nan=False)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    checkpoint_every: int = Field(default=20, ge=1, le=100_000)

    @model_validator(mode="after")
    def _classes_fit_features(self) -> TrainConfig:
        # make_classification puts each class on a vertex of a hypercube.
        if self.n_classes > 2**self.n_features:
            msg = f"n_classes must be <= 2**n_features ({2**self.n_features}), got {self.n_classes}"
            raise ValueError(msg)
        return self


class TrainResponse(BaseModel):
    """The queued run.

    .. versionadded:: 0.2
    """

    id: int
    status: str


class ProgressView(BaseModel):
    """The newest progress a run reported.

    .. versionadded:: 0.2
    """

    epoch: int
    step: int
    total_steps: int | None
    percent: float
    status: str
    metrics: dict[str, Any]


class CheckpointView(BaseModel):
    """One committed checkpoint.

    .. versionadded:: 0.2
    """

    step: int
    metrics: dict[str, float]


class ModelView(BaseModel):
    """A training run and, once it completed, its model.

    .. versionadded:: 0.2
    """

    id: int
    name: str
    status: str
    config: dict[str, Any]
    progress: ProgressView | None
    metrics: dict[str, float]
    checkpoints: list[CheckpointView]
    resumes: int
    weights_sha256: str | None
    error: str | None


class ModelList(BaseModel):
    """Training runs, newest first.

    .. versionadded:: 0.2
    """

    models: list[ModelView]


class PredictRequest(BaseModel):
    """Rows of features to classify, and which model to use (default: the newest one).

    .. versionadded:: 0.2
    """

    model_config = ConfigDict(extra="forbid")

    features: list[list[Finite]] = Field(min_length=1, max_length=1000)
    model_id: int | None = Field(default=None, ge=1, le=2**31 - 1)

    @model_validator(mode="after")
    def _rows_same_width(self) -> PredictRequest:
        widths = {len(row) for row in self.features}
        if len(widths) != 1 or 0 in widths:
            msg = "every row of features must have the same, non-zero number of values"
            raise ValueError(msg)
        return self


class PredictResponse(BaseModel):
    """Predictions, with who answered and why.

    ``source`` is ``"external"`` (the external predictor) or ``"local"`` (the
    model this service trained); ``reason`` says why the local model answered.

    .. versionadded:: 0.2
    """

    predictions: list[int]
    source: Literal["external", "local"]
    reason: str | None
    model_id: int | None
    breaker: str


class ErrorBody(BaseModel):
    """Every error the API returns.

    .. versionadded:: 0.2
    """

    error: str
    detail: Any = None
