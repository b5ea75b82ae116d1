"""How the XCom backend decides, stores and restores values (kept apart from the Airflow class).

The trust boundary. Whoever can write an XCom row (a task pushing a value, or someone editing the
metadata database) must not be able to make a reader open, unpickle or delete anything of their
choosing, let alone outside the configured datastore root. So:

* An ordinary XCom too large or not JSON is pickled to a key derived from the XCom's own
  identity (dag, run, task, map index, key) under the configured root. Its row holds that
  identity, the pickle's BLAKE3 hash, size, type and a short repr: no path, no root. Reading
  derives the key again, refuses a row whose identity is not the XCom asked for (where Airflow
  says which one that is), and checks the bytes against the hash before unpickling.
* A value that merely looks like one of our rows (a dict with our marker, pushed by any task) is
  stored pickled like any other value, so it comes back as the plain data it is.
* A list that mapped tasks read one element of each (a :class:`ChunkedList`: a foreach's children)
  is stored in chunks at keys derived from the XCom's identity. Its row holds that identity, the
  length and the root of a hash tree over the chunks (:mod:`~airflow_flowspec.datastore.chunks`):
  a reader checks the one chunk it reads against that root, so neither an edited row nor an
  edited chunk can hand a task an element its upstream did not return, nor fewer of them (an
  answer resting on the row's length alone reads a chunk to prove it).
* A step's manifest is stored inline only when a step operator publishes it
  (:func:`publishing_step_manifest`). A manifest row names artifacts by content hash only; they are
  read from the configured root and verified, whatever the row says.
* ``purge`` deletes only the pickle (or the chunks) of the XCom Airflow is clearing, at its derived
  keys.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import operator
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

from airflow_flowspec import config
from airflow_flowspec.datastore import open_datastore
from airflow_flowspec.datastore.artifacts import qualified_type_name, short_repr
from airflow_flowspec.datastore.chunks import CHUNK_ITEMS, ChunkMismatch
from airflow_flowspec.datastore.manifest import MANIFEST_MARKER, Manifest, is_manifest
from airflow_flowspec.datastore.views import InputView, task_view
from airflow_flowspec.datastore.xcoms import XComIdentity
from airflow_flowspec.errors import ArtifactNotFoundError, CorruptArtifactError, XComReferenceError
from airflow_flowspec.terminal import terminal_safe

#: The key that marks an XCom row as a reference to a pickled value in the datastore; its value
#: is the row format's version.
STORED_MARKER = "flowspec_xcom"
STORED_VERSION = 2
#: The key that marks an XCom row as a list stored in chunks (:class:`ChunkedList`); its value is
#: the row format's version.
CHUNKED_MARKER = "flowspec_xcom_chunks"
CHUNKED_VERSION = 1
#: The most elements (and elements per chunk) a chunked list's row may claim: far beyond what
#: Airflow maps over (``[core] max_map_length``, 1,024 by default). ``len()`` answers with the
#: row's claim before any chunk is read, and ``list()`` sizes its buffer by it, so a row claiming
#: more is refused before anything is sized by it (a longer list is stored as any other value).
MAX_CHUNKED_LENGTH = 10_000_000
#: The longest description of a chunked list a row keeps (it is for people and messages only).
_MAX_DESCRIPTION_CHARS = 200
_PLAIN_SCALARS = (str, int, float, bool, type(None))
_HASH = re.compile(r"[0-9a-f]{64}")


#: Set while a step operator pushes its manifest: only then is a manifest stored inline as one.
_publishing_manifest: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "flowspec_publishing_manifest", default=False
)
#: What Airflow is reading (or clearing) right now, when it says: (dag, run, task, map index, key),
#: None for "any" (a pull over all map indexes, or over earlier runs).
_expected: contextvars.ContextVar[tuple | None] = contextvars.ContextVar(
    "flowspec_expected_xcom", default=None
)


@contextlib.contextmanager
def publishing_step_manifest() -> Iterator[None]:
    token = _publishing_manifest.set(True)
    try:
        yield
    finally:
        _publishing_manifest.reset(token)


@contextlib.contextmanager
def expecting(*, dag_id: Any, run_id: Any, task_id: Any, map_index: Any, key: Any) -> Iterator[None]:
    """Within the block, a stored row must be the named XCom (None fields match anything)."""
    token = _expected.set((dag_id, run_id, task_id, map_index, key))
    try:
        yield
    finally:
        _expected.reset(token)


class ChunkedList(list):
    """A list that downstream tasks map over, one element each: return one from a task.

    Airflow 3.3 gives a mapped task its element by pulling the upstream's whole return value and
    indexing it, so a list of N elements stored whole costs each of N mapped tasks all N. This
    one is stored in chunks (:mod:`~airflow_flowspec.datastore.chunks`), and a reader gets a
    :class:`ChunkedSequence`, which reads only the chunk holding the element asked for.
    ``description`` says what the list is, in the row and in messages. Elements must be plain
    JSON; a list that is not is stored as any other value.
    """

    def __init__(self, items: Iterable[Any] = (), *, description: str = "a list mapped tasks read"):
        super().__init__(items)
        self.description = description


def is_stored_value(value: Any) -> bool:
    return isinstance(value, dict) and STORED_MARKER in value


def is_chunked_row(value: Any) -> bool:
    return isinstance(value, dict) and CHUNKED_MARKER in value


def _looks_like_ours(value: Any) -> bool:
    return isinstance(value, dict) and (
        STORED_MARKER in value or MANIFEST_MARKER in value or CHUNKED_MARKER in value
    )


def serialize(value: Any, *, key: Any, task_id: Any, dag_id: Any, run_id: Any, map_index: Any) -> Any:
    """What Airflow's ``xcom`` table stores for ``value``."""
    if isinstance(value, InputView):  # a plain task passing a step's artifacts on
        return value.manifest
    if _publishing_manifest.get() and is_manifest(value):
        return value
    if isinstance(value, ChunkedList):
        identity = _identity(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index, key=key)
        row = store_chunked(value, identity)
        if row is not None:
            return row
    if not _looks_like_ours(value):
        inline = fits_inline(value)
        if inline is not None:
            return inline
    return store_value(value, key=key, task_id=task_id, dag_id=dag_id, run_id=run_id, map_index=map_index)


