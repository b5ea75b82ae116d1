"""How the XCom backend decides, stores and restores values (kept apart from the Airflow class).

Ordinary XComs that are too large or not JSON are pickled to a per-XCom key (see
:func:`airflow_flowspec.datastore.keys.xcom_value_key`): a re-run replaces exactly that object, so
``purge`` can delete it without touching anything shared. Manifests are recognised, and artifacts
read, by the datastore's own code: this module only decides what goes where.
"""

from __future__ import annotations

import json
from typing import Any

from airflow_flowspec import config
from airflow_flowspec.datastore import open_datastore
from airflow_flowspec.datastore.artifacts import qualified_type_name, short_repr
from airflow_flowspec.datastore.manifest import checked_manifest, is_manifest
from airflow_flowspec.datastore.views import InputView, task_view

__all__ = ["fits_inline", "is_manifest", "is_stored_value", "load_stored_value", "manifest_view"]

#: The key that marks an XCom row as a reference to a pickled value in the datastore.
STORED_MARKER = "flowspec_xcom"
_PLAIN_SCALARS = (str, int, float, bool, type(None))


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
    datastore = open_datastore(config.datastore_root())
    object_key, size = datastore.save_xcom_value(
        value,
        dag_id=dag_id or "unknown",
        run_id=run_id or "unknown",
        task_id=task_id or "unknown",
        map_index=map_index if map_index is not None else -1,
        key=key or "return_value",
    )
    return {
        STORED_MARKER: 1,
        "root": datastore.root,
        "key": object_key,
        "type": qualified_type_name(value),
        "size": size,
        "repr": short_repr(value),
    }


def load_stored_value(stored: dict[str, Any]) -> Any:
    return open_datastore(stored["root"]).load_xcom_value(stored["key"], stored.get("size"))


def manifest_view(manifest: dict[str, Any]) -> InputView:
    """A step's manifest as an object with lazy attribute access to its artifacts."""
    checked = checked_manifest(manifest, where="An XCom pull")
    return task_view(checked, open_datastore(config.datastore_root()))


def purge_stored(stored: Any) -> None:
    """Delete what a re-run replaces: an ordinary XCom's pickle, kept at a per-XCom key.

    A step's manifest needs nothing deleted: each attempt writes its own key (the attempt number is
    part of it), so a re-run replaces no stored object, and the earlier attempt stays readable if
    the re-run fails. Artifact blobs are shared by content and are left to garbage collection.
    """
    if is_stored_value(stored):
        open_datastore(stored["root"]).delete_xcom_value(stored["key"])
