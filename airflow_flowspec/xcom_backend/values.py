"""How the XCom backend decides, stores and restores values (kept apart from the Airflow class).

Ordinary XComs that are too large or not JSON are pickled to a per-XCom key
``_xcom/<dag>/<run>/<task>/<map_index>/<key>.pkl``: a re-run replaces exactly that object, so
``purge`` can delete it without touching anything shared.
"""

from __future__ import annotations

import json
from typing import Any

STORED_MARKER = "flowspec_xcom"
MANIFEST_MARKER = "flowspec_manifest"
_PLAIN_SCALARS = (str, int, float, bool, type(None))


def is_manifest(value: Any) -> bool:
    return isinstance(value, dict) and MANIFEST_MARKER in value and "artifacts" in value


def is_stored_value(value: Any) -> bool:
    return isinstance(value, dict) and value.get(STORED_MARKER) == 1 and "key" in value


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

    from airflow_flowspec import config

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


def _xcom_key(dag_id: Any, run_id: Any, task_id: Any, map_index: Any, key: Any) -> str:
    from airflow_flowspec.datastore.keys import safe_key_part

    parts = [
        dag_id or "unknown",
        run_id or "unknown",
        task_id or "unknown",
        str(map_index if map_index is not None else -1),
    ]
    return "/".join(
        ["_xcom", *(safe_key_part(p) for p in parts), safe_key_part(f"{key or 'return_value'}.pkl")]
    )


def store_value(
    value: Any, *, key: Any, task_id: Any, dag_id: Any, run_id: Any, map_index: Any
) -> dict[str, Any]:
    from airflow_flowspec import config
    from airflow_flowspec.datastore import open_datastore
    from airflow_flowspec.datastore.artifacts import qualified_type_name, short_repr
    from airflow_flowspec.datastore.encoding import encode

    datastore = open_datastore(config.datastore_root())
    backend = datastore.backend
    object_key = _xcom_key(dag_id, run_id, task_id, map_index, key)
    blob = encode(value, name=f"XCom '{key}' of task {task_id}", scratch_dir=backend.scratch_dir())
    try:
        if blob.data is not None:
            backend.put_bytes(object_key, blob.data)
        else:
            path, blob.path = blob.path, None
            backend.adopt_file(object_key, path)
    finally:
        blob.discard()
    return {
        STORED_MARKER: 1,
        "root": datastore.root,
        "key": object_key,
        "type": qualified_type_name(value),
        "size": blob.size,
        "repr": short_repr(value),
    }


def load_stored_value(stored: dict[str, Any]) -> Any:
    from airflow_flowspec.datastore import open_datastore
    from airflow_flowspec.datastore.encoding import decode

    datastore = open_datastore(stored["root"])
    return decode(datastore.backend, stored["key"], stored.get("size"))


def manifest_view(manifest: dict[str, Any]) -> Any:
    """A step's manifest as an object with lazy attribute access to its artifacts."""
    from airflow_flowspec import config
    from airflow_flowspec.datastore import open_datastore
    from airflow_flowspec.datastore.artifacts import ArtifactRef
    from airflow_flowspec.runtime.artifact_views import InputView

    datastore = open_datastore(config.datastore_root())

    def foreach_value(frame: dict[str, Any]) -> Any:
        return datastore.artifacts.load(ArtifactRef.from_json(frame["item"]))

    return InputView(manifest, datastore, foreach_value)


def purge_stored(stored: Any) -> None:
    """Delete what a re-run replaces: an ordinary XCom's pickle, kept at a per-XCom key.

    A step's manifest needs nothing deleted: each attempt writes its own key (the attempt number is
    part of it), so a re-run replaces no stored object, and the earlier attempt stays readable if
    the re-run fails. Artifact blobs are shared by content and are left to garbage collection.
    """
    from airflow_flowspec.datastore import open_datastore

    if is_stored_value(stored):
        open_datastore(stored["root"]).backend.delete_many([stored["key"]])
