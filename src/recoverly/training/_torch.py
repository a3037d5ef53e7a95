"""PyTorch support for checkpoints: tensors to a safetensors file and back, without copies.

The file follows the safetensors format (an 8-byte little-endian header length,
a JSON header giving each tensor's dtype, shape and byte range, then the raw
bytes back to back), so other tools (``safetensors.torch.load_file``) read it.
It is written straight from each tensor's memory and read straight into new
tensors, which is why the ``safetensors`` package itself is not needed here.
Nothing here ever unpickles.

``torch`` is imported only when a tensor is met (:func:`is_tensor` looks at
``sys.modules`` first).
"""

from __future__ import annotations

import json
import struct
import sys
from typing import IO, Any

__all__ = [
    "check_dtype",
    "is_parameter",
    "is_tensor",
    "read_tensors",
    "restore",
    "snapshot",
    "tensor_chunks",
    "total_bytes",
]

_NAMES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}
_MAX_HEADER = 100 << 20
_LENGTH = struct.Struct("<Q")


def _torch() -> Any:
    import torch  # noqa: PLC0415 - torch is optional and heavy

    return torch


def is_tensor(value: object) -> bool:
    """Return whether ``value`` is a ``torch.Tensor`` (False when torch was never imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def is_parameter(value: object) -> bool:
    """Return whether ``value`` is a ``torch.nn.Parameter``."""
    return bool(isinstance(value, _torch().nn.Parameter))


def check_dtype(tensor: Any, path: str) -> None:
    """Raise ``TypeError`` for a dtype the safetensors format has no name for."""
    if str(tensor.dtype).removeprefix("torch.") not in _NAMES:
        raise TypeError(
            f"{path} is a tensor of {tensor.dtype}, which safetensors cannot store; "
            "convert it (e.g. torch.view_as_real for complex) or pass allow_pickle=True"
        )


def snapshot(tensor: Any, *, copy: bool, into: list[Any] | None = None) -> Any:
    """Return a detached, contiguous CPU tensor with the data of ``tensor``.

    With ``copy`` the result never shares memory with ``tensor`` (so later
    in-place updates do not leak into a background save); a free tensor of
    the same dtype and shape popped from ``into`` is reused as the copy.
    """
    if copy and into:
        return into.pop().copy_(tensor.detach())
    out = tensor.detach().to("cpu")
    if copy and out.data_ptr() == tensor.data_ptr():
        return out.clone(memory_format=_torch().contiguous_format)
    return out.contiguous()


def total_bytes(tensors: dict[str, Any]) -> int:
    """Bytes of data held by ``tensors``."""
    return sum(int(t.numel()) * int(t.element_size()) for t in tensors.values())


def _raw(tensor: Any) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy."""
    flat = tensor.reshape(-1)
    if tensor.dtype != _torch().uint8:
        flat = flat.view(_torch().uint8)
    return memoryview(flat.numpy())


def tensor_chunks(tensors: dict[str, Any]) -> list[memoryview | bytes]:
    """The safetensors file of ``tensors``: the header, then each tensor's bytes."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    chunks: list[memoryview | bytes] = []
    for name, tensor in tensors.items():
        size = int(tensor.numel()) * int(tensor.element_size())
        header[name] = {
            "dtype": _NAMES[str(tensor.dtype).removeprefix("torch.")],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
        if size:
            chunks.append(_raw(tensor))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # data starts 8-byte aligned, as safetensors writes it
    return [_LENGTH.pack(len(text)) + text, *chunks]


def read_tensors(f: IO[bytes], feed: Any) -> dict[str, Any]:
    """Read a safetensors file into new CPU tensors; every byte read goes to ``feed(chunk)``.

    Raises:
        ValueError: The header is malformed or the data is shorter than it says.
    """
    torch = _torch()
    prefix = f.read(_LENGTH.size)
    feed(prefix)
    if len(prefix) != _LENGTH.size:
        raise ValueError("the tensor file is truncated")
    (length,) = _LENGTH.unpack(prefix)
    if length > _MAX_HEADER:
        raise ValueError(f"the tensor header claims {length} bytes")
    text = f.read(length)
    feed(text)
    header = json.loads(text)
    header.pop("__metadata__", None)
    dtypes = {code: getattr(torch, name) for name, code in _NAMES.items() if hasattr(torch, name)}
    out = {}
    expected = 0
    for name, meta in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        begin, end = meta["data_offsets"]
        tensor = torch.empty(meta["shape"], dtype=dtypes[meta["dtype"]])
        size = int(tensor.numel()) * int(tensor.element_size())
        if begin != expected or end - begin != size:
            raise ValueError(f"tensor {name!r} has inconsistent offsets {begin}..{end}")
        expected = end
        if size:
            raw = _raw(tensor)
            got = 0
            while got < size:
                n = f.readinto(raw[got:])  # type: ignore[attr-defined]
                if not n:
                    raise ValueError("the tensor file is truncated")
                feed(raw[got : got + n])
                got += n
        out[name] = tensor
    return out


def restore(tensor: Any, *, requires_grad: bool, parameter: bool) -> Any:
    """Give a loaded tensor back its ``requires_grad`` flag and ``Parameter`` type."""
    if parameter:
        return _torch().nn.Parameter(tensor, requires_grad=requires_grad)
    if requires_grad:
        tensor.requires_grad_(True)  # noqa: FBT003 - torch's own signature
    return tensor
