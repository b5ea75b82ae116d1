"""The example flows in dags_examples/: they parse as DAGs, run end to end, and compute what they claim."""

from __future__ import annotations

import os
import shutil
import sys
from datetime import date

import pytest
from harness import REPO, console_lines, parse_dags_folder, printed_texts, run_cli, run_flow, short_id_of

pytestmark = pytest.mark.usefixtures("airflow_db")

EXAMPLES = REPO / "dags_examples"

EXPECTED_TASKS = {
    "HyperparameterSearchFlow": {"start", "train", "pick_best", "end"},
    "FeaturePipelineFlow": {
        "start",
        "full_rebuild",
        "incremental",
        "clean",
        "numeric_features",
        "text_features",
        "combine",
        "end",
    },
    "DailyReportFlow": {"start", "fetch_orders", "fetch_traffic", "build_report", "end"},
}


def test_examples_folder_parses_into_one_dag_per_flow_with_one_task_per_step(tmp_path):
    folder = tmp_path / "dags"
    shutil.copytree(EXAMPLES, folder, ignore=shutil.ignore_patterns("__pycache__"))
    parsed = parse_dags_folder(folder)
    assert parsed["errors"] == {}
    assert sorted(parsed["dags"]) == sorted(EXPECTED_TASKS)
    for dag_id, expected in EXPECTED_TASKS.items():
        dag = parsed["dags"][dag_id]["dag"]
        assert {t["__var"]["task_id"] for t in dag["tasks"]} == expected, dag_id
    report = parsed["dags"]["DailyReportFlow"]["dag"]
    assert report["timetable"]["__var"]["expression"] == "0 0 * * *"


def test_hyperparameter_search_keeps_the_model_with_the_lowest_validation_loss():
    learning_rates = [0.001, 0.05, 0.3]
    run = run_flow(EXAMPLES / "hyperparameter_search.py", {"learning_rates": learning_rates, "epochs": 60})
    assert run.succeeded, run.states()
    assert [run.state("train", i) for i in range(3)] == ["success"] * 3

    trained = [run.artifacts("train", str(i)) for i in range(3)]
    assert [t["learning_rate"] for t in trained] == learning_rates
    end = run.artifacts("end")
    board = end["leaderboard"]
    assert sorted(row["learning_rate"] for row in board) == sorted(learning_rates)
    assert [row["validation_loss"] for row in board] == sorted(t["validation_loss"] for t in trained)
    assert end["best_learning_rate"] == board[0]["learning_rate"]
    assert end["best_learning_rate"] == min(trained, key=lambda t: t["validation_loss"])["learning_rate"]
    assert end["best_learning_rate"] != 0.001  # far too small to converge in 60 epochs

    # The model class lives in the flow file; the pickled instance comes back as that class.
    model = end["best_model"]
    flow_module = sys.modules["flowspec_flows.HyperparameterSearchFlow"]
    assert isinstance(model, flow_module.LinearModel)
    assert model.learning_rate == end["best_learning_rate"]
    assert model.weight == pytest.approx(end["true_weight"], abs=0.3)
    assert model.predict(1.5) == pytest.approx(1.5 * end["true_weight"] + end["true_bias"], abs=0.2)


def test_feature_pipeline_incremental_mode_takes_its_arm_and_builds_text_features():
    run = run_flow(EXAMPLES / "feature_pipeline.py", {"mode": "incremental"})
    assert run.succeeded, run.states()
    assert run.state("incremental") == "success"
    assert run.state("full_rebuild") == "skipped"
    assert run.state("clean") == "success"  # where the switch arms meet, after the skipped one

    end = run.artifacts("end")
    assert end["mode_choice"] == "incremental"
    assert end["since"] == date(2024, 6, 28)
    assert end["text_error"] is None
    features = end["features"]
    assert features and all(row["days_since_last_order"] in (None, 0, 1, 2) for row in features.values())
    assert sum(row["tickets"] for row in features.values()) > 0
    assert any(row["negative_tickets"] for row in features.values())
    assert end["published_to"].startswith("analytics.churn_features_v2 (incremental")
    assert "FEATURE_TABLE" not in os.environ  # @environment applied to the end step only


def test_feature_pipeline_full_rebuild_catches_the_legacy_ticket_and_publishes_numeric_features():
    run = run_flow(EXAMPLES / "feature_pipeline.py")
    assert run.succeeded, run.states()
    assert run.state("full_rebuild") == "success"
    assert run.state("incremental") == "skipped"
    assert run.state("text_features") == "success"  # failed, but @catch let the flow go on

    end = run.artifacts("end")
    assert end["mode_choice"] == "full"
    error = end["text_error"]
    assert error.type == "builtins.AttributeError"
    assert "'NoneType' object has no attribute 'lower'" in error.exception
    features = end["features"]
    assert len(features) == 20
    assert all(row["tickets"] == 0 for row in features.values())
    assert sum(row["orders"] for row in features.values()) == 300  # duplicates and the refund dropped


def test_daily_report_covers_the_runs_data_interval():
    run = run_flow(EXAMPLES / "daily_report.py", {"api_failure_rate": 0.0})
    assert run.succeeded, run.states()
    dag_run = run.dag_run
    end = run.artifacts("end")
    report = end["report"]
    assert report["logical_date"] == dag_run.logical_date
    assert report["run_id"] == run.run_id
    assert end["window_start"] == dag_run.data_interval_start
    assert end["window_end"] == dag_run.data_interval_end
    assert report["day"] == dag_run.data_interval_start.date().isoformat()
    assert report["orders"] > 0 and report["web_sessions"] > 0
    assert report["conversion_rate"] == round(report["orders"] / report["web_sessions"], 4)
    assert report["warnings"] == []


def test_daily_report_goes_out_without_traffic_when_the_api_stays_down():
    run = run_flow(EXAMPLES / "daily_report.py", {"api_failure_rate": 1.0})
    assert run.succeeded, run.states()
    assert run.state("fetch_traffic") == "success"
    assert run.manifest("fetch_traffic").attempt.attempt == 3  # @retry(times=2): caught on the last attempt
    report = run.artifacts("end")["report"]
    assert report["orders"] > 0
    assert report["web_sessions"] is None and report["conversion_rate"] is None
    assert report["warnings"] == ["web traffic missing: analytics API did not answer within 30 s"]


def test_readme_quick_start_command_runs_the_hyperparameter_search(tmp_path):
    result = run_cli(
        EXAMPLES / "hyperparameter_search.py",
        "run",
        env={"AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(tmp_path / "store")},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = console_lines(result.stdout)
    run_id = short_id_of(result.stdout)
    for task in ("start/0", "train/0", "train/3", "pick_best/0", "end/0"):
        assert f"[{run_id}/{task}] Task finished successfully." in lines
    texts = printed_texts(result.stdout)
    assert "Leaderboard:" in texts
    assert any(text.startswith("Best: lr=") for text in texts)
    assert lines[-1] == "Done!"
