"""An auth manager for the integration tests: Airflow's SimpleAuthManager, minus some users' DAG access.

Airflow's SimpleAuthManager knows roles only; a role cannot be kept away from one DAG. Tests of
what a user without access sees (our plugin's pages, the REST API) need such a user, so this
subclass refuses ``is_authorized_dag`` to the users named in ``REFUSED_DAGS``: ``outsider`` (a
viewer) is refused every DAG by default. ``FLOWSPEC_TEST_REFUSED_DAGS`` may replace that map for
a whole Airflow start-up, as JSON: ``{"user": "*" | ["dag_id", ...]}``.

It is loaded by the API server (``[core] auth_manager``), so it imports nothing from the tests.
"""

from __future__ import annotations

import json
import os
from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

#: The user whom the default map refuses every DAG (a viewer: everything else is as for ``viewer``).
OUTSIDER = "outsider"
REFUSED_DAGS: dict[str, str | list[str]] = {OUTSIDER: "*"}


def refused_dags() -> dict[str, str | list[str]]:
    configured = os.environ.get("FLOWSPEC_TEST_REFUSED_DAGS")
    return json.loads(configured) if configured else REFUSED_DAGS


class DagRefusingAuthManager(SimpleAuthManager):
    """SimpleAuthManager, except that the users in :func:`refused_dags` may not see the DAGs listed."""

    def is_authorized_dag(self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None):
        refused = refused_dags().get(user.get_id())
        if refused == "*" or (refused and details is not None and details.id in refused):
            return False
        return super().is_authorized_dag(
            method=method, user=user, access_entity=access_entity, details=details
        )
