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
    project_name: str | None = None  # only for a flow with @project
    branch_name: str | None = None

    @property
    def pathspec(self) -> str:
        return f"{self.flow_name}/{self.run_id}/{self.step_name}/{self.task_id}"

    @property
    def project_flow_name(self) -> str | None:
        if self.project_name is None:
            return None
        return f"{self.project_name}.{self.branch_name}.{self.flow_name}"

    @property
    def is_user_branch(self) -> bool | None:
        if self.branch_name is None:
            return None
        return self.branch_name.startswith("user.")


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

    def _get_project(self, name: str) -> Any:
        """A ``@project`` field: absent, as in Metaflow, from a flow without ``@project``."""
        value = self._get(name)
        if self._context is not None and self._context.project_name is None:
            raise AttributeError(
                f"current.{name} exists only in flows decorated with @project(name=...), and flow "
                f"{self._context.flow_name} has none. current.get({name!r}) gives None instead, and "
                f"{name!r} in current is False, as in Metaflow."
            )
        return value

    def get(self, name: str, default: Any = None) -> Any:
        """``current.<name>``, or ``default`` where it does not exist (Metaflow's ``current.get``)."""
        try:
            return getattr(self, name)
        except (AttributeError, FlowspecError):
            return default

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

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
    project_name = property(lambda self: self._get_project("project_name"))
    branch_name = property(lambda self: self._get_project("branch_name"))
    project_flow_name = property(lambda self: self._get_project("project_flow_name"))
    is_user_branch = property(lambda self: self._get_project("is_user_branch"))

    def __repr__(self) -> str:
        return f"current({self._context!r})"


current = Current()
