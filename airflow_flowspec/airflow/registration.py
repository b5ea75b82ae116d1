"""Turn a FlowSpec subclass into a DAG when, and only when, Airflow's DagBag is importing its file.

This is what makes "drop the flow file into the dags folder" work with no extra line: defining the
class registers its DAG with the DagBag import in progress. Outside a DagBag import (``python
flow.py``, the step runtime, a notebook) it does nothing and never imports Airflow, so the runtime
stays usable in a container without Airflow.
"""

from __future__ import annotations

import getpass
import sys
from typing import TYPE_CHECKING, Any

from airflow_flowspec.airflow._internals import dagbag_importing, unregister_dag

if TYPE_CHECKING:
    from airflow_flowspec.decorators.flow_decorators import ProjectBranch
    from airflow_flowspec.lint.registry import LintTarget


def register_if_parsing(flow_class: type) -> None:
    """Build and register the flow's DAG if a DagBag is importing the module that defines it."""
    module_name = flow_class.__module__
    if not dagbag_importing(module_name) or not _defines_steps(flow_class):
        return
    module = sys.modules[module_name]
    previous = flow_class.__dict__.get("_flowspec_dag")
    if previous is not None:  # a class decorator changed the flow after the class was created
        unregister_dag(previous)  # by identity: its hash changed as its tasks were added
    flow_class._flowspec_dag = dag_for(flow_class, str(module.__file__))  # type: ignore[attr-defined]


def _defines_steps(flow_class: type) -> bool:
    return any(getattr(value, "is_step", False) for value in vars(flow_class).values())


def dag_for(
    flow_class: type,
    flow_file: str,
    target: LintTarget | None = None,
    project: ProjectBranch | None = None,
) -> Any:
    """Lint the flow (for ``target``, by default this environment's Airflow) and build its DAG.

    ``project`` is the branch a caller chose (``python flow.py run --branch``); without it a
    ``@project`` flow is deployed on the branch ``[flowspec] project_branch`` names. A lint error,
    a bad project or branch name and a bad option are raised before Airflow is imported.
    """
    from airflow_flowspec.airflow.translator import build_dag
    from airflow_flowspec.graph import graph_of
    from airflow_flowspec.lint import airflow_target, lint_flow

    graph = graph_of(flow_class)
    lint_flow(graph, target or airflow_target())
    if project is None:
        project = deployed_branch(flow_class)
    return build_dag(flow_class, graph, flow_file, project)


def deployed_branch(flow_class: type) -> ProjectBranch | None:
    """The branch of a ``@project`` flow in the dags folder (None for a flow without ``@project``)."""
    from airflow_flowspec import config
    from airflow_flowspec.decorators.flow_decorators import branch_for_deployment, project_of

    if project_of(flow_class) is None:
        return None  # the option is not even read: a bad value fails only the flows it applies to
    try:
        username = getpass.getuser()  # used only for a user branch (@project(production=False))
    except (KeyError, OSError):  # a container user without a passwd entry or USER variable
        username = "unknown"
    return branch_for_deployment(flow_class, config.project_branch(), username)
