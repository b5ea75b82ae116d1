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

from airflow.sdk import BaseXCom

from airflow_flowspec.xcom_backend import values


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
        return values.serialize(
            value, key=key, task_id=task_id, dag_id=dag_id, run_id=run_id, map_index=map_index
        )

    @staticmethod
    def deserialize_value(result: Any) -> Any:
        ours, value = values.deserialize(result.value)
        return value if ours else BaseXCom.deserialize_value(result)

    # Where Airflow says which XCom it is reading or clearing, a stored row must be that one.

    @classmethod
    def get_one(
        cls,
        *,
        key: str,
        dag_id: str,
        task_id: str,
        run_id: str,
        map_index: int | None = None,
        include_prior_dates: bool = False,
    ) -> Any:
        run = None if include_prior_dates else run_id
        with values.expecting(dag_id=dag_id, run_id=run, task_id=task_id, map_index=map_index, key=key):
            return super().get_one(
                key=key,
                dag_id=dag_id,
                task_id=task_id,
                run_id=run_id,
                map_index=map_index,
                include_prior_dates=include_prior_dates,
            )

    @classmethod
    def get_all(
        cls, *, key: str, dag_id: str, task_id: str, run_id: str, include_prior_dates: bool = False
    ) -> Any:
        run = None if include_prior_dates else run_id
        with values.expecting(dag_id=dag_id, run_id=run, task_id=task_id, map_index=None, key=key):
            return super().get_all(
                key=key,
                dag_id=dag_id,
                task_id=task_id,
                run_id=run_id,
                include_prior_dates=include_prior_dates,
            )

    @classmethod
    def delete(cls, key: str, task_id: str, dag_id: str, run_id: str, map_index: int | None = None) -> None:
        with values.expecting(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index, key=key):
            super().delete(key=key, task_id=task_id, dag_id=dag_id, run_id=run_id, map_index=map_index)

    @classmethod
    def purge(cls, xcom: Any, *args: Any) -> None:
        values.purge_stored(getattr(xcom, "value", None))
