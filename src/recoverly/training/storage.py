"""Where checkpoints live: the :class:`Store` interface and two implementations.

A store holds *entries* (one per checkpoint, named like ``step-000000000100``),
each a handful of files plus a manifest. Writing goes through a transaction:
``begin(name)`` stages files out of sight, ``commit(manifest)`` makes the entry
appear all at once, ``abort()`` throws the staging away.

* :class:`LocalStore` stages in a hidden directory next to the entries (same
  filesystem), fsyncs every file and the directory, writes the manifest last
  and renames the directory into place.
* :class:`FsspecStore` targets object storage (``s3://``, ``gs://``,
  ``memory://``, ...) through fsspec, where renames are copies: data files go
  under a fresh token and a small ``commit`` object naming that token is
  written last (one atomic PUT).

One writer per store at a time: a second process saving to the same directory
concurrently is not supported.
"""

from __future__ import annotations

import abc
import contextlib
import os
import re
import secrets
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from recoverly.training._atomic import (
    atomic_write_bytes,
    fsync_dir,
    pid_alive,
    temp_name,
    write_new_file,
)

__all__ = ["MANIFEST", "FsspecStore", "LocalStore", "Store", "StoreTransaction"]

#: File name of the manifest inside every entry.
MANIFEST = "manifest.json"

_ENTRY = re.compile(r"step-\d+")
_TEMP = re.compile(r"\.(?:tmp|trash|del)-(?P<name>[^/]*?)-(?P<pid>\d+)-[0-9a-f]+")
# Staging areas of saves running in this process (never cleaned up under their feet).
_ACTIVE: set[str] = set()
_ACTIVE_LOCK = threading.Lock()


def _mark(key: str, *, active: bool) -> None:
    with _ACTIVE_LOCK:
        (_ACTIVE.add if active else _ACTIVE.discard)(key)


def _is_active(key: str) -> bool:
    with _ACTIVE_LOCK:
        return key in _ACTIVE


class StoreTransaction(abc.ABC):
    """One entry being written; see :meth:`Store.begin`.

    .. versionadded:: 0.2
    """

    __slots__ = ()

    @abc.abstractmethod
    def write(self, filename: str, chunks: Iterable[bytes | memoryview]) -> None:
        """Write one data file of the entry from ``chunks``."""

    @abc.abstractmethod
    def commit(self, manifest: bytes) -> None:
        """Write the manifest last and make the entry visible atomically."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Discard everything written so far (best effort, never raises)."""


class Store(abc.ABC):
    """Storage of checkpoint entries; subclass it for another backend.

    .. versionadded:: 0.2
    """

    __slots__ = ()

    @abc.abstractmethod
    def names(self) -> list[str]:
        """Return the names of the committed-looking entries (any order)."""

    @abc.abstractmethod
    def open(self, name: str, filename: str) -> IO[bytes]:
        """Open one file of an entry for binary reading.

        Raises:
            FileNotFoundError: The entry or the file does not exist.
        """

    def read_bytes(self, name: str, filename: str) -> bytes:
        """Return the whole content of one file of an entry."""
        with self.open(name, filename) as f:
            return f.read()

    @abc.abstractmethod
    def begin(self, name: str) -> StoreTransaction:
        """Start writing entry ``name`` (replacing it on commit if it exists)."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Remove an entry; it stops being listed before its files go."""

    @abc.abstractmethod
    def cleanup(self) -> list[str]:
        """Remove leftovers of crashed saves and deletions; return what was removed."""

    @abc.abstractmethod
    def location(self, name: str | None = None) -> str:
        """Return a human-readable place of the store, or of one entry."""


# ---------------------------------------------------------------- local disk
class _LocalTransaction(StoreTransaction):
    __slots__ = ("_done", "_name", "_root", "_staging")

    def __init__(self, root: Path, name: str) -> None:
        self._root = root
        self._name = name
        self._staging = root / temp_name(f"tmp-{name}")
        self._done = False
        _mark(str(self._staging), active=True)
        self._staging.mkdir()

    def write(self, filename: str, chunks: Iterable[bytes | memoryview]) -> None:
        write_new_file(self._staging / filename, chunks)

    def commit(self, manifest: bytes) -> None:
        atomic_write_bytes(self._staging / MANIFEST, manifest)  # fsyncs the staging dir too
        target = self._root / self._name
        trash = None
        if target.exists():
            trash = self._root / temp_name(f"trash-{self._name}")
            target.rename(trash)
        try:
            self._staging.rename(target)
        except BaseException:
            if trash is not None:
                trash.rename(target)
            raise
        fsync_dir(self._root)
        self._done = True
        _mark(str(self._staging), active=False)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def abort(self) -> None:
        if not self._done:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._done = True
        _mark(str(self._staging), active=False)


