"""What every step operator does around the step itself, wherever the step runs.

``StepTaskMixin`` gathers the parents' manifests from XCom into a ``TaskSpec`` and publishes the
``StepResult``: the manifest as the task's XCom, the children of a foreach as the list Airflow maps
over, the switch arm to follow. The local operator runs the spec in-process; the AWS Batch
operator (a later issue) will run the same spec in a container and reuse this mixin unchanged.
"""

from __future__ import annotations

import getpass
from typing import Any

from airflow_flowspec.errors import FlowspecError
from airflow_flowspec.runtime.task_spec import StepResult, TaskSpec

#: XCom key of a foreach split's manifest (its return_value is the list Airflow maps over).
SPLIT_MANIFEST_KEY = "flowspec_manifest"

#: How a step reads a parent's manifest.
PULL_SAME = "same"  # the parent task at this task's own map index (or the unmapped parent)
PULL_SPLIT_PARENT = "split_parent"  # the foreach split that created this task's item
PULL_ALL_CHILDREN = "all_children"  # every task of a foreach body (this step joins them)


class ForeachTooWideError(FlowspecError):
    """A foreach has more items than Airflow's [core] max_map_length allows."""


class StepTaskMixin:
    flow_file: str
    flow_name: str
    step_name: str
    input_pulls: list[dict[str, Any]]
    is_foreach_split: bool
    foreach_frame: dict[str, Any] | None

    def build_task_spec(self, context: Any) -> TaskSpec:
        from airflow_flowspec import config

        ti = context["ti"]
        frame = self.foreach_frame or {}
        stack = frame.get("stack", [])
        manifests = []
        for pull in self.input_pulls:
            manifests.extend(self._pull_manifests(ti, pull, frame, stack))
        parameters = dict(context.get("params") or {}) if self.step_name == "start" else {}
        dag_run = context.get("dag_run")
        triggered_by = str(getattr(dag_run, "triggered_by", "") or "").lower()
        return TaskSpec(
            flow_file=self.flow_file,
            flow_name=self.flow_name,
            step=self.step_name,
            run_id=ti.run_id,
            datastore_root=config.datastore_root(),
            map_index=ti.map_index if ti.map_index is not None else -1,
            attempt=ti.try_number or 1,
            max_attempts=(getattr(self, "retries", 0) or 0) + 1,
            input_manifests=manifests,
            foreach_stack=stack,
            parameters=parameters,
            context={
                "logical_date": _iso(context.get("logical_date")),
                "data_interval_start": _iso(context.get("data_interval_start")),
                "data_interval_end": _iso(context.get("data_interval_end")),
                "is_production": "test" not in triggered_by,
                "username": getattr(dag_run, "triggering_user_name", None) or getpass.getuser(),
                "origin_run_id": ((getattr(dag_run, "conf", None) or {}).get("origin_run_id")),
            },
        )

    def _pull_manifests(
        self, ti: Any, pull: dict[str, Any], frame: dict[str, Any], stack: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        task_id, key, mode = pull["task_id"], pull["key"], pull["mode"]
        if mode == PULL_SAME:
            if ti.map_index is None or ti.map_index < 0:
                # Through the sequence API: an absent XCom (a switch arm not taken) is just None.
                value = ti.xcom_pull(task_ids=task_id, key=key)
            else:
                value = ti.xcom_pull(task_ids=task_id, key=key, map_indexes=ti.map_index)
            return [] if value is None else [_as_manifest(value)]
        if mode == PULL_SPLIT_PARENT:
            value = ti.xcom_pull(task_ids=task_id, key=key, map_indexes=frame.get("parent_map_index", -1))
            return [_as_manifest(value)]
        values = ti.xcom_pull(task_ids=task_id, key=key) or []
        if not isinstance(values, list):
            values = [values]
        manifests = [_as_manifest(v) for v in values if v is not None]
        if stack:  # a join inside an outer foreach joins only the children of its own item
            own = [f["index"] for f in stack]
            manifests = [m for m in manifests if [f["index"] for f in m["foreach_stack"][:-1]] == own]
        return manifests

    def publish_result(self, context: Any, result: StepResult) -> Any:
        ti = context["ti"]
        if result.foreach_children is not None:
            self._check_width(len(result.foreach_children))
            ti.xcom_push(key=SPLIT_MANIFEST_KEY, value=result.manifest)
            return result.foreach_children
        if result.switch_step is not None:
            ti.xcom_push(key="return_value", value=result.manifest)
            self.skip_all_except(ti, result.switch_step)  # type: ignore[attr-defined]
            return None
        return result.manifest

    def _check_width(self, width: int) -> None:
        from airflow.configuration import conf

        limit = conf.getint("core", "max_map_length")
        if width > limit:
            raise ForeachTooWideError(
                f"The foreach in step '{self.step_name}' of flow {self.flow_name} has {width} items, more "
                f"than Airflow's [core] max_map_length ({limit}). Raise it in airflow.cfg or with "
                f"AIRFLOW__CORE__MAX_MAP_LENGTH={width} (on the scheduler and workers), or split the "
                f"foreach into batches. The step's artifacts are saved; clear this task to retry."
            )


def _as_manifest(value: Any) -> dict[str, Any]:
    """XCom pulls may come back as our artifact view (via the XCom backend) or as a plain dict."""
    manifest = getattr(value, "manifest", value)
    if not isinstance(manifest, dict) or "flowspec_manifest" not in manifest:
        raise FlowspecError(f"Expected a step manifest in XCom, got {type(value).__name__}: {value!r:.200}")
    return manifest


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None and hasattr(value, "isoformat") else None
