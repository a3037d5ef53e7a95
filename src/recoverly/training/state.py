"""Snapshots of every random source and of the loop position.

A resumed loop is exact only when it draws the same random numbers as an
uninterrupted one. :func:`capture_rng` records Python's :mod:`random`, NumPy's
global state, PyTorch's CPU generator (and the CUDA ones when CUDA is in use)
and any generator you name; :func:`restore_rng` puts them all back. The
snapshot is a plain dict of lists, ints, floats, NumPy arrays and tensors, so
:class:`~recoverly.training.CheckpointManager` stores it without pickle.

NumPy and PyTorch are never imported here: their state is captured when the
program has imported them already (``sys.modules``), which is the only case in
which their state can matter.
"""

from __future__ import annotations

import copy
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "LoopPosition",
    "capture_rng",
    "generator_state",
    "is_generator",
    "restore_rng",
    "seed_all",
    "set_generator_state",
]

#: Keys of a snapshot, so a reader can tell what was captured.
_PYTHON, _NUMPY, _TORCH, _CUDA, _GENERATORS = "python", "numpy", "torch", "torch_cuda", "generators"


def capture_rng(generators: Mapping[str, object] | None = None) -> dict[str, Any]:
    """Return a snapshot of the global random states and of ``generators``.

    Captured: :func:`random.getstate`; ``numpy.random``'s global state when
    NumPy is imported; ``torch.get_rng_state()`` (and every CUDA device's state
    when CUDA is initialised) when PyTorch is imported; and each named
    generator: a ``numpy.random.Generator``, ``numpy.random.RandomState``,
    ``random.Random``, ``torch.Generator`` or anything with
    ``get_state()``/``set_state()``.

    Args:
        generators: Named generators owned by your code, e.g. ``{"data": rng}``.

    Returns:
        A dict that :func:`restore_rng` accepts and the checkpoint codec
        stores exactly. Nothing in it aliases a live generator.

    Raises:
        TypeError: A value in ``generators`` is not a generator this module knows.

    .. versionadded:: 0.2
    """
    version, internal, gauss_next = random.getstate()
    snapshot: dict[str, Any] = {
        _PYTHON: {"version": version, "internal": list(internal), "gauss_next": gauss_next}
    }
    np = sys.modules.get("numpy")
    if np is not None:
        snapshot[_NUMPY] = copy.deepcopy(np.random.get_state(legacy=False))
    torch = sys.modules.get("torch")
    if torch is not None:
        snapshot[_TORCH] = torch.get_rng_state()
        if _cuda_in_use(torch):
            snapshot[_CUDA] = list(torch.cuda.get_rng_state_all())
    if generators:
        snapshot[_GENERATORS] = {name: generator_state(g) for name, g in generators.items()}
    return snapshot


def restore_rng(
    snapshot: Mapping[str, Any], generators: Mapping[str, object] | None = None
) -> None:
    """Put back the random states recorded by :func:`capture_rng`.

    Sources missing from the snapshot are left alone. A NumPy or PyTorch state
    is restored only when that library is imported in this process; CUDA
    states only when CUDA is available with the same number of devices.

    Args:
        snapshot: A dict returned by :func:`capture_rng` (possibly after a
            round trip through a checkpoint).
        generators: The live generators, by the names used when capturing.
            A name present in only one of the two is ignored.

    Raises:
        TypeError: A generator is not one this module knows.
        ValueError: A CUDA state was saved for a different number of devices.

    .. versionadded:: 0.2
    """
    py = snapshot.get(_PYTHON)
    if py is not None:
        random.setstate((int(py["version"]), tuple(py["internal"]), py["gauss_next"]))
    np = sys.modules.get("numpy")
    if np is not None and _NUMPY in snapshot:
        np.random.set_state(copy.deepcopy(dict(snapshot[_NUMPY])))
    torch = sys.modules.get("torch")
    if torch is not None and _TORCH in snapshot:
        torch.set_rng_state(snapshot[_TORCH])
        cuda = snapshot.get(_CUDA)
        if cuda is not None and torch.cuda.is_available():
            if len(cuda) != torch.cuda.device_count():
                raise ValueError(
                    f"the snapshot holds CUDA states for {len(cuda)} devices, "
                    f"this process sees {torch.cuda.device_count()}"
                )
            torch.cuda.set_rng_state_all(cuda)
    saved = snapshot.get(_GENERATORS) or {}
    for name, gen in (generators or {}).items():
        if name in saved:
            set_generator_state(gen, saved[name])


