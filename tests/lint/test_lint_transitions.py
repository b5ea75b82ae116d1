"""Cases for :mod:`airflow_flowspec.lint.transitions`: each step's ``self.next`` call and arguments.

The DAG is built from the source without running a step, so a transition must be static, well
formed and go to known steps; each case points at the ``self.next`` call or ``def`` to fix.
"""

from __future__ import annotations

import pytest
from lint_cases import END, START_TO_END, assert_lint_case, flow

CASES = {
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
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_lint_rule(tmp_path, case):
    """The first rule the flow breaks is this family's, at the marked line, and says how to fix it."""
    body, expected = CASES[case]
    assert_lint_case(tmp_path, body, expected)
