"""Cases for :mod:`airflow_flowspec.lint.shape`: reachability, loops, splits and joins, switches, foreach.

The Airflow-target rules of this family (recursive switch, switch inside a foreach, foreach width)
run by default (``test_lint_registry`` shows a switch inside a foreach passing for ``ANY_TARGET``).
A foreach width is only checked against a known ``max_map_length``, so its cases carry one and have
their own tests.
"""

from __future__ import annotations

import pytest
from flow_source import graph_of
from lint_cases import END, START_TO_END, assert_lint_case, flow

from airflow_flowspec.lint import ANY_TARGET, LintTarget, lint_flow

CASES = {
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
    "switch inside a foreach": (
        flow(
            """
            @step
            def start(self):
                self.items = [1, 2]
                self.next(self.each, foreach="items")

            @step
            def each(self):
                self.next({"a": self.a, "b": self.b}, condition="kind")  # <-

            @step
            def a(self):
                self.next(self.merged)

            @step
            def b(self):
                self.next(self.merged)

            @step
            def merged(self):
                self.next(self.j)

            @step
            def j(self, inputs):
                self.next(self.end)
            """,
            END,
        ),
        [
            "Step each is a switch inside the foreach started at step start",
            "Airflow cannot skip one arm for some items",
            "Fix: move the choice into the step body",
        ],
    ),
    "switch in a branch inside a foreach": (
        flow(
            """
            @step
            def start(self):
                self.items = [1, 2]
                self.next(self.each, foreach="items")

            @step
            def each(self):
                self.next(self.left, self.right)

            @step
            def left(self):
                self.next({"a": self.a, "b": self.b}, condition="kind")  # <-

            @step
            def a(self):
                self.next(self.merged)

            @step
            def b(self):
                self.next(self.merged)

            @step
            def merged(self):
                self.next(self.both)

            @step
            def right(self):
                self.next(self.both)

            @step
            def both(self, inputs):
                self.next(self.j)

            @step
            def j(self, inputs):
                self.next(self.end)
            """,
            END,
        ),
        ["Step left is a switch inside the foreach started at step start", "Fix: move the choice"],
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_lint_rule(tmp_path, case):
    """The first rule the flow breaks is this family's, at the marked line, and says how to fix it."""
    body, expected = CASES[case]
    assert_lint_case(tmp_path, body, expected)


# ---------------------------------------------------------------------- foreach width


FOREACH_BODY = """
@step
def work(self):
    self.next(self.join)

@step
def join(self, inputs):
    self.next(self.end)
"""

# Five items, the width stated by the source.
FIVE_ITEMS = flow(
    """
    @step
    def start(self):
        self.items = list(range(5))  # <-
        self.next(self.work, foreach="items")
    """,
    FOREACH_BODY,
    END,
)

# Three rows of two columns: each level fits a limit of 5, the six (row, column) pairs do not.
THREE_BY_TWO = flow(
    """
    @step
    def start(self):
        self.rows = ["a", "b", "c"]
        self.next(self.per_row, foreach="rows")

    @step
    def per_row(self):
        self.cols = (1, 2)  # <-
        self.next(self.per_cell, foreach="cols")

    @step
    def per_cell(self):
        self.next(self.cells_done)

    @step
    def cells_done(self, inputs):
        self.next(self.rows_done)

    @step
    def rows_done(self, inputs):
        self.next(self.end)
    """,
    END,
)

TOO_WIDE = {
    "stated width over the limit": (
        FIVE_ITEMS,
        4,
        [
            "The foreach in step start of flow BadFlow runs over self.items, which has 5 items: more than "
            "Airflow's [core] max_map_length (4)",
            "Fix: raise the limit",
            "AIRFLOW__CORE__MAX_MAP_LENGTH=5",
        ],
    ),
    "nested foreach over the limit": (
        THREE_BY_TWO,
        5,
        [
            "The foreach in step per_row of flow BadFlow runs over self.cols, which has 2 items (nested in "
            "another foreach, Airflow maps all 6 pairs): more than Airflow's [core] max_map_length (5)",
            "AIRFLOW__CORE__MAX_MAP_LENGTH=6",
        ],
    ),
    # Each outer item has all the inner items: however many outer items there are, at least 2.
    "nested foreach over the limit, outer width unknown": (
        THREE_BY_TWO.replace('self.rows = ["a", "b", "c"]', "self.rows = load_rows()"),
        1,
        ["which has 2 items (nested in another foreach, Airflow maps at least 2 pairs)"],
    ),
}


@pytest.mark.parametrize("case", list(TOO_WIDE), ids=list(TOO_WIDE))
def test_stated_foreach_width_over_max_map_length(tmp_path, case):
    """Airflow refuses to map more than max_map_length items; a width the source states is caught
    before the run, at the line that states it, rather than when the split task fails."""
    body, limit, expected = TOO_WIDE[case]
    assert_lint_case(tmp_path, body, expected, target=LintTarget(max_map_length=limit))


WIDTHS_THAT_PASS = {
    "width equal to the limit": (FIVE_ITEMS, LintTarget(max_map_length=5)),
    "each nested level and the product fit": (THREE_BY_TWO, LintTarget(max_map_length=6)),
    "width from a call": (
        flow(
            """
            @step
            def start(self):
                self.items = load()
                self.next(self.work, foreach="items")
            """,
            FOREACH_BODY,
            END,
        ),
        LintTarget(max_map_length=1),
    ),
    "width built in a loop": (
        flow(
            """
            @step
            def start(self):
                self.items = [0, 1, 2]
                for extra in range(3, 10):
                    self.items.append(extra)
                self.next(self.work, foreach="items")
            """,
            FOREACH_BODY,
            END,
        ),
        LintTarget(max_map_length=2),
    ),
    "over the limit, linted for any target": (FIVE_ITEMS, ANY_TARGET),
    "over the limit, any target given a limit": (FIVE_ITEMS, LintTarget(name=None, max_map_length=4)),
    "over the limit, limit unknown": (FIVE_ITEMS, LintTarget()),
}


@pytest.mark.parametrize("case", list(WIDTHS_THAT_PASS), ids=list(WIDTHS_THAT_PASS))
def test_foreach_width_within_the_limit_or_not_known_passes(tmp_path, case):
    """Only a width the source states is checked, only against a known limit, and only for Airflow:
    a width computed at run time is checked when the split runs, and Metaflow has no such limit."""
    body, target = WIDTHS_THAT_PASS[case]
    lint_flow(graph_of(tmp_path, body), target)
