"""Rules about the start and end steps: both exist, end ends the flow, neither is a join."""

from __future__ import annotations

from airflow_flowspec.graph import END_STEP, START_STEP, FlowGraph
from airflow_flowspec.lint.registry import LintTarget, check, fail


@check
def check_start_exists(graph: FlowGraph, target: LintTarget) -> None:
    if START_STEP not in graph:
        fail(
            f"Flow {graph.name} has no start step. Fix: add a step named start, the entry point "
            f"of the flow: `@step def start(self): ... self.next(self.<first step>)`.",
            graph=graph,
        )


@check
def check_end_exists(graph: FlowGraph, target: LintTarget) -> None:
    if END_STEP not in graph:
        fail(
            f"Flow {graph.name} has no end step. Fix: add a step named end, the last step of "
            f"the flow, with no self.next() call, and make the final step call self.next(self.end).",
            graph=graph,
        )


@check
def check_that_end_is_end(graph: FlowGraph, target: LintTarget) -> None:
    node = graph[END_STEP]
    if node.has_tail_next or node.next_call_linenos:
        line = node.tail_next_lineno or node.next_call_linenos[0]
        fail(
            "The terminal step end should not have a self.next() transition. Fix: just remove it; "
            "the flow finishes when end returns.",
            node,
            line=line,
        )


@check
def check_start_and_end_are_not_joins(graph: FlowGraph, target: LintTarget) -> None:
    start, end = graph[START_STEP], graph[END_STEP]
    if start.num_args == 2:
        fail(
            "The start step takes an extra argument, as a join step would, but start has no "
            "parent steps to receive inputs from. Fix: define it as `def start(self):`.",
            start,
        )
    if end.num_args == 2:
        fail(
            "The terminal step end should not be a join step (it gets an extra argument). "
            "Fix: add a join step before it that takes (self, inputs) and calls self.next(self.end), "
            "and define `def end(self):`.",
            end,
        )
