"""Run a step on the Airflow worker itself: the embedded default, no AWS needed."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator, SkipMixin

from airflow_flowspec.operators.step_task import (
    FOREACH_OFFSETS_KEY,
    StepTaskMixin,
    check_foreach_width,
    flow_mistakes_fail_at_once,
)


class LocalStepOperator(StepTaskMixin, BaseOperator, SkipMixin):
    """One flow step, executed in the task process by the shared step runtime."""

    ui_color = "#d9ecf2"
    template_fields = ()

    def __init__(
        self,
        *,
        flow_file: str,
        flow_name: str,
        step_name: str,
        input_pulls: list[dict[str, Any]],
        foreach_frame: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.flow_file = flow_file
        self.flow_name = flow_name
        self.step_name = step_name
        self.input_pulls = input_pulls
        self.foreach_frame = foreach_frame

    def execute(self, context: Any) -> Any:
        from airflow.sdk.log import mask_secret

        from airflow_flowspec.runtime.step_runner import run_step

        with flow_mistakes_fail_at_once(), self.task_lease(context) as lease:
            spec = self.build_task_spec(context)
            return self.publish_result(context, run_step(spec, mask_secret=mask_secret, lease=lease))


class FlattenForeachOperator(BaseOperator):
    """Concatenate the children lists of a foreach that runs inside another foreach.

    Airflow 3.3 cannot expand a task inside an expanded task group, so a nested foreach is
    flattened: every (outer item, inner item) pair becomes one mapped task of the inner body. This
    task turns the per-outer-item lists into that flat list; it exists only for nested foreach.
    It also records where each outer item's children start in it and how many there are
    (``FOREACH_OFFSETS_KEY``), so that the inner join of one outer item reads only its own.
    """

    ui_color = "#eeeeee"
    template_fields = ()

    def __init__(self, *, split_task_id: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.split_task_id = split_task_id

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from airflow_flowspec.xcom_backend.values import ChunkedList

        ti = context["ti"]
        per_item = ti.xcom_pull(task_ids=self.split_task_id) or []
        if not isinstance(per_item, list) or (per_item and isinstance(per_item[0], dict)):
            per_item = [per_item]
        flat: list[dict[str, Any]] = []
        offsets: list[list[int]] = []
        for children in per_item:
            start = len(flat)
            flat.extend(children)
            offsets.append([start, len(flat) - start])
        nested = f"nested foreach of step '{self.split_task_id}' of flow {ti.dag_id}"
        with flow_mistakes_fail_at_once():
            check_foreach_width(len(flat), f"The {nested} (all items of every outer item)")
        ti.xcom_push(
            key=FOREACH_OFFSETS_KEY,
            value=ChunkedList(offsets, description=f"where each outer item's children start in the {nested}"),
        )
        return ChunkedList(flat, description=f"the children of the {nested}, every outer item's")
