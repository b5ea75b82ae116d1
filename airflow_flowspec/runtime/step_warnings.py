"""A warning raised while a step runs: one line on the task's stderr, once per task.

Python shows a warning as its file, line and category, then the source line; inside Airflow it
becomes a log record with the file path (of the run's code package) appended, and a library such
as scikit-learn writes messages of several lines. What a data scientist needs is which task
warned and what it said: ``[run_id/fit/3] ConvergenceWarning: lbfgs failed to converge ...``. The
same warning from the same place is shown once per task, however often a loop raises it.

Warning filters still decide whether a warning shows (``ignore``) or raises (``error``); only how
it is shown changes. Filters a step sets end with it, as they would with the task's own process
(``python flow.py run`` runs every task in one); those the flow file sets when imported stay. The
line is written to ``sys.stderr`` as the step's own output is, so it is masked and kept with the
attempt like everything the step prints.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from typing import Any, TextIO

from airflow_flowspec.runtime.task_log import labelled


@contextlib.contextmanager
def one_line_warnings(task_label: str) -> Iterator[None]:
    """While the block runs, each distinct warning shows once as ``[task_label] Category: message``."""
    shown: set[tuple[Any, ...]] = set()

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        text = " ".join(str(message).split())  # a message of several lines becomes one
        key = (category, text, filename, lineno)
        if key in shown:
            return
        shown.add(key)
        stream = file if file is not None else sys.stderr
        try:
            stream.write(labelled(task_label, f"{category.__name__}: {text}") + "\n")
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: as Python's own display does
            pass

    with warnings.catch_warnings():  # restores the display and the filters afterwards
        warnings.showwarning = show
        yield
