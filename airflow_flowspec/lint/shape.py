"""Rules about the flow's shape: reachability, loops, splits and joins, switches and foreach."""

from __future__ import annotations

from airflow_flowspec.graph import END_STEP, START_STEP, FlowGraph
from airflow_flowspec.lint.registry import (
    AIRFLOW,
    LintTarget,
    ancestors,
    check,
    descendants,
    fail,
    is_join,
    next_line,
    reaches,
)


@check
def check_start_has_no_parents(graph: FlowGraph, target: LintTarget) -> None:
    node = graph[START_STEP]
    if node.in_funcs:
        fail(
            f"The start step has incoming transitions from {', '.join(node.in_funcs)}. A start "
            f"step must have no incoming transitions. Fix: point those self.next() calls at "
            f"another step.",
            graph[node.in_funcs[0]],
            line=next_line(graph[node.in_funcs[0]]),
        )


@check(target=AIRFLOW)
def check_switch_loops(graph: FlowGraph, target: LintTarget) -> None:
    """Metaflow 2.19 runs a switch that points back at itself or an earlier step as a loop; Airflow cannot.

    Registered before the general loop check so that a recursive switch gets this message.
    """
    if graph.is_acyclic():
        return
    for node in graph:
        if node.type != "split-switch" or not node.switch_cases:
            continue
        for case, arm in node.switch_cases.items():
            if arm == node.name or reaches(graph, arm, node.name):
                via = "itself" if arm == node.name else f"{arm}, which leads back to {node.name}"
                fail(
                    f"Step {node.name} is a switch whose case {case!r} goes back to {via}. Metaflow "
                    f"runs such a recursive switch as a loop, but an Airflow DAG cannot contain "
                    f"loops. Fix: repeat the work with a Python loop inside one step (e.g. a while "
                    f"loop until the condition holds), or fan out over the items with "
                    f"self.next(self.<step>, foreach='<artifact>').",
                    node,
                    line=next_line(node),
                )


@check
def check_for_acyclicity(graph: FlowGraph, target: LintTarget) -> None:
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
            child = next(pending[-1], None)
            if child is None:
                finished.add(path.pop())
                pending.pop()
            elif child in path:
                node = graph[path[-1]]
                loop = path[path.index(child) :] + [child]
                fail(
                    f"There is a loop in your flow: {'->'.join(loop)}. Airflow DAGs cannot contain "
                    f"loops. Break the loop by fixing self.next() transitions.",
                    node,
                    line=next_line(node),
                )
            elif child in graph and child not in finished:
                path.append(child)
                pending.append(iter(graph[child].out_funcs))


@check
def check_for_orphans(graph: FlowGraph, target: LintTarget) -> None:
    reachable = descendants(graph, START_STEP) | {START_STEP}
    for node in graph:
        if node.name not in reachable:
            fail(
                f"Step {node.name} is unreachable from the start step. Fix: add "
                f"self.next(self.{node.name}) in another step or remove {node.name}.",
                node,
            )
    leads_to_end = ancestors(graph, END_STEP) | {END_STEP}
    for node in graph:
        if node.name not in leads_to_end:
            fail(
                f"Step {node.name} never leads to the end step. Fix: make every path through the "
                f"flow finish with self.next(self.end).",
                node,
                line=next_line(node),
            )


@check
def check_empty_foreaches(graph: FlowGraph, target: LintTarget) -> None:
    for node in graph:
        if node.type == "foreach":
            joins = [child for child in node.out_funcs if is_join(graph[child])]
            if joins:
                fail(
                    f"Step {node.name} is a foreach split that has no children: it is followed "
                    f"immediately by a join step, {joins[0]}. Fix: add at least one step between "
                    f"the split and the join, which runs once per item.",
                    node,
                    line=next_line(node),
                )


@check
def check_ambiguous_joins(graph: FlowGraph, target: LintTarget) -> None:
    """Metaflow: a switch case may not lead straight into a join."""
    for node in graph:
        if not is_join(node):
            continue
        switches = [parent for parent in node.in_funcs if graph[parent].type == "split-switch"]
        if switches:
            fail(
                f"A conditional path cannot lead directly to a join step: in switch step "
                f"{switches[0]}, a case transitions directly to the join step {node.name}. Fix: "
                f"introduce an intermediate, unconditional step (taking only self) on that path "
                f"before joining.",
                graph[switches[0]],
                line=next_line(graph[switches[0]]),
            )


@check
def check_catch_not_on_split(graph: FlowGraph, target: LintTarget) -> None:
    """As in Metaflow: a caught failure in a foreach or switch split leaves nothing to fan out to."""
    for node in graph:
        if "catch" in node.decorators and node.type in ("foreach", "split-switch"):
            kind = "foreach" if node.type == "foreach" else "switch"
            fail(
                f"Step {node.name} has @catch, but @catch is not supported on a {kind} split step: "
                f"if it failed, there would be no {'items' if kind == 'foreach' else 'case'} to "
                f"continue with. Fix: move the code that may fail into a step before {node.name} "
                f"and put @catch there, or put @catch on the steps after the split.",
                node,
            )


