"""The shape of a flow, read from its source code (AST) without running any step.

This mirrors Metaflow's ``metaflow/graph.py``: each ``@step`` method becomes a :class:`StepNode`
whose type and out-edges come from the ``self.next(...)`` call that ends it. The DAG processor
builds a :class:`FlowGraph` every time it parses a dags file, so building one only reads the
flow's source (which ``linecache`` already holds once the flow module is imported) and costs time
proportional to the number of steps. The graph records facts, including malformed ones; deciding
what is wrong, and saying how to fix it, is :mod:`airflow_flowspec.lint`'s job.
"""

from __future__ import annotations

import ast
import heapq
import inspect
import linecache
import sys
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from airflow_flowspec.decorators.base import step_decorators_of
from airflow_flowspec.errors import LintError

START_STEP = "start"
END_STEP = "end"
NEXT_KEYWORDS = ("foreach", "condition")

# Shown by `show` next to each step type, so a reader need not know Metaflow's vocabulary.
_TYPE_LABELS = {
    "start": "start",
    "linear": "linear",
    "split": "static fan-out",
    "foreach": "foreach fan-out",
    "split-switch": "switch",
    "join": "join",
    "end": "end",
}


@dataclass
class StepNode:
    """One step of a flow, as its source code declares it.

    ``type`` uses Metaflow's vocabulary exactly. Fields after ``doc`` are our additions: they keep
    the raw facts lint needs to explain a mistake (where every ``self.next`` call is, why a
    transition is malformed, which artifacts the step assigns).
    """

    name: str
    source_file: str
    func_lineno: int
    type: str = "linear"
    out_funcs: list[str] = field(default_factory=list)
    in_funcs: list[str] = field(default_factory=list)
    foreach_param: str | None = None
    condition: str | None = None
    switch_cases: dict[str, str] | None = None
    num_args: int = 0
    has_tail_next: bool = False
    invalid_tail_next: bool = False
    tail_next_lineno: int = 0
    split_parents: list[str] = field(default_factory=list)
    matching_join: str | None = None
    is_inside_foreach: bool = False
    foreach_depth: int = 0
    doc: str = ""
    # --- additions to Metaflow's DAGNode ---
    split_branches: list[str] = field(default_factory=list)
    invalid_reason: str = ""
    next_call_linenos: list[int] = field(default_factory=list)
    assigned_attributes: dict[str, int] = field(default_factory=dict)
    defined_in: str = ""
    decorators: list[str] = field(default_factory=list)  # step decorator names, e.g. ["catch", "retry"]
    # attribute -> (number of items, line) where the step assigns it, once, a literal list, tuple or
    # range with constant bounds: the width of a foreach over it is known before it runs.
    static_lengths: dict[str, tuple[int, int]] = field(default_factory=dict)


class Arrival(NamedTuple):
    """How control reaches a step along one in-edge: the open splits and the branch taken in each.

    A step reached along several edges with different arrivals is where parallel branches meet,
    which is only legal for a join; lint compares arrivals instead of re-walking every path.
    """

    parent: str
    split_parents: tuple[str, ...]
    split_branches: tuple[str, ...]


class ClassMember(NamedTuple):
    """A name bound in the body of one of the flow's own classes (attribute, method or step)."""

    name: str
    lineno: int
    source_file: str
    class_name: str


