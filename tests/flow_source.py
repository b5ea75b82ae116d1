"""Flow source written to a real file and imported, for tests of what is read from a flow's source.

The graph and lint read a flow class's source with ``inspect``, which needs a file; a line marked
``# <-`` in such a source is where an error must point.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
import textwrap
from pathlib import Path

from airflow_flowspec.graph import FlowGraph

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


def graph_of(tmp_path: Path, body: str) -> FlowGraph:
    return FlowGraph(load_flow(tmp_path, body))


def marked_line(body: str) -> int:
    """The absolute line number of the line marked ``# <-`` once HEADER is prepended."""
    lines = (HEADER + textwrap.dedent(body)).splitlines()
    marked = [i for i, line in enumerate(lines, start=1) if "# <-" in line]
    assert len(marked) == 1, "a lint case must mark exactly one line"
    return marked[0]
