"""The flow file dropped into Airflow's dags folder: discovery, parsing, import errors, runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from harness import FLOWS, parse_dags_folder

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture
def dags_folder(tmp_path):
    folder = tmp_path / "dags"
    folder.mkdir()
    for name in ("nested_foreach_flow.py", "switch_flow.py", "scheduled_flow.py", "lint_error_flow.py"):
        shutil.copy(FLOWS / name, folder / name)
    return folder


def test_flow_files_become_one_dag_each_with_one_task_per_step(dags_folder):
    parsed = parse_dags_folder(dags_folder)
    assert sorted(parsed["dags"]) == ["NestedForeachFlow", "ScheduledFlow", "SwitchFlow"]
    switch = parsed["dags"]["SwitchFlow"]["dag"]
    task_ids = sorted(t["__var"]["task_id"] for t in switch["tasks"])
    assert task_ids == ["after", "end", "fast", "slow", "slow_more", "start"]
    nested = parsed["dags"]["NestedForeachFlow"]["dag"]
    nested_ids = {t["__var"]["task_id"] for t in nested["tasks"]}
    # One task per step, plus the flattening task that nested foreach needs.
    assert nested_ids == {
        "start",
        "grid",
        "row",
        "row__foreach",
        "cell",
        "join_cols",
        "join_rows",
        "side",
        "measure",
        "join_side",
        "join_all",
        "end",
    }


def test_lint_error_in_dags_folder_is_an_import_error_with_the_message(dags_folder):
    errors = parse_dags_folder(dags_folder)["errors"]
    ((path, text),) = errors.items()
    assert path.endswith("lint_error_flow.py")
    assert "line 7: Step start specifies a self.next() transition to an unknown step, helper." in text


def test_default_safe_mode_skips_flow_files_our_callable_finds_them(dags_folder):
    default = parse_dags_folder(dags_folder, {"AIRFLOW__CORE__MIGHT_CONTAIN_DAG_CALLABLE": ""})
    assert default["dags"] == {}


def test_parsing_twice_gives_identical_serialized_dags(dags_folder):
    first = parse_dags_folder(dags_folder)["dags"]
    second = parse_dags_folder(dags_folder)["dags"]
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def test_parameters_become_a_typed_trigger_form_and_schedule_maps_to_a_timetable(dags_folder):
    dag = parse_dags_folder(dags_folder)["dags"]["ScheduledFlow"]["dag"]
    params = dict(dag["params"])
    rows = params["rows"]
    assert rows["default"] == 10 and rows["description"] == "how many rows to read"
    assert rows["schema"]["__var"]["type"] == ["integer", "null"]
    timetable = dag["timetable"]["__var"]
    assert timetable["expression"] == "30 6 * * 1-5" and timetable["timezone"] == "Europe/Berlin"
    assert dag["doc_md"] == "Runs on weekday mornings."


def test_airflow_dags_test_runs_the_flow_from_the_dags_folder(tmp_path):
    folder = tmp_path / "dags"
    folder.mkdir()
    shutil.copy(FLOWS / "foreach_flow.py", folder / "foreach_flow.py")
    store = tmp_path / "store"
    env = {
        **os.environ,
        "AIRFLOW__CORE__DAGS_FOLDER": str(folder),
        "AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(store),
    }
    airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
    result = subprocess.run(
        [airflow, "dags", "test", "ForeachFlow"], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    from airflow_flowspec.datastore import open_datastore

    datastore = open_datastore(str(store))
    run_id = datastore.latest_successful_run("ForeachFlow")
    assert run_id is not None
    end = datastore.latest_attempt_manifest("ForeachFlow", run_id, "end", "0").artifacts
    assert datastore.artifacts.load(end["results"]) == ["0:A", "1:B", "2:C", "3:D"]


def test_airflow_lists_the_provider_and_its_flowspec_config():
    """One version number: the package's, as installed metadata and as Airflow's provider list."""
    from importlib.metadata import version

    from airflow_flowspec import __version__

    assert version("airflow-flowspec") == __version__
    airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
    listed = subprocess.run(
        [airflow, "providers", "get", "airflow-flowspec", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(listed.stdout) == [{"Provider": "airflow-flowspec", "Version": __version__}], (
        listed.stderr
    )
    option = subprocess.run(
        [airflow, "config", "get-value", "flowspec", "xcom_inline_max_bytes"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert option.stdout.strip() == "65536", option.stderr
