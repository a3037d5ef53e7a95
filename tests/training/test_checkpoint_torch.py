"""PyTorch state through checkpoints: bit-exact, via safetensors, never through pickle."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
pytest.importorskip("safetensors", reason="tensors need safetensors (recoverly[torch])")

from recoverly.training import CheckpointManager, UnsafeCheckpointError  # noqa: E402
from recoverly.training._codec import encode  # noqa: E402
from recoverly.training._format import write_entry  # noqa: E402


def bits(t):
    """The exact bytes and metadata of a tensor."""
    return (
        t.dtype,
        tuple(t.shape),
        t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"",
    )


def same_tree(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert bits(a) == bits(b)
        assert a.requires_grad == b.requires_grad
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            same_tree(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            same_tree(x, y)
    else:
        assert a == b


def trained(seed: int = 0):
    """A small model and an Adam optimizer after three steps."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        step(model, opt)
    return model, opt


def step(model, opt):
    x = torch.randn(32, 8)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def test_model_optimizer_and_rng_round_trip_bit_exactly(tmp_path):
    """Model, Adam state (int keys) and torch RNG come back bit-exact; resuming matches."""
    model, opt = trained()
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state()}
    mgr = CheckpointManager(tmp_path)
    mgr.save(3, state)
    state = copy.deepcopy(state)  # the live tensors change in the next step
    loss_uninterrupted = step(model, opt)

    ckpt = mgr.load_latest()
    same_tree(state["opt"], ckpt.state["opt"])
    same_tree(dict(state["model"]), dict(ckpt.state["model"]))
    assert type(ckpt.state["model"]) is type(state["model"])
    assert list(ckpt.state["opt"]["state"]) == [0, 1, 2, 3, 4, 5]  # int keys kept
    fresh, fresh_opt = trained(seed=99)
    fresh.load_state_dict(ckpt.state["model"])
    fresh_opt.load_state_dict(ckpt.state["opt"])
    torch.set_rng_state(ckpt.state["rng"])
    assert step(fresh, fresh_opt) == loss_uninterrupted
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert bits(p.detach()) == bits(q.detach())


def test_tensor_kinds_round_trip(tmp_path):
    """bfloat16, bool, int64, 0-d, empty, non-contiguous, shared-storage and Parameter tensors."""
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {
        "bf16": torch.tensor([1.5, -0.0, float("nan")], dtype=torch.bfloat16),
        "bool": torch.tensor([True, False]),
        "i64": torch.tensor([2**62, -1]),
        "scalar": torch.tensor(3.25, dtype=torch.float64),
        "empty": torch.empty(0, 5),
        "transposed": base.t(),
        "tied": (base, base[1]),
        "param": torch.nn.Parameter(torch.ones(2)),
        "frozen": torch.nn.Parameter(torch.ones(2), requires_grad=False),
    }
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, state)
    got = mgr.load(1).state
    same_tree(
        {k: v for k, v in state.items() if k != "transposed"},
        {k: v for k, v in got.items() if k != "transposed"},
    )
    assert torch.equal(got["transposed"], base.t())
    assert type(got["param"]) is torch.nn.Parameter


def test_loading_tensors_never_unpickles(tmp_path, monkeypatch):
    """With pickle.loads/load and torch.load broken, a tensor checkpoint still loads."""
    model, opt = trained()
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, {"model": model.state_dict(), "opt": opt.state_dict()})

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    ckpt = CheckpointManager(tmp_path).load_latest()
    same_tree(opt.state_dict(), ckpt.state["opt"])


class Plan:
    """A user object with no safe format."""

    def __init__(self, lr):
        self.lr = lr

    def __eq__(self, other):
        return isinstance(other, Plan) and other.lr == self.lr

    __hash__ = None  # type: ignore[assignment]


