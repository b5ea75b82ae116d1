"""Cases for :mod:`airflow_flowspec.lint.start_end`: start and end exist, end ends, neither joins.

A flow without a clear entry and exit cannot be laid out as a DAG; each case points at the class
or step the user has to change.
"""

from __future__ import annotations

import pytest
from lint_cases import END, START_TO_END, assert_lint_case, flow

CASES = {
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
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_lint_rule(tmp_path, case):
    """The first rule the flow breaks is this family's, at the marked line, and says how to fix it."""
    body, expected = CASES[case]
    assert_lint_case(tmp_path, body, expected)