def deserialize(stored: Any) -> tuple[bool, Any]:
    """(True, value) for our rows; (False, None) for rows Airflow's own serde should read."""
    if is_manifest(stored):
        return True, manifest_view(stored)
    if is_stored_value(stored):
        return True, load_stored_value(stored)
    if is_chunked_row(stored):
        return True, load_chunked(stored)
    return False, None


#: What :func:`_plain_json_size` says of a value that is not plain JSON, or is larger than asked.
NOT_PLAIN_JSON = -1
OVER_BUDGET = -2


def _plain_json_size(value: Any, budget: int) -> int:
    """Approximate JSON size of a plain JSON value, NOT_PLAIN_JSON, or OVER_BUDGET.

    Walks the value with an early exit, so a 50 MB value is rejected after ``budget`` bytes of
    work instead of being JSON-encoded (or walked by Airflow's serde) first just to be measured.
    A value that is not plain JSON is still measured, so that a large one is known to be large.
    """
    stack = [value]
    size = 0
    plain = True
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            size += len(item) + 2
        elif isinstance(item, _PLAIN_SCALARS):
            size += 8
        elif isinstance(item, list):
            size += 2 + len(item)
            stack.extend(item)
        elif isinstance(item, dict):
            size += 2 + len(item)
            for key, child in item.items():
                if isinstance(key, str):
                    size += len(key) + 3
                else:
                    plain = False
                stack.append(child)
        elif isinstance(item, (bytes, bytearray)):
            plain = False
            size += len(item)
        else:
            plain = False
            size += 8
        if size > budget:
            return OVER_BUDGET
    return size if plain else NOT_PLAIN_JSON


