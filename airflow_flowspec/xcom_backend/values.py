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
* A step's manifest is stored inline only when a step operator publishes it
  (:func:`publishing_step_manifest`). A manifest row names artifacts by content hash only; they are
  read from the configured root and verified, whatever the row says.
* ``purge`` deletes only the pickle of the XCom Airflow is clearing, at its derived key.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

from airflow_flowspec import config
from airflow_flowspec.datastore import open_datastore
from airflow_flowspec.datastore.artifacts import qualified_type_name, short_repr
from airflow_flowspec.datastore.manifest import MANIFEST_MARKER, checked_manifest, is_manifest
from airflow_flowspec.datastore.views import InputView, task_view
from airflow_flowspec.errors import XComReferenceError

#: The key that marks an XCom row as a reference to a pickled value in the datastore; its value
#: is the row format's version.
STORED_MARKER = "flowspec_xcom"
STORED_VERSION = 2
_PLAIN_SCALARS = (str, int, float, bool, type(None))
_HASH = re.compile(r"[0-9a-f]{64}")


class XComIdentity(NamedTuple):
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    key: str

    def describe(self) -> str:
        index = "" if self.map_index < 0 else f"[{self.map_index}]"
        return f"XCom '{self.key}' of task {self.task_id}{index} in run {self.run_id} of DAG {self.dag_id}"


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


def is_stored_value(value: Any) -> bool:
    return isinstance(value, dict) and STORED_MARKER in value


def _looks_like_ours(value: Any) -> bool:
    return isinstance(value, dict) and (STORED_MARKER in value or MANIFEST_MARKER in value)


def serialize(value: Any, *, key: Any, task_id: Any, dag_id: Any, run_id: Any, map_index: Any) -> Any:
    """What Airflow's ``xcom`` table stores for ``value``."""
    if isinstance(value, InputView):  # a plain task passing a step's artifacts on
        return value.manifest
    if _publishing_manifest.get() and is_manifest(value):
        return value
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
    from airflow.sdk.bases.xcom import BaseXCom

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


def store_value(
    value: Any, *, key: Any, task_id: Any, dag_id: Any, run_id: Any, map_index: Any
) -> dict[str, Any]:
    identity = XComIdentity(
        dag_id=str(dag_id or "unknown"),
        run_id=str(run_id or "unknown"),
        task_id=str(task_id or "unknown"),
        map_index=int(map_index if map_index is not None else -1),
        key=str(key or "return_value"),
    )
    datastore = open_datastore(config.datastore_root())
    content_hash, size = datastore.save_xcom_value(value, **identity._asdict())
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
            and isinstance(stored["hash"], str)
            and _HASH.fullmatch(stored["hash"]) is not None
            and type(stored["size"]) is int
        )
    except KeyError as missing:
        raise XComReferenceError(
            f"An XCom row refers to a stored value but lacks {missing}: it was not written by this XCom "
            f"backend. Nothing was read."
        ) from None
    if not well_formed:
        raise XComReferenceError(
            f"An XCom row refers to a stored value with malformed fields ({stored!r:.300}): it was not "
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
    return datastore.load_xcom_value(**identity._asdict(), size=stored["size"], content_hash=stored["hash"])


def manifest_view(manifest: dict[str, Any]) -> InputView:
    """A step's manifest as an object with lazy attribute access to its artifacts."""
    checked = checked_manifest(manifest, where="An XCom pull")
    return task_view(checked, open_datastore(config.datastore_root()))


def purge_stored(stored: Any) -> None:
    """Delete what a re-run replaces: an ordinary XCom's pickle, at the key its identity gives.

    A step's manifest needs nothing deleted: each attempt writes its own key (the attempt number is
    part of it), so a re-run replaces no stored object, and the earlier attempt stays readable if
    the re-run fails. Artifact blobs are shared by content and are left to garbage collection.

    A row this backend refuses to read (format 1, malformed, or not the XCom Airflow is clearing)
    names nothing we may delete: nothing is deleted, and Airflow drops the row. Raising here would
    fail the task's re-run before its code starts, every time, so the task could never replace it.
    """
    if not is_stored_value(stored):
        return
    try:
        identity = row_identity(stored)
        _check_expected(identity, "delete")
    except XComReferenceError as refused:
        logging.getLogger(__name__).warning("%s Airflow drops the row; nothing else was deleted.", refused)
        return
    open_datastore(config.datastore_root()).delete_xcom_value(**identity._asdict())
