"""The rule registry and what every rule shares: where to point, how to fail, which target it is for.

A rule is a function ``rule(graph, target)`` that raises one :class:`LintError` or returns. Most
rules hold for every Metaflow-style flow; a few hold only because the flow runs as an Airflow DAG
(Metaflow's ``lint.py`` gates target-specific checks the same way). Those are registered with
``@check(target=AIRFLOW)`` and run only when the flow is linted for Airflow, which ``check``,
``run`` and the dags-folder import all do, with the same :class:`LintTarget`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import overload

from airflow_flowspec.errors import LintError
from airflow_flowspec.graph import FlowGraph, StepNode

#: The name of the Airflow target; rules registered for it run only when linting for Airflow.
AIRFLOW = "airflow"


@dataclass(frozen=True)
class LintTarget:
    """Where the flow will run, and the limits of that place that lint can check before it runs.

    ``name`` is :data:`AIRFLOW` or ``None`` (rules that hold for any Metaflow-style flow only).
    ``max_map_length`` is Airflow's ``[core] max_map_length`` when known: a foreach whose width
    the source states (``self.items = list(range(5000))``) is checked against it.
    """

    name: str | None = AIRFLOW
    max_map_length: int | None = None


#: The rules for every target, none of the Airflow-only ones (a switch inside a foreach passes).
ANY_TARGET = LintTarget(name=None)

LintRule = Callable[[FlowGraph, LintTarget], None]


@dataclass(frozen=True)
class RegisteredRule:
    rule: LintRule
    target: str | None  # None: every target

    @property
    def name(self) -> str:
        return self.rule.__name__


CHECKS: list[RegisteredRule] = []


@overload
def check(rule: LintRule) -> LintRule: ...
@overload
def check(*, target: str) -> Callable[[LintRule], LintRule]: ...
def check(rule: LintRule | None = None, *, target: str | None = None):  # type: ignore[no-untyped-def]
    """Register a rule; rules run in the order they are registered (see the package docstring)."""

    def register(function: LintRule) -> LintRule:
        CHECKS.append(RegisteredRule(function, target))
        return function

    return register(rule) if rule is not None else register


def fail(
    message: str, node: StepNode | None = None, *, line: int | None = None, graph: FlowGraph | None = None
) -> None:
    """Raise the rule's LintError, pointing at the node's line (or ``line``), else the class."""
    if node is not None:
        raise LintError(message, file=node.source_file, line=line or node.func_lineno)
    assert graph is not None
    raise LintError(message, file=graph.file, line=line or graph.lineno)


def next_line(node: StepNode) -> int:
    """The line of the step's ``self.next`` call, or of its ``def`` when it has none."""
    return node.tail_next_lineno or node.func_lineno


def is_join(node: StepNode) -> bool:
    return node.type == "join"


def descendants(graph: FlowGraph, name: str) -> set[str]:
    seen: set[str] = set()
    pending = [t for t in graph[name].out_funcs if t in graph]
    while pending:
        current = pending.pop()
        if current not in seen:
            seen.add(current)
            pending.extend(t for t in graph[current].out_funcs if t in graph)
    return seen


def reaches(graph: FlowGraph, source: str, target: str) -> bool:
    return source in graph and target in descendants(graph, source)


def ancestors(graph: FlowGraph, name: str) -> set[str]:
    seen: set[str] = set()
    pending = list(graph[name].in_funcs)
    while pending:
        current = pending.pop()
        if current not in seen:
            seen.add(current)
            pending.extend(graph[current].in_funcs)
    return seen
