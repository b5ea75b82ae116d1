"""The "Artifacts" button on a step's task instance, leading to its page in the artifact view."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperatorLink

#: Where the API server mounts the artifact view (:mod:`.plugin`).
URL_PREFIX = "/flowspec"


def task_page_path(dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """The artifact view's page of one task instance (path only, every part quoted)."""
    from airflow_flowspec.plugins.pages import task_path

    path = task_path(URL_PREFIX, dag_id, run_id, task_id)
    return path if map_index < 0 else f"{path}?map_index={map_index}"


#: The operators whose task instances have an artifact page (by Airflow's ``task_type``).
STEP_OPERATORS = frozenset({"LocalStepOperator", "StepBatchOperator"})


class ArtifactsLink(BaseOperatorLink):
    """A global link (the plugin's), computed by the API server when the UI asks for it.

    An operator's own links are computed by the worker after every task and stored as an XCom:
    that is a write per step, a tenth of a step's overhead. A global link costs nothing until
    someone looks; for tasks that are not flow steps it has no URL, and the UI shows no button.
    """

    name = "Artifacts"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        if getattr(operator, "task_type", None) not in STEP_OPERATORS:
            return ""
        from airflow.sdk import conf

        base_url = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
        path = task_page_path(ti_key.dag_id, ti_key.run_id, ti_key.task_id, ti_key.map_index)
        return f"{base_url}{path}"
