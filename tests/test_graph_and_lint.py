"""The flow graph read from source, and the lint rules that explain a malformed flow.

Each lint case is a small flow with one mistake; the line the error must point at is marked with
``# <-`` in the flow's source, so the cases stay correct when a flow is edited.
"""

from __future__ import annotations

import importlib.util
import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from airflow_flowspec.errors import LintError
from airflow_flowspec.graph import FlowGraph
from airflow_flowspec.lint import ANY_TARGET, CHECKS, lint_flow

HEADER = (
    "from airflow_flowspec.flowspec import FlowSpec\n"
    "from airflow_flowspec.decorators import catch, step\n\n\n"
)
_module_ids = itertools.count()


def load_flow(tmp_path: Path, body: str, *, file_name: str = "my_flow.py", class_name: str | None = None):
    """Write a flow module to a real file (inspect needs one) and return its flow class."""
    source = HEADER + textwrap.dedent(body)
    path = tmp_path / file_name
    path.write_text(source)
    module_name = f"graph_lint_flow_{next(_module_ids)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    if class_name is None:
        class_name = next(
            name for name, value in vars(module).items() if isinstance(value, type) and name.endswith("Flow")
        )
    return getattr(module, class_name)


def marked_line(body: str) -> int:
    """The absolute line number of the line marked ``# <-`` once HEADER is prepended."""
    lines = (HEADER + textwrap.dedent(body)).splitlines()
    marked = [i for i, line in enumerate(lines, start=1) if "# <-" in line]
    assert len(marked) == 1, "a lint case must mark exactly one line"
    return marked[0]


def graph_of(tmp_path: Path, body: str) -> FlowGraph:
    return FlowGraph(load_flow(tmp_path, body))


def summary(graph: FlowGraph) -> dict[str, tuple]:
    return {n.name: (n.type, n.out_funcs, n.in_funcs) for n in graph}


# ---------------------------------------------------------------------- graph shapes

LINEAR = """
class LinearFlow(FlowSpec):
    \"\"\"Load, train, done.\"\"\"

    @step
    def start(self):
        \"\"\"Load the rows.\"\"\"
        self.rows = [1, 2]
        self.next(self.train)

    @step
    def train(self):
        self.next(self.end)

    @step
    def end(self):
        pass
"""

FAN_OUT = """
class FanOutFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.a, self.b)

    @step
    def a(self):
        self.next(self.a2)

    @step
    def a2(self):
        self.next(self.join)

    @step
    def b(self):
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass
"""

FOREACH = """
class ForeachFlow(FlowSpec):
    @step
    def start(self):
        self.rows = [1, 2, 3]
        self.next(self.fit, foreach="rows")

    @step
    def fit(self):
        self.next(self.gather)

    @step
    def gather(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass
"""

NESTED_FOREACH = """
class NestedFlow(FlowSpec):
    @step
    def start(self):
        self.rows = [1, 2]
        self.next(self.outer, foreach="rows")

    @step
    def outer(self):
        self.cols = ["x", "y"]
        self.next(self.inner, foreach="cols")

    @step
    def inner(self):
        self.next(self.join_cols)

    @step
    def join_cols(self, inputs):
        self.next(self.join_rows)

    @step
    def join_rows(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass
"""

FOREACH_IN_BRANCH = """
class BranchFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.fan, self.single)

    @step
    def fan(self):
        self.items = [1, 2]
        self.next(self.item, foreach="items")

    @step
    def item(self):
        self.next(self.fan_join)

    @step
    def fan_join(self, inputs):
        self.next(self.join)

    @step
    def single(self):
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass
"""

SWITCH = """
class SwitchFlow(FlowSpec):
    @step
    def start(self):
        self.size = "big"
        self.next({"big": self.big, "small": self.small}, condition="size")

    @step
    def big(self):
        self.next(self.merge)

    @step
    def small(self):
        self.next(self.merge)

    @step
    def merge(self):
        self.next(self.end)

    @step
    def end(self):
        pass
"""


