"""The safe state codec: every supported value comes back with the same type and bits."""

from __future__ import annotations

import collections
import json
import math
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

np = pytest.importorskip("numpy", reason="checkpoints of arrays need numpy (recoverly[training])")
hnp = pytest.importorskip("hypothesis.extra.numpy")

from recoverly.training import CheckpointManager, FsspecStore  # noqa: E402
from recoverly.training._codec import UnsafePayloadError, decode, encode  # noqa: E402


def same(a, b, path="state"):
    """Assert ``a`` and ``b`` have the same types, structure and bits."""
    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, float):
        assert struct.pack(">d", a) == struct.pack(">d", b), f"{path}: {a!r} != {b!r}"
    elif isinstance(a, complex):
        same(a.real, b.real, path)
        same(a.imag, b.imag, path)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype, path
        assert a.shape == b.shape, path
        assert a.tobytes(order="A") == b.tobytes(order="A"), path
        if a.flags.f_contiguous and not a.flags.c_contiguous:
            assert b.flags.f_contiguous, path  # Fortran order is kept
        assert b.flags.writeable, path
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype, path
        assert a.tobytes() == b.tobytes(), path
    elif isinstance(a, dict):
        assert len(a) == len(b), path
        for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True):
            same(ka, kb, f"{path}<key>")
            same(va, vb, f"{path}[{ka!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def through_json(value, **kwargs):
    """Encode, pass the tree through JSON text and the arrays through bytes, decode."""
    enc = encode(value, **kwargs)
    tree = json.loads(json.dumps(enc.tree, allow_nan=False))
    arrays = []
    for a, meta in zip(enc.arrays, enc.array_meta, strict=True):
        shape = tuple(meta["shape"])
        flat = np.frombuffer(bytearray(a.tobytes()), dtype=a.dtype)
        arrays.append(flat.reshape(shape[::-1]).T if meta["order"] == "F" else flat.reshape(shape))
    return decode(tree, arrays, {}, allow_pickle=kwargs.get("allow_pickle", False))


DTYPES = ["<i1", "<u2", ">i4", "<i8", "<f2", "<f4", ">f8", "<c16", "?", "<M8[s]", "<m8[ms]"]

arrays = st.sampled_from(DTYPES).flatmap(
    lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))
)
fortran = arrays.filter(lambda a: a.ndim >= 2).map(np.asfortranarray)
scalars = st.sampled_from(["<i2", "<u8", "<f4", "<f8", "?"]).flatmap(
    lambda dt: hnp.from_dtype(np.dtype(dt)).map(lambda v: np.dtype(dt).type(v))
)
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.just(-0.0)
    | st.complex_numbers(allow_nan=True)
    | st.text()
    | st.binary()
    | arrays
    | fortran
    | scalars
)
keys = st.text() | st.integers() | st.tuples(st.integers(), st.text()) | st.just("$t")
states = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(keys, inner, max_size=4)
        | st.dictionaries(st.text(), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), states, max_size=5))
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
def test_random_states_round_trip_through_json_exactly(state):
    """Nested tuples, int keys, big ints, nan/-0.0, bytes and arrays come back bit-exact."""
    same(state, through_json(state))
    same(state, through_json(state, copy=True))


@given(st.dictionaries(st.text(max_size=5), states, max_size=4))
@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
def test_random_states_round_trip_through_a_checkpoint(state):
    """The same states survive a full save and verified load (manifest, hashes, files)."""
    store = FsspecStore(f"memory://codec-{random.getrandbits(64):x}")
    mgr = CheckpointManager(store, keep_last=1)
    mgr.save(7, state)
    loaded = mgr.load_latest()
    assert loaded is not None
    assert loaded.step == 7
    same(state, loaded.state)
    store.fs.rm(store.root, recursive=True)


def test_common_training_values_round_trip():
    """random.getstate(), numpy Generator state, OrderedDict, sets and special keys round-trip."""
    rng = np.random.default_rng(5)
    rng.random(3)
    state = {
        "py_rng": random.Random(3).getstate(),
        "np_rng": rng.bit_generator.state,
        "legacy": np.random.RandomState(1).get_state(),
        "od": collections.OrderedDict([("b", 1), ("a", 2)]),
        "set": {1, 2, 3},
        "fset": frozenset({"x"}),
        "dollar": {"$a": 1, "$t": [2]},
        "mixed_keys": {1: "one", "1": "string one", (2, 3): None, None: 0, 2.5: 1, False: 3},
        "ba": bytearray(b"\x00\xff"),
        "nan_bits": struct.unpack(">d", bytes.fromhex("7ff8000000000123"))[0],
        "structured": np.zeros(3, dtype=[("x", "<f4"), ("y", "<i2", (2,))]),
        "view": np.arange(20.0)[::3],
        "empty": np.empty((0, 3), dtype=np.float32),
        "zero_d": np.array(4.5),
        "big_endian": np.arange(3, dtype=">u4"),
    }
    got = through_json(state)
    same(
        {k: v for k, v in state.items() if k not in ("set", "fset", "legacy")},
        {k: v for k, v in got.items() if k not in ("set", "fset", "legacy")},
    )
    assert got["set"] == {1, 2, 3}
    assert type(got["set"]) is set
    assert type(got["fset"]) is frozenset
    assert got["legacy"][0] == state["legacy"][0]
    assert np.array_equal(got["legacy"][1], state["legacy"][1])
    assert got["legacy"][2:] == state["legacy"][2:]
    assert math.isnan(got["nan_bits"])
    restored = np.random.default_rng()
    restored.bit_generator.state = got["np_rng"]
    assert restored.random() == rng.random()


def test_unsupported_value_is_refused_with_its_path():
    """An object with no safe format raises TypeError naming where it sits and the way out."""

    class Model:
        pass

    with pytest.raises(TypeError, match=r"state\['opt'\]\[1\]\[0\] is a .*Model.*allow_pickle"):
        encode({"opt": [1, (Model(),)]})
    with pytest.raises(TypeError, match="object_array"):
        encode({"object_array": np.array([None, 1], dtype=object)}, allow_pickle=False)
    with pytest.raises(TypeError, match="no safe checkpoint format"):
        encode({"sub": collections.defaultdict(list)})


def test_cyclic_state_is_refused():
    """A state that contains itself raises ValueError instead of recursing forever."""
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="contains itself"):
        encode({"loop": loop})


def test_shared_subtrees_are_not_mistaken_for_cycles():
    """The same list referenced twice is saved twice, not refused."""
    shared = [1, 2]
    assert through_json({"a": shared, "b": shared}) == {"a": [1, 2], "b": [1, 2]}


def test_pickled_values_only_with_allow_pickle():
    """Other objects are pickled only with allow_pickle, and decoding them needs it too."""
    value = {"d": collections.Counter("aab")}
    enc = encode(value, allow_pickle=True)
    assert enc.uses_pickle
    assert "$p" in json.dumps(enc.tree)
    with pytest.raises(UnsafePayloadError):
        decode(enc.tree, [], {}, allow_pickle=False)
    assert decode(enc.tree, [], {}, allow_pickle=True) == value


def test_sync_encoding_shares_memory_and_async_encoding_copies():
    """copy=False writes from the caller's buffer; copy=True snapshots it."""
    a = np.arange(5.0)
    assert np.shares_memory(encode({"a": a}).arrays[0], a)
    snap = encode({"a": a}, copy=True).arrays[0]
    assert not np.shares_memory(snap, a)
    a[0] = 99
    assert snap[0] == 0
