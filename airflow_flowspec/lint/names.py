"""Rules about names: duplicate steps, step names usable as task ids, reserved words."""

from __future__ import annotations

import keyword
import re

from airflow_flowspec.errors import LintError
from airflow_flowspec.graph import FlowGraph
from airflow_flowspec.lint.registry import LintTarget, check, fail

# Metaflow's reserved words, plus the names our FlowSpec and runtime use for themselves.
RESERVED_NAMES = frozenset(
    {"name", "next", "input", "index", "cmd", "foreach_stack", "merge_artifacts", "script_name"}
)
MAX_STEP_NAME_LENGTH = 200


@check
def check_duplicate_steps(graph: FlowGraph, target: LintTarget) -> None:
    for name, lines in graph.duplicate_steps.items():
        node = graph.nodes.get(name)
        source_file = node.source_file if node else graph.file
        listed = ", ".join(str(line) for line in lines)
        raise LintError(
            f"Step {name} is defined {len(lines)} times in flow {graph.name} (lines {listed}). Python "
            f"keeps only the last definition, so the others are silently ignored. Fix: rename or "
            f"delete the extra definitions.",
            file=source_file,
            line=lines[-1],
        )


@check
def check_step_names(graph: FlowGraph, target: LintTarget) -> None:
    for node in graph:
        name = node.name
        problem = ""
        if not name.isidentifier() or keyword.iskeyword(name):
            problem = "is not a valid Python identifier"
        elif re.search("[^a-z0-9_]", name) or name.startswith("_"):
            problem = (
                "has characters other than lowercase ascii letters, digits and underscores, "
                "or starts with an underscore"
            )
        elif "__" in name:
            problem = "contains a double underscore, which airflow-flowspec uses to build Airflow task ids"
        elif len(name) > MAX_STEP_NAME_LENGTH:
            problem = f"is {len(name)} characters long (the limit is {MAX_STEP_NAME_LENGTH})"
        if problem:
            fail(
                f"Step {name} has an invalid name: it {problem}. Fix: rename the step using only "
                f"lowercase letters, digits and single underscores, e.g. load_data.",
                node,
            )


@check
def check_reserved_words(graph: FlowGraph, target: LintTarget) -> None:
    reserved = ", ".join(sorted(RESERVED_NAMES))
    for node in graph:
        if node.name in RESERVED_NAMES:
            fail(
                f"Step name {node.name} is a reserved word (reserved: {reserved}). "
                f"Fix: choose another name for the step.",
                node,
            )
    for member in graph.class_members:
        if member.name in RESERVED_NAMES:
            raise LintError(
                f"Flow class {member.class_name} defines {member.name}, which is reserved for the "
                f"flow's own use (reserved: {reserved}). Fix: rename it.",
                file=member.source_file,
                line=member.lineno,
            )
    for node in graph:
        for attribute, line in node.assigned_attributes.items():
            if attribute in RESERVED_NAMES:
                fail(
                    f"Step {node.name} assigns self.{attribute}, but {attribute} is reserved for the "
                    f"flow's own use (reserved: {reserved}). Fix: store the artifact under another "
                    f"name, e.g. self.{attribute}_value.",
                    node,
                    line=line,
                )
