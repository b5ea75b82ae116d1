"""Content-addressed artifact storage: a value goes in, a small JSON-able reference comes out.

The reference (:class:`ArtifactRef`) is what manifests, XComs and the UI carry: the hash to load
the value, plus its type, pickled size and a short repr so a person can see what a step produced
without unpickling anything. Loading is explicit and per artifact, so a step that reads one
artifact of a 10 GB parent never downloads the rest.

Small artifacts are packed: a step with 1,000 artifacts of 1 KB writes one object, not 1,000
(every request costs a round trip; on S3 that dominates small writes), and the next step fetches
that pack once. A packed artifact is still named by its own hash; its reference adds where it sits
(the pack's hash and the offset). Only pickles up to :data:`PACK_ITEM_MAX_BYTES` are packed, so
reading one small artifact downloads at most its small pack-mates, never a large artifact.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

from airflow_flowspec.datastore import encoding
from airflow_flowspec.datastore.backends.base import StorageBackend
from airflow_flowspec.datastore.keys import (
    TRASH_PREFIX,
    blob_key,
    damaged_blob_key,
    is_blob_hash,
    is_trash_round,
    trash_key,
)
from airflow_flowspec.datastore.previews import BoundedRepr, cut_end, make_preview, read_preview
from airflow_flowspec.errors import (
    ArtifactLoadError,
    ArtifactNotFoundError,
    CorruptArtifactError,
    DatastoreError,
)

#: Longest ``ArtifactRef.repr``; the XCom view and manifests show it as one line.
MAX_REPR_CHARS = 80
#: What manifests, the XCom view and run records show instead of a secret's value.
SECRET_REPR = "<secret>"
#: Small pickles of one ``save_many`` are sent together once they add up to this much.
_BATCH_BYTES = 64 * 1024 * 1024
#: Pickles up to this size go into packs; a pack is closed once it holds PACK_MAX_BYTES.
PACK_ITEM_MAX_BYTES = 64 * 1024
PACK_MAX_BYTES = 4 * 1024 * 1024
#: Packs kept in memory after a load (most recently used first out), by total size.
_PACK_CACHE_BYTES = 64 * 1024 * 1024
#: The longest a save relies on an earlier sign that a blob is stored. The garbage collector
#: (:mod:`.gc`) spares an unreferenced blob while its last write is younger than its grace period,
#: so a save that reuses a blob must renew that write: one found stored whose last write is older
#: than half of this is freshened (its modification time set to now, as git does), and this process
#: forgets that a blob is stored after the other half. Every blob a save relies on was therefore
#: written or confirmed at most this long before the save.
FRESHEN_INTERVAL_SECONDS = 3600.0


#: Where a blob is: (pack hash, offset) for a packed pickle, (None, 0) for a blob of its own.
_Location = tuple["str | None", int]
_T = TypeVar("_T")


@dataclass(frozen=True)
class ArtifactRef:
    """What a manifest records for one artifact."""

    hash: str  # BLAKE3 hex of the pickle; the blob's name
    type: str  # qualified type name, e.g. "numpy.ndarray", "dict"
    size: int  # pickled bytes
    repr: str  # short, one line, at most MAX_REPR_CHARS
    pack: str | None = None  # hash of the pack holding this pickle (small artifacts), else None
    offset: int = 0  # where the pickle starts in the pack
    #: Where the value's preview (:mod:`.previews`) is: {"hash", "size", "pack", "offset"}; None
    #: when the repr says it all, for a secret, and for artifacts saved before previews existed.
    preview: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """A plain dict (JSON-able) for manifests and XComs."""
        ref: dict[str, Any] = {"hash": self.hash, "type": self.type, "size": self.size, "repr": self.repr}
        if self.pack is not None:
            ref["pack"], ref["offset"] = self.pack, self.offset
        if self.preview is not None:
            ref["preview"] = self.preview
        return ref

    def located(self, location: _Location) -> ArtifactRef:
        return ArtifactRef(self.hash, self.type, self.size, self.repr, *location, preview=self.preview)

    def with_preview(self, preview: dict[str, Any] | None) -> ArtifactRef:
        return ArtifactRef(self.hash, self.type, self.size, self.repr, self.pack, self.offset, preview)

    @property
    def location(self) -> _Location:
        return (self.pack, self.offset)

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> ArtifactRef:
        try:
            return cls(
                hash=value["hash"],
                type=value["type"],
                size=int(value["size"]),
                repr=value["repr"],
                pack=value.get("pack"),
                offset=int(value.get("offset", 0)),
                preview=_preview_location(value.get("preview")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise DatastoreError(
                f"{value!r} is not an artifact reference (expected hash, type, size and repr): {error}."
            ) from error


def _preview_location(value: Any) -> dict[str, Any] | None:
    """A reference's preview location, checked for shape (a reader trusts nothing it reads)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"preview {value!r} is not a preview location")
    pack = value.get("pack")
    if not (
        is_blob_hash(value.get("hash"))
        and (pack is None or is_blob_hash(pack))
        and isinstance(value.get("size"), int)
        and isinstance(value.get("offset", 0), int)
    ):
        raise ValueError(f"preview {value!r} is not a preview location")
    return {"hash": value["hash"], "size": value["size"], "pack": pack, "offset": value.get("offset", 0)}