class FlowGraph:
    """The steps of ``flow_class`` and how they connect, in a deterministic order.

    ``nodes`` is ordered topologically from ``start`` with ties broken by source order; steps that
    cannot be ordered (unreachable from ``start``, or on a loop) follow in source order. Building the
    same class twice gives equal nodes in the same order.
    """

    def __init__(self, flow_class: type):
        self.name: str = flow_class.__name__
        self.doc: str = inspect.cleandoc(flow_class.__doc__) if flow_class.__doc__ else ""
        self.class_members: list[ClassMember] = []
        # step name -> line of every `def` of that name in one class body (only names defined twice).
        self.duplicate_steps: dict[str, list[int]] = {}
        source_trees: dict[str, ast.Module] = {}
        flow_ast = _class_source_ast(flow_class, source_trees)
        if flow_ast is None:
            raise LintError(
                f"Cannot read the source code of flow {self.name}: the flow graph is built from the "
                f"class's source. Fix: define the flow class in a .py file (not in a notebook cell, "
                f"an interactive session or a string passed to exec)."
            )
        self.file: str = flow_ast[1]
        self.lineno: int = flow_ast[0].lineno
        found = self._create_nodes(flow_class, flow_ast, source_trees)
        self.nodes: dict[str, StepNode] = {}
        self._topological: list[str] = []
        self._arrivals: dict[str, list[Arrival]] = {}
        self._post_dominators: dict[str, set[str]] | None = None
        self._identify_start_end(found)
        self._order_and_link(found)
        self._traverse()

    # ------------------------------------------------------------------ discovery

    def _create_nodes(
        self, flow_class: type, flow_ast: tuple[ast.ClassDef, str], trees: dict[str, ast.Module]
    ) -> dict[str, StepNode]:
        """Find steps the way Metaflow does (any attribute with ``is_step``), in source order.

        Classes are read base first, so a base flow's steps come before the subclass's; a step a
        subclass overrides is placed where the subclass defines it.
        """
        nodes: dict[str, StepNode] = {}
        for cls in reversed(flow_class.__mro__):
            if not _is_flow_class(cls, flow_class):
                continue
            parsed = flow_ast if cls is flow_class else _class_source_ast(cls, trees)
            if parsed is None:
                continue
            class_node, source_file = parsed
            defs: dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]] = {}
            for stmt in class_node.body:
                for bound_name, lineno in _bound_names(stmt):
                    self.class_members.append(ClassMember(bound_name, lineno, source_file, cls.__name__))
                if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    defs.setdefault(stmt.name, []).append(stmt)
            for func_name, func_defs in defs.items():
                owner = _owner(flow_class, func_name)
                attribute = vars(cls).get(func_name)
                is_step = owner is cls and _is_step(attribute)
                if len(func_defs) > 1 and (is_step or any(_has_step_decorator(d) for d in func_defs)):
                    self.duplicate_steps[func_name] = [d.lineno for d in func_defs]
                if is_step:
                    nodes.pop(func_name, None)
                    nodes[func_name] = _make_node(func_defs[-1], source_file, cls.__name__)
                    nodes[func_name].decorators = sorted(step_decorators_of(attribute))
        # Steps not written as a `def` in a class body we could read (e.g. attached with setattr).
        for attr_name in dir(flow_class):
            if attr_name in nodes:
                continue
            try:
                attribute = getattr(flow_class, attr_name)
            except Exception:  # a descriptor that only works on instances is not a step
                continue
            if callable(attribute) and _is_step(attribute):
                nodes[attr_name] = _node_from_function(attr_name, attribute, self.name)
                nodes[attr_name].decorators = sorted(step_decorators_of(attribute))
        return nodes

    def _identify_start_end(self, nodes: dict[str, StepNode]) -> None:
        if START_STEP in nodes and nodes[START_STEP].type == "linear":
            nodes[START_STEP].type = "start"
        if END_STEP in nodes:
            nodes[END_STEP].type = "end"

    # ------------------------------------------------------------------ linking

    def _order_and_link(self, found: dict[str, StepNode]) -> None:
        source_index = {name: i for i, name in enumerate(found)}
        reachable: set[str] = set()
        if START_STEP in found:
            pending = [START_STEP]
            while pending:
                name = pending.pop()
                if name in reachable:
                    continue
                reachable.add(name)
                pending.extend(t for t in found[name].out_funcs if t in found)
        # Kahn's algorithm over the part reachable from start; a heap keyed by source position makes
        # the order independent of set iteration and of the order edges were discovered in.
        in_degree = dict.fromkeys(reachable, 0)
        for name in reachable:
            for target in _unique(found[name].out_funcs):
                if target in found:
                    in_degree[target] += 1
        ready = [(source_index[START_STEP], START_STEP)] if in_degree.get(START_STEP) == 0 else []
        while ready:
            _, name = heapq.heappop(ready)
            self._topological.append(name)
            for target in _unique(found[name].out_funcs):
                if target in found:
                    in_degree[target] -= 1
                    if in_degree[target] == 0:
                        heapq.heappush(ready, (source_index[target], target))
        placed = set(self._topological)
        order = self._topological + [name for name in found if name not in placed]
        self.nodes = {name: found[name] for name in order}
        for node in self.nodes.values():
            for target in _unique(node.out_funcs):
                if target in self.nodes:
                    self.nodes[target].in_funcs.append(node.name)

    def _traverse(self) -> None:
        """Compute split_parents, split_branches and matching_join as Metaflow's traversal does.

        Metaflow walks every path from start (exponential in the number of diamonds); walking the
        topological order once gives the same answer for well-formed flows. A step reached with
        conflicting contexts takes its first parent's; lint reports the conflict from ``arrivals``.
        """
        self._arrivals = {name: [] for name in self.nodes}
        for name in self._topological:
            node = self.nodes[name]
            arrivals = self._arrivals[name]
            stack = arrivals[0].split_parents if arrivals else ()
            branches = arrivals[0].split_branches if arrivals else ()
            node.split_parents = list(stack)
            opens_split = node.type in ("split", "foreach")
            if node.type == "join" and stack:
                split = self.nodes[stack[-1]]
                if split.matching_join is None:
                    split.matching_join = name
                stack, branches = stack[:-1], branches[:-1]
            node.split_branches = list(branches)
            out_stack = stack + (name,) if opens_split else stack
            for target in _unique(node.out_funcs):
                if target in self.nodes:
                    out_branches = branches + (target,) if opens_split else branches
                    self._arrivals[target].append(Arrival(name, out_stack, out_branches))
        for node in self.nodes.values():
            node.foreach_depth = sum(
                1
                for parent in node.split_parents
                if self.nodes[parent].type == "foreach" and self.nodes[parent].matching_join != node.name
            )
            node.is_inside_foreach = node.foreach_depth > 0

    # ------------------------------------------------------------------ queries

    def __getitem__(self, name: str) -> StepNode:
        return self.nodes[name]

    def __contains__(self, name: object) -> bool:
        return name in self.nodes

    def __iter__(self):
        return iter(self.nodes.values())

    def __len__(self) -> int:
        return len(self.nodes)

    def sorted_nodes(self) -> list[str]:
        """Step names in graph order (topological from start, ties by source order)."""
        return list(self.nodes)

    def arrivals(self, name: str) -> list[Arrival]:
        """The in-edges of ``name`` from steps reachable from start, in graph order."""
        return list(self._arrivals.get(name, ()))

    def is_acyclic(self) -> bool:
        """True when every step reachable from start could be placed in topological order."""
        return len(self._topological) == len(self.nodes)

    def convergence_step(self, name: str) -> str | None:
        """The first step that every path leaving ``name`` goes through (its immediate post-dominator).

        For a switch this is where its arms meet again. ``None`` for ``end``, for steps not reachable
        from start and for steps on a loop, where the notion is undefined.
        """
        if self._post_dominators is None:
            self._post_dominators = {}
            for step_name in reversed(self._topological):
                successors = [
                    t for t in _unique(self.nodes[step_name].out_funcs) if t in self._post_dominators
                ]
                common = (
                    set.intersection(*(self._post_dominators[t] for t in successors)) if successors else set()
                )
                self._post_dominators[step_name] = common | {step_name}
        dominators = self._post_dominators.get(name, set()) - {name}
        if not dominators:
            return None
        position = {step_name: i for i, step_name in enumerate(self._topological)}
        return min(dominators, key=position.__getitem__)

    def edge_text(self, node: StepNode) -> str:
        """One readable line for the out-edges of ``node`` ("start -> fit (foreach over rows)")."""
        if not node.out_funcs:
            return f"{node.name} (end of flow)" if node.type == "end" else f"{node.name} -> (no transition)"
        if node.type == "foreach":
            return f"{node.name} -> {node.out_funcs[0]} (foreach over {node.foreach_param})"
        if node.type == "split-switch" and node.switch_cases:
            cases = ", ".join(
                f"{target} (if {node.condition} == {key!r})" for key, target in node.switch_cases.items()
            )
            return f"{node.name} -> {cases}"
        if node.type == "split":
            return f"{node.name} -> {', '.join(node.out_funcs)} (in parallel)"
        return f"{node.name} -> {', '.join(node.out_funcs)}"

    def to_text(self) -> str:
        """What ``python flow.py show`` prints: each step with its type and where it goes next."""
        lines = [f"Flow {self.name} ({self.file}, line {self.lineno})"]
        if self.doc:
            lines.append(f"    {self.doc.splitlines()[0]}")
        for node in self.nodes.values():
            label = _TYPE_LABELS.get(node.type, node.type)
            if node.type == "join" and node.split_parents:
                label += f" of {node.split_parents[-1]}"
            lines.append("")
            lines.append(f"{node.name} ({label}, line {node.func_lineno})")
            if node.doc:
                lines.append(f"    {node.doc.splitlines()[0]}")
            lines.append(f"    {self.edge_text(node)}")
        return "\n".join(lines) + "\n"

    output_steps = to_text

    def output_dot(self) -> str:
        """The graph in Graphviz's dot language, exactly as Metaflow's ``output-dot`` prints it
        (steps by name, their out-edges, a switch's cases as labelled blue edges), so tools and
        habits built on Metaflow's output keep working."""
        nodes = sorted(self.nodes.values(), key=lambda node: node.name)
        node_lines, edge_lines = [], []
        for node in nodes:
            if node.type == "split-switch":
                condition = f"switch: {node.condition}" if node.condition else "switch"
                node_lines.append(
                    f'"{node.name}" [ label = <<b>{node.name}</b><br/>'
                    f'<font point-size="9">{condition}</font>>   fontname = "Helvetica"   '
                    'shape = "hexagon"   style = "filled" fillcolor = "lightgreen" ];'
                )
                edge_lines.extend(
                    f'{node.name} -> {target} [label="{case}" color="blue" fontcolor="blue"];'
                    for case, target in (node.switch_cases or {}).items()
                )
            else:
                kind = "join" if node.num_args > 1 else node.type
                node_lines.append(
                    f'"{node.name}"[ label = <<b>{node.name}</b> | <font point-size="10">{kind}</font>> '
                    '  fontname = "Helvetica"   shape = "record" ];'
                )
                edge_lines.extend(f"{node.name} -> {target};" for target in node.out_funcs)
        return f"digraph {self.name} {{\n" + "\n".join(node_lines) + "\n" + "\n".join(edge_lines) + "\n}"

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return f"FlowGraph({self.name}, steps={list(self.nodes)})"


