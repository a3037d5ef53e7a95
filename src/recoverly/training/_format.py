"""One checkpoint on disk: its files, its manifest, and how both are verified.

An entry holds ``state.json`` (the codec's tree plus the array index),
``arrays.bin`` (every NumPy array's raw bytes, back to back) when there are
arrays, ``tensors.safetensors`` when there are tensors, and ``manifest.json``,
written last. The manifest records the step, metrics, wall-clock creation time,
library versions and the SHA-256 and size of every other file, plus a checksum
of its own content, so a garbled manifest is caught too.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from recoverly.errors import RecoverlyError
from recoverly.training import _codec, _torch
from recoverly.training.storage import MANIFEST, Store

__all__ = [
    "CheckpointCorrupt",
    "CheckpointInfo",
    "UnsafeCheckpointError",
    "info_from_manifest",
    "read_manifest",
    "read_state",
    "write_entry",
]

FORMAT = "recoverly-checkpoint"
VERSION = 1
STATE, ARRAYS, TENSORS = "state.json", "arrays.bin", "tensors.safetensors"
_READ_CHUNK = 8 << 20


class CheckpointCorrupt(RecoverlyError):
    """A checkpoint failed verification: a file is missing, truncated or altered.

    Attributes:
        location: Where the checkpoint is (path or URL).
        reason: What is wrong with it.

    .. versionadded:: 0.2
    """

    def __init__(self, location: str, reason: str) -> None:
        super().__init__(f"checkpoint {location} is corrupt: {reason}")
        self.location = location
        self.reason = reason


class UnsafeCheckpointError(RecoverlyError):
    """A checkpoint holds pickled values and the manager does not allow pickles.

    Unpickling runs arbitrary code; load it only from a source you trust, with
    ``CheckpointManager(..., allow_pickle=True)``.

    .. versionadded:: 0.2
    """


CheckpointCorrupt.__module__ = UnsafeCheckpointError.__module__ = "recoverly.training"


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """What the manifest says about one committed checkpoint.

    Attributes:
        step: The training step it was saved at.
        name: The entry name in the store (``step-000000000100``).
        location: Path or URL of the entry.
        created_at: Wall-clock time of the save (seconds since the epoch).
        metrics: The metrics passed to ``save``.
        size: Bytes of the data files, or ``None`` for a background save not yet written.
        versions: Library versions of the saving process (python, numpy, torch, recoverly).

    .. versionadded:: 0.2
    """

    step: int
    name: str
    location: str
    created_at: float
    metrics: dict[str, float] = field(default_factory=dict)
    size: int | None = None
    versions: dict[str, str] = field(default_factory=dict)


CheckpointInfo.__module__ = "recoverly.training"

_VERSIONS: dict[str, str] = {}


def library_versions() -> dict[str, str]:
    """Versions of python, recoverly and the array libraries that are loaded."""
    if not _VERSIONS:
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

        _VERSIONS["python"] = platform.python_version()
        try:
            _VERSIONS["recoverly"] = version("recoverly")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            _VERSIONS["recoverly"] = "unknown"
    out = dict(_VERSIONS)
    for lib in ("numpy", "torch", "safetensors"):
        mod = sys.modules.get(lib)
        if mod is not None:
            out[lib] = str(getattr(mod, "__version__", "unknown"))
    return out


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _hashing(chunks: Iterator[memoryview | bytes], sink: Any) -> Iterator[memoryview | bytes]:
    for chunk in chunks:
        sink.update(chunk)
        yield chunk


def _array_chunks(arrays: list[Any]) -> Iterator[memoryview]:
    for a in arrays:
        if a.nbytes:
            yield memoryview(a.reshape(-1).view("u1"))


def write_entry(
    store: Store,
    name: str,
    enc: _codec.Encoded,
    *,
    step: int,
    metrics: dict[str, float],
    created_at: float,
) -> CheckpointInfo:
    """Write one checkpoint entry through a store transaction and commit it."""
    offset = 0
    for meta in enc.array_meta:
        meta["offset"] = offset
        offset += meta["nbytes"]
    state_doc = {"tree": enc.tree, "arrays": enc.array_meta}
    blobs: dict[str, Iterator[memoryview | bytes]] = {
        STATE: iter([json.dumps(state_doc, allow_nan=False).encode()])
    }
    if enc.arrays:
        blobs[ARRAYS] = _array_chunks(enc.arrays)
    if enc.tensors:
        blobs[TENSORS] = iter([_torch.to_bytes(enc.tensors)])
    files: dict[str, dict[str, Any]] = {}
    txn = store.begin(name)
    try:
        for filename, chunks in blobs.items():
            digest = hashlib.sha256()
            counter = _Counter()
            txn.write(filename, _hashing(_hashing(chunks, digest), counter))
            files[filename] = {"sha256": digest.hexdigest(), "size": counter.size}
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "step": step,
            "created_at": created_at,
            "metrics": _codec.encode(metrics).tree,
            "versions": library_versions(),
            "pickle": enc.uses_pickle,
            "files": files,
        }
        doc["checksum"] = hashlib.sha256(_canonical(doc)).hexdigest()
        txn.commit(_canonical(doc))
    except BaseException:
        txn.abort()
        raise
    return info_from_manifest(store, name, doc)


class _Counter:
    __slots__ = ("size",)

    def __init__(self) -> None:
        self.size = 0

    def update(self, chunk: memoryview | bytes) -> None:
        self.size += memoryview(chunk).nbytes


def read_manifest(store: Store, name: str) -> dict[str, Any]:
    """Read and check the manifest of an entry (not the data files).

    Raises:
        CheckpointCorrupt: Missing, unparsable, altered or inconsistent manifest.
    """
    where = store.location(name)
    try:
        raw = store.read_bytes(name, MANIFEST)
    except FileNotFoundError:
        raise CheckpointCorrupt(where, f"{MANIFEST} is missing") from None
    try:
        doc = json.loads(raw)
        checksum = doc.pop("checksum")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CheckpointCorrupt(where, f"{MANIFEST} is not valid: {exc}") from None
    if hashlib.sha256(_canonical(doc)).hexdigest() != checksum:
        raise CheckpointCorrupt(where, f"{MANIFEST} does not match its checksum")
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise CheckpointCorrupt(where, f"unknown format {doc.get('format')!r} {doc.get('version')}")
    step = doc.get("step")
    if type(step) is not int or f"step-{step:012d}" != name:
        raise CheckpointCorrupt(where, f"{MANIFEST} is for step {step!r}, not {name}")
    return doc  # type: ignore[no-any-return]


def info_from_manifest(store: Store, name: str, doc: dict[str, Any]) -> CheckpointInfo:
    """Build the :class:`CheckpointInfo` of a checked manifest."""
    return CheckpointInfo(
        step=doc["step"],
        name=name,
        location=store.location(name),
        created_at=doc["created_at"],
        metrics=_codec.decode(doc["metrics"], [], {}),
        size=sum(f["size"] for f in doc["files"].values()),
        versions=doc["versions"],
    )


def _verified(store: Store, name: str, filename: str, expected: dict[str, Any]) -> bytes:
    where = store.location(name)
    try:
        data = store.read_bytes(name, filename)
    except FileNotFoundError:
        raise CheckpointCorrupt(where, f"{filename} is missing") from None
    _check(where, filename, expected, len(data), hashlib.sha256(data).hexdigest())
    return data


def _check(where: str, filename: str, expected: dict[str, Any], size: int, digest: str) -> None:
    if size != expected["size"]:
        raise CheckpointCorrupt(
            where, f"{filename} has {size} bytes, the manifest says {expected['size']}"
        )
    if digest != expected["sha256"]:
        raise CheckpointCorrupt(where, f"{filename} does not match its SHA-256")


def _read_arrays(store: Store, name: str, metas: list[Any], expected: dict[str, Any]) -> list[Any]:
    import numpy as np  # noqa: PLC0415 - only checkpoints with arrays need numpy

    where = store.location(name)
    digest = hashlib.sha256()
    size = 0
    out = []
    try:
        f = store.open(name, ARRAYS)
    except FileNotFoundError:
        raise CheckpointCorrupt(where, f"{ARRAYS} is missing") from None
    with f:
        for meta in metas:
            dtype = _codec.decode_dtype(meta["dtype"])
            shape = tuple(meta["shape"])
            fortran = meta["order"] == "F"
            arr = np.empty(shape[::-1] if fortran else shape, dtype=dtype)
            if arr.nbytes != meta["nbytes"]:
                raise CheckpointCorrupt(where, f"{STATE} describes an array inconsistently")
            raw = memoryview(arr.reshape(-1).view("u1"))  # type: ignore[arg-type]
            got = 0
            while got < arr.nbytes:
                n = f.readinto(raw[got : got + _READ_CHUNK])  # type: ignore[attr-defined]
                if not n:
                    raise CheckpointCorrupt(where, f"{ARRAYS} is truncated")
                got += n
            digest.update(raw)
            size += got
            out.append(arr.T if fortran else arr)
        size += len(f.read())
    _check(where, ARRAYS, expected, size, digest.hexdigest())
    return out


def read_state(store: Store, name: str, doc: dict[str, Any], *, allow_pickle: bool) -> Any:
    """Read, verify and decode the state of an entry whose manifest is ``doc``.

    Raises:
        CheckpointCorrupt: A file is missing or does not match the manifest.
        UnsafeCheckpointError: It holds pickles and ``allow_pickle`` is false.
    """
    where = store.location(name)
    if doc.get("pickle") and not allow_pickle:
        raise UnsafeCheckpointError(
            f"checkpoint {where} contains pickled values; loading them runs code from the "
            "file: pass allow_pickle=True only if you trust its source"
        )
    files = doc["files"]
    if STATE not in files:
        raise CheckpointCorrupt(where, f"the manifest lists no {STATE}")
    try:
        state_doc = json.loads(_verified(store, name, STATE, files[STATE]))
        arrays = (
            _read_arrays(store, name, state_doc["arrays"], files[ARRAYS])
            if state_doc["arrays"]
            else []
        )
        tensors = (
            _torch.from_bytes(_verified(store, name, TENSORS, files[TENSORS]))
            if TENSORS in files
            else {}
        )
        return _codec.decode(state_doc["tree"], arrays, tensors, allow_pickle=allow_pickle)
    except _codec.UnsafePayloadError:
        raise UnsafeCheckpointError(
            f"checkpoint {where} contains a pickled value its manifest does not declare"
        ) from None
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise CheckpointCorrupt(where, f"malformed content: {exc!r}") from None
