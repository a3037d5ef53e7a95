"""What :class:`~recoverly.training.ResumableRun` saves for PyTorch, scikit-learn and NumPy.

* **PyTorch**: modules, optimizers, LR schedulers and ``GradScaler`` already
  have ``state_dict()``/``load_state_dict()``; :func:`object_state` uses them.
  A ``torch.utils.data.DataLoader`` is resumed mid-epoch by
  :func:`skip_batches` without loading the consumed batches: the same
  shuffle order is drawn, then the sampler's first indices are dropped.
* **scikit-learn**: an estimator's fitted attributes (``coef_``,
  ``intercept_``, ``t_``, ``classes_``, ``n_iter_``, private arrays ...) are
  saved as arrays and numbers, never pickled (:func:`estimator_state`).
* **NumPy**: :class:`ArrayState` holds named arrays and restores them *in
  place*, so the references your loop holds stay valid.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any

__all__ = [
    "ArrayState",
    "estimator_state",
    "load_estimator_state",
    "load_object_state",
    "object_state",
    "skip_batches",
]

_SCALARS = (type(None), bool, int, float, str, bytes)


class ArrayState(MutableMapping[str, Any]):
    """Named NumPy arrays that a checkpoint restores in place.

    ``params = run.register("params", ArrayState(w=w, b=b))``; update with
    ``params["w"] -= lr * grad`` (or ``w -= ...`` on the same array). On
    resume each saved array is copied *into* the live one, so code holding
    ``w`` sees the restored values. Assigning a new array under a name
    replaces the live one.

    .. versionadded:: 0.2
    """

    __slots__ = ("_arrays",)

    def __init__(self, **arrays: Any) -> None:
        self._arrays: dict[str, Any] = dict(arrays)

    def __getitem__(self, key: str) -> Any:
        return self._arrays[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._arrays[key] = value

    def __delitem__(self, key: str) -> None:
        del self._arrays[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def state_dict(self) -> dict[str, Any]:
        """Return copies of the arrays."""
        return {name: array.copy() for name, array in self._arrays.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Copy each saved array into the live array of the same name.

        Raises:
            ValueError: A saved array's shape or dtype differs from the live one.
        """
        for name, saved in state.items():
            live = self._arrays.get(name)
            if live is None:
                self._arrays[name] = saved.copy()
                continue
            if live.shape != saved.shape or live.dtype != saved.dtype:
                raise ValueError(
                    f"array {name!r}: saved {saved.dtype}{list(saved.shape)}, "
                    f"live {live.dtype}{list(live.shape)}"
                )
            live[...] = saved

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={v.dtype}{list(v.shape)}" for k, v in self._arrays.items())
        return f"ArrayState({shapes})"


def object_state(obj: object) -> Any:
    """Return what a checkpoint stores for a registered object.

    ``state_dict()`` is used when present (PyTorch, :class:`ArrayState`), then
    ``get_state()``, then :func:`estimator_state` for scikit-learn estimators.

    Raises:
        TypeError: The object offers none of these.

    .. versionadded:: 0.2
    """
    if callable(getattr(obj, "state_dict", None)):
        return obj.state_dict()  # type: ignore[attr-defined]
    if callable(getattr(obj, "get_state", None)):
        return obj.get_state()  # type: ignore[attr-defined]
    if _is_estimator(obj):
        return estimator_state(obj)
    raise TypeError(
        "a registered object needs state_dict()/load_state_dict(), get_state()/set_state() "
        f"(or load_state()) or to be a scikit-learn estimator, got {obj!r}"
    )


def load_object_state(obj: object, state: Any) -> None:
    """Restore a registered object from :func:`object_state`'s value.

    Uses ``load_state_dict()``, ``set_state()`` or ``load_state()`` (the seeds'
    trainer), or :func:`load_estimator_state` for scikit-learn estimators.

    .. versionadded:: 0.2
    """
    if callable(getattr(obj, "load_state_dict", None)):
        obj.load_state_dict(state)  # type: ignore[attr-defined]
        _mark_torch_optimizer_stepped(obj)
    elif callable(getattr(obj, "set_state", None)):
        obj.set_state(state)  # type: ignore[attr-defined]
    elif callable(getattr(obj, "load_state", None)):
        obj.load_state(state)  # type: ignore[attr-defined]
    elif _is_estimator(obj):
        load_estimator_state(obj, state)
    else:
        raise TypeError(
            f"cannot restore {obj!r}: no load_state_dict(), set_state() or load_state()"
        )


def _mark_torch_optimizer_stepped(obj: object) -> None:
    # An LR scheduler warns "lr_scheduler.step() before optimizer.step()" when the
    # optimizer has not stepped in this process, which is the normal case for a
    # run resumed at the end of an epoch. A checkpointed optimizer has stepped.
    torch: Any = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.optim.Optimizer):
        obj._opt_called = True


def _is_estimator(obj: object) -> bool:
    return callable(getattr(obj, "get_params", None)) and (
        callable(getattr(obj, "fit", None)) or callable(getattr(obj, "partial_fit", None))
    )


