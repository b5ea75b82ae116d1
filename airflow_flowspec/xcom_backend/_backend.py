"""The XCom backend class (reached as ``airflow_flowspec.xcom_backend.FlowspecXComBackend``).

- A step's XCom is its manifest: a small JSON object (artifact names, hashes, types, sizes, short
  reprs) that Airflow's UI shows as is. Pulling it from a plain Airflow task gives an object with
  attribute access whose artifacts load lazily from the store: ``ti.xcom_pull("train").model``.
- Ordinary tasks' XComs stay inline in Airflow's table while they are plain JSON up to
  ``[flowspec] xcom_inline_max_bytes``. Anything larger, or anything JSON cannot carry (a model, an
  array, a lambda), is pickled with cloudpickle into the store, and the table holds a small
  readable reference.
- ``purge`` (called by Airflow when a task re-runs and its old XComs are cleared) deletes what the
  re-run replaces: the pickled value of an ordinary XCom. A step's attempts each have their own
  manifest key, so a re-run replaces nothing there and the earlier attempt stays readable. Artifact
  blobs are content-addressed and may be shared by other tasks and runs, so they are never deleted
  here; removing unreferenced blobs is a garbage collector's job.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk.bases.xcom import BaseXCom

from airflow_flowspec.xcom_backend.values import (
    fits_inline,
    is_manifest,
    is_stored_value,
    load_stored_value,
    manifest_view,
    purge_stored,
    store_value,
)


class FlowspecXComBackend(BaseXCom):
    """Airflow XCom backend for flow manifests and large or non-JSON values."""

    @staticmethod
    def serialize_value(
        value: Any,
        *,
        key: str | None = None,
        task_id: str | None = None,
        dag_id: str | None = None,
        run_id: str | None = None,
        map_index: int | None = None,
    ) -> Any:
        manifest = getattr(value, "manifest", None)
        if isinstance(manifest, dict) and is_manifest(manifest):
            return manifest
        if is_manifest(value):
            return value
        inline = fits_inline(value)
        if inline is not None:
            return inline
        return store_value(value, key=key, task_id=task_id, dag_id=dag_id, run_id=run_id, map_index=map_index)

    @staticmethod
    def deserialize_value(result: Any) -> Any:
        stored = result.value
        if is_manifest(stored):
            return manifest_view(stored)
        if is_stored_value(stored):
            return load_stored_value(stored)
        return BaseXCom.deserialize_value(result)

    @classmethod
    def purge(cls, xcom: Any, *args: Any) -> None:
        purge_stored(getattr(xcom, "value", None))
