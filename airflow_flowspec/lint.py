"""Structural checks on a flow graph, run before anything executes.

Shaped like Metaflow's ``metaflow/lint.py``: a registry of small functions, each checking one rule
and raising one :class:`~airflow_flowspec.errors.LintError` that says what is wrong, where (the
flow's file and the line of the step or ``self.next`` call) and how to fix it. Adding a rule is
adding one function decorated with :func:`check`; order in this file is the order rules run, so a
flow is told about its most basic mistake first and later checks may assume earlier ones passed.

The rules are Metaflow 2.19's, plus what an Airflow DAG needs: no loops at all (Metaflow allows a
switch to loop back), step names usable in task ids, and artifact names that do not shadow the
flow's own attributes.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable

from airflow_flowspec.errors import LintError
from airflow_flowspec.graph import END_STEP, START_STEP, FlowGraph, StepNode

LintCheck = Callable[[FlowGraph], None]

CHECKS: list[LintCheck] = []

# Metaflow's reserved words, plus the names our FlowSpec and runtime use for themselves.
RESERVED_NAMES = frozenset(
    {"name", "next", "input", "index", "cmd", "foreach_stack", "merge_artifacts", "script_name"}
)
MAX_STEP_NAME_LENGTH = 200

_TRANSITION_FORMS = (
    "self.next(self.step_name), self.next(self.a, self.b), "
    "self.next(self.step_name, foreach='artifact') or "
    "self.next({'case': self.a, 'other': self.b}, condition='artifact')"
)


def check(func: LintCheck) -> LintCheck:
    """Register ``func`` as a lint rule; rules run in the order they are registered."""
    CHECKS.append(func)
    return func


def lint_flow(graph: FlowGraph) -> None:
    """Raise a LintError for the first rule the flow breaks; return None if the flow is valid."""
    for rule in CHECKS:
        rule(graph)


def _fail(
    message: str, node: StepNode | None = None, *, line: int | None = None, graph: FlowGraph | None = None
):
    if node is not None:
        raise LintError(message, file=node.source_file, line=line or node.func_lineno)
    assert graph is not None
    raise LintError(message, file=graph.file, line=line or graph.lineno)


def _next_line(node: StepNode) -> int:
    return node.tail_next_lineno or node.func_lineno


def _is_join(node: StepNode) -> bool:
    return node.type == "join"


# ---------------------------------------------------------------------- names


@check
def check_duplicate_steps(graph: FlowGraph) -> None:
    for name, lines in graph.duplicate_steps.items():
        node = graph.nodes.get(name)
        source_file = node.source_file if node else graph.file
        listed = ", ".join(str(line) for line in lines)
        raise LintError(
            f"Step {name} is defined {len(lines)} times in flow {graph.name} (lines {listed}). Python "
            f"keeps only the last definition, so the others are silently ignored. Fix: rename or "
            f"delete the extra definitions.",
            file=source_file,
            line=lines[-1],
        )


@check
def check_step_names(graph: FlowGraph) -> None:
    for node in graph:
        name = node.name
        problem = ""
        if not name.isidentifier() or keyword.iskeyword(name):
            problem = "is not a valid Python identifier"
        elif re.search("[^a-z0-9_]", name) or name.startswith("_"):
            problem = (
                "has characters other than lowercase ascii letters, digits and underscores, "
                "or starts with an underscore"
            )
        elif "__" in name:
            problem = "contains a double underscore, which airflow-flowspec uses to build Airflow task ids"
        elif len(name) > MAX_STEP_NAME_LENGTH:
            problem = f"is {len(name)} characters long (the limit is {MAX_STEP_NAME_LENGTH})"
        if problem:
            _fail(
                f"Step {name} has an invalid name: it {problem}. Fix: rename the step using only "
                f"lowercase letters, digits and single underscores, e.g. load_data.",
                node,
            )


@check
def check_reserved_words(graph: FlowGraph) -> None:
    reserved = ", ".join(sorted(RESERVED_NAMES))
    for node in graph:
        if node.name in RESERVED_NAMES:
            _fail(
                f"Step name {node.name} is a reserved word (reserved: {reserved}). "
                f"Fix: choose another name for the step.",
                node,
            )
    for member in graph.class_members:
        if member.name in RESERVED_NAMES:
            raise LintError(
                f"Flow class {member.class_name} defines {member.name}, which is reserved for the "
                f"flow's own use (reserved: {reserved}). Fix: rename it.",
                file=member.source_file,
                line=member.lineno,
            )
    for node in graph:
        for attribute, line in node.assigned_attributes.items():
            if attribute in RESERVED_NAMES:
                _fail(
                    f"Step {node.name} assigns self.{attribute}, but {attribute} is reserved for the "
                    f"flow's own use (reserved: {reserved}). Fix: store the artifact under another "
                    f"name, e.g. self.{attribute}_value.",
                    node,
                    line=line,
                )


# ---------------------------------------------------------------------- start and end


@check
def check_start_exists(graph: FlowGraph) -> None:
    if START_STEP not in graph:
        _fail(
            f"Flow {graph.name} has no start step. Fix: add a step named start, the entry point "
            f"of the flow: `@step def start(self): ... self.next(self.<first step>)`.",
            graph=graph,
        )


@check
def check_end_exists(graph: FlowGraph) -> None:
    if END_STEP not in graph:
        _fail(
            f"Flow {graph.name} has no end step. Fix: add a step named end, the last step of "
            f"the flow, with no self.next() call, and make the final step call self.next(self.end).",
            graph=graph,
        )


@check
def check_that_end_is_end(graph: FlowGraph) -> None:
    node = graph[END_STEP]
    if node.has_tail_next or node.next_call_linenos:
        line = node.tail_next_lineno or node.next_call_linenos[0]
        _fail(
            "The terminal step end should not have a self.next() transition. Fix: just remove it; "
            "the flow finishes when end returns.",
            node,
            line=line,
        )


@check
def check_start_and_end_are_not_joins(graph: FlowGraph) -> None:
    start, end = graph[START_STEP], graph[END_STEP]
    if start.num_args == 2:
        _fail(
            "The start step takes an extra argument, as a join step would, but start has no "
            "parent steps to receive inputs from. Fix: define it as `def start(self):`.",
            start,
        )
    if end.num_args == 2:
        _fail(
            "The terminal step end should not be a join step (it gets an extra argument). "
            "Fix: add a join step before it that takes (self, inputs) and calls self.next(self.end), "
            "and define `def end(self):`.",
            end,
        )


# ---------------------------------------------------------------------- transitions


@check
def check_static_transitions(graph: FlowGraph) -> None:
    """Every step but end ends with exactly one self.next(), as its last statement (Metaflow)."""
    for node in graph:
        if node.type == "end":
            continue
        stray = [line for line in node.next_call_linenos if line != node.tail_next_lineno]
        if stray:
            _fail(
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
            _fail(
                f"Step {node.name} is missing a self.next() transition to the next step. "
                f"Fix: add self.next(self.<next step>) as the last line of the step.",
                node,
            )


@check
def check_valid_transitions(graph: FlowGraph) -> None:
    for node in graph:
        if node.invalid_tail_next and node.type not in ("foreach", "split-switch"):
            _fail(
                f"Step {node.name} specifies an invalid self.next() transition: {node.invalid_reason}. "
                f"Transitions must be static so the DAG can be built without running the flow. "
                f"Fix: use one of {_TRANSITION_FORMS}.",
                node,
                line=_next_line(node),
            )


@check
def check_foreach_transitions(graph: FlowGraph) -> None:
    for node in graph:
        if node.type == "foreach" and node.invalid_tail_next:
            _fail(
                f"Step {node.name} specifies an invalid foreach transition: {node.invalid_reason}. "
                f"Fix: write self.next(self.<step>, foreach='<artifact>') where <artifact> is the "
                f"name of a list this step assigns, e.g. self.rows = [...]; "
                f"self.next(self.process_row, foreach='rows').",
                node,
                line=_next_line(node),
            )


@check
def check_switch_splits(graph: FlowGraph) -> None:
    for node in graph:
        if node.type != "split-switch":
            continue
        if node.invalid_tail_next:
            _fail(
                f"Step {node.name} specifies an invalid switch transition: {node.invalid_reason}. "
                f"Fix: write self.next({{'<case>': self.<step>, '<other case>': self.<other step>}}, "
                f"condition='<artifact>') with string literal keys, where the step sets "
                f"self.<artifact> to one of the keys.",
                node,
                line=_next_line(node),
            )
        cases = node.switch_cases or {}
        if len(cases) < 2 or len(node.out_funcs) < 2:
            _fail(
                f"Step {node.name} is a switch split but defines {len(cases)} case(s) leading to "
                f"{len(node.out_funcs)} distinct step(s). Switch splits must define at least 2 "
                f"transitions to different steps. Fix: add another case, or use a plain "
                f"self.next(self.<step>) if there is nothing to choose.",
                node,
                line=_next_line(node),
            )


@check
def check_unknown_transitions(graph: FlowGraph) -> None:
    for node in graph:
        unknown = [target for target in node.out_funcs if target not in graph]
        if unknown:
            _fail(
                f"Step {node.name} specifies a self.next() transition to an unknown step, "
                f"{unknown[0]}. Fix: define `@step def {unknown[0]}(self):` in the flow, or correct "
                f"the name (steps: {', '.join(graph.sorted_nodes())}).",
                node,
                line=_next_line(node),
            )


@check
def check_num_args(graph: FlowGraph) -> None:
    for node in graph:
        if node.num_args > 2:
            _fail(
                f"Step {node.name} has too many arguments ({node.num_args}). Normal steps take only "
                f"'self' as an argument. Join steps take 'self' and 'inputs'. Fix: remove the extra "
                f"arguments; pass data between steps as artifacts (self.<name> = value).",
                node,
            )
        if node.num_args == 0:
            _fail(
                f"Step {node.name} is missing the 'self' argument. Fix: define it as "
                f"`def {node.name}(self):`.",
                node,
            )
        if node.num_args == 2 and node.type in ("split", "foreach", "split-switch"):
            _fail(
                f"Step {node.name} is both a join step (it takes an extra argument) and a split "
                f"step (it transitions to multiple steps). This is not allowed. Fix: add a new step "
                f"so that the join and the split become separate steps.",
                node,
            )


# ---------------------------------------------------------------------- shape


@check
def check_start_has_no_parents(graph: FlowGraph) -> None:
    node = graph[START_STEP]
    if node.in_funcs:
        _fail(
            f"The start step has incoming transitions from {', '.join(node.in_funcs)}. A start "
            f"step must have no incoming transitions. Fix: point those self.next() calls at "
            f"another step.",
            graph[node.in_funcs[0]],
            line=_next_line(graph[node.in_funcs[0]]),
        )


@check
def check_switch_loops(graph: FlowGraph) -> None:
    """Metaflow 2.19 runs a switch that points back at itself or an earlier step as a loop; Airflow cannot."""
    if graph.is_acyclic():
        return
    for node in graph:
        if node.type != "split-switch" or not node.switch_cases:
            continue
        for case, target in node.switch_cases.items():
            if target == node.name or _reaches(graph, target, node.name):
                via = "itself" if target == node.name else f"{target}, which leads back to {node.name}"
                _fail(
                    f"Step {node.name} is a switch whose case {case!r} goes back to {via}. Metaflow "
                    f"runs such a recursive switch as a loop, but an Airflow DAG cannot contain "
                    f"loops. Fix: repeat the work with a Python loop inside one step (e.g. a while "
                    f"loop until the condition holds), or fan out over the items with "
                    f"self.next(self.<step>, foreach='<artifact>').",
                    node,
                    line=_next_line(node),
                )


@check
def check_for_acyclicity(graph: FlowGraph) -> None:
    """Depth-first search in graph order; the first edge back onto the current path is the loop."""
    if graph.is_acyclic():
        return
    finished: set[str] = set()
    for root in graph.sorted_nodes():
        if root in finished:
            continue
        path = [root]
        pending = [iter(graph[root].out_funcs)]
        while pending:
            target = next(pending[-1], None)
            if target is None:
                finished.add(path.pop())
                pending.pop()
            elif target in path:
                node = graph[path[-1]]
                loop = path[path.index(target) :] + [target]
                _fail(
                    f"There is a loop in your flow: {'->'.join(loop)}. Airflow DAGs cannot contain "
                    f"loops. Break the loop by fixing self.next() transitions.",
                    node,
                    line=_next_line(node),
                )
            elif target in graph and target not in finished:
                path.append(target)
                pending.append(iter(graph[target].out_funcs))


@check
def check_for_orphans(graph: FlowGraph) -> None:
    reachable = _descendants(graph, START_STEP) | {START_STEP}
    for node in graph:
        if node.name not in reachable:
            _fail(
                f"Step {node.name} is unreachable from the start step. Fix: add "
                f"self.next(self.{node.name}) in another step or remove {node.name}.",
                node,
            )
    leads_to_end = _ancestors(graph, END_STEP) | {END_STEP}
    for node in graph:
        if node.name not in leads_to_end:
            _fail(
                f"Step {node.name} never leads to the end step. Fix: make every path through the "
                f"flow finish with self.next(self.end).",
                node,
                line=_next_line(node),
            )


@check
def check_empty_foreaches(graph: FlowGraph) -> None:
    for node in graph:
        if node.type == "foreach":
            joins = [target for target in node.out_funcs if _is_join(graph[target])]
            if joins:
                _fail(
                    f"Step {node.name} is a foreach split that has no children: it is followed "
                    f"immediately by a join step, {joins[0]}. Fix: add at least one step between "
                    f"the split and the join, which runs once per item.",
                    node,
                    line=_next_line(node),
                )


@check
def check_ambiguous_joins(graph: FlowGraph) -> None:
    """Metaflow: a switch case may not lead straight into a join."""
    for node in graph:
        if not _is_join(node):
            continue
        switches = [parent for parent in node.in_funcs if graph[parent].type == "split-switch"]
        if switches:
            _fail(
                f"A conditional path cannot lead directly to a join step: in switch step "
                f"{switches[0]}, a case transitions directly to the join step {node.name}. Fix: "
                f"introduce an intermediate, unconditional step (taking only self) on that path "
                f"before joining.",
                graph[switches[0]],
                line=_next_line(graph[switches[0]]),
            )


@check
def check_catch_not_on_split(graph: FlowGraph) -> None:
    """As in Metaflow: a caught failure in a foreach or switch split leaves nothing to fan out to."""
    for node in graph:
        if "catch" in node.decorators and node.type in ("foreach", "split-switch"):
            kind = "foreach" if node.type == "foreach" else "switch"
            _fail(
                f"Step {node.name} has @catch, but @catch is not supported on a {kind} split step: "
                f"if it failed, there would be no {'items' if kind == 'foreach' else 'case'} to "
                f"continue with. Fix: move the code that may fail into a step before {node.name} "
                f"and put @catch there, or put @catch on the steps after the split.",
                node,
            )


@check
def check_switch_convergence(graph: FlowGraph) -> None:
    """The arms of a switch must meet again at a plain step, which receives the one arm that ran."""
    for node in graph:
        if node.type != "split-switch":
            continue
        meeting = graph.convergence_step(node.name)
        if meeting is not None and _is_join(graph[meeting]):
            _fail(
                f"The cases of switch step {node.name} ({', '.join(node.out_funcs)}) first meet at "
                f"{meeting}, which is a join step. Only one case runs, so the step where the cases "
                f"meet receives a single input and must not be a join. Fix: let every case go to a "
                f"new step that takes only self, and call self.next(self.{meeting}) from it.",
                node,
                line=_next_line(node),
            )


@check
def check_parallel_parents_need_join(graph: FlowGraph) -> None:
    """Several parents are fine when a switch chose among them; parallel branches need a join."""
    for node in graph:
        if _is_join(node) or node.type == "end":
            continue
        arrivals = graph.arrivals(node.name)
        contexts = {(a.split_parents, a.split_branches) for a in arrivals}
        if len(contexts) > 1:
            parents = ", ".join(a.parent for a in arrivals)
            _fail(
                f"Step {node.name} is reached from {parents}, which run in parallel branches, but "
                f"it does not take inputs. A step where parallel branches meet must be a join. "
                f"Fix: define it as `def {node.name}(self, inputs):` (and close every branch of the "
                f"split there), or choose one branch at run time with a switch.",
                node,
            )


@check
def check_joins_have_a_split(graph: FlowGraph) -> None:
    for node in graph:
        if _is_join(node) and not node.split_parents:
            _fail(
                f"Step {node.name} seems like a join step (it takes an extra input argument) but it "
                f"is not preceded by a split. Fix: remove the inputs argument "
                f"(`def {node.name}(self):`), or add the split it should join.",
                node,
            )


@check
def check_split_join_balance(graph: FlowGraph) -> None:
    """Metaflow's split-join balance: each join closes the innermost open split, whole and alone."""
    for node in graph:
        if not _is_join(node):
            continue
        arrivals = graph.arrivals(node.name)
        if len({a.split_parents for a in arrivals}) > 1:
            first, last = arrivals[0].split_parents, arrivals[-1].split_parents
            _fail(
                f"Step {node.name} joins steps from unrelated splits ({arrivals[0].parent} is inside "
                f"{', '.join(first) or 'no split'}; {arrivals[-1].parent} is inside "
                f"{', '.join(last) or 'no split'}). Fix: ensure that there is a matching join for "
                f"every split, closing inner splits before outer ones.",
                node,
            )
        split = graph[node.split_parents[-1]]
        paths = list(dict.fromkeys(a.split_branches[-1] for a in arrivals if a.split_branches))
        if set(paths) != set(split.out_funcs):
            _fail(
                f"Step {node.name} seems like a join step (it takes an extra input argument) but an "
                f"incorrect number of steps ({', '.join(paths)}) lead to it. This join was expecting "
                f"{len(split.out_funcs)} incoming paths, starting from split step {split.name} "
                f"({', '.join(split.out_funcs)}). Fix: make every branch of {split.name} end in "
                f"self.next(self.{node.name}), and only those.",
                node,
            )
    end = graph[END_STEP]
    open_splits = next((a.split_parents for a in graph.arrivals(END_STEP) if a.split_parents), ())
    if open_splits:
        split = graph[open_splits[-1]]
        kind = "foreach" if split.type == "foreach" else "split"
        _fail(
            f"The terminal step end was reached before the {kind} started at step {split.name} "
            f"({', '.join(split.out_funcs)}) was joined. Fix: add a join step taking (self, inputs) "
            f"before end, and send every branch of {split.name} to it.",
            end,
        )


# ---------------------------------------------------------------------- helpers


def _descendants(graph: FlowGraph, name: str) -> set[str]:
    seen: set[str] = set()
    pending = [t for t in graph[name].out_funcs if t in graph]
    while pending:
        current = pending.pop()
        if current not in seen:
            seen.add(current)
            pending.extend(t for t in graph[current].out_funcs if t in graph)
    return seen


def _reaches(graph: FlowGraph, source: str, target: str) -> bool:
    return source in graph and target in _descendants(graph, source)


def _ancestors(graph: FlowGraph, name: str) -> set[str]:
    seen: set[str] = set()
    pending = list(graph[name].in_funcs)
    while pending:
        current = pending.pop()
        if current not in seen:
            seen.add(current)
            pending.extend(graph[current].in_funcs)
    return seen