# ---------------------------------------------------------------------- parsing helpers


def graph_record(graph: FlowGraph) -> list[dict[str, Any]]:
    """The graph as a run records it (in its metadata), for those who draw a run without its code:
    each step in order, with its type, the steps it goes to, its foreach variable and its docstring's
    first paragraph."""
    return [
        {
            "name": name,
            "type": graph[name].type,
            "next": list(graph[name].out_funcs),
            "foreach": graph[name].foreach_param,
            "doc": first_paragraph(graph[name].doc),
        }
        for name in graph.sorted_nodes()
    ]


def first_paragraph(doc: str) -> str:
    """A docstring's summary as one line: its lines up to the first blank one, joined (a summary
    wrapped over two lines is still the summary; what follows a blank line is detail)."""
    lines = []
    for line in doc.strip().splitlines():
        if not line.strip():
            break
        lines.append(line.strip())
    return " ".join(lines)


def _class_source_ast(cls: type, trees: dict[str, ast.Module]) -> tuple[ast.ClassDef, str] | None:
    """The ``ClassDef`` of ``cls`` (absolute line numbers) and its file; None without readable source.

    Like ``inspect.getsource`` (same file lookup, same ``linecache`` freshness check, same qualname
    search), but parses each module once and keeps the module's own line numbers, which
    ``inspect.getsourcelines`` plus a re-parse of the class snippet would have to shift back.
    """
    try:
        source_file = inspect.getsourcefile(cls) or inspect.getfile(cls)
    except TypeError:
        return None
    tree = trees.get(source_file)
    if tree is None:
        linecache.checkcache(source_file)  # the DAG processor is long-lived; flow files get edited
        module = sys.modules.get(cls.__module__)
        lines = linecache.getlines(source_file, module.__dict__ if module else None)
        if not lines:
            return None
        try:
            tree = ast.parse("".join(lines))
        except SyntaxError:
            return None
        trees[source_file] = tree
    found = _find_class(tree, cls.__qualname__.split("."))
    first_line = getattr(cls, "__firstlineno__", None)  # Python 3.13+: disambiguates redefinitions
    if first_line is not None:
        exact = [node for node in found if _first_line(node) == first_line]
        found = exact or found
    return (found[0], source_file) if found else None


