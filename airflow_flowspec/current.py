"""``current``: what a step may want to know about the task it runs in.

The step runtime sets it before calling the step and clears it afterwards; outside a step every
property raises a clear error instead of returning a stale value. Only the runtime writes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from airflow_flowspec.errors import FlowspecError


@dataclass(frozen=True)
class TaskContext:
    flow_name: str
    run_id: str
    step_name: str
    task_id: str
    retry_count: int
    origin_run_id: str | None = None
    is_production: bool = False
    username: str | None = None
    logical_date: datetime | None = None
    data_interval_start: datetime | None = None
    data_interval_end: datetime | None = None
    map_index: int = -1
    datastore_root: str = ""
    namespace: str | None = None

    @property
    def pathspec(self) -> str:
        return f"{self.flow_name}/{self.run_id}/{self.step_name}/{self.task_id}"


class Current:
    """The ``current`` singleton; read-only for flows."""

    def __init__(self) -> None:
        self._context: TaskContext | None = None

    def _set(self, context: TaskContext | None) -> None:
        self._context = context

    @property
    def is_running_flow(self) -> bool:
        return self._context is not None

    def _get(self, name: str) -> Any:
        if self._context is None:
            raise FlowspecError(
                f"current.{name} is only available while a step is running (inside a @step method)."
            )
        return getattr(self._context, name)

    flow_name = property(lambda self: self._get("flow_name"))
    run_id = property(lambda self: self._get("run_id"))
    step_name = property(lambda self: self._get("step_name"))
    task_id = property(lambda self: self._get("task_id"))
    retry_count = property(lambda self: self._get("retry_count"))
    origin_run_id = property(lambda self: self._get("origin_run_id"))
    is_production = property(lambda self: self._get("is_production"))
    username = property(lambda self: self._get("username"))
    logical_date = property(lambda self: self._get("logical_date"))
    data_interval_start = property(lambda self: self._get("data_interval_start"))
    data_interval_end = property(lambda self: self._get("data_interval_end"))
    pathspec = property(lambda self: self._get("pathspec"))
    namespace = property(lambda self: self._get("namespace"))

    def __repr__(self) -> str:
        return f"current({self._context!r})"


current = Current()
