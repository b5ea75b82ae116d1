"""Cases for :mod:`airflow_flowspec.lint.names`: duplicate steps, step names, reserved words.

Step names become parts of Airflow task ids, and a reserved name would shadow the flow's own
attributes, so each mistake is caught before the DAG is built, pointing at the offending line.
"""

from __future__ import annotations

import pytest
from lint_cases import END, START_TO_END, assert_lint_case, flow

CASES = {
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
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_lint_rule(tmp_path, case):
    """The first rule the flow breaks is this family's, at the marked line, and says how to fix it."""
    body, expected = CASES[case]
    assert_lint_case(tmp_path, body, expected)