def test_linear_flow(tmp_path):
    graph = graph_of(tmp_path, LINEAR)
    assert graph.name == "LinearFlow"
    assert graph.sorted_nodes() == ["start", "train", "end"]
    assert summary(graph) == {
        "start": ("start", ["train"], []),
        "train": ("linear", ["end"], ["start"]),
        "end": ("end", [], ["train"]),
    }
    start = graph["start"]
    assert start.doc == "Load the rows."
    assert start.num_args == 1 and start.has_tail_next and not start.invalid_tail_next
    assert start.func_lineno == 10 and start.tail_next_lineno == 13
    assert graph.lineno == 6 and graph.file == str(tmp_path / "my_flow.py")
    assert not graph["end"].has_tail_next
    assert all(n.split_parents == [] and n.foreach_depth == 0 for n in graph)
    assert "train" in graph and "nope" not in graph and [n.name for n in graph] == graph.sorted_nodes()


def test_static_fan_out_and_join(tmp_path):
    graph = graph_of(tmp_path, FAN_OUT)
    assert graph.sorted_nodes() == ["start", "a", "a2", "b", "join", "end"]
    assert graph["start"].type == "split"
    assert graph["start"].out_funcs == ["a", "b"]
    assert graph["start"].matching_join == "join"
    assert graph["join"].type == "join" and graph["join"].in_funcs == ["a2", "b"]
    assert graph["a2"].split_parents == ["start"] and graph["a2"].split_branches == ["a"]
    assert graph["join"].split_parents == ["start"]  # Metaflow: a join lists the split it closes
    assert graph["end"].split_parents == []
    assert not any(n.is_inside_foreach for n in graph)


def test_foreach_and_join(tmp_path):
    graph = graph_of(tmp_path, FOREACH)
    start, fit, gather = graph["start"], graph["fit"], graph["gather"]
    assert start.type == "foreach" and start.foreach_param == "rows" and start.out_funcs == ["fit"]
    assert start.matching_join == "gather"
    assert fit.split_parents == ["start"] and fit.is_inside_foreach and fit.foreach_depth == 1
    assert gather.type == "join" and gather.in_funcs == ["fit"]
    assert not gather.is_inside_foreach and gather.foreach_depth == 0
    assert not start.is_inside_foreach and start.foreach_depth == 0


def test_nested_foreach(tmp_path):
    graph = graph_of(tmp_path, NESTED_FOREACH)
    depth = {n.name: n.foreach_depth for n in graph}
    assert depth == {"start": 0, "outer": 1, "inner": 2, "join_cols": 1, "join_rows": 0, "end": 0}
    assert graph["outer"].type == "foreach" and graph["outer"].foreach_param == "cols"
    assert graph["inner"].split_parents == ["start", "outer"]
    assert graph["start"].matching_join == "join_rows"
    assert graph["outer"].matching_join == "join_cols"
    assert graph["join_cols"].split_parents == ["start", "outer"]
    assert graph["join_cols"].is_inside_foreach and not graph["join_rows"].is_inside_foreach
    lint_flow(graph)  # nested foreach is allowed


def test_foreach_inside_one_branch(tmp_path):
    graph = graph_of(tmp_path, FOREACH_IN_BRANCH)
    assert graph.sorted_nodes() == ["start", "fan", "item", "fan_join", "single", "join", "end"]
    assert graph["fan"].type == "foreach" and graph["fan"].split_parents == ["start"]
    assert graph["item"].split_parents == ["start", "fan"] and graph["item"].foreach_depth == 1
    assert graph["fan"].matching_join == "fan_join" and graph["start"].matching_join == "join"
    assert graph["fan_join"].foreach_depth == 0 and graph["fan_join"].split_branches == ["fan"]
    assert graph["join"].in_funcs == ["fan_join", "single"]
    assert not graph["single"].is_inside_foreach
    lint_flow(graph)


def test_switch_arms_converge(tmp_path):
    graph = graph_of(tmp_path, SWITCH)
    start = graph["start"]
    assert start.type == "split-switch"
    assert start.condition == "size"
    assert start.switch_cases == {"big": "big", "small": "small"}
    assert start.out_funcs == ["big", "small"]
    assert graph["merge"].type == "linear" and graph["merge"].in_funcs == ["big", "small"]
    assert graph.convergence_step("start") == "merge"
    assert all(n.split_parents == [] for n in graph)
    lint_flow(graph)


