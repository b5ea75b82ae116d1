"""A failed task as ``python flow.py run`` shows it: the step's own traceback, or our one paragraph.

Airflow logs a task's failure with every frame from its task runner down (seven of Airflow's and
ours before the step's first line). On the terminal of a local run the data scientist wants what
Metaflow shows: the frames of their own code. Under ``run`` (:func:`~.task_log.lines_prefixed`) the
operator shows the failure here, and the run's process keeps Airflow's own failure line off the
terminal; the whole traceback stays in the task's stored ``stderr`` (and in an Airflow task log,
where nothing is cut).
"""

from __future__ import annotations

import sys
import traceback
from types import TracebackType
from typing import TYPE_CHECKING

from airflow_flowspec.errors import FlowspecError, is_flow_mistake, not_retried_label
from airflow_flowspec.runtime.task_log import lines_prefixed

if TYPE_CHECKING:
    from airflow_flowspec.runtime.task_state import TaskState

#: Modules whose frames are the machinery around a step, not the step.
_MACHINERY = ("airflow", "airflow_flowspec", "contextlib", "runpy", "importlib")
_SHOWN = "_flowspec_shown_on_terminal"
_FAILED_IN = "_flowspec_failed_in"


def remember_where(error: BaseException, task: TaskState) -> None:
    """Mark ``error`` with the task it ended, as Metaflow names it in its ``... failed:`` line:
    ``<flow TrainFlow step train[1] (input: 0.1)>``."""
    stack = task.foreach_stack
    try:
        item = str(task.foreach_value(stack[-1])) if stack else ""
    except Exception:  # noqa: BLE001 - a label must never hide the step's own error
        stack, item = [], ""
    if not stack:
        label = f"<flow {task.flow_name} step {task.step_name}>"
    else:
        index = ",".join(str(frame.index) for frame in stack)
        shown = item[:20] + "..." if len(item) > 20 else item
        label = f"<flow {task.flow_name} step {task.step_name}[{index}] (input: {shown})>"
    try:
        setattr(error, _FAILED_IN, label)
    except AttributeError:
        pass


def show_on_terminal(error: BaseException) -> None:
    """Print ``error`` to stderr as the terminal of ``run`` shows a failure (once per error;
    elsewhere, nothing: Airflow's task log has it)."""
    if not lines_prefixed() or getattr(error, _SHOWN, False):
        return
    try:
        setattr(error, _SHOWN, True)
    except AttributeError:  # an exception type that takes no attributes: shown again, at worst
        pass
    print(describe(error), file=sys.stderr, flush=True)


def describe(error: BaseException) -> str:
    """Our error's paragraph (and why it is not retried), or the step's own traceback."""
    if isinstance(error, FlowspecError):
        label = not_retried_label(error) if is_flow_mistake(error) else ""
        return f"{error} {label}".strip()
    failed_in = getattr(error, _FAILED_IN, None)
    return f"{failed_in} failed:\n{step_traceback(error)}" if failed_in else step_traceback(error)


def step_traceback(error: BaseException) -> str:
    """``error``'s traceback from the first frame of the flow's code (all of it if it has none)."""
    tb = error.__traceback__
    first = tb
    while first is not None and _is_machinery(first):
        first = first.tb_next
    return "".join(traceback.format_exception(type(error), error, first or tb)).rstrip("\n")


def _is_machinery(tb: TracebackType) -> bool:
    module = tb.tb_frame.f_globals.get("__name__", "")
    return isinstance(module, str) and module.split(".")[0] in _MACHINERY