def _find_class(tree: ast.AST, qualname: list[str]) -> list[ast.ClassDef]:
    """Every class in ``tree`` with this qualname (as ``inspect``'s class finder walks it)."""
    found: list[ast.ClassDef] = []

    def visit(node: ast.AST, prefix: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                path = prefix + [child.name]
                if path == qualname:
                    found.append(child)
                elif qualname[: len(path)] == path:
                    visit(child, path)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                path = prefix + [child.name, "<locals>"]
                if qualname[: len(path)] == path:
                    visit(child, path)
            elif isinstance(child, ast.stmt):
                visit(child, prefix)  # classes inside if/try/with blocks

    visit(tree, [])
    return found


def _first_line(node: ast.ClassDef) -> int:
    return min([node.lineno] + [d.lineno for d in node.decorator_list])


def _is_flow_class(cls: type, flow_class: type) -> bool:
    """Skip ``object`` and the library's own base classes, whose source is not the user's flow."""
    if cls is flow_class:
        return True
    if cls is object or cls.__module__ == "builtins":
        return False
    if cls.__module__.startswith("airflow_flowspec."):
        return any(_is_step(value) for value in vars(cls).values())
    return True


def _owner(flow_class: type, name: str) -> type | None:
    for cls in flow_class.__mro__:
        if name in vars(cls):
            return cls
    return None


def _is_step(attribute: Any) -> bool:
    return bool(getattr(attribute, "is_step", False))


def _has_step_decorator(func: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for decorator in func.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Name) and target.id == "step":
            return True
        if isinstance(target, ast.Attribute) and target.attr == "step":
            return True
    return False


def _bound_names(stmt: ast.stmt) -> list[tuple[str, int]]:
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [(stmt.name, stmt.lineno)]
    targets: list[ast.expr] = []
    if isinstance(stmt, ast.Assign):
        targets = list(stmt.targets)
    elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
        targets = [stmt.target]
    return [(n.id, n.lineno) for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _is_self_next(expr: ast.AST) -> bool:
    return (
        isinstance(expr, ast.Call)
        and isinstance(expr.func, ast.Attribute)
        and expr.func.attr == "next"
        and isinstance(expr.func.value, ast.Name)
        and expr.func.value.id == "self"
    )


def _step_reference(expr: ast.expr) -> str | None:
    """``self.fit`` -> ``"fit"``; anything else (a variable, getattr, a string) -> None."""
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == "self":
        return expr.attr
    return None


def _self_attribute(expr: ast.expr) -> bool:
    return isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == "self"


def _static_length(value: ast.expr) -> int | None:
    """Items in ``[...]``, ``(...)``, ``range(<constants>)`` or ``list(range(...))``, else None."""
    if isinstance(value, (ast.List, ast.Tuple)):
        if any(isinstance(element, ast.Starred) for element in value.elts):
            return None
        return len(value.elts)
    if not isinstance(value, ast.Call) or not isinstance(value.func, ast.Name) or value.keywords:
        return None
    if value.func.id in ("list", "tuple") and len(value.args) == 1:
        return _static_length(value.args[0])
    if value.func.id == "range" and 1 <= len(value.args) <= 3:
        bounds = [argument.value for argument in value.args if isinstance(argument, ast.Constant)]
        if len(bounds) == len(value.args) and all(type(bound) is int for bound in bounds):
            try:
                return len(range(*bounds))
            except ValueError:  # range(..., 0): a lint of its own would say so; not ours
                return None
    return None


def _snippet(expr: ast.AST) -> str:
    text = ast.unparse(expr)
    return text if len(text) <= 60 else text[:57] + "..."


def _every_node(root: ast.AST) -> Iterator[ast.AST]:
    """Every node under ``root``, as ``ast.walk`` gives them but depth first and without its
    per-node generators: the DAG processor builds every flow's graph on every parse."""
    pending = [root]
    while pending:
        node = pending.pop()
        yield node
        for name in node._fields:
            value = getattr(node, name, None)
            if isinstance(value, ast.AST):
                pending.append(value)
            elif isinstance(value, list):
                pending.extend(item for item in value if isinstance(item, ast.AST))


def _make_node(func: ast.FunctionDef | ast.AsyncFunctionDef, source_file: str, class_name: str) -> StepNode:
    """A node from a ``def`` whose line numbers are already absolute."""
    args = func.args
    num_args = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs)
    num_args += (args.vararg is not None) + (args.kwarg is not None)
    node = StepNode(
        name=func.name,
        source_file=source_file,
        func_lineno=func.lineno,
        num_args=num_args,
        doc=ast.get_docstring(func) or "",
        defined_in=class_name,
    )
    next_lines: set[int] = set()
    mentions: dict[str, int] = {}  # self.<attr> occurrences, read or written
    for child in _every_node(func):
        if _is_self_next(child):
            next_lines.add(child.lineno)
        elif isinstance(child, ast.Assign) and len(child.targets) == 1 and _self_attribute(child.targets[0]):
            length = _static_length(child.value)
            if length is not None:
                node.static_lengths[child.targets[0].attr] = (length, child.lineno)  # type: ignore[attr-defined]
        if isinstance(child, ast.Attribute) and _self_attribute(child):
            mentions[child.attr] = mentions.get(child.attr, 0) + 1
        if (
            isinstance(child, ast.Attribute)
            and isinstance(child.ctx, ast.Store)
            and isinstance(child.value, ast.Name)
            and child.value.id == "self"
        ):
            line = node.assigned_attributes.get(child.attr)
            if line is None or child.lineno < line:
                node.assigned_attributes[child.attr] = child.lineno
    # Touched again after the assignment (appended to, reassigned, sliced...): the length is unknown.
    node.static_lengths = {name: known for name, known in node.static_lengths.items() if mentions[name] == 1}
    node.next_call_linenos = sorted(next_lines)
    node.assigned_attributes = dict(sorted(node.assigned_attributes.items(), key=lambda kv: (kv[1], kv[0])))
    tail = func.body[-1]
    if isinstance(tail, ast.Expr) and _is_self_next(tail.value):
        node.has_tail_next = True
        node.tail_next_lineno = tail.lineno
        _parse_transition(node, tail.value)
    elif num_args > 1:
        node.type = "join"
    return node


def _node_from_function(name: str, func: Any, flow_name: str) -> StepNode:
    """Fallback for a step attached without a ``def`` in a readable class body (Metaflow's path)."""
    try:
        source_file = inspect.getsourcefile(func) or inspect.getfile(func)
        lines, start = inspect.getsourcelines(func)
        source = "".join(lines)
        offset = start - 1
        if lines[0][:1] in (" ", "\t"):
            source, offset = "if True:\n" + source, offset - 1
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError, IndexError) as exc:
        raise LintError(
            f"Cannot read the source code of step {name} of flow {flow_name} ({exc}). "
            f"Fix: define the step as a `@step def {name}(self):` method in the flow class body."
        ) from exc
    ast.increment_lineno(tree, offset)
    func_def = next(
        (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))),
        None,
    )
    if func_def is None:
        raise LintError(
            f"Step {name} of flow {flow_name} is not a function defined with `def`. "
            f"Fix: define it as a `@step def {name}(self):` method in the flow class body."
        )
    node = _make_node(func_def, source_file, flow_name)
    node.name = name
    return node


