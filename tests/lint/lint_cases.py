"""What the lint tests share: writing a small flow to a real file, and checking one lint case.

A lint case is a small flow with one mistake; the line the error must point at is marked with
``# <-`` in the flow's source, so the cases stay correct when a flow is edited. Each family of
rules (``airflow_flowspec/lint/<family>.py``) has its cases in ``test_lint_<family>.py``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from flow_source import load_flow, marked_line

from airflow_flowspec.errors import LintError
from airflow_flowspec.graph import FlowGraph
from airflow_flowspec.lint import LintTarget, lint_flow


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


def assert_lint_case(
    tmp_path: Path, body: str, expected: list[str], target: LintTarget | None = None
) -> None:
    """Lint the flow in ``body`` for ``target`` and check the error a user would read.

    It must contain every ``expected`` fragment, say how to fix the mistake, and point at the line
    marked ``# <-`` in the flow's own file, with ``<file>, line <n>: `` first so editors can jump there.
    """
    graph = FlowGraph(load_flow(tmp_path, body, file_name="bad_flow.py"))
    with pytest.raises(LintError) as caught:
        lint_flow(graph, target)
    error = caught.value
    for fragment in expected:
        assert fragment in error.message
    assert "Fix" in error.message or "Break the loop" in error.message
    assert error.file == str(tmp_path / "bad_flow.py")
    assert error.line == marked_line(body), str(error)
    assert str(error).startswith(f"{tmp_path / 'bad_flow.py'}, line {error.line}: ")


def all_cases() -> dict[str, tuple[str, list[str]]]:
    """Every family's ``CASES``, merged; a case name is used by one family only."""
    import test_lint_names
    import test_lint_shape
    import test_lint_start_end
    import test_lint_transitions

    merged: dict[str, tuple[str, list[str]]] = {}
    for module in (test_lint_names, test_lint_start_end, test_lint_transitions, test_lint_shape):
        reused = merged.keys() & module.CASES.keys()
        assert not reused, f"{module.__name__} reuses case names {sorted(reused)}"
        merged.update(module.CASES)
    return merged
