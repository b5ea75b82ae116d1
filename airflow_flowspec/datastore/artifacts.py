"""Content-addressed artifact storage: a value goes in, a small JSON-able reference comes out.

The reference (:class:`ArtifactRef`) is what manifests, XComs and the UI carry: the hash to load
the value, plus its type, pickled size and a short repr so a person can see what a step produced
without unpickling anything. Loading is explicit and per artifact, so a step that reads one
artifact of a 10 GB parent never downloads the rest.
"""

from __future__ import annotations

import builtins
import re
import reprlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_flowspec.datastore import encoding
from airflow_flowspec.datastore.backends.base import StorageBackend
from airflow_flowspec.datastore.keys import blob_key
from airflow_flowspec.errors import ArtifactNotFoundError, DatastoreError

#: Longest ``ArtifactRef.repr``; the XCom view and manifests show it as one line.
MAX_REPR_CHARS = 80
#: Small pickles of one ``save_many`` are sent together once they add up to this much.
_BATCH_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ArtifactRef:
    """What a manifest records for one artifact."""

    hash: str  # BLAKE3 hex of the pickle; the blob's name
    type: str  # qualified type name, e.g. "numpy.ndarray", "dict"
    size: int  # pickled bytes
    repr: str  # short, one line, at most MAX_REPR_CHARS

    def to_json(self) -> dict[str, Any]:
        """A plain dict (JSON-able) for manifests and XComs."""
        return {"hash": self.hash, "type": self.type, "size": self.size, "repr": self.repr}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> ArtifactRef:
        try:
            return cls(hash=value["hash"], type=value["type"], size=int(value["size"]), repr=value["repr"])
        except (KeyError, TypeError, ValueError) as error:
            raise DatastoreError(
                f"{value!r} is not an artifact reference (expected hash, type, size and repr): {error}."
            ) from error


def qualified_type_name(value: Any) -> str:
    cls = type(value)
    module = getattr(cls, "__module__", None)
    name = getattr(cls, "__qualname__", cls.__name__)
    return name if module in (None, "builtins") else f"{module}.{name}"