def _parse_transition(node: StepNode, call: ast.Call) -> None:
    """Set the node's type and out-edges from its tail ``self.next(...)``; explain if malformed.

    Only the static forms are valid: ``self.next(self.a)``, ``self.next(self.a, self.b, ...)``,
    ``self.next(self.a, foreach="attr")`` and ``self.next({"k": self.a, ...}, condition="attr")``.
    The node keeps the targets it could read so ``show`` still draws something.
    """
    problems: list[str] = []
    keywords: dict[str, ast.expr] = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            problems.append(
                f"it passes **{_snippet(keyword.value)}, which cannot be read without running the step"
            )
        elif keyword.arg == "num_parallel":
            problems.append(
                "num_parallel= (Metaflow's @parallel gang scheduling) is not supported by airflow-flowspec"
            )
        elif keyword.arg not in NEXT_KEYWORDS:
            import difflib  # only for this error message; not on the DAG processor's parse path

            close = difflib.get_close_matches(keyword.arg, NEXT_KEYWORDS, n=1)
            hint = f" (did you mean {close[0]}=?)" if close else ""
            problems.append(f"it has an unknown keyword argument {keyword.arg}={hint}")
        else:
            keywords[keyword.arg] = keyword.value
    args = call.args
    is_switch = "condition" in keywords or (len(args) == 1 and isinstance(args[0], ast.Dict))
    if "foreach" in keywords and "condition" in keywords:
        problems.append("it combines foreach= and condition=; a transition is either a foreach or a switch")
    elif is_switch:
        node.type = "split-switch"
        _parse_switch(node, args, keywords, problems)
    else:
        targets = []
        for arg in args:
            target = _step_reference(arg)
            if target is None:
                what = "*" + _snippet(arg.value) if isinstance(arg, ast.Starred) else _snippet(arg)
                problems.append(f"its argument {what} is not a step reference of the form self.<step_name>")
            else:
                targets.append(target)
        node.out_funcs = targets
        if not args:
            problems.append("it names no step to go to")
        duplicates = [t for t in _unique(targets) if targets.count(t) > 1]
        if duplicates:
            problems.append(f"it lists step {duplicates[0]} more than once")
        if "foreach" in keywords:
            node.type = "foreach"
            _parse_foreach(node, args, keywords["foreach"], problems)
        elif len(targets) > 1:
            node.type = "split"
        else:
            node.type = "join" if node.num_args > 1 else "linear"
    if problems:
        node.invalid_tail_next = True
        node.invalid_reason = problems[0]