def test_pickled_values_load_only_with_allow_pickle(tmp_path):
    """A checkpoint holding a pickle is refused unless the manager allows pickles."""
    CheckpointManager(tmp_path, allow_pickle=True).save(1, {"plan": Plan(0.1), "w": torch.ones(2)})
    with pytest.raises(UnsafeCheckpointError, match="contains pickled values"):
        CheckpointManager(tmp_path).load_latest()
    with pytest.raises(UnsafeCheckpointError, match="allow_pickle=True"):
        CheckpointManager(tmp_path).load(1)
    assert CheckpointManager(tmp_path, allow_pickle=True).load(1).state["plan"] == Plan(0.1)


class Evil:
    """Unpickling this touches a marker file: proof that code would have run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (self.marker.touch, ())


def test_an_undeclared_pickle_payload_is_refused_without_running_it(tmp_path):
    """A file whose manifest hides a pickle payload raises and never executes it."""
    marker = tmp_path / "pwned"
    enc = encode({"x": Evil(marker), "t": torch.zeros(1)}, allow_pickle=True)
    enc.uses_pickle = False  # the manifest lies
    mgr = CheckpointManager(tmp_path / "ckpt")
    write_entry(mgr.store, "step-000000000001", enc, step=1, metrics={}, created_at=0.0)
    with pytest.raises(UnsafeCheckpointError, match="does not declare"):
        mgr.load_latest()
    assert not marker.exists()


def test_tensor_file_is_a_standard_safetensors_file(tmp_path):
    """safetensors.torch.load_file reads the tensors recoverly wrote, bit-exactly."""
    from safetensors.torch import load_file

    model, _ = trained()
    state = {"model": model.state_dict(), "half": torch.ones(3, dtype=torch.bfloat16)}
    CheckpointManager(tmp_path).save(1, state)
    loaded = load_file(tmp_path / "step-000000000001" / "tensors.safetensors")
    originals = [*state["model"].values(), state["half"]]
    assert len(loaded) == len(originals)
    for got in loaded.values():
        assert any(bits(got) == bits(t) for t in originals)


@pytest.mark.parametrize("damage", ["truncate", "flip", "header"])
def test_damaged_tensor_file_falls_back_with_a_warning(tmp_path, caplog, damage):
    """A truncated, altered or garbled tensors.safetensors is skipped for the previous step."""
    mgr = CheckpointManager(tmp_path, keep_last=None)
    mgr.save(1, {"w": torch.zeros(1000)})
    mgr.save(2, {"w": torch.ones(1000)})
    path = tmp_path / "step-000000000002" / "tensors.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[-10] ^= 0xFF
    else:
        data[10:20] = b"#" * 10
    path.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="recoverly.training"):
        ckpt = mgr.load_latest()
    assert ckpt.step == 1
    assert not ckpt.state["w"].any()
    assert "tensors.safetensors" in caplog.text
    assert "skipping checkpoint" in caplog.text


def test_tensor_dtypes_without_a_safetensors_name_are_refused(tmp_path):
    """A complex tensor raises TypeError naming it instead of being pickled silently."""
    with pytest.raises(TypeError, match=r"state\['z'\] is a tensor of torch.complex64"):
        CheckpointManager(tmp_path).save(1, {"z": torch.zeros(2, dtype=torch.complex64)})


def test_async_tensor_snapshots_are_isolated_and_reuse_buffers(tmp_path):
    """Async saves copy tensors (reusing the last snapshot's); later updates do not leak in."""
    mgr = CheckpointManager(tmp_path, async_save=True, keep_last=None)
    weights = torch.zeros(1000)
    for step in range(3):
        mgr.save(step, {"w": weights})
        weights += 1  # may run while the write is in flight
    mgr.wait()
    reused = mgr._spare.tensors["0"]
    mgr.save(3, {"w": weights})
    mgr.close()
    assert mgr._spare.tensors["0"] is reused
    for step in range(4):
        assert torch.equal(mgr.load(step).state["w"], torch.full((1000,), float(step)))
