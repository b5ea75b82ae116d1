"""What the client does with a run whose record it cannot read: one damaged ``run.json`` must never
hide a flow's other runs.

Listing runs (``Flow(...)`` iteration, ``runs()``, ``latest_run``, ``airflow-flowspec runs``) skips
such a run with an :class:`~airflow_flowspec.errors.UnreadableRecordWarning` naming it and its file;
the warning is issued from one line here, so Python's default filter shows it once per run however
often a notebook lists the flow. Asked for by name (``Run("Flow/run_id")``), the run raises
:class:`~airflow_flowspec.errors.UnreadableRecordError` saying so.
"""

from __future__ import annotations

import warnings

from airflow_flowspec.errors import UnreadableRecordError, UnreadableRecordWarning
from airflow_flowspec.terminal import terminal_safe


def skip_unreadable_run(flow: str, run_id: str, error: UnreadableRecordError) -> None:
    """Say, once, that run ``run_id`` of ``flow`` is left out of a listing, and why."""
    warnings.warn(
        UnreadableRecordWarning(
            f"Run {terminal_safe(f'{flow}/{run_id}')} is skipped: its record cannot be read. {error} "
            f"The flow's other runs are listed."
        ),
        stacklevel=1,
    )


def unreadable_run(pathspec: str, error: UnreadableRecordError) -> UnreadableRecordError:
    """The error for a run asked for by name whose record cannot be read."""
    return UnreadableRecordError(
        f"Run {terminal_safe(pathspec)} cannot be read: {error} Restore or delete that file; the flow's "
        f"other runs are not affected."
    )