def fits_inline(value: Any) -> Any:
    """The value as Airflow would store it inline, or None when it belongs in the datastore."""
    from airflow.sdk import BaseXCom

    limit = config.xcom_inline_max_bytes()
    size = _plain_json_size(value, limit)
    if size >= 0:
        return value
    if size == OVER_BUDGET or isinstance(value, (bytes, memoryview)) or hasattr(value, "__array__"):
        return None
    try:  # small, but not plain JSON (a set, a datetime...): inline if Airflow's serde can carry it
        serialized = BaseXCom.serialize_value(value)
    except Exception:  # noqa: BLE001 - anything Airflow's serde cannot carry is pickled instead
        return None
    if len(json.dumps(serialized, default=str)) <= limit:
        return serialized
    return None


def _identity(*, dag_id: Any, run_id: Any, task_id: Any, map_index: Any, key: Any) -> XComIdentity:
    return XComIdentity(
        dag_id=str(dag_id or "unknown"),
        run_id=str(run_id or "unknown"),
        task_id=str(task_id or "unknown"),
        map_index=int(map_index if map_index is not None else -1),
        key=str(key or "return_value"),
    )


def store_value(
    value: Any, *, key: Any, task_id: Any, dag_id: Any, run_id: Any, map_index: Any
) -> dict[str, Any]:
    identity = _identity(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index, key=key)
    datastore = open_datastore(config.datastore_root())
    content_hash, size = datastore.xcoms.save_value(identity, value)
    return {
        STORED_MARKER: STORED_VERSION,
        **identity._asdict(),
        "hash": content_hash,
        "size": size,
        "type": qualified_type_name(value),
        "repr": short_repr(value),
    }


def row_identity(stored: dict[str, Any]) -> XComIdentity:
    """The identity a stored row claims, checked for shape; :class:`XComReferenceError` otherwise."""
    version = stored.get(STORED_MARKER)
    if version != STORED_VERSION:
        raise XComReferenceError(
            f"An XCom row refers to a stored value in format {version!r}, which this airflow-flowspec "
            f"does not read (format 1 rows named a path, which is not trusted). Run the task that "
            f"pushed it again to store the value anew. Nothing was read."
        )
    return _claimed_identity(
        stored,
        "a stored value",
        lambda: (
            isinstance(stored["hash"], str)
            and _HASH.fullmatch(stored["hash"]) is not None
            and type(stored["size"]) is int
        ),
    )


def _claimed_identity(stored: dict[str, Any], what: str, fields_ok: Any) -> XComIdentity:
    """The identity a row claims, checked for shape with the row's other fields (``fields_ok()``)."""
    try:
        identity = XComIdentity(
            dag_id=stored["dag_id"],
            run_id=stored["run_id"],
            task_id=stored["task_id"],
            map_index=stored["map_index"],
            key=stored["key"],
        )
        well_formed = (
            all(
                isinstance(part, str)
                for part in (identity.dag_id, identity.run_id, identity.task_id, identity.key)
            )
            and type(identity.map_index) is int
            and fields_ok()
        )
    except KeyError as missing:
        raise XComReferenceError(
            f"An XCom row refers to {what} but lacks {missing}: it was not written by this XCom "
            f"backend. Nothing was read."
        ) from None
    if not well_formed:
        raise XComReferenceError(
            f"An XCom row refers to {what} with malformed fields ({stored!r:.300}): it was not "
            f"written by this XCom backend. Nothing was read."
        )
    return identity


def _check_expected(identity: XComIdentity, action: str) -> None:
    expected = _expected.get()
    if expected is None:
        return
    for name, want, have in zip(XComIdentity._fields, expected, identity, strict=True):
        if want is not None and want != have:
            raise XComReferenceError(
                f"The XCom row Airflow returned for {name} {want!r} claims to be {identity.describe()}: "
                f"the row was edited or copied. Refusing to {action} it; nothing was read or deleted."
            )


