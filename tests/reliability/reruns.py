"""Helpers for tests that re-run tasks of a finished run (``harness.clear_and_rerun``): a cleared
task's old XComs are deleted when it runs again (``XCom.delete`` -> the backend's ``purge``), and
a cleared downstream task reads what is stored now."""

from __future__ import annotations

from typing import Any


def task_states(dag_run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def forget_open_datastores(monkeypatch: Any) -> None:
    """Make the next task open its datastore anew, as a task process on a worker does.

    ``dag.test()`` runs every task in this process, where the step that stored a pack still holds
    it in memory: a later read would be served from there and never see the stored bytes.
    """
    from airflow_flowspec.datastore import store

    monkeypatch.setattr(store, "_open_datastores", {})
    monkeypatch.setattr(store, "_swept_roots", set())
