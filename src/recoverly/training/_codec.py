"""The safe state codec: nested Python values to JSON plus raw array buffers.

:func:`encode` walks a state and returns an :class:`Encoded`: a JSON-ready tree,
the NumPy arrays (written raw, back to back, in one file) and the torch tensors
(written with safetensors). Values JSON cannot hold exactly are *tagged*: a
JSON object with a single key starting with ``$``. A plain dict whose keys are
all strings not starting with ``$`` stays a JSON object; any other dict is
stored as ``{"$d": [[key, value], ...]}``, so tags are never ambiguous.

==========  ===========================================  =====================
tag         value                                        payload
==========  ===========================================  =====================
``$t``      ``tuple``                                    list of items
``$d``      ``dict`` with non-str or ``$`` keys          list of [key, value]
``$od``     ``collections.OrderedDict``                  list of [key, value]
``$s``      ``set`` / ``$fs`` ``frozenset``              list of items
``$f``      non-finite ``float`` (nan, inf)              hex of the 8 bytes
``$c``      ``complex``                                  hex of the 16 bytes
``$b``      ``bytes`` / ``$ba`` ``bytearray``            base64
``$n``      NumPy scalar                                 [dtype descr, hex]
``$a``      ``numpy.ndarray``                            index into the arrays
``$T``      ``torch.Tensor``                             [name, requires_grad,
                                                         is_parameter]
``$p``      anything else, only with ``allow_pickle``    base64 of a pickle
==========  ===========================================  =====================

Finite floats are JSON numbers (``repr`` round-trips exactly, ``-0.0``
included); non-finite ones keep their exact bits, NaN payload included. Ints of
any size are JSON integers.
"""

from __future__ import annotations

import base64
import collections
import math
import pickle
import struct
from dataclasses import dataclass, field
from typing import Any

from recoverly.training import _torch

__all__ = ["Encoded", "UnsafePayloadError", "decode", "decode_dtype", "encode"]


@dataclass(slots=True)
class Encoded:
    """A state split into a JSON tree, raw arrays and tensors."""

    tree: Any
    arrays: list[Any] = field(default_factory=list)  # C-contiguous numpy arrays
    array_meta: list[dict[str, Any]] = field(default_factory=list)
    tensors: dict[str, Any] = field(default_factory=dict)
    uses_pickle: bool = False

    @property
    def payload_bytes(self) -> int:
        """Bytes of array and tensor data."""
        return sum(int(a.nbytes) for a in self.arrays) + _torch.total_bytes(self.tensors)


def _np() -> Any:
    import numpy as np  # noqa: PLC0415 - numpy is optional; loaded only when an array is met

    return np


def _is_numpy(value: object, kind: str) -> bool:
    np = _np() if type(value).__module__ == "numpy" else None
    if np is None:
        return False
    return isinstance(value, np.ndarray if kind == "array" else np.generic)