def _parse_foreach(node: StepNode, args: list[ast.expr], value: ast.expr, problems: list[str]) -> None:
    if len(args) != 1:
        problems.append(f"a foreach must go to exactly one step, but it names {len(args)}")
    if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
        problems.append(
            f"foreach= must be a string literal naming the artifact to iterate over, not {_snippet(value)}"
        )
    elif not value.value.isidentifier():
        problems.append(f"foreach={value.value!r} is not the name of an artifact (a Python identifier)")
    else:
        node.foreach_param = value.value


def _parse_switch(
    node: StepNode, args: list[ast.expr], keywords: dict[str, ast.expr], problems: list[str]
) -> None:
    condition = keywords.get("condition")
    if condition is None:
        problems.append("it passes a dict of cases without condition='<artifact name>'")
    elif not (isinstance(condition, ast.Constant) and isinstance(condition.value, str)):
        problems.append(
            f"condition= must be a string literal naming the artifact that selects the case, "
            f"not {_snippet(condition)}"
        )
    elif not condition.value.isidentifier():
        problems.append(f"condition={condition.value!r} is not the name of an artifact (a Python identifier)")
    else:
        node.condition = condition.value
    if len(args) != 1 or not isinstance(args[0], ast.Dict):
        problems.append("a switch takes exactly one positional argument, a dict literal of cases")
        node.switch_cases = {}
        return
    cases: dict[str, str] = {}
    for key, value in zip(args[0].keys, args[0].values, strict=True):
        if key is None:
            problems.append(
                f"its cases unpack **{_snippet(value)}, which cannot be read without running the step"
            )
            continue
        if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
            problems.append(f"case key {_snippet(key)} is not a string literal")
            continue
        target = _step_reference(value)
        if target is None:
            problems.append(
                f"case {key.value!r} goes to {_snippet(value)}, which is not a step reference "
                f"of the form self.<step_name>"
            )
            continue
        if key.value in cases:
            problems.append(f"case {key.value!r} is listed more than once")
            continue
        cases[key.value] = target
    node.switch_cases = cases
    node.out_funcs = _unique(list(cases.values()))


_graphs: weakref.WeakKeyDictionary[type, FlowGraph] = weakref.WeakKeyDictionary()


def graph_of(flow_class: type) -> FlowGraph:
    """The flow's graph, read from its source once per class object.

    Every task of a run in one process (``dag.test()``, a worker's task runner) and the CLI's
    lint-then-run reuse it instead of parsing the class source again. A changed flow file is loaded
    as a new class object, so it gets a new graph.
    """
    graph = _graphs.get(flow_class)
    if graph is None:
        graph = _graphs[flow_class] = FlowGraph(flow_class)
    return graph
