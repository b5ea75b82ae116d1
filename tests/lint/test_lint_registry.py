"""The lint as a whole: its registry of rules, the flows it must accept, and what importing it costs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import test_lint_names
import test_lint_shape
import test_lint_start_end
import test_lint_transitions
from flow_source import graph_of, load_flow
from lint_cases import END, assert_lint_case, flow

from airflow_flowspec.errors import LintError
from airflow_flowspec.graph import FlowGraph
from airflow_flowspec.lint import (
    ANY_TARGET,
    CHECKS,
    FAMILIES,
    LintTarget,
    lint_flow,
    names,
    shape,
    start_end,
    transitions,
)
from airflow_flowspec.lint.registry import RegisteredRule

# The test module holding the cases of each rule family.
CASES_OF_FAMILY = {
    names: test_lint_names.CASES,
    start_end: test_lint_start_end.CASES,
    transitions: test_lint_transitions.CASES,
    shape: test_lint_shape.CASES,
}


def test_checks_are_a_registry_of_functions():
    """Rules run family by family in the order of FAMILIES, so a flow hears of its most basic mistake
    first; a rule defined outside the family modules would run in no defined order."""
    rule_names = [c.name for c in CHECKS]
    assert rule_names[0] == "check_duplicate_steps" and len(rule_names) == len(set(rule_names)) >= 20
    families = [sys.modules[c.rule.__module__] for c in CHECKS]
    assert set(families) == set(FAMILIES)
    assert families == sorted(families, key=FAMILIES.index)


def first_rule_broken(tmp_path, body: str) -> RegisteredRule:
    graph = FlowGraph(load_flow(tmp_path, body, file_name="bad_flow.py"))
    target = LintTarget()
    for registered in CHECKS:
        if registered.target in (None, target.name):
            try:
                registered.rule(graph, target)
            except LintError:
                return registered
    raise AssertionError("the flow lints clean")


def test_every_rule_has_a_case_in_the_test_module_of_its_family(tmp_path):
    """Each family's CASES hold the cases of that family's rules, and every rule has one, so a new
    rule without a case, or a case that no longer reaches the rule it was written for, shows here."""
    reached = set()
    for family, cases in CASES_OF_FAMILY.items():
        for case, (body, _) in cases.items():
            case_dir = tmp_path / f"{family.__name__.rpartition('.')[2]}-{list(cases).index(case)}"
            case_dir.mkdir()
            rule = first_rule_broken(case_dir, body)
            assert sys.modules[rule.rule.__module__] is family, f"{case!r} is reported by {rule.name}"
            reached.add(rule.name)
    # check_foreach_width needs a max_map_length; its cases are test_lint_shape's TOO_WIDE.
    assert reached | {"check_foreach_width"} == {c.name for c in CHECKS}


# ---------------------------------------------------------------------- flows lint must accept


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
    """Every transition form together, nested, is a valid Airflow flow: no rule may misfire on it."""
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
    """A flow that runs on Metaflow must not be refused by the rules shared with Metaflow."""
    lint_flow(graph_of(tmp_path, flow_from_edges(VALID_SHAPES[shape])), ANY_TARGET)


def test_switch_in_foreach_is_valid_metaflow_but_not_for_airflow(tmp_path):
    """Metaflow runs a switch per foreach item; an Airflow DAG cannot skip one arm for some mapped
    items and the other arm for others, so the Airflow target refuses the shape ANY_TARGET accepts."""
    body = flow_from_edges(VALID_SHAPES["switch in foreach, arms meet before the join"])
    body = body.replace('condition="kind")', 'condition="kind")  # <-')
    lint_flow(graph_of(tmp_path, body), ANY_TARGET)
    assert_lint_case(
        tmp_path,
        body,
        ["Step item is a switch inside the foreach started at step start", "Fix: move the choice"],
        target=LintTarget(),
    )


# ---------------------------------------------------------------------- cheap to import


def test_import_pulls_in_no_airflow_boto3_or_cloudpickle():
    """The DAG processor builds and lints the graph on every parse; that must stay cheap to import."""
    code = (
        "import sys, airflow_flowspec.graph, airflow_flowspec.lint\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('airflow', 'boto3', 'botocore', 'cloudpickle', 'metaflow'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
