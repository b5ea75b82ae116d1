"""The small storage contract the datastore needs, so S3 and a local folder behave the same.

Keys are ``/``-separated and relative to the backend's root; only :mod:`..keys` builds them.
Every backend counts what it moves in :attr:`StorageBackend.counters`, which is how tests and
benchmarks prove that an unchanged artifact is never written twice and an untouched one is never
read.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO


@dataclass(frozen=True)
class StoredObject:
    """One object found by :meth:`StorageBackend.iter_objects`."""

    key: str  # relative to the backend's root
    size: int
    modified: float  # seconds since the epoch (last write)


class TransferCounters:
    """Bytes and requests a backend has moved since it was created (or last :meth:`reset`).

    Thread-safe because S3 transfers run on thread pools.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes_written = 0
        self.bytes_read = 0
        self.requests = 0
        self.resumed = 0  # broken downloads picked up again from the byte they reached

    def add(self, *, written: int = 0, read: int = 0, requests: int = 1, resumed: int = 0) -> None:
        with self._lock:
            self.bytes_written += written
            self.bytes_read += read
            self.requests += requests
            self.resumed += resumed

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "bytes_written": self.bytes_written,
                "bytes_read": self.bytes_read,
                "requests": self.requests,
                "resumed": self.resumed,
            }

    def reset(self) -> None:
        with self._lock:
            self.bytes_written = self.bytes_read = self.requests = self.resumed = 0

    def __repr__(self) -> str:
        return f"TransferCounters({self.snapshot()})"


class StorageBackend(ABC):
    """A flat key -> bytes store with one-level listings.

    Contract every implementation keeps:

    * writes are atomic: a reader sees the old object or the whole new one, never a part;
    * a missing key raises :class:`~airflow_flowspec.errors.ArtifactNotFoundError` naming it;
    * any other failure raises :class:`~airflow_flowspec.errors.DatastoreError` naming the root,
      the key and the likely fix, after the retries the medium warrants (S3: every request and
      every broken download, with backoff);
    * scratch files live in :meth:`scratch_dir` and are named by :mod:`..scratch`, so that
      :meth:`sweep` can remove what a killed process left.
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
    def put_bytes(self, key: str, data: bytes, *, content_hash: str | None = None) -> None:
        """Store ``data``; ``content_hash`` (a blob's name) is recorded with it where the medium can."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Store ``data`` only if nothing is stored under ``key``; whether it was stored.

        Of writers racing for one key exactly one succeeds, whichever process or machine each runs
        on, and readers see the whole object or none: what claims a run's number.
        """

    @abstractmethod
    def put_file(self, key: str, local_path: str, *, content_hash: str | None = None) -> None:
        """Store a copy of ``local_path``; the local file is left in place."""

    def adopt_file(self, key: str, local_path: str, *, content_hash: str | None = None) -> None:
        """Store ``local_path`` under ``key`` and consume it (a rename when the backend can).

        The encoder writes pickles to a scratch file first; adopting it spares a copy.
        """
        import os

        try:
            self.put_file(key, local_path, content_hash=content_hash)
        finally:
            try:
                os.unlink(local_path)
            except FileNotFoundError:
                pass

    @abstractmethod
    def scratch_dir(self) -> str:
        """Where scratch files are made (so :meth:`adopt_file` is cheap, and :meth:`sweep` finds them)."""

    def sweep(self) -> None:
        """Remove what killed processes left behind (scratch files; on S3, stale multipart uploads)."""
        from airflow_flowspec import config
        from airflow_flowspec.datastore import scratch

        scratch.sweep(self.scratch_dir(), other_hosts_after_seconds=config.sweep_after_seconds())

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
    def stored_size(self, key: str) -> int | None:
        """The size of the object under ``key``, or None when there is none."""

    def exists(self, key: str) -> bool:
        return self.stored_size(key) is not None

    def blob_is_stored(
        self,
        key: str,
        size: int,
        content_hash: str,
        *,
        freshen_after: float | None = None,
        known_intact: bool = False,
    ) -> bool:
        """Whether a good copy of the blob is stored: a wrong-sized one (or, where the medium keeps
        it, one recorded with another hash) is not, and gets rewritten. ``known_intact`` says this
        process has just read the blob and verified its hash: a backend that would otherwise
        re-read the bytes to check them may skip that.

        With ``freshen_after`` (seconds), a save is about to rely on the blob: a good copy last
        written longer ago than that gets its modification time set to now ("freshened", as git
        does), because the garbage collector spares unreferenced blobs by the age of their last
        write. When freshening fails (the blob vanished, the file is not ours to touch) the answer
        is False, and the rewrite that follows refreshes it just as well. This generic version
        cannot read or set an age, so with ``freshen_after`` it always answers False.
        """
        if freshen_after is not None:
            return False
        return self.stored_size(key) == size

    def blobs_stored(
        self,
        expected: Mapping[str, tuple[int, str]],
        *,
        freshen_after: float | None = None,
        known_intact: frozenset[str] = frozenset(),
    ) -> set[str]:
        """The keys of ``expected`` (key -> (size, hash)) stored intact, freshened as
        :meth:`blob_is_stored` does (``known_intact``: keys this process just read and verified);
        remote backends ask in parallel."""
        return {
            key
            for key, (size, digest) in expected.items()
            if self.blob_is_stored(
                key, size, digest, freshen_after=freshen_after, known_intact=key in known_intact
            )
        }

    @abstractmethod
    def move(self, key: str, new_key: str) -> None:
        """Move an object to another key (used to set a damaged blob aside)."""

    @abstractmethod
    def list_dir(self, prefix: str) -> tuple[list[str], list[str]]:
        """Sorted (sub-folder names, file names) directly under ``prefix`` (``""`` is the root).

        A missing folder is empty, not an error: "no runs yet" is a normal answer.
        """

    @abstractmethod
    def iter_objects(self, prefix: str, *, page_size: int = 1000) -> Iterator[StoredObject]:
        """Every object under ``prefix`` (a folder, ending in ``/``), at any depth, in key order,
        fetched a page at a time as the caller iterates: taking the first ten of a million costs
        one request.

        "Key order" is S3's (by UTF-8 bytes of the whole key); the local backend walks folders in
        name order, which is the same whenever no name in a folder is a prefix of another followed
        by a character that sorts below ``/``, as with the fixed-width names of the run index.
        """

    @abstractmethod
    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete the keys that exist; missing keys are ignored."""

    def put_many_bytes(self, objects: Mapping[str, tuple[bytes, str | None]]) -> None:
        """Write many small objects (key -> (bytes, content hash)); remote backends in parallel."""
        for key, (data, content_hash) in objects.items():
            self.put_bytes(key, data, content_hash=content_hash)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root!r})"