def load_stored_value(stored: dict[str, Any]) -> Any:
    identity = row_identity(stored)
    _check_expected(identity, "read")
    datastore = open_datastore(config.datastore_root())
    return datastore.xcoms.load_value(identity, size=stored["size"], content_hash=stored["hash"])


def store_chunked(value: ChunkedList, identity: XComIdentity) -> dict[str, Any] | None:
    """Store a :class:`ChunkedList` in chunks at keys derived from its XCom's identity and return
    its row; None (nothing stored) when its elements are not plain JSON, or are more than
    :data:`MAX_CHUNKED_LENGTH`."""
    items = list(value)
    if len(items) > MAX_CHUNKED_LENGTH or _plain_json_size(items, sys.maxsize) < 0:
        return None
    datastore = open_datastore(config.datastore_root())
    try:
        root, size = datastore.xcoms.save_chunks(identity, items, chunk_items=CHUNK_ITEMS)
    except (TypeError, ValueError):  # NaN or infinity: not JSON after all
        return None
    return {
        CHUNKED_MARKER: CHUNKED_VERSION,
        **identity._asdict(),
        "length": len(value),
        "chunk_items": CHUNK_ITEMS,
        "root": root,
        "size": size,
        "description": str(value.description)[:_MAX_DESCRIPTION_CHARS],
    }


def chunked_row_fields(stored: dict[str, Any]) -> tuple[XComIdentity, int, int, str, str]:
    """(identity, length, chunk size, root, description) a chunked row claims, checked for shape
    (a length and chunk size from 0 and 1 up to :data:`MAX_CHUNKED_LENGTH`);
    :class:`XComReferenceError` otherwise. Nothing here is trusted: every chunk read is proven
    against the root, which binds the length and chunk size too."""
    version = stored.get(CHUNKED_MARKER)
    if version != CHUNKED_VERSION:
        raise XComReferenceError(
            f"An XCom row refers to a chunked list in format {version!r}, which this airflow-flowspec "
            f"does not read. Run the task that pushed it again with this version. Nothing was read."
        )
    identity = _claimed_identity(
        stored,
        "a chunked list",
        lambda: (
            type(stored["length"]) is int
            and 0 <= stored["length"] <= MAX_CHUNKED_LENGTH
            and type(stored["chunk_items"]) is int
            and 1 <= stored["chunk_items"] <= MAX_CHUNKED_LENGTH
            and isinstance(stored["root"], str)
            and _HASH.fullmatch(stored["root"]) is not None
        ),
    )
    description = stored.get("description")
    if not isinstance(description, str):
        description = "a chunked list"
    return (
        identity,
        stored["length"],
        stored["chunk_items"],
        stored["root"],
        description[:_MAX_DESCRIPTION_CHARS],
    )


def load_chunked(stored: dict[str, Any]) -> ChunkedSequence:
    identity, length, chunk_items, root, description = chunked_row_fields(stored)
    _check_expected(identity, "read")
    return ChunkedSequence(identity, length, chunk_items, root, description)


