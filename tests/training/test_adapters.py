"""Adapters: NumPy arrays in place, scikit-learn estimators without pickle, DataLoader skipping."""

from __future__ import annotations

import hashlib
import importlib.util

import pytest

np = pytest.importorskip("numpy", reason="the training extra needs numpy")

from recoverly.training import ArrayState, CheckpointManager, ResumableRun  # noqa: E402
from recoverly.training.adapters import (  # noqa: E402
    estimator_state,
    load_estimator_state,
    load_object_state,
    object_state,
    skip_batches,
)

needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="PyTorch is not installed"
)


class Boom(Exception):
    """The injected crash."""


def test_array_state_restores_into_the_live_arrays():
    """load_state_dict copies into the arrays the loop holds; the references stay valid."""
    w = np.arange(3.0)
    params = ArrayState(w=w)
    saved = params.state_dict()
    w += 10
    params.load_state_dict(saved)
    assert params["w"] is w
    assert w.tolist() == [0.0, 1.0, 2.0]
    assert "w=float64[3]" in repr(params)


def test_array_state_refuses_a_different_shape():
    """A saved array of another shape is an error naming both shapes."""
    params = ArrayState(w=np.zeros(3))
    with pytest.raises(ValueError, match=r"saved float64\[4\], live float64\[3\]"):
        params.load_state_dict({"w": np.zeros(4)})


def test_sgd_classifier_state_round_trips_without_pickle(tmp_path):
    """SGDClassifier state survives a checkpoint without pickle; training goes on exactly."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    live = linear_model.SGDClassifier(average=True, random_state=0)
    for i in range(4):
        live.partial_fit(x[i * 20 : (i + 1) * 20], y[i * 20 : (i + 1) * 20], classes=[0, 1])
    state = object_state(live)
    assert state["skipped"] == ["_loss_function_"]
    assert {"coef_", "intercept_", "t_", "classes_", "n_iter_", "_average_coef"} <= set(
        state["attributes"]
    )
    with CheckpointManager(tmp_path, allow_pickle=False) as mgr:
        mgr.save(4, {"sgd": state})
    fresh = linear_model.SGDClassifier(average=True, random_state=0)
    load_object_state(fresh, CheckpointManager(tmp_path).load(4).state["sgd"])
    for i in range(4, 10):
        batch = slice(i * 20, (i + 1) * 20)
        live.partial_fit(x[batch], y[batch])
        fresh.partial_fit(x[batch], y[batch])
    assert fresh.coef_.tobytes() == live.coef_.tobytes()
    assert fresh.intercept_.tobytes() == live.intercept_.tobytes()
    assert fresh.t_ == live.t_


def test_estimator_state_refuses_another_class():
    """A snapshot of one estimator class does not load into another."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    state = estimator_state(linear_model.SGDRegressor())
    with pytest.raises(TypeError, match="SGDRegressor"):
        load_estimator_state(linear_model.SGDClassifier(), state)


def test_skip_by_iterating_calls_back_after_the_skipped_batches():
    """A plain iterable is advanced; on_skipped runs before the first yielded batch."""
    events: list[object] = []

    def batches():
        for i in range(5):
            events.append(f"load {i}")
            yield i

    it = skip_batches(batches(), 2, lambda: events.append("resumed"))
    assert list(it) == [2, 3, 4]
    assert events[:4] == ["load 0", "load 1", "resumed", "load 2"]


@needs_torch
def test_dataloader_skip_loads_no_sample_of_a_skipped_batch():
    """A DataLoader resumed after 3 batches loads only later samples, in the same order."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    class Counting(Dataset):
        def __init__(self):
            self.loaded: list[int] = []

        def __len__(self):
            return 20

        def __getitem__(self, i):
            self.loaded.append(i)
            return torch.tensor(i)

    data = Counting()
    loader = DataLoader(data, batch_size=4, shuffle=True)
    torch.manual_seed(3)
    full = [b.tolist() for b in loader]
    data.loaded.clear()
    torch.manual_seed(3)
    resumed: list[str] = []
    rest = [b.tolist() for b in skip_batches(loader, 3, lambda: resumed.append("x"))]
    assert rest == full[3:]
    assert sorted(data.loaded) == sorted(i for batch in full[3:] for i in batch)
    assert resumed == ["x"]


@needs_torch
def test_torch_model_optimizer_scheduler_resume_bit_exact_in_process(tmp_path):
    """Model, SGD momentum, StepLR, dropout and a shuffled DataLoader resume bit-exactly."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    data = torch.Generator().manual_seed(0)
    x = torch.randn(48, 3, generator=data)
    y = (x.sum(1) > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True)

    def train(directory, crash_at=None):
        run = ResumableRun(directory, seed=2, checkpoint_every=3, preemption=False)
        model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.3), nn.Linear(8, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.8)
        for name, obj in (("model", model), ("opt", opt), ("sched", sched)):
            run.register(name, obj)
        with run:
            for _epoch in run.epochs(2):
                for xb, yb in run.batches(loader):
                    nn.functional.cross_entropy(model(xb), yb).backward()
                    opt.step()
                    opt.zero_grad()
                    if run.step + 1 == crash_at:
                        raise Boom
                    run.step_done()
                sched.step()
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        return hashlib.sha256(flat.numpy().tobytes()).hexdigest()

    reference = train(tmp_path / "ref")
    for crash_at in (5, 12, 13, 20):
        with pytest.raises(Boom):
            train(tmp_path / "run", crash_at)
    assert train(tmp_path / "run") == reference


@needs_torch
def test_dataloader_with_its_own_generator_resumes_when_the_generator_is_registered(tmp_path):
    """DataLoader(generator=g): registering g makes a mid-epoch resume see the same order."""
    import torch
    from torch.utils.data import DataLoader

    def order(directory, crash_at=None):
        gen = torch.Generator().manual_seed(0)
        loader = DataLoader(list(range(30)), batch_size=3, shuffle=True, generator=gen)
        seen: list[list[int]] = []
        run = ResumableRun(directory, checkpoint_every=2, preemption=False)
        run.register("loader_generator", gen)
        with run:
            for _epoch in run.epochs(2):
                for batch in run.batches(loader):
                    seen.append(batch.tolist())
                    if run.step + 1 == crash_at:
                        raise Boom
                    run.step_done()
        return seen

    full = order(tmp_path / "ref")
    with pytest.raises(Boom):
        order(tmp_path / "run", crash_at=15)
    assert order(tmp_path / "run") == full[14:]
