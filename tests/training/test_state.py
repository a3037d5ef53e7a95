"""capture_rng / restore_rng: every random source draws the same numbers after a restore."""

from __future__ import annotations

import importlib.util
import random

import pytest

np = pytest.importorskip("numpy", reason="the training extra needs numpy")

from recoverly.training import CheckpointManager, capture_rng, restore_rng, seed_all  # noqa: E402
from recoverly.training.state import LoopPosition, generator_state, set_generator_state  # noqa: E402

needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="PyTorch is not installed"
)


def _draws(gens: dict[str, object] | None = None) -> list[object]:
    """Numbers from every source (and each named generator), as exact bytes and ints."""
    out: list[object] = [random.random(), random.getrandbits(64), random.gauss(0, 1)]
    out.append(np.random.random(3).tobytes())
    out.append(np.random.normal(size=2).tobytes())  # exercises the cached gauss value
    for gen in (gens or {}).values():
        if isinstance(gen, np.random.Generator):
            out.append(gen.normal(size=3).tobytes())
        elif isinstance(gen, random.Random):
            out.append(gen.random())
        else:
            out.append(gen.random_sample(2).tobytes())  # type: ignore[attr-defined]
    return out


def test_python_and_numpy_draws_repeat_after_restore():
    """The draws after restore_rng equal the draws right after the capture."""
    seed_all(3)
    random.gauss(0, 1)  # leave a cached gauss_next in the state
    np.random.normal()
    snapshot = capture_rng()
    first = _draws()
    _draws()  # move every state on
    restore_rng(snapshot)
    assert _draws() == first


def test_registered_generators_repeat_after_restore():
    """numpy Generator, RandomState and random.Random registered by name are restored."""
    gens = {
        "pcg": np.random.default_rng(1),
        "legacy": np.random.RandomState(2),
        "py": random.Random(3),
    }
    snapshot = capture_rng(gens)
    first = _draws(gens)
    _draws(gens)
    restore_rng(snapshot, gens)
    assert _draws(gens) == first


def test_snapshot_survives_a_checkpoint_round_trip(tmp_path):
    """A snapshot saved and loaded by CheckpointManager restores the same draws."""
    gens = {"pcg": np.random.default_rng(5), "py": random.Random(6)}
    seed_all(11)
    random.gauss(0, 1)
    with CheckpointManager(tmp_path) as mgr:
        mgr.save(1, {"rng": capture_rng(gens)})
        first = _draws(gens)
        _draws(gens)
        loaded = mgr.load_latest()
    assert loaded is not None
    restore_rng(loaded.state["rng"], gens)
    assert _draws(gens) == first


def test_snapshot_does_not_alias_live_state():
    """Drawing after capture does not change the captured snapshot."""
    gen = np.random.default_rng(0)
    saved = generator_state(gen)
    before = repr(saved)
    gen.normal(size=100)
    assert repr(saved) == before


def test_restoring_into_the_wrong_kind_of_generator_fails():
    """A numpy Generator snapshot does not load into random.Random."""
    saved = generator_state(np.random.default_rng(0))
    with pytest.raises(TypeError, match=r"numpy\.Generator"):
        set_generator_state(random.Random(), saved)


def test_unknown_generator_is_rejected_with_its_repr():
    """capture_rng names the object it cannot snapshot."""
    with pytest.raises(TypeError, match="got 42"):
        capture_rng({"x": 42})


@needs_torch
def test_torch_cpu_and_generator_draws_repeat_after_restore():
    """torch's global CPU generator and a torch.Generator repeat their draws."""
    import torch

    gen = torch.Generator().manual_seed(9)
    torch.manual_seed(4)
    snapshot = capture_rng({"g": gen})
    assert "torch" in snapshot
    first = (torch.rand(4), torch.randn(3, generator=gen), torch.randperm(10))
    torch.rand(100)
    torch.rand(5, generator=gen)
    restore_rng(snapshot, {"g": gen})
    again = (torch.rand(4), torch.randn(3, generator=gen), torch.randperm(10))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


@needs_torch
def test_torch_snapshot_survives_a_checkpoint_round_trip(tmp_path):
    """The torch RNG state (a uint8 tensor) round-trips through a checkpoint."""
    import torch

    torch.manual_seed(8)
    with CheckpointManager(tmp_path) as mgr:
        mgr.save(0, {"rng": capture_rng()})
    first = torch.rand(6)
    loaded = CheckpointManager(tmp_path).load_latest()
    assert loaded is not None
    restore_rng(loaded.state["rng"])
    assert torch.equal(torch.rand(6), first)


def test_seed_all_makes_python_and_numpy_reproducible():
    """seed_all(n) twice gives the same draws."""
    seed_all(123)
    first = _draws()
    seed_all(123)
    assert _draws() == first


def test_loop_position_round_trips_through_plain_values():
    """LoopPosition.to_state/from_state keep every field; mid_epoch follows epoch_rng."""
    position = LoopPosition(epoch=2, batch=5, step=41, epoch_rng={"python": {"version": 3}})
    again = LoopPosition.from_state(position.to_state())
    assert again == position
    assert again.mid_epoch
    assert not LoopPosition(epoch=3).mid_epoch
