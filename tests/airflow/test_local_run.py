"""What ``python flow.py run`` sets up before Airflow starts (no Airflow needed)."""

from __future__ import annotations

from airflow_flowspec.airflow.local_run import airflow_environment, run_environment

USER_CFG = """\
[core]
max_map_length = 2048
xcom_backend = airflow.sdk.bases.xcom.BaseXCom
load_examples = True

[database]
sql_alchemy_conn = postgresql://airflow@db/airflow

[logging]
logging_level = INFO

[flowspec]
datastore_root = s3://team-bucket/flows
batch_job_queue = from-the-file
"""


def test_run_uses_its_private_home_and_keeps_only_the_flow_options_of_a_users_airflow_cfg(tmp_path):
    user_home = tmp_path / "airflow"
    user_home.mkdir()
    (user_home / "airflow.cfg").write_text(USER_CFG)
    environ = {
        "AIRFLOW_HOME": str(user_home),
        "FLOWSPEC_HOME": str(tmp_path / "flowspec"),
        "AIRFLOW__FLOWSPEC__BATCH_JOB_QUEUE": "from-the-environment",  # a variable wins over the file
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "DEBUG",  # run's own settings win over any variable
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://airflow@db/airflow",
    }
    environment = run_environment(environ)
    assert environment == {
        **airflow_environment(tmp_path / "flowspec" / "airflow"),
        # Airflow's own failure line stays off run's terminal (the operator shows the step's traceback)
        "AIRFLOW__LOGGING__NAMESPACE_LEVELS": "task=critical",
        "AIRFLOW__FLOWSPEC__DATASTORE_ROOT": "s3://team-bucket/flows",
        "AIRFLOW__CORE__MAX_MAP_LENGTH": "2048",
        # run reads no connections database: an empty AWS connection means boto3's own credentials
        "AIRFLOW_CONN_AWS_DEFAULT": '{"conn_type": "aws"}',
    }
    # A connection variable of the user's, under the id they configured, is theirs to keep.
    theirs = {**environ, "AIRFLOW__FLOWSPEC__AWS_CONN_ID": "team_aws", "AIRFLOW_CONN_TEAM_AWS": "aws://k:s@"}
    assert not any(name.startswith("AIRFLOW_CONN_") for name in run_environment(theirs))
    # Applied, it is stable: a second call (a preloaded run, a nested one) changes nothing.
    applied = {**environ, **environment}
    assert {**applied, **run_environment(applied)} == applied


def test_airflow_config_names_the_users_file_and_a_missing_file_carries_nothing(tmp_path):
    (tmp_path / "elsewhere.cfg").write_text(USER_CFG)
    environ = {"AIRFLOW_CONFIG": str(tmp_path / "elsewhere.cfg"), "FLOWSPEC_HOME": str(tmp_path / "fh")}
    assert run_environment(environ)["AIRFLOW__FLOWSPEC__DATASTORE_ROOT"] == "s3://team-bucket/flows"
    nothing = {"AIRFLOW_HOME": str(tmp_path / "no-such-home"), "FLOWSPEC_HOME": str(tmp_path / "fh")}
    assert run_environment(nothing) == {
        **airflow_environment(tmp_path / "fh" / "airflow"),
        "AIRFLOW__LOGGING__NAMESPACE_LEVELS": "task=critical",
        "AIRFLOW_CONN_AWS_DEFAULT": '{"conn_type": "aws"}',
    }
