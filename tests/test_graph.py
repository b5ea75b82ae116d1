"""The flow graph read from source: step types, edges, split context and stated foreach widths.

The flows are written to real files (``tests/flow_source.py``): the graph reads a class's source.
"""

from __future__ import annotations

import textwrap

import pytest
from flow_source import HEADER, graph_of, load_flow, marked_line

from airflow_flowspec.errors import LintError
from airflow_flowspec.graph import FlowGraph
from airflow_flowspec.lint import lint_flow


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


STATED_WIDTHS = """
class WidthFlow(FlowSpec):
    @step
    def start(self):
        self.listed = [1, 2, 3]
        self.tupled = ("a", "b")
        self.ranged = range(2, 10, 2)
        self.listed_range = list(range(5))
        self.tupled_list = tuple([1, 2])
        self.appended = [1, 2]
        self.appended.append(3)
        self.reassigned = [1]
        self.reassigned = [1, 2]
        self.read_again = [1, 2]
        self.total = sum(self.read_again)
        bound = 4
        self.variable_bound = range(bound)
        parts = [1, 2]
        self.unpacked = [*parts]
        self.next(self.middle)

    @step
    def middle(self):
        self.listed.append(4)
        self.next(self.end)

    @step
    def end(self):
        pass
"""


def test_static_lengths_are_the_widths_the_source_states(tmp_path):
    """Lint checks a foreach width against Airflow's max_map_length before the run only when the source
    states it: one literal list, tuple or constant range, not touched again in the step (appended to,
    reassigned, read) and with no bound or item only known at run time."""
    graph = graph_of(tmp_path, STATED_WIDTHS)
    source = (HEADER + textwrap.dedent(STATED_WIDTHS)).splitlines()

    def line_of(text: str) -> int:
        return next(number for number, line in enumerate(source, start=1) if text in line)

    assert graph["start"].static_lengths == {
        "listed": (3, line_of("self.listed = [")),
        "tupled": (2, line_of("self.tupled = (")),
        "ranged": (4, line_of("self.ranged = range(")),
        "listed_range": (5, line_of("self.listed_range = list(")),
        "tupled_list": (2, line_of("self.tupled_list = tuple(")),
    }
    # What a later step does to self.listed does not change the width start's foreach would have.
    assert graph["middle"].static_lengths == {} and graph["end"].static_lengths == {}


def test_graph_records_invalid_transitions_instead_of_failing(tmp_path):
    """The graph keeps what the source says, even when malformed, so lint can explain the mistake."""
    dynamic = """
    class DynamicFlow(FlowSpec):
        @step
        def start(self):
            target = self.end
            self.next(target)

        @step
        def end(self):
            pass
    """
    start = graph_of(tmp_path, dynamic)["start"]
    assert start.has_tail_next and start.invalid_tail_next
    assert "is not a step reference" in start.invalid_reason
    body = """
    class NotLastFlow(FlowSpec):
        @step
        def start(self):
            self.next(self.end)  # <-
            print("after")

        @step
        def end(self):
            pass
    """
    graph = graph_of(tmp_path, body)
    assert not graph["start"].has_tail_next and graph["start"].next_call_linenos == [marked_line(body)]


def test_source_must_be_readable():
    namespace: dict = {}
    exec(HEADER + LINEAR, namespace)  # no file behind it, so no source to read
    with pytest.raises(LintError, match="Cannot read the source code of flow LinearFlow"):
        FlowGraph(namespace["LinearFlow"])
