"""A warning raised while a step runs: one line naming the task, once per task."""

from __future__ import annotations

import warnings

import pytest

from airflow_flowspec.runtime.step_warnings import one_line_warnings


class ConvergenceWarning(UserWarning):
    pass


def _fit(message: str = "lbfgs failed to converge:\n  STOP.\n\nIncrease max_iter.") -> None:
    warnings.warn(message, ConvergenceWarning, stacklevel=1)


def test_a_warning_repeated_in_a_loop_is_one_line_once(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # what some libraries set: every call reaches the display
        with one_line_warnings("run/fit/3"):
            for _ in range(3):
                _fit()
            _fit("another message")
    assert capsys.readouterr().err.splitlines() == [
        "[run/fit/3] ConvergenceWarning: lbfgs failed to converge: STOP. Increase max_iter.",
        "[run/fit/3] ConvergenceWarning: another message",
    ]


def test_filters_still_decide_and_the_display_is_restored_afterwards(capsys):
    display = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with one_line_warnings("run/fit/0"):
            _fit()
    assert capsys.readouterr().err == ""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        with pytest.raises(ConvergenceWarning), one_line_warnings("run/fit/0"):
            _fit()
    assert warnings.showwarning is display


def test_each_task_shows_its_own_warning(capsys):
    for task in ("run/fit/0", "run/fit/1"):
        with one_line_warnings(task):
            _fit("no convergence")
    assert capsys.readouterr().err.splitlines() == [
        "[run/fit/0] ConvergenceWarning: no convergence",
        "[run/fit/1] ConvergenceWarning: no convergence",
    ]