def qualified_type_name(value: Any) -> str:
    cls = type(value)
    module = getattr(cls, "__module__", None)
    name = getattr(cls, "__qualname__", cls.__name__)
    return name if module in (None, "builtins") else f"{module}.{name}"


class _ShortRepr(BoundedRepr):
    """reprlib with limits for a one-line summary."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 2
        self.maxtuple = self.maxlist = self.maxarray = self.maxdeque = 4
        self.maxdict = self.maxset = self.maxfrozenset = 4
        self.maxstring = self.maxother = MAX_REPR_CHARS
        self.maxlong = 40

    def unrepresentable(self, value: Any, error: Exception) -> str:
        return f"<unrepresentable {qualified_type_name(value)}>"


_SHORT_REPR = _ShortRepr()


def short_repr(value: Any) -> str:
    """A one-line repr of at most :data:`MAX_REPR_CHARS`; never raises."""
    try:
        text = _SHORT_REPR.repr(value)
    except Exception:
        text = f"<unrepresentable {qualified_type_name(value)}>"
    return cut_end(re.sub(r"\s*\n\s*", " ", text), MAX_REPR_CHARS)


class SecretValue:
    """How a secret is pickled: salted, so that its blob's name (the hash of the pickle, which
    manifests and the XCom view show) says nothing about the value, not even to a guesser."""

    def __init__(self, value: Any):
        self.salt = os.urandom(16)
        self.value = value

    def __repr__(self) -> str:
        return SECRET_REPR


class ArtifactStore:
    """Saves values as blobs under ``data/`` and loads them back by hash, verified.

    Every load hashes the bytes before unpickling them (see :mod:`.encoding`). A blob that fails
    the check is read a second time (a transfer fault is not damage); if it fails again it is moved
    aside to ``damaged/`` and the load raises :class:`CorruptArtifactError`, so that the next save
    of the same value stores it anew instead of finding the damaged one "already there". Saves
    check what is there by size (and, on S3, by the hash recorded with the object) and rewrite a
    blob that does not match.
    """

    def __init__(
        self,
        backend: StorageBackend,
        *,
        clock: Callable[[], float] = time.monotonic,
        freshen_interval: float = FRESHEN_INTERVAL_SECONDS,
    ):
        self.backend = backend
        #: What this store reads the time from (seconds, only differences count): when it confirmed
        #: or verified a blob, and whether that is too long ago to rely on. A test can turn it on.
        self.clock = clock
        #: See :data:`FRESHEN_INTERVAL_SECONDS`; gc's grace period assumes the default.
        self.freshen_interval = freshen_interval
        # Where each blob this process has stored or seen stored (freshened) lives, and when
        # (``clock()``) it was last confirmed: a value re-saved unchanged within half the
        # freshen interval costs no request at all; later, it is checked (and freshened) again.
        # Loads do not count: a blob read from another run may be on its way to the garbage
        # collector, and only a save's check renews it.
        self._locations: dict[str, tuple[_Location, float]] = {}
        # Blobs (own, not packed) this process read and verified, and when: a re-save of such a
        # value still checks and freshens the blob, but need not re-read its bytes to verify them.
        self._verified: dict[str, float] = {}
        # The preview of each value this process loaded or saved, by the value's hash: a value
        # saved again unchanged (a step handing on what it read) keeps its preview, made once.
        self._previews: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        # Confirmations older than this (``clock()``) are not relied on: set by a task's lease
        # (leases.py) to when it was taken, since gc waits only for tasks whose lease is older than
        # the blobs it took out of data/.
        self._trust_since = float("-inf")
        self._packs: OrderedDict[str, bytes] = OrderedDict()  # recently loaded packs
        self._packs_bytes = 0

    def save(self, name: str, value: Any) -> ArtifactRef:
        """Store ``value`` (artifact ``name``, used in error messages); free if already stored."""
        return self.save_many({name: value})[name]

    def save_many(
        self,
        values: Mapping[str, Any],
        *,
        secret_names: Iterable[str] = (),
        written: set[str] | None = None,
        pack_items: int | None = None,
    ) -> dict[str, ArtifactRef]:
        """Store several artifacts in as few requests as their sizes allow.

        - Pickles up to :data:`PACK_ITEM_MAX_BYTES` go into packs of up to
          :data:`PACK_MAX_BYTES`: one existence check and at most one write per pack, none per
          artifact. (A small value that also sits in another pack is stored again: that costs a
          few bytes, where checking each small artifact would cost a request each.)
        - Other in-memory pickles are sent in batches: one parallel existence check, then one
          parallel upload of the missing ones.
        - Large pickles (spilled to a scratch file while pickling) are stored one by one as soon as
          they are pickled, so at most one large scratch file exists at a time.

        Values named in ``secret_names`` are stored salted (:class:`SecretValue`), with
        :data:`SECRET_REPR` as their repr. ``written``, if given, receives the hash of every value
        this call had to write (the others were already stored): what a step's log reports.

        ``pack_items`` closes a pack once it holds that many artifacts: for a foreach's items, each
        of which a child task loads alone, so that the child reads the pack holding its own item
        and at most ``pack_items - 1`` of its siblings, not up to :data:`PACK_MAX_BYTES` of them.
        Packs closed so are written together (one parallel check, one parallel upload).

        If one value cannot be pickled, :class:`ArtifactSaveError` names it; some values before it
        may already be stored, unreferenced, which is harmless.
        """
        batch = _SaveBatch(self, secret_names=frozenset(secret_names), pack_items=pack_items)
        for name, value in values.items():
            batch.add(name, value)
        stored = batch.flush()
        if written is not None:
            written.update(batch.written)
        result = {name: stored[name] for name in values}
        self._note_previews(result.values())
        return result

    @property
    def freshen_after(self) -> float:
        """Seconds after which a blob's last write (or this process's memory of it) is too old to rely on."""
        return self.freshen_interval / 2

    def _note_previews(self, refs: Iterable[ArtifactRef]) -> None:
        with self._lock:
            for ref in refs:
                if ref.preview is not None:
                    self._previews[ref.hash] = ref.preview

    def _remember(self, blob_hash: str, location: _Location, checked_at: float) -> None:
        """Note that a save stored or confirmed (and so freshened) the blob, checking from ``checked_at``."""
        with self._lock:
            self._locations[blob_hash] = (location, checked_at)

    def _intact(self, blob_hash: str) -> bool:
        """Whether this process read and verified the blob within half the freshen interval."""
        with self._lock:
            verified = self._verified.get(blob_hash)
        return verified is not None and self.clock() - verified <= self.freshen_after

    def trust_confirmations_since(self, moment: float) -> None:
        """Rely only on blobs stored or confirmed from ``moment`` (on :attr:`clock`) on."""
        with self._lock:
            self._trust_since = max(self._trust_since, moment)

    def _confirmed_location(self, blob_hash: str) -> _Location | None:
        with self._lock:
            known = self._locations.get(blob_hash)
            if known is None:
                return None
            if self.clock() - known[1] > self.freshen_after or known[1] < self._trust_since:
                del self._locations[blob_hash]
                return None
            return known[0]

    def _forget(self, blob_hash: str) -> None:
        with self._lock:
            self._locations.pop(blob_hash, None)
            self._verified.pop(blob_hash, None)
            data = self._packs.pop(blob_hash, None)
            if data is not None:
                self._packs_bytes -= len(data)

    def load(self, ref_or_hash: ArtifactRef | str, *, what: str | None = None) -> Any:
        """The value stored under a reference (or the bare hash of a blob of its own).

        ``what`` names the artifact for messages (e.g. "artifact 'model' of TrainFlow/12/train/0").
        """
        if isinstance(ref_or_hash, ArtifactRef):
            ref: ArtifactRef | None = ref_or_hash
            self._note_previews([ref_or_hash])
            blob_hash, size = ref_or_hash.hash, ref_or_hash.size
            what = what or f"artifact of type {ref_or_hash.type} ({ref_or_hash.repr})"
        else:
            ref, blob_hash, size, what = None, ref_or_hash, None, what or "artifact"
        pack_hash = ref.pack if ref is not None else None
        key = blob_key(pack_hash or blob_hash)
        try:
            if pack_hash is not None:
                assert ref is not None
                pickled = self._pack(pack_hash, what)[ref.offset : ref.offset + ref.size]
                if len(pickled) != ref.size or encoding.content_hash(pickled) != blob_hash:
                    raise CorruptArtifactError(
                        f"The {what} is not where its reference says: pack {pack_hash} (at "
                        f"{self.backend.describe(key)}, intact) holds no pickle hashing to {blob_hash} at "
                        f"offset {ref.offset}. The manifest that lists it is wrong; nothing was unpickled."
                    )
                value = pickle.loads(pickled)
            else:
                value = self._read_twice(
                    blob_hash,
                    what,
                    lambda key: encoding.decode(self.backend, key, size=size, expected_hash=blob_hash),
                )
                with self._lock:
                    self._verified[blob_hash] = self.clock()
        except ArtifactNotFoundError as error:
            raise ArtifactNotFoundError(
                f"The {what} with hash {blob_hash} is missing from the datastore {self.backend.root}: "
                f"nothing is stored under key '{key}' ({self.backend.describe(key)}). It may have been "
                f"garbage-collected or found damaged, or the run wrote to another datastore root."
            ) from error
        except DatastoreError:
            raise
        except Exception as error:
            raise ArtifactLoadError(
                f"The {what} (verified intact at {self.backend.describe(key)}) could not be unpickled "
                f"here: {type(error).__name__}: {error}. If a module or class is missing, install the same "
                f"packages (and versions) as the step that saved it."
            ) from error
        return value.value if isinstance(value, SecretValue) else value

    def load_preview(self, ref: ArtifactRef, *, what: str) -> dict[str, Any] | None:
        """The preview stored with an artifact (:mod:`.previews`), verified; None if it has none.

        Nothing is unpickled: a preview is JSON, so a server showing artifacts can read it.
        """
        location = ref.preview
        if location is None:
            return None
        pack_hash, preview_hash = location["pack"], location["hash"]
        what = f"preview of the {what}"
        if pack_hash is not None:
            start = location["offset"]
            data = self._pack(pack_hash, what)[start : start + location["size"]]
        else:
            data = self._read_twice(preview_hash, what, self.backend.get_bytes)
        if encoding.content_hash(data) != preview_hash:
            raise CorruptArtifactError(
                f"The {what} is not where its reference says: no bytes hashing to {preview_hash} at "
                f"offset {location['offset']} of pack {pack_hash}. The manifest that lists it is wrong."
            )
        try:
            return read_preview(data)
        except ValueError as error:
            raise CorruptArtifactError(f"The {what} is not a preview: {error}.") from None

    @contextlib.contextmanager
    def verified_pickle(self, ref: ArtifactRef, *, what: str) -> Iterator[bytes | BinaryIO]:
        """The artifact's pickle, verified against its hash and not unpickled, valid inside the
        block: bytes (packed or small remote blobs) or a file at its start. For downloads."""
        key = blob_key(ref.pack or ref.hash)
        try:
            if ref.pack is not None:
                pickled = self._pack(ref.pack, what)[ref.offset : ref.offset + ref.size]
                if len(pickled) != ref.size or encoding.content_hash(pickled) != ref.hash:
                    raise CorruptArtifactError(
                        f"The {what} is not where its reference says: pack {ref.pack} holds no pickle "
                        f"hashing to {ref.hash} at offset {ref.offset}."
                    )
                yield pickled
                return
            with contextlib.ExitStack() as stack:

                def enter(key: str) -> Any:
                    return stack.enter_context(
                        encoding.verified_source(self.backend, key, size=ref.size, expected_hash=ref.hash)
                    )

                yield self._read_twice(ref.hash, what, enter)
        except ArtifactNotFoundError as error:
            raise ArtifactNotFoundError(
                f"The {what} with hash {ref.hash} is missing from the datastore {self.backend.root}: "
                f"nothing is stored under key '{key}'."
            ) from error

    def _read_twice(self, blob_hash: str, what: str, read: Callable[[str], _T]) -> _T:
        """``read(key)`` of the blob, which verifies what it reads; a mismatch is read once more (a
        fault on the way must not be taken for damage) before the blob is set aside as damaged.

        A blob missing from ``data/`` is looked for in gc's trash: gc takes unreferenced blobs out
        of ``data/`` first and deletes them only a gc later, so a task that relied on a blob just as
        gc took it still finds it (see :mod:`.gc`). One missing from the trash too (or gone from it
        once found there) was being moved back into ``data/`` (gc moves back what a kept run came to
        reference: locally at once, on S3 copied before it is deleted), and is read there again."""
        key = blob_key(blob_hash)
        try:
            return self._verified_read(key, what, read)
        except ArtifactNotFoundError:
            pass
        trashed = self.trashed_key(blob_hash)
        if trashed is not None:
            try:
                return self._verified_read(trashed, what, read)
            except ArtifactNotFoundError:
                pass  # moved back meanwhile
        return self._verified_read(key, what, read)

    def _verified_read(self, key: str, what: str, read: Callable[[str], _T]) -> _T:
        try:
            return read(key)
        except encoding.ContentMismatch:
            pass
        try:
            return read(key)
        except encoding.ContentMismatch as mismatch:
            raise self._damaged(key, mismatch, what) from None

    def trashed_key(self, blob_hash: str) -> str | None:
        """Where gc's trash holds the blob (the newest round that has it), None if it does not."""
        rounds, _ = self.backend.list_dir(TRASH_PREFIX)
        for round_name in sorted((name for name in rounds if is_trash_round(name)), reverse=True):
            key = trash_key(round_name, blob_hash)
            if self.backend.exists(key):
                return key
        return None

    def _pack(self, pack_hash: str, what: str) -> bytes:
        """A pack's bytes, verified, fetched once and kept while recently used (its pack-mates follow)."""
        with self._lock:
            data = self._packs.get(pack_hash)
            if data is not None:
                self._packs.move_to_end(pack_hash)
                return data
        data = self._read_twice(
            pack_hash,
            f"pack holding the {what}",
            lambda key: encoding.verified(self.backend.get_bytes(key), pack_hash),
        )
        self._cache_pack(pack_hash, data)
        return data

    def _damaged(self, key: str, mismatch: encoding.ContentMismatch, what: str) -> CorruptArtifactError:
        """Move a blob that twice failed its check aside, so the next save of its value rewrites it."""
        self._forget(mismatch.expected_hash)
        aside = damaged_blob_key(mismatch.expected_hash)
        try:
            self.backend.move(key, aside)
            moved = f"It was moved to {self.backend.describe(aside)}"
        except DatastoreError as error:
            moved = f"Moving it aside failed ({error})"
        return CorruptArtifactError(
            f"The {what} is damaged in the datastore: the bytes at {self.backend.describe(key)} hash to "
            f"{mismatch.actual_hash} ({mismatch.actual_size} bytes), not to {mismatch.expected_hash}, its "
            f"name. Nothing was unpickled. {moved}; run the step that produced it again (clear its task "
            f"in Airflow) to store it anew."
        )

    def _cache_pack(self, pack_hash: str, data: bytes) -> None:
        with self._lock:
            if pack_hash in self._packs:
                return
            self._packs[pack_hash] = data
            self._packs_bytes += len(data)
            while self._packs_bytes > _PACK_CACHE_BYTES and len(self._packs) > 1:
                _, evicted = self._packs.popitem(last=False)
                self._packs_bytes -= len(evicted)


