"""Rules about each step's ``self.next`` call: static, well-formed, to known steps, right arguments."""

from __future__ import annotations

from airflow_flowspec.graph import FlowGraph
from airflow_flowspec.lint.registry import LintTarget, check, fail, next_line

_TRANSITION_FORMS = (
    "self.next(self.step_name), self.next(self.a, self.b), "
    "self.next(self.step_name, foreach='artifact') or "
    "self.next({'case': self.a, 'other': self.b}, condition='artifact')"
)


@check
def check_static_transitions(graph: FlowGraph, target: LintTarget) -> None:
    """Every step but end ends with exactly one self.next(), as its last statement (Metaflow)."""
    for node in graph:
        if node.type == "end":
            continue
        stray = [line for line in node.next_call_linenos if line != node.tail_next_lineno]
        if stray:
            fail(
                f"Step {node.name} calls self.next() on line {stray[0]}, but that call is not the "
                f"last statement of the step. The flow's shape is read from the step's last "
                f"statement, so a self.next() inside an if/for/try/with block, after which code "
                f"still runs, or behind a return is not allowed. Fix: call self.next() exactly once, "
                f"as a plain statement at the end of the step; to choose between steps at run time "
                f"use a switch: self.next({{'a': self.step_a, 'b': self.step_b}}, condition='artifact').",
                node,
                line=stray[0],
            )
        if not node.has_tail_next:
            fail(
                f"Step {node.name} is missing a self.next() transition to the next step. "
                f"Fix: add self.next(self.<next step>) as the last line of the step.",
                node,
            )


@check
def check_valid_transitions(graph: FlowGraph, target: LintTarget) -> None:
    for node in graph:
        if node.invalid_tail_next and node.type not in ("foreach", "split-switch"):
            fail(
                f"Step {node.name} specifies an invalid self.next() transition: {node.invalid_reason}. "
                f"Transitions must be static so the DAG can be built without running the flow. "
                f"Fix: use one of {_TRANSITION_FORMS}.",
                node,
                line=next_line(node),
            )


@check
def check_foreach_transitions(graph: FlowGraph, target: LintTarget) -> None:
    for node in graph:
        if node.type == "foreach" and node.invalid_tail_next:
            fail(
                f"Step {node.name} specifies an invalid foreach transition: {node.invalid_reason}. "
                f"Fix: write self.next(self.<step>, foreach='<artifact>') where <artifact> is the "
                f"name of a list this step assigns, e.g. self.rows = [...]; "
                f"self.next(self.process_row, foreach='rows').",
                node,
                line=next_line(node),
            )


@check
def check_switch_splits(graph: FlowGraph, target: LintTarget) -> None:
    for node in graph:
        if node.type != "split-switch":
            continue
        if node.invalid_tail_next:
            fail(
                f"Step {node.name} specifies an invalid switch transition: {node.invalid_reason}. "
                f"Fix: write self.next({{'<case>': self.<step>, '<other case>': self.<other step>}}, "
                f"condition='<artifact>') with string literal keys, where the step sets "
                f"self.<artifact> to one of the keys.",
                node,
                line=next_line(node),
            )
        cases = node.switch_cases or {}
        if len(cases) < 2 or len(node.out_funcs) < 2:
            fail(
                f"Step {node.name} is a switch split but defines {len(cases)} case(s) leading to "
                f"{len(node.out_funcs)} distinct step(s). Switch splits must define at least 2 "
                f"transitions to different steps. Fix: add another case, or use a plain "
                f"self.next(self.<step>) if there is nothing to choose.",
                node,
                line=next_line(node),
            )


@check
def check_unknown_transitions(graph: FlowGraph, target: LintTarget) -> None:
    for node in graph:
        unknown = [target for target in node.out_funcs if target not in graph]
        if unknown:
            fail(
                f"Step {node.name} specifies a self.next() transition to an unknown step, "
                f"{unknown[0]}. Fix: define `@step def {unknown[0]}(self):` in the flow, or correct "
                f"the name (steps: {', '.join(graph.sorted_nodes())}).",
                node,
                line=next_line(node),
            )


@check
def check_num_args(graph: FlowGraph, target: LintTarget) -> None:
    for node in graph:
        if node.num_args > 2:
            fail(
                f"Step {node.name} has too many arguments ({node.num_args}). Normal steps take only "
                f"'self' as an argument. Join steps take 'self' and 'inputs'. Fix: remove the extra "
                f"arguments; pass data between steps as artifacts (self.<name> = value).",
                node,
            )
        if node.num_args == 0:
            fail(
                f"Step {node.name} is missing the 'self' argument. Fix: define it as "
                f"`def {node.name}(self):`.",
                node,
            )
        if node.num_args == 2 and node.type in ("split", "foreach", "split-switch"):
            fail(
                f"Step {node.name} is both a join step (it takes an extra argument) and a split "
                f"step (it transitions to multiple steps). This is not allowed. Fix: add a new step "
                f"so that the join and the split become separate steps.",
                node,
            )
