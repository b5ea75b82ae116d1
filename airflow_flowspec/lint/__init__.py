"""Structural checks on a flow graph, run before anything executes.

Shaped like Metaflow's ``metaflow/lint.py``: a registry of small functions, each checking one rule
and raising one :class:`~airflow_flowspec.errors.LintError` that says what is wrong, where (the
flow's file and the line of the step or ``self.next`` call) and how to fix it. Adding a rule is
adding one function decorated with :func:`check` to the module of its family. Rules run family by
family in the order of :data:`FAMILIES`, and in file order within a family, so a flow is told about
its most basic mistake first and later rules may assume earlier ones passed.

The rules are Metaflow 2.19's, plus what our own machinery needs of every flow (step names usable in
task ids, artifact names that do not shadow the flow's own attributes, no loops of any kind: the
graph is ordered topologically), plus three rules that hold only because the flow runs as an
Airflow DAG, registered for :data:`AIRFLOW`: no switch looping back (Metaflow allows it), no switch
inside a foreach, and foreach widths the source states within ``[core] max_map_length``.

Nothing here imports Airflow: the limits of the target come in a :class:`LintTarget`.
"""

from __future__ import annotations

import sys

from airflow_flowspec.graph import FlowGraph

# Importing a family module registers its rules.
from airflow_flowspec.lint import names, shape, start_end, transitions
from airflow_flowspec.lint.registry import AIRFLOW, ANY_TARGET, CHECKS, LintTarget, check

#: The rule families, in the order their rules run.
FAMILIES = (names, start_end, transitions, shape)
CHECKS.sort(key=lambda registered: FAMILIES.index(sys.modules[registered.rule.__module__]))

__all__ = [
    "AIRFLOW",
    "ANY_TARGET",
    "CHECKS",
    "FAMILIES",
    "LintTarget",
    "airflow_target",
    "check",
    "lint_flow",
]


def airflow_target() -> LintTarget:
    """The Airflow target with this environment's limits (read as Airflow reads them, without
    importing it). ``check``, ``run`` and the dags-folder import all lint with it."""
    from airflow_flowspec.config import max_map_length

    return LintTarget(AIRFLOW, max_map_length=max_map_length())


def lint_flow(graph: FlowGraph, target: LintTarget | None = None) -> None:
    """Raise a LintError for the first rule the flow breaks; return None if the flow is valid.

    ``target`` says where the flow will run: the Airflow rules run when ``target.name`` is
    :data:`AIRFLOW` (the default), with the limits it carries.
    """
    target = target or LintTarget()
    for registered in CHECKS:
        if registered.target is None or registered.target == target.name:
            registered.rule(graph, target)