class _SaveBatch:
    """One :meth:`ArtifactStore.save_many`: values are pickled as they are added and sorted into
    the storage path their size calls for; packs and batches are stored when full and at
    :meth:`flush`.

    - already stored (this process stored or confirmed the blob lately): no request;
    - small pickles: into the artifact pack being filled (closed early by ``pack_items``);
    - their previews: into a preview pack of their own, so loading an artifact never downloads them;
    - medium pickles (in memory): pending, checked and uploaded in parallel batches;
    - large pickles (spilled to a scratch file): checked and stored at once, one at a time.
    """

    def __init__(self, store: ArtifactStore, *, secret_names: frozenset[str], pack_items: int | None):
        self.store = store
        self.backend = store.backend
        self.secret_names = secret_names
        self.pack_items = pack_items
        self.scratch_dir = self.backend.scratch_dir()
        # Taken before any check or write, so what this batch remembers never looks fresher than it is.
        self.checked_at = store.clock()
        #: The hash of every value this batch had to write (the others were already stored).
        self.written: set[str] = set()
        self.refs: dict[str, ArtifactRef] = {}
        self.previews: dict[str, dict[str, Any]] = {}  # name -> where its preview is
        self.pack = _PackBuilder()
        self.closed: list[_PackBuilder] = []  # packs closed by pack_items, not yet stored
        self.preview_pack = _PackBuilder()
        self.pending: dict[str, tuple[bytes, str]] = {}  # blob key -> (medium pickle, hash)
        self.pending_bytes = 0

    def add(self, name: str, value: Any) -> None:
        """Pickle ``value`` and store it, or hold it until its pack or batch is full."""
        secret = name in self.secret_names
        blob = encoding.encode(
            SecretValue(value) if secret else value, name=name, scratch_dir=self.scratch_dir
        )
        ref = ArtifactRef(
            hash=blob.hash,
            type=qualified_type_name(value),
            size=blob.size,
            repr=SECRET_REPR if secret else short_repr(value),
        )
        if not secret:
            self._add_preview(name, value, ref)
        known = self.store._confirmed_location(blob.hash)
        if known is not None:
            blob.discard()
            self.refs[name] = ref.located(known)
        elif blob.data is not None and blob.size <= PACK_ITEM_MAX_BYTES:
            self._add_packed(name, ref, blob.data)
        elif blob.data is not None:
            self.refs[name] = ref
            self._add_pending(blob.hash, blob.data)
        else:
            self.refs[name] = ref
            self._store_large(blob)

    def flush(self) -> dict[str, ArtifactRef]:
        """Store what is held; every added value's reference, with where its preview is."""
        self.refs.update(self._store_packs([*self.closed, self.pack]))
        self._store_pack(self.preview_pack)
        self._store_pending()
        return {name: ref.with_preview(self.previews.get(name)) for name, ref in self.refs.items()}

    # -- the storage paths ---------------------------------------------------------------------

    def _add_preview(self, name: str, value: Any, ref: ArtifactRef) -> None:
        """Find or make the value's preview: one this process knows, or a new one in the preview
        pack (stored as soon as it is full)."""
        known_preview = self.store._previews.get(ref.hash)
        if known_preview is not None:
            self.previews[name] = known_preview
            return
        preview = make_preview(value, ref.repr)
        if preview is None:
            return
        preview_hash = encoding.content_hash(preview)
        known = self.store._confirmed_location(preview_hash)
        if known is not None:
            self.previews[name] = {
                "hash": preview_hash,
                "size": len(preview),
                "pack": known[0],
                "offset": known[1],
            }
            return
        self.preview_pack.add_preview(name, preview_hash, preview)
        if self.preview_pack.size >= PACK_MAX_BYTES:
            self._store_pack(self.preview_pack)
            self.preview_pack = _PackBuilder()

    def _add_packed(self, name: str, ref: ArtifactRef, data: bytes) -> None:
        self.pack.add(name, ref, data)
        if self.pack.size >= PACK_MAX_BYTES:
            self.refs.update(self._store_pack(self.pack))
            self.pack = _PackBuilder()
        elif self.pack_items is not None and len(self.pack.items) >= self.pack_items:
            self.closed.append(self.pack)
            self.pack = _PackBuilder()
            if sum(closed.size for closed in self.closed) >= _BATCH_BYTES:
                self.refs.update(self._store_packs(self.closed))
                self.closed = []

    def _add_pending(self, blob_hash: str, data: bytes) -> None:
        key = blob_key(blob_hash)
        if key not in self.pending:
            self.pending[key] = (data, blob_hash)
            self.pending_bytes += len(data)
        if self.pending_bytes >= _BATCH_BYTES:
            self._store_pending()

    def _store_large(self, blob: encoding.EncodedBlob) -> None:
        """Store a spilled pickle now (at most one scratch file at a time), unless it is there."""
        try:
            if not self.backend.blob_is_stored(
                blob_key(blob.hash),
                blob.size,
                blob.hash,
                freshen_after=self.store.freshen_after,
                known_intact=self.store._intact(blob.hash),
            ):
                assert blob.path is not None
                path, blob.path = blob.path, None
                self.backend.adopt_file(blob_key(blob.hash), path, content_hash=blob.hash)
                self.written.add(blob.hash)
        finally:
            blob.discard()
        self.store._remember(blob.hash, (None, 0), self.checked_at)

    def _store_pending(self) -> None:
        """Store the pending medium pickles: one parallel check, one parallel upload of the missing."""
        pending, self.pending, self.pending_bytes = self.pending, {}, 0
        if not pending:
            return
        store = self.store
        stored = self.backend.blobs_stored(
            {key: (len(data), blob_hash) for key, (data, blob_hash) in pending.items()},
            freshen_after=store.freshen_after,
            known_intact=frozenset(
                key for key, (_, blob_hash) in pending.items() if store._intact(blob_hash)
            ),
        )
        missing = {key: item for key, item in pending.items() if key not in stored}
        self.backend.put_many_bytes(missing)
        self.written.update(blob_hash for _, blob_hash in missing.values())
        for _, blob_hash in pending.values():
            store._remember(blob_hash, (None, 0), self.checked_at)

    def _store_pack(self, pack: _PackBuilder) -> dict[str, ArtifactRef]:
        """Store one pack (of artifacts or of previews) unless it is there: one check, at most one write."""
        if not pack.items and not pack.previews:
            return {}
        data = pack.data()
        pack_hash = encoding.content_hash(data)
        key = blob_key(pack_hash)
        # One check per pack: a re-run's identical pack is free, a damaged one is rewritten.
        if not self.backend.blob_is_stored(key, len(data), pack_hash, freshen_after=self.store.freshen_after):
            self.backend.put_bytes(key, data, content_hash=pack_hash)
            self.written.update(ref.hash for _, ref, _ in pack.items)
        return self._placed(pack, pack_hash, data)

    def _store_packs(self, packs: list[_PackBuilder]) -> dict[str, ArtifactRef]:
        """Store several artifact packs: one parallel check, one parallel upload of the missing."""
        filled = [pack for pack in packs if pack.items]
        if len(filled) <= 1:  # the common case: one pack, checked and written on its own
            return self._store_pack(filled[0]) if filled else {}
        hashed = [(pack, data, encoding.content_hash(data)) for pack in filled for data in (pack.data(),)]
        stored = self.backend.blobs_stored(
            {blob_key(pack_hash): (len(data), pack_hash) for _, data, pack_hash in hashed},
            freshen_after=self.store.freshen_after,
        )
        missing = {
            blob_key(pack_hash): (data, pack_hash)
            for _, data, pack_hash in hashed
            if blob_key(pack_hash) not in stored
        }
        self.backend.put_many_bytes(missing)
        refs: dict[str, ArtifactRef] = {}
        for pack, data, pack_hash in hashed:
            if blob_key(pack_hash) in missing:
                self.written.update(ref.hash for _, ref, _ in pack.items)
            refs.update(self._placed(pack, pack_hash, data))
        return refs

    def _placed(self, pack: _PackBuilder, pack_hash: str, data: bytes) -> dict[str, ArtifactRef]:
        """The references of a stored pack's artifacts (and where its previews are), remembered."""
        refs = {}
        for name, ref, offset in pack.items:
            refs[name] = ref.located((pack_hash, offset))
            self.store._remember(ref.hash, (pack_hash, offset), self.checked_at)
        for name, preview_hash, size, offset in pack.previews:
            self.previews[name] = {"hash": preview_hash, "size": size, "pack": pack_hash, "offset": offset}
            self.store._remember(preview_hash, (pack_hash, offset), self.checked_at)
        self.store._cache_pack(pack_hash, data)
        return refs


class _PackBuilder:
    """Small pickles collected into one object, each remembered with its offset."""

    def __init__(self) -> None:
        self.items: list[tuple[str, ArtifactRef, int]] = []
        self.previews: list[tuple[str, str, int, int]] = []  # (artifact name, hash, size, offset)
        self._chunks: list[bytes] = []
        self._offsets: dict[str, int] = {}  # blob hash -> offset: equal values are packed once
        self.size = 0

    def add(self, name: str, ref: ArtifactRef, data: bytes) -> None:
        self.items.append((name, ref, self._offset(ref.hash, data)))

    def add_preview(self, name: str, preview_hash: str, data: bytes) -> None:
        self.previews.append((name, preview_hash, len(data), self._offset(preview_hash, data)))

    def _offset(self, blob_hash: str, data: bytes) -> int:
        offset = self._offsets.get(blob_hash)
        if offset is None:
            offset = self._offsets[blob_hash] = self.size
            self._chunks.append(data)
            self.size += len(data)
        return offset

    def data(self) -> bytes:
        return b"".join(self._chunks)
