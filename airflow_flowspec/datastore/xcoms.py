"""XComs of ordinary Airflow tasks kept in the datastore: pickled values, and lists that mapped
tasks read one element each of (a foreach's children), in chunks.

Their keys are derived from the XCom's identity (dag, run, task, map index, key) and the root,
never taken from anywhere else: whoever can edit an XCom row cannot point a read, an unpickle or a
delete at another object, let alone outside the root. The XCom backend
(:mod:`airflow_flowspec.xcom_backend.values`) decides what is stored here and keeps the rows.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from airflow_flowspec.datastore import chunks, encoding, keys
from airflow_flowspec.datastore.backends import StorageBackend
from airflow_flowspec.datastore.format_marker import FormatGuard
from airflow_flowspec.errors import CorruptArtifactError


class XComIdentity(NamedTuple):
    """Which XCom: the one identity its stored objects are named by."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    key: str

    def describe(self) -> str:
        index = "" if self.map_index < 0 else f"[{self.map_index}]"
        return f"XCom '{self.key}' of task {self.task_id}{index} in run {self.run_id} of DAG {self.dag_id}"

    @property
    def value_key(self) -> str:
        return keys.xcom_value_key(self.dag_id, self.run_id, self.task_id, self.map_index, self.key)

    @property
    def folder(self) -> str:
        return keys.xcom_folder(self.dag_id, self.run_id, self.task_id, self.map_index)

    def chunk_key(self, position: int) -> str:
        return keys.xcom_chunk_key(self.dag_id, self.run_id, self.task_id, self.map_index, self.key, position)


class XComStore:
    """The XComs of ordinary tasks in one datastore root (``Datastore.xcoms``)."""

    def __init__(self, backend: StorageBackend, format_guard: FormatGuard):
        self.backend = backend
        self._format = format_guard

    # -- pickled values --------------------------------------------------------------------------

    def save_value(self, identity: XComIdentity, value: Any) -> tuple[str, int]:
        """Pickle an ordinary task's XCom to its own key; return (content hash, pickled size).

        If the value cannot be pickled, an :class:`ArtifactSaveError` names it and whatever was
        stored under the key before is left as it was.
        """
        self._format.claim()
        object_key = identity.value_key
        name = f"XCom '{identity.key}' of task {identity.task_id}"
        blob = encoding.encode(value, name=name, scratch_dir=self.backend.scratch_dir())
        try:
            if blob.data is not None:
                self.backend.put_bytes(object_key, blob.data, content_hash=blob.hash)
            else:
                path, blob.path = blob.path, None
                assert path is not None  # an encoded blob is in memory or in a scratch file
                self.backend.adopt_file(object_key, path, content_hash=blob.hash)
        finally:
            blob.discard()
        return blob.hash, blob.size

    def load_value(self, identity: XComIdentity, *, size: int | None, content_hash: str) -> Any:
        """The value :meth:`save_value` stored for this XCom, verified against its hash."""
        object_key = identity.value_key
        try:
            return encoding.decode(self.backend, object_key, size=size, expected_hash=content_hash)
        except encoding.ContentMismatch as mismatch:
            raise CorruptArtifactError(
                f"XCom '{identity.key}' of task {identity.task_id} (run {identity.run_id} of DAG "
                f"{identity.dag_id}) does not match what was stored: {self.backend.describe(object_key)} "
                f"hashes to {mismatch.actual_hash}, not to {content_hash} as its XCom row says. Nothing "
                f"was unpickled; run task {identity.task_id} again to store the value anew."
            ) from None

    def delete_value(self, identity: XComIdentity) -> None:
        self.backend.delete_many([identity.value_key])

    # -- lists that mapped tasks read one element each of ----------------------------------------

    def save_chunks(
        self, identity: XComIdentity, items: list[Any], *, chunk_items: int = chunks.CHUNK_ITEMS
    ) -> tuple[str, int]:
        """Store a list of plain JSON values in chunks under the XCom's own keys (in parallel where
        the medium can); return (the root hash that proves each chunk, bytes written)."""
        self._format.claim()
        root, objects = chunks.chunk_list(items, chunk_items)
        self.backend.put_many_bytes(
            {identity.chunk_key(position): (data, None) for position, data in enumerate(objects)}
        )
        return root, sum(len(data) for data in objects)

    def load_chunk(
        self, identity: XComIdentity, *, position: int, length: int, chunk_items: int, root: str
    ) -> list[Any]:
        """Chunk ``position`` of a list :meth:`save_chunks` stored, proven against ``root``;
        :class:`chunks.ChunkMismatch` when what is stored there is not that chunk."""
        return chunks.read_chunk(
            self.backend.get_bytes(identity.chunk_key(position)),
            position=position,
            length=length,
            chunk_items=chunk_items,
            root=root,
        )

    def delete_chunks(self, identity: XComIdentity) -> None:
        """Delete every chunk stored for the XCom, however many its row claims (one listing)."""
        folder = identity.folder
        _, files = self.backend.list_dir(folder)
        self.backend.delete_many(
            [folder + name for name in files if keys.parse_xcom_chunk_name(identity.key, name) is not None]
        )

    def describe_chunk(self, identity: XComIdentity, position: int) -> str:
        return self.backend.describe(identity.chunk_key(position))