class LocalStore(Store):
    """Checkpoints in a directory of the local filesystem (created if missing).

    Args:
        path: The directory.

    .. versionadded:: 0.2
    """

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {path!r}")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def names(self) -> list[str]:
        """Return the entry directories (``step-*``) of the store."""
        return [p.name for p in self.path.iterdir() if _ENTRY.fullmatch(p.name) and p.is_dir()]

    def open(self, name: str, filename: str) -> IO[bytes]:
        """Open ``<path>/<name>/<filename>`` for reading."""
        return (self.path / name / filename).open("rb")

    def begin(self, name: str) -> StoreTransaction:
        """Stage a new entry in a hidden directory next to the entries."""
        return _LocalTransaction(self.path, name)

    def delete(self, name: str) -> None:
        """Rename the entry to a hidden name (atomic), then remove it."""
        doomed = self.path / temp_name(f"del-{name}")
        (self.path / name).rename(doomed)
        fsync_dir(self.path)
        shutil.rmtree(doomed, ignore_errors=True)

    def cleanup(self) -> list[str]:
        """Remove staging directories of dead saves; put back an entry a crash left in trash.

        A staging directory is stale when the process that made it is gone,
        or is this process and no save of it is running.
        """
        removed: list[str] = []
        for p in sorted(self.path.iterdir()):
            m = _TEMP.fullmatch(p.name)
            if m is None or _is_active(str(p)):
                continue
            pid = int(m["pid"])
            if pid != os.getpid() and pid_alive(pid):
                continue
            target = self.path / m["name"]
            if p.name.startswith(".trash-") and not target.exists():
                p.rename(target)  # the crash came between the two renames of a replace
                fsync_dir(self.path)
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            removed.append(p.name)
        return removed

    def location(self, name: str | None = None) -> str:
        """Return the directory, or the entry's directory."""
        return str(self.path if name is None else self.path / name)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.path)!r})"


# ---------------------------------------------------------------- fsspec
class _FsspecTransaction(StoreTransaction):
    __slots__ = ("_done", "_name", "_store", "_token")

    def __init__(self, store: FsspecStore, name: str) -> None:
        self._store = store
        self._name = name
        self._token = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._done = False
        _mark(self._key, active=True)
        store.fs.makedirs(store._path(name, self._token), exist_ok=True)  # local filesystems

    @property
    def _key(self) -> str:
        return f"{self._store.url}/{self._name}/{self._token}"

    def write(self, filename: str, chunks: Iterable[bytes | memoryview]) -> None:
        with self._store.fs.open(self._store._path(self._name, self._token, filename), "wb") as f:
            for chunk in chunks:
                f.write(chunk)

    def commit(self, manifest: bytes) -> None:
        fs, path = self._store.fs, self._store._path
        fs.pipe_file(path(self._name, self._token, MANIFEST), manifest)
        fs.pipe_file(path(self._name, "commit"), self._token.encode())
        self._done = True
        _mark(self._key, active=False)
        self._store._drop_others(self._name, keep=self._token)

    def abort(self) -> None:
        if not self._done:
            with contextlib.suppress(Exception):
                self._store.fs.rm(self._store._path(self._name, self._token), recursive=True)
            self._done = True
        _mark(self._key, active=False)


class FsspecStore(Store):
    """Checkpoints on any fsspec filesystem: ``s3://bucket/run``, ``memory://run``, ...

    Args:
        url: Where the entries go.
        **storage_options: Passed to ``fsspec.core.url_to_fs`` (credentials, ...).

    Raises:
        ImportError: fsspec is not installed (``pip install 'recoverly[fsspec]'``).

    .. versionadded:: 0.2
    """

    __slots__ = ("fs", "root", "url")

    def __init__(self, url: str, **storage_options: Any) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, got {url!r}")
        try:
            import fsspec  # type: ignore[import-untyped]  # noqa: PLC0415 - optional dependency
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError("FsspecStore needs fsspec: pip install 'recoverly[fsspec]'") from exc
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.root = str(root).rstrip("/")
        self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def _committed(self, name: str) -> str:
        return bytes(self.fs.cat_file(self._path(name, "commit"))).decode().strip()

    def _tokens(self, name: str) -> list[str]:
        try:
            listing = self.fs.ls(self._path(name), detail=False)
        except FileNotFoundError:
            return []
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in listing if not p.endswith("/commit")]

    def _drop_others(self, name: str, keep: str) -> list[str]:
        dropped = []
        for token in self._tokens(name):
            if token != keep and not _is_active(f"{self.url}/{name}/{token}"):
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(self._path(name, token), recursive=True)
                dropped.append(f"{name}/{token}")
        return dropped

    def _entries(self) -> list[str]:
        try:
            listing = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        names = (p.rstrip("/").rsplit("/", 1)[-1] for p in listing)
        return [n for n in names if _ENTRY.fullmatch(n)]

    def names(self) -> list[str]:
        """Return the entries that have a commit marker."""
        return [n for n in self._entries() if self.fs.exists(self._path(n, "commit"))]

    def open(self, name: str, filename: str) -> IO[bytes]:
        """Open a file of the committed version of an entry."""
        try:
            token = self._committed(name)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.location(name)} has no commit marker") from None
        return self.fs.open(self._path(name, token, filename), "rb")  # type: ignore[no-any-return]

    def begin(self, name: str) -> StoreTransaction:
        """Stage a new version of an entry under a fresh token."""
        return _FsspecTransaction(self, name)

    def delete(self, name: str) -> None:
        """Remove the commit marker first (the entry disappears), then the files."""
        self.fs.rm(self._path(name, "commit"))
        self.fs.rm(self._path(name), recursive=True)

    def cleanup(self) -> list[str]:
        """Remove uncommitted versions not being written by this process."""
        removed: list[str] = []
        for name in self._entries():
            try:
                keep = self._committed(name)
            except FileNotFoundError:
                keep = ""
            removed += self._drop_others(name, keep)
        return removed

    def location(self, name: str | None = None) -> str:
        """Return the URL of the store, or of one entry."""
        return self.url if name is None else f"{self.url.rstrip('/')}/{name}"

    def __repr__(self) -> str:
        return f"FsspecStore({self.url!r})"


for _cls in (Store, StoreTransaction, LocalStore, FsspecStore):
    _cls.__module__ = "recoverly.training"
