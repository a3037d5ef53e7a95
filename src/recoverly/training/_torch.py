"""PyTorch support for checkpoints: tensors in, safetensors bytes out, and back.

``torch`` is imported only when a tensor is met (:func:`is_tensor` looks at the
type's module first), and ``safetensors`` only when tensors are written or
read. Nothing here ever unpickles.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = [
    "from_bytes",
    "is_parameter",
    "is_tensor",
    "restore",
    "snapshot",
    "to_bytes",
    "total_bytes",
]

_HINT = "PyTorch tensors need safetensors: pip install 'recoverly[torch]'"


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


def snapshot(tensor: Any, *, copy: bool) -> Any:
    """Return a detached, contiguous CPU tensor with the data of ``tensor``.

    With ``copy`` the result never shares memory with ``tensor`` (so later
    in-place updates do not leak into a background save).
    """
    out = tensor.detach().to("cpu")
    if copy and out.data_ptr() == tensor.data_ptr():
        return out.clone(memory_format=_torch().contiguous_format)
    return out.contiguous()


def total_bytes(tensors: dict[str, Any]) -> int:
    """Bytes of data held by ``tensors``."""
    return sum(int(t.numel()) * int(t.element_size()) for t in tensors.values())


def to_bytes(tensors: dict[str, Any]) -> bytes:
    """Serialise ``tensors`` with safetensors; shared storage is copied apart first."""
    try:
        from safetensors.torch import save  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(_HINT) from exc
    seen: set[tuple[int, int]] = set()
    ready = {}
    for name, tensor in tensors.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.device.index or 0)
        ready[name] = tensor.clone() if key in seen and tensor.numel() else tensor
        seen.add(key)
    return bytes(save(ready))


def from_bytes(data: bytes) -> dict[str, Any]:
    """Parse safetensors bytes into CPU tensors (no pickle involved)."""
    try:
        from safetensors.torch import load  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(_HINT) from exc
    return dict(load(data))


def restore(tensor: Any, *, requires_grad: bool, parameter: bool) -> Any:
    """Give a loaded tensor back its ``requires_grad`` flag and ``Parameter`` type."""
    if parameter:
        return _torch().nn.Parameter(tensor, requires_grad=requires_grad)
    if requires_grad:
        tensor.requires_grad_(True)  # noqa: FBT003 - torch's own signature
    return tensor