class _ShortRepr(reprlib.Repr):
    """reprlib with limits for a one-line summary, and no giant intermediate strings.

    reprlib already slices str before calling repr, but not bytes: repr() of a 256 MB bytes value
    would build a 1 GB string only to cut it to 80 characters.
    """

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 2
        self.maxtuple = self.maxlist = self.maxarray = self.maxdeque = 4
        self.maxdict = self.maxset = self.maxfrozenset = 4
        self.maxstring = self.maxother = 60
        self.maxlong = 40

    def _repr_binary(self, value: Any, level: int) -> str:
        text = builtins.repr(value[: self.maxstring])
        if len(value) > self.maxstring:
            text = text[:-1] + "..." + text[-1]
        return text

    repr_bytes = repr_bytearray = _repr_binary

    def repr_memoryview(self, value: memoryview, level: int) -> str:
        return f"<memoryview of {value.nbytes} bytes>"

    def repr_instance(self, value: Any, level: int) -> str:
        try:
            text = builtins.repr(value)
        except Exception:
            return f"<unrepresentable {qualified_type_name(value)}>"
        if len(text) > self.maxother:
            half = max(0, (self.maxother - 3) // 2)
            text = text[:half] + "..." + text[len(text) - (self.maxother - 3 - half) :]
        return text


_SHORT_REPR = _ShortRepr()


def short_repr(value: Any) -> str:
    """A one-line repr of at most :data:`MAX_REPR_CHARS`; never raises."""
    try:
        text = _SHORT_REPR.repr(value)
    except Exception:
        text = f"<unrepresentable {qualified_type_name(value)}>"
    text = re.sub(r"\s*\n\s*", " ", text)
    if len(text) > MAX_REPR_CHARS:
        text = text[: MAX_REPR_CHARS - 3] + "..."
    return text


class ArtifactStore:
    """Saves values as blobs under ``data/`` and loads them back by hash."""

    def __init__(self, backend: StorageBackend):
        self.backend = backend
        # Blob keys this process has stored, seen stored, or loaded. Blobs are immutable, so a
        # value re-saved unchanged (a step touching an inherited artifact) costs no request at
        # all. A garbage collector must therefore spare blobs younger than the longest task,
        # which it has to do anyway for blobs whose manifest is not written yet.
        self._known_blobs: set[str] = set()
        self._known_blobs_lock = threading.Lock()

    def save(self, name: str, value: Any) -> ArtifactRef:
        """Store ``value`` (artifact ``name``, used in error messages); free if already stored."""
        return self.save_many({name: value})[name]

    def save_many(self, values: Mapping[str, Any]) -> dict[str, ArtifactRef]:
        """Store several artifacts; on S3 the small ones go up in parallel.

        Large pickles are stored one by one as soon as they are pickled (each is already uploaded
        in parallel parts), so at most one large scratch file exists at a time. Small pickles are
        collected and sent in batches: one parallel existence check, then one parallel upload of
        the missing ones. If one value cannot be pickled, :class:`ArtifactSaveError` names it;
        some values before it may already be stored, unreferenced, which is harmless.
        """
        refs: dict[str, ArtifactRef] = {}
        pending: dict[str, bytes] = {}  # blob key -> small pickle, waiting for a batch
        pending_bytes = 0
        scratch_dir = self.backend.scratch_dir()
        for name, value in values.items():
            blob = encoding.encode(value, name=name, scratch_dir=scratch_dir)
            refs[name] = ArtifactRef(
                hash=blob.hash, type=qualified_type_name(value), size=blob.size, repr=short_repr(value)
            )
            key = blob_key(blob.hash)
            if key in self._known_blobs:
                blob.discard()
                continue
            if blob.data is not None:
                if key not in pending:
                    pending[key] = blob.data
                    pending_bytes += blob.size
                if pending_bytes >= _BATCH_BYTES:
                    self._store_small(pending)
                    pending, pending_bytes = {}, 0
                continue
            try:
                if not self.backend.exists(key):
                    assert blob.path is not None
                    path, blob.path = blob.path, None
                    self.backend.adopt_file(key, path)
            finally:
                blob.discard()
            self._remember(key)
        self._store_small(pending)
        return refs

    def _store_small(self, pending: dict[str, bytes]) -> None:
        if not pending:
            return
        existing = self.backend.exists_many(pending)
        self.backend.put_many_bytes({key: data for key, data in pending.items() if key not in existing})
        self._remember(*pending)

    def _remember(self, *keys: str) -> None:
        with self._known_blobs_lock:
            self._known_blobs.update(keys)

    def load(self, ref_or_hash: ArtifactRef | str) -> Any:
        """The value stored under a reference (or a bare hash)."""
        if isinstance(ref_or_hash, ArtifactRef):
            blob_hash, size = ref_or_hash.hash, ref_or_hash.size
            what = f"artifact of type {ref_or_hash.type} ({ref_or_hash.repr})"
        else:
            blob_hash, size, what = ref_or_hash, None, "artifact"
        key = blob_key(blob_hash)
        try:
            value = encoding.decode(self.backend, key, size)
        except ArtifactNotFoundError as error:
            raise ArtifactNotFoundError(
                f"The {what} with hash {blob_hash} is missing from the datastore {self.backend.root}: "
                f"nothing is stored under key '{key}' ({self.backend.describe(key)}). It may have been "
                f"garbage-collected, or the run wrote to another datastore root."
            ) from error
        except DatastoreError:
            raise
        except Exception as error:
            raise DatastoreError(
                f"The {what} stored at {self.backend.describe(key)} could not be unpickled here: "
                f"{type(error).__name__}: {error}. If a module is missing, install the same packages "
                f"(and versions) as the step that saved it."
            ) from error
        self._remember(key)
        return value
