"""The model the service trains: softmax regression in NumPy on a generated dataset.

Everything is deterministic from the run's seed: the dataset comes from
scikit-learn's ``make_classification(random_state=seed)``, the weights start at
zero and the batch order of epoch ``e`` is the permutation drawn from
``numpy.random.default_rng([seed, e])``. So a run that is killed and resumed
from a checkpoint ends with exactly the weights of a run that never stopped,
and :meth:`SoftmaxModel.weights_hash` proves it.

.. versionadded:: 0.2
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Dataset", "SoftmaxModel", "batch_order", "make_dataset"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Dataset:
    """A train/test split of a generated classification problem.

    .. versionadded:: 0.2
    """

    x_train: FloatArray
    y_train: IntArray
    x_test: FloatArray
    y_test: IntArray


def make_dataset(n_samples: int, n_features: int, n_classes: int, seed: int) -> Dataset:
    """Generate the dataset of a run (80 % train, 20 % test), deterministic from ``seed``.

    .. versionadded:: 0.2
    """
    from sklearn.datasets import (  # type: ignore[import-untyped]  # noqa: PLC0415
        make_classification,
    )

    x, y = make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=n_features,
        n_redundant=0,
        n_repeated=0,
        n_classes=n_classes,
        n_clusters_per_class=1,
        class_sep=1.5,
        random_state=seed,
    )
    cut = int(n_samples * 0.8)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    return Dataset(x[:cut], y[:cut], x[cut:], y[cut:])


def batch_order(seed: int, epoch: int, n: int) -> IntArray:
    """Return the order in which epoch ``epoch`` visits the ``n`` training rows.

    .. versionadded:: 0.2
    """
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64)


class SoftmaxModel:
    """Multinomial logistic regression trained by mini-batch gradient descent.

    Args:
        n_features: Inputs per row.
        n_classes: Number of classes.

    .. versionadded:: 0.2
    """

    __slots__ = ("bias", "weights")

    def __init__(self, n_features: int, n_classes: int) -> None:
        self.weights: FloatArray = np.zeros((n_features, n_classes), dtype=np.float64)
        self.bias: FloatArray = np.zeros(n_classes, dtype=np.float64)

    @property
    def n_features(self) -> int:
        """Inputs per row."""
        return int(self.weights.shape[0])

    def probabilities(self, x: FloatArray) -> FloatArray:
        """Return the class probabilities of each row of ``x``."""
        logits = x @ self.weights + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]

    def predict(self, x: FloatArray) -> list[int]:
        """Return the most likely class of each row of ``x``."""
        return [int(c) for c in np.argmax(self.probabilities(x), axis=1)]

    def step(self, x: FloatArray, y: IntArray, learning_rate: float) -> float:
        """Take one gradient step on a batch; return the batch's loss before the step."""
        probs = self.probabilities(x)
        rows = np.arange(len(y))
        loss = float(-np.log(np.maximum(probs[rows, y], 1e-12)).mean())
        probs[rows, y] -= 1.0
        probs /= len(y)
        self.weights -= learning_rate * (x.T @ probs)
        self.bias -= learning_rate * probs.sum(axis=0)
        return loss

    def accuracy(self, x: FloatArray, y: IntArray) -> float:
        """Return the share of rows of ``x`` classified as ``y``."""
        if len(y) == 0:
            return 0.0
        return float(np.mean(np.argmax(self.probabilities(x), axis=1) == y))

    def get_state(self) -> dict[str, Any]:
        """Return the weights as plain arrays (what a checkpoint stores)."""
        return {"weights": self.weights.copy(), "bias": self.bias.copy()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore the weights from :meth:`get_state`'s output."""
        self.weights = np.array(state["weights"], dtype=np.float64)
        self.bias = np.array(state["bias"], dtype=np.float64)

    def weights_hash(self) -> str:
        """SHA-256 of the exact weight bytes: equal hashes mean bit-identical models."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.weights).tobytes())
        digest.update(np.ascontiguousarray(self.bias).tobytes())
        return digest.hexdigest()

    def __repr__(self) -> str:
        n_features, n_classes = self.weights.shape
        return f"<SoftmaxModel {n_features} features, {n_classes} classes>"