class _Encoder:
    __slots__ = ("allow_pickle", "copy", "out", "pool", "seen")

    def __init__(self, *, allow_pickle: bool, copy: bool, pool: Encoded | None) -> None:
        self.allow_pickle = allow_pickle
        self.copy = copy
        self.pool: dict[tuple[Any, ...], list[Any]] = {}
        if pool is not None:
            for buf in pool.arrays:
                self.pool.setdefault(("a", buf.dtype, buf.shape), []).append(buf)
            for tensor in pool.tensors.values():
                self.pool.setdefault(("t", tensor.dtype, tuple(tensor.shape)), []).append(tensor)
        self.out = Encoded(tree=None)
        self.seen: set[int] = set()

    def container(self, value: Any, path: str) -> Any:
        key = id(value)
        if key in self.seen:
            raise ValueError(f"{path} contains itself; a checkpoint state must be a tree")
        self.seen.add(key)
        try:
            return self.nested(value, path)
        finally:
            self.seen.discard(key)

    def nested(self, value: Any, path: str) -> Any:
        kind = type(value)
        if kind is list:
            return [self.any(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if kind is tuple:
            return {"$t": [self.any(v, f"{path}[{i}]") for i, v in enumerate(value)]}
        if kind is dict and all(type(k) is str and not k.startswith("$") for k in value):
            return {k: self.any(v, f"{path}[{k!r}]") for k, v in value.items()}
        if kind in (set, frozenset):
            tag = "$s" if kind is set else "$fs"
            return {tag: [self.any(v, f"{path}{{}}") for v in value]}
        tag = "$d" if kind is dict else "$od"
        return {
            tag: [
                [self.any(k, f"{path}<key {k!r}>"), self.any(v, f"{path}[{k!r}]")]
                for k, v in value.items()
            ]
        }

    def any(self, value: Any, path: str) -> Any:  # noqa: C901, PLR0911 - one branch per type
        kind = type(value)
        if value is None or kind in (str, bool, int):
            return value
        if kind is float:
            if math.isfinite(value):
                return value
            return {"$f": struct.pack(">d", value).hex()}
        if kind in (list, tuple, dict, set, frozenset, collections.OrderedDict):
            return self.container(value, path)
        if kind is bytes:
            return {"$b": base64.b64encode(value).decode("ascii")}
        if kind is bytearray:
            return {"$ba": base64.b64encode(value).decode("ascii")}
        if kind is complex:
            return {"$c": struct.pack(">dd", value.real, value.imag).hex()}
        if _is_numpy(value, "array") and kind is _np().ndarray and not value.dtype.hasobject:
            return {"$a": self.array(value)}
        if _is_numpy(value, "scalar") and not value.dtype.hasobject:
            return {"$n": [self.dtype(value.dtype), value.tobytes().hex()]}
        if _torch.is_tensor(value):
            _torch.check_dtype(value, path)
            name = str(len(self.out.tensors))
            reuse = self.pool.get(("t", value.dtype, tuple(value.shape))) if self.copy else None
            self.out.tensors[name] = _torch.snapshot(value, copy=self.copy, into=reuse)
            return {"$T": [name, bool(value.requires_grad), _torch.is_parameter(value)]}
        if self.allow_pickle:
            self.out.uses_pickle = True
            blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            return {"$p": base64.b64encode(blob).decode("ascii")}
        raise TypeError(
            f"{path} is a {kind.__module__}.{kind.__qualname__}, which has no safe checkpoint "
            "format; convert it (arrays, tensors, plain values) or pass allow_pickle=True"
        )

    def dtype(self, dtype: Any) -> Any:
        return self.any(_np().lib.format.dtype_to_descr(dtype), "dtype")

    def array(self, value: Any) -> int:
        np = _np()
        order = "F" if value.flags.f_contiguous and not value.flags.c_contiguous else "C"
        data = value.T if order == "F" else value
        if not self.copy:
            data = np.ascontiguousarray(data)
        else:
            shape = data.shape if data.ndim else (1,)
            free = self.pool.get(("a", data.dtype, shape))
            buf = free.pop() if free else np.empty(shape, dtype=data.dtype)
            np.copyto(buf, data.reshape(shape))
            data = buf
        self.out.arrays.append(data)
        self.out.array_meta.append(
            {
                "dtype": self.dtype(value.dtype),
                "shape": list(value.shape),
                "order": order,
                "nbytes": int(data.nbytes),
            }
        )
        return len(self.out.arrays) - 1


def encode(
    state: Any, *, allow_pickle: bool = False, copy: bool = False, pool: Encoded | None = None
) -> Encoded:
    """Split ``state`` into an :class:`Encoded`; ``copy`` snapshots arrays and tensors.

    With ``copy``, the buffers of ``pool`` (an earlier snapshot that is no
    longer needed) are reused when dtype and shape match: copying into memory
    already touched is several times faster than into fresh pages.

    Raises:
        TypeError: A value has no safe format and ``allow_pickle`` is false; the
            message names where it sits (``state['opt'][3]``).
        ValueError: The state contains itself.
    """
    enc = _Encoder(allow_pickle=allow_pickle, copy=copy, pool=pool)
    enc.out.tree = enc.any(state, "state")
    return enc.out


class UnsafePayloadError(Exception):
    """A pickled value was met while pickles are not allowed."""


def decode(  # noqa: C901 - the tag table lives in one place
    tree: Any,
    arrays: list[Any],
    tensors: dict[str, Any],
    *,
    allow_pickle: bool = False,
) -> Any:
    """Rebuild the value :func:`encode` split; the inverse of :func:`encode`.

    Raises:
        UnsafePayloadError: The tree holds a pickle and ``allow_pickle`` is false.
        ValueError: The tree is malformed.
    """

    def walk(node: Any) -> Any:  # noqa: C901, PLR0911, PLR0912 - one branch per tag
        if isinstance(node, list):
            return [walk(v) for v in node]
        if not isinstance(node, dict):
            return node
        if len(node) != 1 or not next(iter(node)).startswith("$"):
            return {k: walk(v) for k, v in node.items()}
        ((tag, body),) = node.items()
        if tag == "$t":
            return tuple(walk(v) for v in body)
        if tag == "$d":
            return {walk(k): walk(v) for k, v in body}
        if tag == "$od":
            return collections.OrderedDict((walk(k), walk(v)) for k, v in body)
        if tag == "$s":
            return {walk(v) for v in body}
        if tag == "$fs":
            return frozenset(walk(v) for v in body)
        if tag == "$f":
            return struct.unpack(">d", bytes.fromhex(body))[0]
        if tag == "$c":
            return complex(*struct.unpack(">dd", bytes.fromhex(body)))
        if tag == "$b":
            return base64.b64decode(body, validate=True)
        if tag == "$ba":
            return bytearray(base64.b64decode(body, validate=True))
        if tag == "$n":
            dtype = decode_dtype(body[0])
            return _np().frombuffer(bytes.fromhex(body[1]), dtype=dtype)[0]
        if tag == "$a":
            return arrays[body]
        if tag == "$T":
            name, requires_grad, parameter = body
            return _torch.restore(tensors[name], requires_grad=requires_grad, parameter=parameter)
        if tag == "$p":
            if not allow_pickle:
                raise UnsafePayloadError
            return pickle.loads(base64.b64decode(body, validate=True))  # noqa: S301 - opted in
        raise ValueError(f"unknown tag {tag!r}")

    return walk(tree)


def decode_dtype(tree: Any) -> Any:
    """Return the ``numpy.dtype`` an encoded dtype description stands for."""
    return _np().lib.format.descr_to_dtype(decode(tree, [], {}))