def test_steps_from_a_base_flow_class(tmp_path):
    flow = load_flow(
        tmp_path,
        """
        class BaseFlow(FlowSpec):
            @step
            def start(self):
                self.next(self.work)

            @step
            def end(self):
                pass

        class ChildFlow(BaseFlow):
            @step
            def work(self):
                self.next(self.end)
        """,
        class_name="ChildFlow",
    )
    graph = FlowGraph(flow)
    assert graph.name == "ChildFlow"
    assert graph.sorted_nodes() == ["start", "work", "end"]
    assert graph["work"].func_lineno == 17 and graph["start"].func_lineno == 8
    lint_flow(graph)


def test_to_text_shows_types_and_edges(tmp_path):
    text = graph_of(tmp_path, FOREACH).to_text()
    assert "start (foreach fan-out" in text
    assert "start -> fit (foreach over rows)" in text
    assert "gather (join of start" in text
    assert "end (end of flow)" in text
    switch_text = graph_of(tmp_path, SWITCH).output_steps()
    assert "start -> big (if size == 'big'), small (if size == 'small')" in switch_text


def test_building_is_deterministic(tmp_path):
    flow = load_flow(tmp_path, FOREACH_IN_BRANCH)
    first, second = FlowGraph(flow), FlowGraph(flow)
    assert first.to_text() == second.to_text()
    assert first.sorted_nodes() == second.sorted_nodes()
    assert list(first.nodes.values()) == list(second.nodes.values())


# ---------------------------------------------------------------------- lint: a clean flow


EVERY_FORM = """
class GoodFlow(FlowSpec):
    \"\"\"Every valid transition form in one flow.\"\"\"

    @step
    def start(self):
        self.mode = "fast"
        self.next({"fast": self.fast, "slow": self.slow}, condition="mode")

    @step
    def fast(self):
        self.next(self.chosen)

    @step
    def slow(self):
        self.next(self.chosen)

    @step
    def chosen(self):
        self.next(self.left, self.right)

    @step
    def left(self):
        self.rows = [1, 2]
        self.next(self.per_row, foreach="rows")

    @step
    def per_row(self):
        self.cols = [1, 2]
        self.next(self.per_cell, foreach="cols")

    @step
    def per_cell(self):
        self.next(self.cells_done)

    @step
    def cells_done(self, inputs):
        self.next(self.rows_done)

    @step
    def rows_done(self, inputs):
        self.next(self.both)

    @step
    def right(self):
        self.next(self.both)

    @step
    def both(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass
"""


def test_a_flow_with_every_form_lints_clean(tmp_path):
    graph = graph_of(tmp_path, EVERY_FORM)
    lint_flow(graph)
    assert graph["per_cell"].foreach_depth == 2
    assert graph["chosen"].in_funcs == ["fast", "slow"]
    assert graph["both"].in_funcs == ["rows_done", "right"]


def flow_from_edges(edges: dict[str, str]) -> str:
    """A flow whose steps are the keys; a value is the inside of that step's self.next(...).

    A name ending in ``*`` takes ``inputs`` (a join). ``end`` is added.
    """
    steps = []
    for name, transition in edges.items():
        args = "self, inputs" if name.endswith("*") else "self"
        steps.append(f"@step\ndef {name.rstrip('*')}({args}):\n    self.next({transition})\n\n")
    return flow(*steps, END)


# Shapes Metaflow 2.19 accepts (several from its test/core/graphs) that must stay valid here.
VALID_SHAPES = {
    "branch in switch": {
        "start": '{"process": self.process, "skip": self.skip}, condition="mode"',
        "process": "self.p1, self.p2",
        "p1": "self.pj",
        "p2": "self.pj",
        "pj*": "self.end",
        "skip": "self.end",
    },
    "foreach in switch": {
        "start": '{"process": self.process, "skip": self.skip}, condition="mode"',
        "process": 'self.work, foreach="items"',
        "work": "self.wj",
        "wj*": "self.end",
        "skip": "self.end",
    },
    "nested switch": {
        "start": '{"c1": self.switch2, "c2": self.b}, condition="c"',
        "switch2": '{"x": self.c, "y": self.d}, condition="c2"',
        "b": "self.end",
        "c": "self.end",
        "d": "self.end",
    },
    "switch in foreach, arms meet before the join": {
        "start": 'self.item, foreach="items"',
        "item": '{"a": self.ha, "b": self.hb}, condition="kind"',
        "ha": "self.merged",
        "hb": "self.merged",
        "merged": "self.j",
        "j*": "self.end",
    },
    "static branch straight to its join": {"start": "self.a, self.j", "a": "self.j", "j*": "self.end"},
    "two switches in a row": {
        "start": '{"a": self.a, "b": self.b}, condition="m"',
        "a": "self.mid",
        "b": "self.mid",
        "mid": '{"c": self.c, "d": self.end}, condition="n"',
        "c": "self.end",
    },
}


