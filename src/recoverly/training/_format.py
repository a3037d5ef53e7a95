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
import queue
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

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


class _Hasher:
    """SHA-256 and size of a byte stream; big chunks are hashed on a helper thread.

    ``hashlib`` releases the GIL on large buffers, so hashing chunk *k* on the
    helper overlaps with writing (or reading) chunk *k* on the caller's thread.
    """

    __slots__ = ("_queue", "_thread", "digest", "size")
    _INLINE = 1 << 20  # smaller chunks are hashed at once: a thread costs more

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.size = 0
        self._queue: queue.SimpleQueue[Any] | None = None
        self._thread: threading.Thread | None = None

    def update(self, chunk: memoryview | bytes) -> None:
        self.size += memoryview(chunk).nbytes
        if self._queue is None:
            if len(chunk) < self._INLINE:
                self.digest.update(chunk)
                return
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, name="recoverly-sha256", daemon=True)
            self._thread.start()
        self._queue.put(chunk)

    def _run(self) -> None:
        assert self._queue is not None  # noqa: S101 - set before the thread starts
        while (chunk := self._queue.get()) is not None:
            self.digest.update(chunk)

    def close(self) -> None:
        """Stop the helper thread (after it hashed everything fed so far)."""
        if self._thread is not None and self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def hexdigest(self) -> str:
        self.close()
        return self.digest.hexdigest()


def _hashing(chunks: Iterator[memoryview | bytes], sink: _Hasher) -> Iterator[memoryview | bytes]:
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
        blobs[TENSORS] = iter(_torch.tensor_chunks(enc.tensors))
    files: dict[str, dict[str, Any]] = {}
    txn = store.begin(name)
    try:
        for filename, chunks in blobs.items():
            hasher = _Hasher()
            try:
                txn.write(filename, _hashing(chunks, hasher))
            finally:
                hasher.close()
            files[filename] = {"sha256": hasher.hexdigest(), "size": hasher.size}
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
    where = store.location(name)
    hasher = _Hasher()
    try:
        f = store.open(name, ARRAYS)
    except FileNotFoundError:
        raise CheckpointCorrupt(where, f"{ARRAYS} is missing") from None
    with f:
        try:
            out = [_read_array(f, meta, hasher, where) for meta in metas]
            hasher.update(f.read())  # trailing bytes count against the size
        finally:
            hasher.close()
    _check(where, ARRAYS, expected, hasher.size, hasher.hexdigest())
    return out


def _read_tensors(store: Store, name: str, expected: dict[str, Any]) -> dict[str, Any]:
    where = store.location(name)
    hasher = _Hasher()
    try:
        f = store.open(name, TENSORS)
    except FileNotFoundError:
        raise CheckpointCorrupt(where, f"{TENSORS} is missing") from None
    with f:
        try:
            try:
                out = _torch.read_tensors(f, hasher.update)
            except (ValueError, KeyError, TypeError, RuntimeError) as exc:
                # Damaged bytes usually break the parse: report the hash mismatch first.
                hasher.update(f.read())
                _check(where, TENSORS, expected, hasher.size, hasher.hexdigest())
                raise CheckpointCorrupt(where, f"{TENSORS} is malformed: {exc}") from None
            hasher.update(f.read())  # trailing bytes count against the size
        finally:
            hasher.close()
    _check(where, TENSORS, expected, hasher.size, hasher.hexdigest())
    return out


def _read_array(f: IO[bytes], meta: dict[str, Any], hasher: _Hasher, where: str) -> Any:
    import numpy as np  # noqa: PLC0415 - only checkpoints with arrays need numpy

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
        hasher.update(raw[got : got + n])
        got += n
    return arr.T if fortran else arr


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
        tensors = _read_tensors(store, name, files[TENSORS]) if TENSORS in files else {}
        return _codec.decode(state_doc["tree"], arrays, tensors, allow_pickle=allow_pickle)
    except _codec.UnsafePayloadError:
        raise UnsafeCheckpointError(
            f"checkpoint {where} contains a pickled value its manifest does not declare"
        ) from None
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise CheckpointCorrupt(where, f"malformed content: {exc!r}") from None
