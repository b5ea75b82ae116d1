"""The "Artifacts" button on a step's task instance, leading to its page in the artifact view."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

#: Where the API server mounts the artifact view (:mod:`.plugin`).
URL_PREFIX = "/flowspec"


def task_page_path(dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """The artifact view's page of one task instance (path only, every part quoted)."""
    parts = (quote(part, safe="") for part in (dag_id, run_id, task_id))
    path = "{}/dags/{}/runs/{}/tasks/{}".format(URL_PREFIX, *parts)
    return path if map_index < 0 else f"{path}?map_index={map_index}"


class ArtifactsLink(BaseOperatorLink):
    """Computed on the worker when the task runs (Airflow 3 keeps the URL in an XCom)."""

    name = "Artifacts"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from airflow.configuration import conf

        base_url = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
        path = task_page_path(ti_key.dag_id, ti_key.run_id, ti_key.task_id, ti_key.map_index)
        return f"{base_url}{path}"