@pytest.mark.parametrize("shape", list(VALID_SHAPES), ids=list(VALID_SHAPES))
def test_valid_shapes_lint_clean(tmp_path, shape):
    lint_flow(graph_of(tmp_path, flow_from_edges(VALID_SHAPES[shape])), ANY_TARGET)


def test_checks_are_a_registry_of_functions():
    names = [c.name for c in CHECKS]
    assert names[0] == "check_duplicate_steps" and len(names) == len(set(names)) >= 20


# ---------------------------------------------------------------------- lint: one case per rule


def flow(*parts: str, class_line: str = "class BadFlow(FlowSpec):") -> str:
    """A flow class whose body is ``parts``, each dedented on its own, in order."""
    body = "".join(textwrap.dedent(part) for part in parts)
    return class_line + "\n" + textwrap.indent(body, "    ")


START_TO_END = """
@step
def start(self):
    self.next(self.end)
"""
END = """
@step
def end(self):
    pass
"""

LINT_CASES = {
    "duplicate step": (
        flow(
            START_TO_END,
            END,
            """
            @step
            def end(self):  # <-
                pass
            """,
        ),
        ["Step end is defined 2 times", "Fix: rename or delete"],
    ),
    "invalid step name (double underscore)": (
        flow(
            """
            @step
            def start(self):
                self.next(self.load__data)

            @step
            def load__data(self):  # <-
                self.next(self.end)
            """,
            END,
        ),
        ["Step load__data has an invalid name", "double underscore", "Fix: rename"],
    ),
    "invalid step name (uppercase)": (
        flow(
            """
            @step
            def start(self):
                self.next(self.Load)

            @step
            def Load(self):  # <-
                self.next(self.end)
            """,
            END,
        ),
        ["Step Load has an invalid name", "lowercase"],
    ),
    "step name too long": (
        flow(
            f"""
            @step
            def start(self):
                self.next(self.{"x" * 201})

            @step
            def {"x" * 201}(self):  # <-
                self.next(self.end)
            """,
            END,
        ),
        ["201 characters long", "Fix: rename"],
    ),
    "reserved step name": (
        flow(
            """
            @step
            def start(self):
                self.next(self.index)

            @step
            def index(self):  # <-
                self.next(self.end)
            """,
            END,
        ),
        ["Step name index is a reserved word", "Fix: choose another name"],
    ),
    "reserved class attribute": (
        flow(
            """
            script_name = "x"  # <-
            """,
            START_TO_END,
            END,
        ),
        ["BadFlow defines script_name, which is reserved", "Fix: rename it"],
    ),
    "reserved artifact": (
        flow(
            """
            @step
            def start(self):
                self.input = 3  # <-
                self.next(self.end)
            """,
            END,
        ),
        ["Step start assigns self.input", "reserved", "Fix: store the artifact under another name"],
    ),
    "no start step": (
        flow(
            """
            @step
            def begin(self):
                self.next(self.end)
            """,
            END,
            class_line="class BadFlow(FlowSpec):  # <-",
        ),
        ["Flow BadFlow has no start step", "Fix: add a step named start"],
    ),
    "no end step": (
        flow(
            """
            @step
            def start(self):
                self.next(self.finish)

            @step
            def finish(self):
                pass
            """,
            class_line="class BadFlow(FlowSpec):  # <-",
        ),
        ["Flow BadFlow has no end step", "Fix: add a step named end"],
    ),
    "end has self.next": (
        flow(
            START_TO_END,
            """
            @step
            def end(self):
                self.next(self.start)  # <-
            """,
        ),
        ["The terminal step end should not have a self.next() transition", "Fix: just remove it"],
    ),
    "end is a join": (
        flow(
            START_TO_END,
            """
            @step
            def end(self, inputs):  # <-
                pass
            """,
        ),
        ["The terminal step end should not be a join step", "Fix: add a join step before it"],
    ),
    "start takes inputs": (
        flow(
            """
            @step
            def start(self, inputs):  # <-
                self.next(self.end)
            """,
            END,
        ),
        ["The start step takes an extra argument", "Fix: define it as `def start(self):`"],
    ),
    "missing self.next": (
        flow(
            START_TO_END.replace("self.end", "self.work"),
            """
            @step
            def work(self):  # <-
                self.x = 1
            """,
            END,
        ),
        ["Step work is missing a self.next() transition", "Fix: add self.next"],
    ),
    "self.next not last": (
        flow(
            """
            @step
            def start(self):
                self.next(self.end)  # <-
                self.x = 1
            """,
            END,
        ),
        [
            "Step start calls self.next() on line",
            "not the last statement",
            "Fix: call self.next() exactly once",
        ],
    ),
    "self.next inside an if": (
        flow(
            """
            @step
            def start(self):
                if self.x:
                    self.next(self.end)  # <-
                else:
                    self.next(self.end)
            """,
            END,
        ),
        ["Step start calls self.next() on line", "inside an if/for/try/with block", "use a switch"],
    ),
    "dynamic target": (
        flow(
            """
            @step
            def start(self):
                self.next(getattr(self, "end"))  # <-
            """,
            END,
        ),
        [
            "Step start specifies an invalid self.next() transition",
            "its argument getattr(self, 'end')",
            "Fix: use one of",
        ],
    ),
    "variable target": (
        flow(
            """
            @step
            def start(self):
                target = self.end
                self.next(target)  # <-
            """,
            END,
        ),
        ["invalid self.next() transition", "its argument target is not a step reference", "Fix:"],
    ),
    "keyword typo": (
        flow(
            """
            @step
            def start(self):
                self.rows = [1]
                self.next(self.end, foreeach="rows")  # <-
            """,
            END,
        ),
        ["unknown keyword argument foreeach= (did you mean foreach=?)", "Fix: use one of"],
    ),
    "foreach without a string attribute": (
        flow(
            """
            @step
            def start(self):
                rows = "rows"
                self.next(self.work, foreach=rows)  # <-

            @step
            def work(self):
                self.next(self.join)

            @step
            def join(self, inputs):
                self.next(self.end)
            """,
            END,
        ),
        ["Step start specifies an invalid foreach transition", "foreach= must be a string literal", "Fix:"],
    ),
    "foreach with two targets": (
        flow(
            """
            @step
            def start(self):
                self.rows = [1]
                self.next(self.a, self.b, foreach="rows")  # <-

            @step
            def a(self):
                self.next(self.end)

            @step
            def b(self):
                self.next(self.end)
            """,
            END,
        ),
        ["invalid foreach transition", "a foreach must go to exactly one step, but it names 2"],
    ),
    "switch without condition": (
        flow(
            """
            @step
            def start(self):
                self.next({"a": self.a, "b": self.end})  # <-

            @step
            def a(self):
                self.next(self.end)
            """,
            END,
        ),
        ["Step start specifies an invalid switch transition", "without condition=", "Fix: write self.next({"],
    ),
    "switch with one case": (
        flow(
            """
            @step
            def start(self):
                self.next({"a": self.end}, condition="mode")  # <-
            """,
            END,
        ),
        [
            "Step start is a switch split but defines 1 case(s)",
            "at least 2 transitions",
            "Fix: add another case",
        ],
    ),
    "switch value is not a step": (
        flow(
            """
            @step
            def start(self):
                self.next({"a": self.end, "b": "end"}, condition="mode")  # <-
            """,
            END,
        ),
        ["invalid switch transition", "case 'b' goes to 'end', which is not a step reference"],
    ),
    "unknown step": (
        flow(
            """
            @step
            def start(self):
                self.next(self.helper)  # <-
            """,
            END,
        ),
        ["Step start specifies a self.next() transition to an unknown step, helper", "Fix: define"],
    ),
    "too many arguments": (
        flow(
            """
            @step
            def start(self):
                self.next(self.work)

            @step
            def work(self, a, b):  # <-
                self.next(self.end)
            """,
            END,
        ),
        ["Step work has too many arguments (3)", "Fix: remove the extra arguments"],
    ),
    "missing self": (
        flow(
            """
            @step
            def start(self):
                self.next(self.work)

            @step
            def work():  # <-
                self.next(self.end)
            """,
            END,
        ),
        ["Step work is missing the 'self' argument", "Fix: define it as `def work(self):`"],
    ),
    "join that splits": (
        flow(
            """
            @step
            def start(self):
                self.next(self.a, self.b)

            @step
            def a(self):
                self.next(self.j)

            @step
            def b(self):
                self.next(self.j)

            @step
            def j(self, inputs):  # <-
                self.next(self.c, self.d)

            @step
            def c(self):
                self.next(self.j2)

            @step
            def d(self):
                self.next(self.j2)

            @step
            def j2(self, inputs):
                self.next(self.end)
            """,
            END,
        ),
        ["Step j is both a join step", "and a split step", "Fix: add a new step"],
    ),
    "start has parents": (
        flow(
            """
            @step
            def start(self):
                self.next(self.end)

            @step
            def stray(self):
                self.next(self.start)  # <-
            """,
            END,
        ),
        ["The start step has incoming transitions from stray", "Fix: point those self.next() calls"],
    ),
    "recursive switch": (
        flow(
            """
            @step
            def start(self):
                self.next(self.poll)

            @step
            def poll(self):
                self.next({"again": self.poll, "done": self.end}, condition="state")  # <-
            """,
            END,
        ),
        [
            "Step poll is a switch whose case 'again' goes back to itself",
            "cannot contain loops",
            "Python loop",
        ],
    ),
    "switch looping back to an earlier step": (
        flow(
            """
            @step
            def start(self):
                self.next(self.train)

            @step
            def train(self):
                self.next(self.check)

            @step
            def check(self):
                self.next({"retry": self.train, "ok": self.end}, condition="state")  # <-
            """,
            END,
        ),
        ["switch whose case 'retry' goes back to train, which leads back to check", "foreach="],
    ),
    "loop": (
        flow(
            """
            @step
            def start(self):
                self.next(self.pong)

            @step
            def ping(self):
                self.next(self.pong)  # <-

            @step
            def pong(self):
                self.next(self.ping)
            """,
            END,
        ),
        [
            "There is a loop in your flow: pong->ping->pong",
            "Break the loop by fixing self.next() transitions",
        ],
    ),
    "orphan step": (
        flow(
            START_TO_END,
            """
            @step
            def forgotten(self):  # <-
                self.next(self.end)
            """,
            END,
        ),
        ["Step forgotten is unreachable from the start step", "Fix: add self.next(self.forgotten)"],
    ),
    "empty foreach": (
        flow(
            """
            @step
            def start(self):
                self.rows = [1]
                self.next(self.join, foreach="rows")  # <-

            @step
            def join(self, inputs):
                self.next(self.end)
            """,
            END,
        ),
        ["Step start is a foreach split that has no children", "followed immediately by a join step, join"],
    ),
    "switch straight into a join": (
        flow(
            """
            @step
            def start(self):
                self.next(self.a, self.b)

            @step
            def a(self):
                self.next({"x": self.x, "j": self.j}, condition="mode")  # <-

            @step
            def x(self):
                self.next(self.j)

            @step
            def b(self):
                self.next(self.j)

            @step
            def j(self, inputs):
                self.next(self.end)
            """,
            END,
        ),
        ["A conditional path cannot lead directly to a join step", "switch step a", "join step j"],
    ),
    "switch arms meet at a join": (
        flow(
            """
            @step
            def start(self):
                self.rows = [1, 2]
                self.next(self.each, foreach="rows")

            @step
            def each(self):
                self.next({"x": self.x, "y": self.y}, condition="mode")  # <-

            @step
            def x(self):
                self.next(self.j)

            @step
            def y(self):
                self.next(self.j)

            @step
            def j(self, inputs):
                self.next(self.end)
            """,
            END,
        ),
        ["The cases of switch step each (x, y) first meet at j, which is a join step", "Fix: let every case"],
    ),
    "parallel branches meet at a non-join": (
        flow(
            """
            @step
            def start(self):
                self.next(self.a, self.b)

            @step
            def a(self):
                self.next(self.c)

            @step
            def b(self):
                self.next(self.c)

            @step
            def c(self):  # <-
                self.next(self.end)
            """,
            END,
        ),
        [
            "Step c is reached from a, b, which run in parallel branches",
            "Fix: define it as `def c(self, inputs):`",
        ],
    ),
    "join without a split": (
        flow(
            """
            @step
            def start(self):
                self.next(self.j)

            @step
            def j(self, inputs):  # <-
                self.next(self.end)
            """,
            END,
        ),
        ["Step j seems like a join step", "not preceded by a split", "Fix: remove the inputs argument"],
    ),
    "join of unrelated splits": (
        flow(
            """
            @step
            def start(self):
                self.next(self.a, self.b)

            @step
            def a(self):
                self.next(self.c, self.d)

            @step
            def c(self):
                self.next(self.j)

            @step
            def d(self):
                self.next(self.j2)

            @step
            def b(self):
                self.next(self.j)

            @step
            def j(self, inputs):  # <-
                self.next(self.j2)

            @step
            def j2(self, inputs):
                self.next(self.end)
            """,
            END,
        ),
        ["Step j joins steps from unrelated splits", "Fix: ensure that there is a matching join"],
    ),
    "join misses a branch": (
        flow(
            """
            @step
            def start(self):
                self.next(self.a, self.b, self.c)

            @step
            def a(self):
                self.next(self.j)

            @step
            def b(self):
                self.next(self.j)

            @step
            def c(self):
                self.next(self.j2)

            @step
            def j(self, inputs):  # <-
                self.next(self.j2)

            @step
            def j2(self, inputs):
                self.next(self.end)
            """,
            END,
        ),
        ["Step j seems like a join step", "incorrect number of steps (a, b)", "expecting 3 incoming paths"],
    ),
    "foreach never joined": (
        flow(
            """
            @step
            def start(self):
                self.rows = [1]
                self.next(self.work, foreach="rows")

            @step
            def work(self):
                self.next(self.end)

            @step
            def end(self):  # <-
                pass
            """
        ),
        [
            "The terminal step end was reached before the foreach started at step start",
            "Fix: add a join step",
        ],
    ),
    "catch on a foreach split": (
        flow(
            """
            @catch(var="failure")
            @step
            def start(self):  # <-
                self.rows = [1]
                self.next(self.work, foreach="rows")

            @step
            def work(self):
                self.next(self.join)

            @step
            def join(self, inputs):
                self.next(self.end)
            """,
            END,
        ),
        ["Step start has @catch", "not supported on a foreach split step", "Fix: move the code"],
    ),
}


