"""The small storage contract the datastore needs, so S3 and a local folder behave the same.

Keys are ``/``-separated and relative to the backend's root; only :mod:`..keys` builds them.
Every backend counts what it moves in :attr:`StorageBackend.counters`, which is how tests and
benchmarks prove that an unchanged artifact is never written twice and an untouched one is never
read.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import BinaryIO


class TransferCounters:
    """Bytes and requests a backend has moved since it was created (or last :meth:`reset`).

    Thread-safe because S3 transfers run on thread pools.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes_written = 0
        self.bytes_read = 0
        self.requests = 0

    def add(self, *, written: int = 0, read: int = 0, requests: int = 1) -> None:
        with self._lock:
            self.bytes_written += written
            self.bytes_read += read
            self.requests += requests

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "bytes_written": self.bytes_written,
                "bytes_read": self.bytes_read,
                "requests": self.requests,
            }

    def reset(self) -> None:
        with self._lock:
            self.bytes_written = self.bytes_read = self.requests = 0

    def __repr__(self) -> str:
        return f"TransferCounters({self.snapshot()})"


class StorageBackend(ABC):
    """A flat key -> bytes store with one-level listings.

    Contract every implementation keeps:

    * writes are atomic: a reader sees the old object or the whole new one, never a part;
    * a missing key raises :class:`~airflow_flowspec.errors.ArtifactNotFoundError` naming it;
    * any other failure raises :class:`~airflow_flowspec.errors.DatastoreError` naming the root,
      the key and the likely fix.
    """

    #: The root as the user wrote it (``s3://bucket/prefix`` or a local path), for messages.
    root: str
    #: True when objects are files this process can open directly (no download needed).
    is_local: bool = False

    def __init__(self) -> None:
        self.counters = TransferCounters()

    @abstractmethod
    def describe(self, key: str) -> str:
        """Where ``key`` lives, in a form the user can paste (a path or an ``s3://`` URL)."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def put_file(self, key: str, local_path: str) -> None:
        """Store a copy of ``local_path``; the local file is left in place."""

    def adopt_file(self, key: str, local_path: str) -> None:
        """Store ``local_path`` under ``key`` and consume it (a rename when the backend can).

        The encoder writes pickles to a scratch file first; adopting it spares a copy.
        """
        import os

        try:
            self.put_file(key, local_path)
        finally:
            try:
                os.unlink(local_path)
            except FileNotFoundError:
                pass

    def scratch_dir(self) -> str | None:
        """Where scratch files should be made so :meth:`adopt_file` is cheap (None: system temp)."""
        return None

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def download_file(self, key: str, local_path: str) -> None: ...

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """A binary stream of the object, for unpickling without holding it twice in memory.

        The caller closes it. ``bytes_read`` counts the object's size when it is opened.
        """

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    def exists_many(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` that exist; remote backends ask in parallel."""
        return {key for key in set(keys) if self.exists(key)}

    @abstractmethod
    def list_dir(self, prefix: str) -> tuple[list[str], list[str]]:
        """Sorted (sub-folder names, file names) directly under ``prefix`` (``""`` is the root).

        A missing folder is empty, not an error: "no runs yet" is a normal answer.
        """

    @abstractmethod
    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete the keys that exist; missing keys are ignored."""

    def put_many_bytes(self, objects: Mapping[str, bytes]) -> None:
        """Write many small objects; remote backends write them in parallel."""
        for key, data in objects.items():
            self.put_bytes(key, data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root!r})"