@check
def check_switch_convergence(graph: FlowGraph, target: LintTarget) -> None:
    """The arms of a switch must meet again at a plain step, which receives the one arm that ran."""
    for node in graph:
        if node.type != "split-switch":
            continue
        meeting = graph.convergence_step(node.name)
        if meeting is not None and is_join(graph[meeting]):
            fail(
                f"The cases of switch step {node.name} ({', '.join(node.out_funcs)}) first meet at "
                f"{meeting}, which is a join step. Only one case runs, so the step where the cases "
                f"meet receives a single input and must not be a join. Fix: let every case go to a "
                f"new step that takes only self, and call self.next(self.{meeting}) from it.",
                node,
                line=next_line(node),
            )


@check
def check_parallel_parents_need_join(graph: FlowGraph, target: LintTarget) -> None:
    """Several parents are fine when a switch chose among them; parallel branches need a join."""
    for node in graph:
        if is_join(node) or node.type == "end":
            continue
        arrivals = graph.arrivals(node.name)
        contexts = {(a.split_parents, a.split_branches) for a in arrivals}
        if len(contexts) > 1:
            parents = ", ".join(a.parent for a in arrivals)
            fail(
                f"Step {node.name} is reached from {parents}, which run in parallel branches, but "
                f"it does not take inputs. A step where parallel branches meet must be a join. "
                f"Fix: define it as `def {node.name}(self, inputs):` (and close every branch of the "
                f"split there), or choose one branch at run time with a switch.",
                node,
            )


@check
def check_joins_have_a_split(graph: FlowGraph, target: LintTarget) -> None:
    for node in graph:
        if is_join(node) and not node.split_parents:
            fail(
                f"Step {node.name} seems like a join step (it takes an extra input argument) but it "
                f"is not preceded by a split. Fix: remove the inputs argument "
                f"(`def {node.name}(self):`), or add the split it should join.",
                node,
            )


@check
def check_split_join_balance(graph: FlowGraph, target: LintTarget) -> None:
    """Metaflow's split-join balance: each join closes the innermost open split, whole and alone."""
    for node in graph:
        if not is_join(node):
            continue
        arrivals = graph.arrivals(node.name)
        if len({a.split_parents for a in arrivals}) > 1:
            first, last = arrivals[0].split_parents, arrivals[-1].split_parents
            fail(
                f"Step {node.name} joins steps from unrelated splits ({arrivals[0].parent} is inside "
                f"{', '.join(first) or 'no split'}; {arrivals[-1].parent} is inside "
                f"{', '.join(last) or 'no split'}). Fix: ensure that there is a matching join for "
                f"every split, closing inner splits before outer ones.",
                node,
            )
        split = graph[node.split_parents[-1]]
        paths = list(dict.fromkeys(a.split_branches[-1] for a in arrivals if a.split_branches))
        if set(paths) != set(split.out_funcs):
            fail(
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
        fail(
            f"The terminal step end was reached before the {kind} started at step {split.name} "
            f"({', '.join(split.out_funcs)}) was joined. Fix: add a join step taking (self, inputs) "
            f"before end, and send every branch of {split.name} to it.",
            end,
        )


@check(target=AIRFLOW)
def check_switch_inside_foreach(graph: FlowGraph, target: LintTarget) -> None:
    """Airflow skips the arms a switch does not take; inside a mapped task group it cannot."""
    for node in graph:
        if node.type != "split-switch":
            continue
        foreach = [parent for parent in node.split_parents if graph[parent].type == "foreach"]
        if foreach:
            fail(
                f"Step {node.name} is a switch inside the foreach started at step {foreach[-1]}; on "
                f"Airflow a switch must be outside any foreach for now (Airflow cannot skip one arm "
                f"for some items and another arm for others). Fix: move the choice into the step body "
                f"(if/else), or make it before the foreach.",
                node,
                line=next_line(node),
            )


@check(target=AIRFLOW)
def check_foreach_width(graph: FlowGraph, target: LintTarget) -> None:
    """A foreach whose width the source states must fit Airflow's ``[core] max_map_length``.

    Airflow maps a foreach body over one list; a nested foreach is flattened, so its body maps
    over (outer items x inner items), at least the stated widths' product when an outer width is
    not stated (every outer item has the inner items). Other widths are checked when the split runs.
    """
    limit = target.max_map_length
    if limit is None:
        return
    for node in graph:
        if node.type != "foreach" or node.foreach_param not in node.static_lengths:
            continue
        width, line = node.static_lengths[node.foreach_param]
        mapped, exact = width, True
        for parent in node.split_parents:
            outer = graph[parent]
            if outer.type == "foreach":
                if outer.foreach_param in outer.static_lengths:
                    mapped *= outer.static_lengths[outer.foreach_param][0]
                else:
                    exact = False
        if mapped <= limit:
            continue
        nested = ""
        if mapped != width or not exact:
            nested = (
                f" (nested in another foreach, Airflow maps {'all' if exact else 'at least'} {mapped} pairs)"
            )
        fail(
            f"The foreach in step {node.name} of flow {graph.name} runs over self.{node.foreach_param}, "
            f"which has {width} items{nested}: more than Airflow's [core] max_map_length ({limit}). "
            f"Fix: raise the limit in airflow.cfg or with AIRFLOW__CORE__MAX_MAP_LENGTH={mapped} on the "
            f"scheduler and workers, or split the foreach into batches.",
            node,
            line=line,
        )