def estimator_state(estimator: Any) -> dict[str, Any]:
    """Return a scikit-learn estimator's learned state as plain values and arrays.

    Every instance attribute that is not a constructor parameter is kept when
    it is made of arrays, NumPy scalars, numbers, strings, ``None`` and
    lists/tuples/dicts of those: for ``SGDClassifier`` that is ``coef_``,
    ``intercept_``, ``t_``, ``classes_``, ``n_iter_``, ``n_features_in_`` and
    ``_expanded_class_weight``. Other attributes (compiled loss objects the
    estimator rebuilds on the next ``partial_fit``) are listed under
    ``"skipped"`` and not saved. Nothing is pickled.

    .. versionadded:: 0.2
    """
    params = set(estimator.get_params(deep=False))
    saved: dict[str, Any] = {}
    skipped: list[str] = []
    for name, value in vars(estimator).items():
        if name in params:
            continue
        if _plain(value):
            saved[name] = value.copy() if hasattr(value, "copy") and _is_array(value) else value
        else:
            skipped.append(name)
    return {"class": type(estimator).__qualname__, "attributes": saved, "skipped": sorted(skipped)}


def load_estimator_state(estimator: Any, state: Mapping[str, Any]) -> None:
    """Put the attributes saved by :func:`estimator_state` back on ``estimator``.

    Learned attributes the live estimator has but the snapshot lacks are
    removed, so a resumed estimator is in the state that was saved.

    Raises:
        TypeError: The snapshot is of another estimator class.

    .. versionadded:: 0.2
    """
    if state.get("class") != type(estimator).__qualname__:
        raise TypeError(f"the snapshot is of a {state.get('class')}, got {estimator!r}")
    params = set(estimator.get_params(deep=False))
    attributes = state["attributes"]
    for name in [n for n in vars(estimator) if n not in params and n not in attributes]:
        if _plain(getattr(estimator, name)):
            delattr(estimator, name)
    for name, value in attributes.items():
        setattr(estimator, name, value.copy() if _is_array(value) else value)


def _is_array(value: object) -> bool:
    return type(value).__module__ == "numpy" and hasattr(value, "dtype") and hasattr(value, "shape")


def _plain(value: object) -> bool:
    if isinstance(value, _SCALARS):
        return True
    if type(value).__module__ == "numpy" and hasattr(value, "dtype"):
        return bool(getattr(value, "dtype").kind != "O")  # noqa: B009 - typed as object
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


# ---------------------------------------------------------------------- loaders
def skip_batches(loader: Iterable[Any], skip: int, on_skipped: Callable[[], None]) -> Iterator[Any]:
    """Return an iterator over ``loader`` that starts after ``skip`` batches.

    ``on_skipped`` runs once the loader has drawn its randomness for the epoch
    and the skipped batches are behind it, before the first batch it yields
    is produced: that is when the loop's random state is put back.

    A ``torch.utils.data.DataLoader`` with a map-style dataset is rebuilt with
    a batch sampler that drops the first ``skip`` index lists, so no sample of
    a skipped batch is loaded; workers, collate function and generator are
    kept. Any other iterable is advanced with ``next()`` ``skip`` times.

    .. versionadded:: 0.2
    """
    if skip > 0:
        fast = _skip_dataloader(loader, skip, on_skipped)
        if fast is not None:
            return fast
    return _skip_by_iterating(loader, skip, on_skipped)


def _skip_by_iterating(
    loader: Iterable[Any], skip: int, on_skipped: Callable[[], None]
) -> Iterator[Any]:
    it = iter(loader)
    for _ in range(skip):
        if next(it, _END) is _END:
            break
    on_skipped()
    yield from it


_END = object()


class _SkippingBatchSampler:
    """A batch sampler that iterates ``inner`` and drops its first ``skip`` index lists."""

    __slots__ = ("inner", "on_skipped", "skip")

    def __init__(self, inner: Any, skip: int, on_skipped: Callable[[], None]) -> None:
        self.inner = inner
        self.skip = skip
        self.on_skipped = on_skipped

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.inner)
        for _ in range(self.skip):
            if next(it, _END) is _END:
                break
        self.on_skipped()
        yield from it

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)


def _skip_dataloader(
    loader: object, skip: int, on_skipped: Callable[[], None]
) -> Iterator[Any] | None:
    torch: Any = sys.modules.get("torch")
    if torch is None:
        return None
    data = torch.utils.data
    dl: Any = loader
    if type(dl) is not data.DataLoader:
        return None
    if dl.batch_sampler is None or isinstance(dl.dataset, data.IterableDataset):
        return None
    kwargs: dict[str, Any] = {
        "batch_sampler": _SkippingBatchSampler(dl.batch_sampler, skip, on_skipped),
        "num_workers": dl.num_workers,
        "collate_fn": dl.collate_fn,
        "pin_memory": dl.pin_memory,
        "timeout": dl.timeout,
        "worker_init_fn": dl.worker_init_fn,
        "multiprocessing_context": dl.multiprocessing_context,
        "generator": dl.generator,
        "persistent_workers": False,
    }
    if dl.num_workers > 0:
        kwargs["prefetch_factor"] = dl.prefetch_factor
    if hasattr(dl, "in_order"):
        kwargs["in_order"] = dl.in_order
    batches: Iterator[Any] = iter(data.DataLoader(dl.dataset, **kwargs))
    return batches


# Shown where users import them from.
ArrayState.__module__ = "recoverly.training"