def seed_all(seed: int) -> None:
    """Seed :mod:`random`, NumPy's global state and PyTorch (CPU and CUDA).

    NumPy and PyTorch are seeded only when the program has imported them.

    .. versionadded:: 0.2
    """
    random.seed(seed)
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed(seed % 2**32)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def is_generator(obj: object) -> bool:
    """Return whether ``obj`` is a random generator of a known kind.

    ``random.Random``, ``numpy.random.Generator``, ``numpy.random.RandomState``
    and ``torch.Generator``. (:func:`capture_rng` also accepts any object with
    ``get_state()``/``set_state()`` passed to it explicitly.)

    .. versionadded:: 0.2
    """
    if isinstance(obj, random.Random):
        return True
    if type(obj).__module__.startswith("numpy.random"):
        return _kind(obj) is not None
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Generator)


def generator_state(gen: object) -> dict[str, Any]:
    """Return a detached snapshot of one generator's state.

    Raises:
        TypeError: ``gen`` is not a known generator.

    .. versionadded:: 0.2
    """
    kind = _kind(gen)
    if kind == "numpy.Generator":
        state: Any = gen.bit_generator.state  # type: ignore[attr-defined]
    elif kind == "random.Random":
        version, internal, gauss_next = gen.getstate()  # type: ignore[attr-defined]
        state = {"version": version, "internal": list(internal), "gauss_next": gauss_next}
    elif kind == "get_state":
        state = gen.get_state()  # type: ignore[attr-defined]
    else:
        raise TypeError(
            "a generator must be a numpy.random.Generator, numpy.random.RandomState, "
            f"random.Random, torch.Generator or have get_state()/set_state(), got {gen!r}"
        )
    return {"kind": kind, "state": copy.deepcopy(state)}


def set_generator_state(gen: object, saved: Mapping[str, Any]) -> None:
    """Restore one generator from a :func:`generator_state` snapshot.

    Raises:
        TypeError: ``gen`` is not the kind of generator the snapshot came from.

    .. versionadded:: 0.2
    """
    kind = _kind(gen)
    if kind != saved.get("kind"):
        raise TypeError(f"the snapshot is of a {saved.get('kind')} generator, got {gen!r}")
    state = copy.deepcopy(saved["state"])
    if kind == "numpy.Generator":
        gen.bit_generator.state = state  # type: ignore[attr-defined]
    elif kind == "random.Random":
        gen.setstate(  # type: ignore[attr-defined]
            (int(state["version"]), tuple(state["internal"]), state["gauss_next"])
        )
    else:
        gen.set_state(state)  # type: ignore[attr-defined]


def _kind(gen: object) -> str | None:
    if isinstance(gen, random.Random):
        return "random.Random"
    if hasattr(gen, "bit_generator") and hasattr(gen.bit_generator, "state"):
        return "numpy.Generator"
    if callable(getattr(gen, "get_state", None)) and callable(getattr(gen, "set_state", None)):
        return "get_state"
    return None


def _cuda_in_use(torch: Any) -> bool:
    try:
        return bool(torch.cuda.is_available() and torch.cuda.is_initialized())
    except Exception:  # pragma: no cover - a broken CUDA install must not stop training
        return False


@dataclass(frozen=True, slots=True)
class LoopPosition:
    """Where a resumable loop stands: the parts of a checkpoint that are not weights.

    Attributes:
        epoch: The epoch to run (0-based). After an epoch's last step it is
            the next epoch.
        batch: Batches of ``epoch`` already consumed (skipped on resume).
        step: Steps completed since the run began (calls to ``step_done``).
        epoch_rng: The random state at the top of ``epoch`` (replayed on a
            mid-epoch resume so the epoch's shuffle order comes out the same),
            or ``None`` at an epoch boundary.

    .. versionadded:: 0.2
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0
    epoch_rng: dict[str, Any] | None = None

    @property
    def mid_epoch(self) -> bool:
        """Whether a resume must replay the epoch's start and skip consumed batches."""
        return self.epoch_rng is not None

    def to_state(self) -> dict[str, Any]:
        """Return the position as plain values for a checkpoint."""
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "epoch_rng": self.epoch_rng,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> LoopPosition:
        """Read a position written by :meth:`to_state`."""
        return cls(
            epoch=int(state["epoch"]),
            batch=int(state["batch"]),
            step=int(state["step"]),
            epoch_rng=state.get("epoch_rng"),
        )


# Shown where users import them from.
capture_rng.__module__ = "recoverly.training"
restore_rng.__module__ = "recoverly.training"
seed_all.__module__ = "recoverly.training"
