"""Flows in a real Airflow: parsed by the DAG processor, run by the scheduler's LocalExecutor,
driven through Airflow's REST API and CLI, their results read back with our client.

All tests share the session's Airflow (``airflow_services`` in conftest.py). This module adds two
flows of its own to the dags folder: one whose ``gate`` step fails until a marker file exists
(for clearing a failed step), and one whose file the versions test edits.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from .services import DAG_FILES, DAG_IDS, AirflowServices, wait_until

MARKER_GATE_FLOW = '''\
"""Written by tests/integration: the gate step fails until its marker file exists."""

from pathlib import Path

from airflow_flowspec import FlowSpec, step

MARKER = Path({marker!r})


class MarkerGateFlow(FlowSpec):
    """Fails at gate until the marker exists; no @retry, so the run fails."""

    @step
    def start(self):
        self.marker = str(MARKER)
        self.next(self.gate)

    @step
    def gate(self):
        if not MARKER.exists():
            raise RuntimeError(f"{{MARKER}} does not exist yet: create it, then clear this task")
        self.opened_by = MARKER.read_text()
        self.next(self.end)

    @step
    def end(self):
        self.result = f"gate opened by {{self.opened_by}}"
'''

VERSIONED_FLOW = '''\
from airflow_flowspec import FlowSpec, step


class VersionedFlow(FlowSpec):
    """Version one of this flow."""

    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        self.done = True
'''


class ModuleFlows:
    def __init__(self, services: AirflowServices):
        self.marker = services.root / "markers" / "gate-open"
        self.marker.parent.mkdir(exist_ok=True)
        self.marker_gate = services.dags_folder / "marker_gate_flow.py"
        self.versioned = services.dags_folder / "versioned_flow.py"
        self.marker_gate.write_text(MARKER_GATE_FLOW.format(marker=str(self.marker)))
        self.versioned.write_text(VERSIONED_FLOW)
        services.wait_for_dags(
            ["MarkerGateFlow", "VersionedFlow"], timeout=60, files=[self.marker_gate, self.versioned]
        )


@pytest.fixture(scope="module")
def module_flows(airflow_services: AirflowServices) -> ModuleFlows:
    return ModuleFlows(airflow_services)


def when(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def test_the_examples_and_the_nested_foreach_flow_parse_without_import_errors(airflow_services):
    dags = airflow_services.dags()
    assert set(DAG_IDS) <= set(dags)
    file_names = {path.name for path in DAG_FILES}
    errors = [e for e in airflow_services.import_errors() if Path(e["filename"]).name in file_names]
    assert errors == []
    for dag_id in DAG_IDS:
        assert Path(dags[dag_id]["fileloc"]).parent == airflow_services.dags_folder
    tasks = airflow_services.get_json("/api/v2/dags/HyperparameterSearchFlow/tasks")["tasks"]
    assert {"start", "train", "pick_best", "end"} <= {task["task_id"] for task in tasks}


def test_a_run_triggered_through_rest_uses_its_conf_as_parameters(airflow_services, client):
    conf = {"learning_rates": [0.05, 0.2], "epochs": 30, "seed": 7}
    run_id = airflow_services.trigger("HyperparameterSearchFlow", conf)
    airflow_services.wait_for_run("HyperparameterSearchFlow", run_id, timeout=120)

    # Airflow mapped train over the two learning rates given (the default has four).
    states = airflow_services.task_states("HyperparameterSearchFlow", run_id)
    assert sorted(index for task, index in states if task == "train") == [0, 1]

    run = client.Run(f"HyperparameterSearchFlow/{run_id}")
    assert run.successful
    assert run.parameters == conf
    assert "user:admin" in run.tags  # who triggered it through the API
    assert [task.data.learning_rate for task in run["train"]] == [0.05, 0.2]
    assert sorted(row["learning_rate"] for row in run.data.leaderboard) == [0.05, 0.2]
    assert run.data.best_learning_rate in (0.05, 0.2)


def test_a_nested_foreach_stores_each_task_by_index(airflow_services, client):
    run_id = airflow_services.trigger("NestedForeachFlow")
    airflow_services.wait_for_run("NestedForeachFlow", run_id, timeout=180)

    states = airflow_services.task_states("NestedForeachFlow", run_id)
    assert sum(1 for task, _ in states if task == "cell") == 6

    run = client.Run(f"NestedForeachFlow/{run_id}")
    assert run.successful
    assert [task.data.row_value for task in run["row"]] == [1, 2, 3]
    assert [task.data.product for task in run["cell"]] == [10, 20, 21, 30, 31, 32]
    assert [task.data.length for task in run["measure"]] == [1, 2]
    assert run.data.products == [[10], [20, 21], [30, 31, 32]]
    assert run.data.total == 10 + 41 + 93 + 3


def test_a_backfill_makes_one_run_per_day_whose_logical_date_starts_its_interval(airflow_services, client):
    """``backfill create --from-date 11-10 --to-date 11-12`` makes the runs of 11-10, 11-11 and 11-12:
    each run's logical date is the start of the day it covers, and its report is of that day."""
    dag_id = "DailyReportFlow"
    airflow_services.unpause(dag_id)
    airflow_services.airflow_cli(
        "backfill", "create", "--dag-id", dag_id, "--from-date", "2026-11-10", "--to-date", "2026-11-12",
        "--dag-run-conf", json.dumps({"api_failure_rate": 0.0}),
    )  # fmt: skip

    def backfill_runs_ended() -> list[dict] | None:
        runs = airflow_services.get_json(f"/api/v2/dags/{dag_id}/dagRuns", params={"run_type": "backfill"})
        runs = runs["dag_runs"]
        return runs if runs and all(run["state"] in ("success", "failed") for run in runs) else None

    runs = wait_until(backfill_runs_ended, 120, "the backfill's runs to end", airflow_services.log_tails)
    runs.sort(key=lambda run: run["logical_date"])
    assert [run["state"] for run in runs] == ["success"] * len(runs), runs
    assert [run["dag_run_id"] for run in runs] == [
        f"backfill__2026-11-{day}T00:00:00+00:00" for day in (10, 11, 12)
    ]  # named after the day each covers

    seen = []
    for run in runs:
        report = client.Run(f"{dag_id}/{run['dag_run_id']}").data.report
        logical, start, end = (
            when(run[key]) for key in ("logical_date", "data_interval_start", "data_interval_end")
        )
        seen.append((logical, start, end, report["day"]))
    print("Backfill runs (logical date, data interval start, end, report day):")
    for row in seen:
        print("  ", *(str(value) for value in row))

    days = [datetime(2026, 11, day, tzinfo=timezone.utc) for day in (10, 11, 12)]
    expected = [(day, day, day + timedelta(days=1), day.date().isoformat()) for day in days]
    assert seen == expected