@pytest.mark.parametrize("case", list(LINT_CASES), ids=list(LINT_CASES))
def test_lint_rule(tmp_path, case):
    body, expected = LINT_CASES[case]
    graph = FlowGraph(load_flow(tmp_path, body, file_name="bad_flow.py"))
    with pytest.raises(LintError) as caught:
        lint_flow(graph)
    error = caught.value
    for fragment in expected:
        assert fragment in error.message
    assert "Fix" in error.message or "Break the loop" in error.message
    assert error.file == str(tmp_path / "bad_flow.py")
    assert error.line == marked_line(body), str(error)
    assert str(error).startswith(f"{tmp_path / 'bad_flow.py'}, line {error.line}: ")


def test_graph_records_invalid_transitions_instead_of_failing(tmp_path):
    graph = graph_of(tmp_path, LINT_CASES["dynamic target"][0])
    start = graph["start"]
    assert start.has_tail_next and start.invalid_tail_next
    assert "is not a step reference" in start.invalid_reason
    body = LINT_CASES["self.next not last"][0]
    graph = graph_of(tmp_path, body)
    assert not graph["start"].has_tail_next and graph["start"].next_call_linenos == [marked_line(body)]


def test_source_must_be_readable():
    namespace: dict = {}
    exec(HEADER + LINEAR, namespace)  # no file behind it, so no source to read
    with pytest.raises(LintError, match="Cannot read the source code of flow LinearFlow"):
        FlowGraph(namespace["LinearFlow"])


# ---------------------------------------------------------------------- cheap to import


def test_import_pulls_in_no_airflow_boto3_or_cloudpickle():
    code = (
        "import sys, airflow_flowspec.graph, airflow_flowspec.lint\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('airflow', 'boto3', 'botocore', 'cloudpickle', 'metaflow'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