class ChunkedSequence(Sequence):
    """What a task pulling a :class:`ChunkedList` gets: its length at once, and each element by
    reading only the chunk that holds it, proven against the root its row names.

    Airflow's mapping asks for ``len()`` and one element; iterating reads each chunk once. The
    length is the row's claim until a chunk is read: each chunk's proof binds the list's length,
    so every element read proves it too. An answer that rests on the length alone (iterating an
    empty list, an empty slice, an index out of range) reads chunk 0 first to prove it, so an
    edited length cannot shorten or empty the list unnoticed.
    """

    def __init__(self, identity: XComIdentity, length: int, chunk_items: int, root: str, description: str):
        self._identity = identity
        self._length = length
        self._chunk_items = chunk_items
        self._root = root
        self._description = description
        self._last: tuple[int, list[Any]] | None = None  # the chunk read last: (position, items)
        self._length_proven = False  # a chunk was read, so the length is the writer's

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            indexes = range(*index.indices(self._length))
            if not indexes:
                self._prove_length()
            return [self[i] for i in indexes]
        index = operator.index(index)
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            self._prove_length()
            raise IndexError(f"index {index} is out of range for {self._length} items of {self._description}")
        position, offset = divmod(index, self._chunk_items)
        return self._chunk(position, index)[offset]

    def __iter__(self) -> Iterator[Any]:
        if not self._length:
            self._prove_length()
        for index in range(self._length):
            yield self[index]

    def __reversed__(self) -> Iterator[Any]:
        if not self._length:
            self._prove_length()
        for index in reversed(range(self._length)):
            yield self[index]

    def __repr__(self) -> str:
        return f"<{self._length} items of {self._description}, read a chunk at a time>"

    def _prove_length(self) -> None:
        if not self._length_proven:
            self._chunk(0, None)

    def _chunk(self, position: int, index: int | None) -> list[Any]:
        """Chunk ``position``, proven, read for item ``index`` (None: to check the length)."""
        if self._last is not None and self._last[0] == position:
            return self._last[1]
        datastore = open_datastore(config.datastore_root())
        item = f"{self._description} ({self._identity.describe()})"
        where = datastore.xcoms.describe_chunk(self._identity, position)
        if index is None:
            item = f"Chunk 0 of {item}, read to check the length its row gives ({self._length} items),"
        else:
            item = f"Item {index} of {item}"
        try:
            items = datastore.xcoms.load_chunk(
                self._identity,
                position=position,
                length=self._length,
                chunk_items=self._chunk_items,
                root=self._root,
            )
        except ArtifactNotFoundError as error:
            raise ArtifactNotFoundError(
                f"{item} is missing from the datastore {datastore.root}: nothing is stored where its "
                f"chunk {position} belongs ({where}). Run task "
                f"{self._identity.task_id} again to store the list anew."
            ) from error
        except ChunkMismatch as mismatch:
            raise CorruptArtifactError(
                f"{item} is refused: the chunk stored for it at {where} "
                f"{mismatch.reason} (the root its XCom row names). The chunk or the row was edited, or "
                f"the row was copied from another list; nothing of it was used. Run task "
                f"{self._identity.task_id} again to store the list anew."
            ) from None
        expected = min(self._chunk_items, self._length - position * self._chunk_items)
        if len(items) != expected:  # unreachable for a chunk proven against the root; a last guard
            raise CorruptArtifactError(
                f"{item} is refused: its chunk {position} holds {len(items)} items, not {expected}."
            )
        self._last = (position, items)
        self._length_proven = True
        return items


def manifest_view(manifest: dict[str, Any]) -> InputView:
    """A step's manifest as an object with lazy attribute access to its artifacts."""
    return task_view(
        Manifest.from_json(manifest, where="An XCom pull"), open_datastore(config.datastore_root())
    )


def purge_stored(stored: Any) -> None:
    """Delete what a re-run replaces: an ordinary XCom's pickle, at the key its identity gives.

    A step's manifest needs nothing deleted: each attempt writes its own key (the attempt number is
    part of it), so a re-run replaces no stored object, and the earlier attempt stays readable if
    the re-run fails. Artifact blobs are shared by content and are left to garbage collection.

    A row this backend refuses to read (format 1, malformed, or not the XCom Airflow is clearing)
    names nothing we may delete: nothing is deleted, and Airflow drops the row. Raising here would
    fail the task's re-run before its code starts, every time, so the task could never replace it.
    """
    if not is_stored_value(stored) and not is_chunked_row(stored):
        return
    try:
        identity = row_identity(stored) if is_stored_value(stored) else chunked_row_fields(stored)[0]
        _check_expected(identity, "delete")
    except XComReferenceError as refused:
        # The row's fields are whatever was written into the table: shown escaped, never raw.
        logging.getLogger(__name__).warning(
            "%s Airflow drops the row; nothing else was deleted.", terminal_safe(str(refused))
        )
        return
    datastore = open_datastore(config.datastore_root())
    if is_stored_value(stored):
        datastore.xcoms.delete_value(identity)
    else:
        datastore.xcoms.delete_chunks(identity)
