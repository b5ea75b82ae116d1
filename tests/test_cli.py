"""``python flow.py run|show|check`` as a user types it, each in a fresh process."""

from __future__ import annotations

import re

from harness import FLOWS, run_cli


def test_run_prints_run_id_first_then_progress_and_step_output(tmp_path):
    result = run_cli(
        FLOWS / "branch_flow.py",
        "run",
        "--alpha",
        "0.3",
        "--label",
        "cli",
        env={"AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(tmp_path / "store")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    match = re.fullmatch(r"Run id: (manual__\S+)", lines[0])
    assert match, lines[:3]
    run_id = match.group(1)
    for step in ("start", "left", "right", "join", "end"):
        assert f"[{run_id}/{step}/0] Task is starting." in lines
        assert f"[{run_id}/{step}/0] Task finished successfully." in lines
    assert lines.index(f"[{run_id}/start/0] Task is starting.") < lines.index(
        f"[{run_id}/end/0] Task is starting."
    )
    assert lines[-1] == f"Flow BranchFlow run {run_id} succeeded."
    # The artifacts went to the configured local store, values typed from the command line.
    from airflow_flowspec.datastore import open_datastore
    from airflow_flowspec.datastore.artifacts import ArtifactRef

    store = open_datastore(str(tmp_path / "store"))
    end = store.latest_attempt_manifest("BranchFlow", run_id, "end", "0")["artifacts"]
    assert store.artifacts.load(ArtifactRef.from_json(end["alpha"])) == 0.3
    assert store.artifacts.load(ArtifactRef.from_json(end["summary"])) == "cli:False:same everywhere"


def test_failed_run_exits_non_zero_and_shows_the_step_error(tmp_path):
    result = run_cli(
        FLOWS / "failing_flow.py", "run", env={"AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(tmp_path / "store")}
    )
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "ZeroDivisionError: the data had no rows to average" in output
    assert "failed in step(s): crunch" in result.stderr


def test_lint_error_is_one_paragraph_without_traceback():
    result = run_cli(FLOWS / "lint_error_flow.py", "run")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "lint_error_flow.py, line 7" in result.stderr
    assert "unknown step, helper" in result.stderr


def test_bad_parameter_value_is_refused_before_anything_runs():
    result = run_cli(FLOWS / "branch_flow.py", "run", "--epochs", "many")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "Parameter 'epochs' of flow BranchFlow expects a value of type int, got 'many'" in result.stderr


def test_run_with_batch_is_refused_at_once_for_an_unknown_extension_or_a_local_datastore(tmp_path):
    """Guards ``--with``: only batch is known, and Batch containers need an S3 datastore; both are
    one paragraph before anything runs, not a failure inside the first job."""
    env = {"AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(tmp_path / "store")}
    unknown = run_cli(FLOWS / "branch_flow.py", "run", "--with", "kubernetes", env=env)
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert "--with kubernetes is not something flow BranchFlow can run with here" in unknown.stderr
    local = run_cli(FLOWS / "branch_flow.py", "--with", "batch", "run", env=env)
    assert local.returncode == 1 and "Traceback" not in local.stderr
    assert f"[flowspec] datastore_root is {str(tmp_path / 'store')!r}" in local.stderr
    assert "AIRFLOW__FLOWSPEC__DATASTORE_ROOT=s3://bucket/prefix" in local.stderr
    assert not (tmp_path / "store").exists()  # nothing ran, nothing was written


def test_show_prints_steps_and_edges():
    result = run_cli(FLOWS / "foreach_flow.py", "show")
    assert result.returncode == 0
    assert "start -> upper (foreach over letters)" in result.stdout
    assert "join -> end" in result.stdout


def test_check_warns_only_when_the_configured_discovery_would_skip_the_file(tmp_path):
    """`check` reads [core] might_contain_dag_callable as Airflow would (environment, then airflow.cfg)."""
    cfg = tmp_path / "airflow.cfg"
    unset = {"AIRFLOW__CORE__MIGHT_CONTAIN_DAG_CALLABLE": "", "AIRFLOW_CONFIG": str(cfg)}

    cfg.write_text("[core]\nload_examples = False\n")  # Airflow's default heuristic: no "dag" here
    result = run_cli(FLOWS / "foreach_flow.py", "check", env=unset)
    assert result.returncode == 0 and "lint passed" in result.stdout
    assert "will skip this file" in result.stderr
    assert "might_contain_dag_callable = airflow_flowspec.discovery.might_contain_dag" in result.stderr

    cfg.write_text("[core]\nmight_contain_dag_callable = airflow_flowspec.discovery.might_contain_dag\n")
    result = run_cli(FLOWS / "foreach_flow.py", "check", env=unset)
    assert result.returncode == 0 and "lint passed" in result.stdout
    assert result.stderr == ""

    cfg.write_text("[core]\ndag_discovery_safe_mode = False\n")
    assert run_cli(FLOWS / "foreach_flow.py", "check", env=unset).stderr == ""

    # Any other callable is asked, as the DAG processor would ask it.
    cfg.write_text("[core]\nmight_contain_dag_callable = os.path.isfile\n")
    assert run_cli(FLOWS / "foreach_flow.py", "check", env=unset).stderr == ""
    cfg.write_text("[core]\nmight_contain_dag_callable = no_such_module.finder\n")
    result = run_cli(FLOWS / "foreach_flow.py", "check", env=unset)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "might_contain_dag_callable is 'no_such_module.finder', which cannot be imported" in result.stderr


def test_run_keeps_legacy_metric_names_only_for_a_configured_exporter(monkeypatch, airflow_db):
    """`run` skips Airflow's legacy metric names (0.3 s of YAML parsing) only when no exporter is
    configured; with statsd/Datadog/OTel on, [metrics] legacy_names_on still decides."""
    from airflow._shared.observability.metrics import stats as core_stats
    from airflow._shared.observability.metrics.base_stats_logger import NoStatsLogger
    from airflow.observability.metrics import stats_utils
    from airflow.sdk._shared.observability.metrics import stats as sdk_stats

    from airflow_flowspec.airflow.local_run import _initialize_metrics

    for module in (core_stats, sdk_stats):  # restored after the test: other tests share them
        for name in ("_factory", "_backend", "_export_legacy_names"):
            monkeypatch.setattr(module, name, getattr(module, name))

    monkeypatch.setattr(stats_utils, "get_stats_factory", lambda: NoStatsLogger)
    _initialize_metrics()
    assert core_stats._export_legacy_names is False
    assert sdk_stats._export_legacy_names is False  # the task SDK's copy: no exporter configured either

    def exporter():
        return NoStatsLogger()  # stands in for a statsd client

    monkeypatch.setattr(stats_utils, "get_stats_factory", lambda: exporter)
    monkeypatch.setenv("AIRFLOW__METRICS__LEGACY_NAMES_ON", "True")
    _initialize_metrics()
    assert core_stats._export_legacy_names is True and core_stats._factory is exporter
    monkeypatch.setenv("AIRFLOW__METRICS__LEGACY_NAMES_ON", "False")
    _initialize_metrics()
    assert core_stats._export_legacy_names is False