def test_clearing_a_failed_step_of_one_run_reruns_it_in_that_run_only(airflow_services, client, module_flows):
    dag_id = "MarkerGateFlow"
    cleared_run = airflow_services.trigger(dag_id)
    other_run = airflow_services.trigger(dag_id)
    for run_id in (cleared_run, other_run):
        airflow_services.wait_for_run(dag_id, run_id, timeout=90, state="failed")
        states = airflow_services.task_states(dag_id, run_id)
        assert (states[("gate", -1)], states[("end", -1)]) == ("failed", "upstream_failed")

    module_flows.marker.write_text("the test")
    response = airflow_services.api(
        "POST",
        f"/api/v2/dags/{dag_id}/clearTaskInstances",
        json={
            "dag_run_id": cleared_run,
            "task_ids": ["gate"],
            "include_downstream": True,
            "only_failed": True,
            "dry_run": False,
        },
    )
    assert response.status_code == 200, response.text
    cleared = {(ti["task_id"], ti["dag_run_id"]) for ti in response.json()["task_instances"]}
    assert cleared == {("gate", cleared_run), ("end", cleared_run)}

    airflow_services.wait_for_run(dag_id, cleared_run, timeout=90)
    gate = airflow_services.get_json(f"/api/v2/dags/{dag_id}/dagRuns/{cleared_run}/taskInstances/gate")
    assert (gate["state"], gate["try_number"]) == ("success", 2)
    assert airflow_services.get_json(f"/api/v2/dags/{dag_id}/dagRuns/{other_run}")["state"] == "failed"

    run = client.Run(f"{dag_id}/{cleared_run}")
    assert run.successful
    assert run.data.result == "gate opened by the test"
    assert not client.Run(f"{dag_id}/{other_run}").successful


def test_editing_a_flow_file_makes_a_new_dag_version_and_other_files_keep_theirs(
    airflow_services, module_flows
):
    def version_counts() -> dict[str, int]:
        return {
            dag_id: airflow_services.get_json(f"/api/v2/dags/{dag_id}/dagVersions")["total_entries"]
            for dag_id in airflow_services.dags()
        }

    # A version that no task instance uses is updated in place: run the flow first.
    run_id = airflow_services.trigger("VersionedFlow")
    airflow_services.wait_for_run("VersionedFlow", run_id, timeout=60)
    before = version_counts()
    counted_at = datetime.now(timezone.utc)
    assert before["VersionedFlow"] == 1

    source = module_flows.versioned.read_text()
    module_flows.versioned.write_text(
        source.replace("Version one of this flow.", "Version two of this flow.")
    )

    def versions_of_edited() -> list[dict] | None:
        listing = airflow_services.get_json("/api/v2/dags/VersionedFlow/dagVersions")
        return listing["dag_versions"] if listing["total_entries"] == 2 else None

    versions = wait_until(
        versions_of_edited, 60, "a second version of VersionedFlow", airflow_services.log_tails
    )
    assert sorted(version["version_number"] for version in versions) == [1, 2]
    details = airflow_services.get_json("/api/v2/dags/VersionedFlow/details")
    assert details["doc_md"] == "Version two of this flow."

    # Every other file is parsed again, and keeps its version count.
    def reparsed_since_counted() -> bool:
        dags = airflow_services.dags()
        return all(when(dag["last_parsed_time"]) > counted_at for dag in dags.values())

    wait_until(reparsed_since_counted, 30, "every DAG to be parsed again", airflow_services.log_tails)
    after = version_counts()
    assert after == {**before, "VersionedFlow": 2}


def test_a_user_refused_a_dag_gets_403_from_airflows_own_api(airflow_services):
    path = "/api/v2/dags/HyperparameterSearchFlow"
    assert airflow_services.api("GET", path, user="viewer").status_code == 200
    assert airflow_services.api("GET", path, user="outsider").status_code == 403
    # The outsider is a logged-in viewer: what is not a DAG stays readable.
    assert airflow_services.api("GET", "/api/v2/pools", user="outsider").status_code == 200
