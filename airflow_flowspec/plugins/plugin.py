"""The plugin Airflow loads from this package (``airflow.plugins`` entry point).

Every Airflow process loads plugins (the scheduler to read timetables, workers, the API server), so
this module stays cheap: the artifact view's FastAPI app is built on its first request, in the API
server only.

Registered through the ``airflow.plugins`` entry point rather than the provider's ``plugins`` list:
Airflow reads a provider's plugins only with ``[core] lazy_discover_providers = False``, and the
scheduler must find the ``@schedule`` timetable whatever that setting says.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_flowspec.plugins.links import URL_PREFIX, ArtifactsLink
from airflow_flowspec.plugins.timetable import FlowScheduleTimetable


class _ArtifactsApp:
    """An ASGI app that builds the real one (:func:`.artifacts_app.create_app`) when first called."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            from airflow_flowspec.plugins.artifacts_app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)

    def __repr__(self) -> str:
        return "airflow_flowspec.plugins.artifacts_app:create_app"


def _base_path() -> str:
    """The path part of ``[api] base_url``: the UI's iframes need it when Airflow is not at /."""
    from urllib.parse import urlparse

    from airflow.sdk import conf

    return urlparse(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")


_VIEW = f"{_base_path()}{URL_PREFIX}"


class FlowspecPlugin(AirflowPlugin):
    name = "flowspec"
    timetables = [FlowScheduleTimetable]
    global_operator_extra_links = [ArtifactsLink()]
    fastapi_apps = [{"app": _ArtifactsApp(), "url_prefix": URL_PREFIX, "name": "Flow artifacts"}]
    external_views = [
        {
            "name": "Flow artifacts",
            "href": f"{_VIEW}/",
            "destination": "nav",
            "category": "browse",
            "url_route": "flow-artifacts",
        },
        {
            "name": "Artifacts",
            "href": f"{_VIEW}/dags/{{DAG_ID}}/runs/{{RUN_ID}}",
            "destination": "dag_run",
            "url_route": "flow-run-artifacts",
        },
        {
            # Not "Artifacts": that is the task's button (an extra link) on the same page.
            "name": "Step artifacts",
            "href": f"{_VIEW}/dags/{{DAG_ID}}/runs/{{RUN_ID}}/tasks/{{TASK_ID}}?map_index={{MAP_INDEX}}",
            "destination": "task_instance",
            "url_route": "flow-task-artifacts",
        },
    ]
