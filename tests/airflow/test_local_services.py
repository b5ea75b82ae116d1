"""``airflow-flowspec airflow up|down|status`` without starting Airflow: the generated airflow.cfg,
the services' environment, refused input, and the record of services that crashed.

Starting the real services is tests/integration/test_local_airflow.py.
"""

from __future__ import annotations

import configparser
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_flowspec.airflow.local_run import XCOM_BACKEND
from airflow_flowspec.airflow.local_services import (
    STATE_FILE,
    service_environment,
    write_airflow_cfg,
)
from airflow_flowspec.shell import main

#: What services started one by one must share, and what must outlive a restart.
SECRETS = (("core", "fernet_key"), ("api", "secret_key"), ("api_auth", "jwt_secret"))


def read_cfg(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path)
    return parser


def test_the_generated_airflow_cfg_matches_the_port_and_keeps_its_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", "s3://bucket/flows")
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__BATCH_JOB_QUEUE", "queue-1")
    home, dags = tmp_path / "home", tmp_path / "dags"
    home.mkdir()
    cfg_path = write_airflow_cfg(home, 18123, dags)
    cfg = read_cfg(cfg_path)
    assert cfg_path.stat().st_mode & 0o077 == 0  # it holds secrets
    assert cfg["core"]["execution_api_server_url"] == "http://127.0.0.1:18123/execution/"
    assert cfg["api"]["base_url"] == "http://127.0.0.1:18123" and cfg["api"]["host"] == "127.0.0.1"
    assert cfg["core"]["dags_folder"] == str(dags)
    assert cfg["core"]["dags_are_paused_at_creation"] == "False"
    assert cfg["core"]["xcom_backend"] == XCOM_BACKEND
    assert cfg["core"]["executor"] == "LocalExecutor"
    assert cfg["database"]["sql_alchemy_conn"] == f"sqlite:///{home / 'airflow.db'}"
    assert cfg["flowspec"]["datastore_root"] == "s3://bucket/flows"
    assert cfg["flowspec"]["batch_job_queue"] == "queue-1"
    secrets = {key: cfg[section][key] for section, key in SECRETS}
    assert len(secrets["jwt_secret"]) >= 64 and len(set(secrets.values())) == 3

    again = read_cfg(write_airflow_cfg(home, 18124, dags))
    assert again["api"]["port"] == "18124"
    assert {key: again[section][key] for section, key in SECRETS} == secrets


def test_the_services_environment_leaves_the_callers_airflow_settings_to_the_cfg(tmp_path):
    home = tmp_path / "home"
    caller = {
        "PATH": "/usr/bin",
        "AIRFLOW_HOME": "/elsewhere",
        "AIRFLOW__CORE__DAGS_FOLDER": "/elsewhere/dags",
        "AIRFLOW_CONN_WAREHOUSE": "postgres://db",
    }
    environment = service_environment(home, caller)
    assert environment["AIRFLOW_HOME"] == str(home)
    assert environment["AIRFLOW_CONFIG"] == str(home / "airflow.cfg")
    assert "AIRFLOW__CORE__DAGS_FOLDER" not in environment
    assert environment["AIRFLOW_CONN_WAREHOUSE"] == "postgres://db"
    assert environment["PATH"].split(":")[0] == str(Path(sys.executable).parent)


def test_up_refuses_a_missing_dags_folder_and_a_port_in_use(tmp_path, capsys):
    home = tmp_path / "home"
    assert main(["airflow", "up", "--home", str(home), "--dags", str(tmp_path / "nowhere")]) == 1
    assert "dags folder" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["airflow", "up", "--home", str(home), "--dags", str(tmp_path), "--port", str(port)]) == 1
    error = capsys.readouterr().err
    assert f"Port {port} on 127.0.0.1 is already in use" in error and "--port" in error
    assert not (home / STATE_FILE).exists() and not (home / "airflow.cfg").exists()


def test_a_record_of_services_that_crashed_is_cleaned_up(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    record = {"port": 18125, "dags_folder": str(tmp_path), "services": [
        {"name": "scheduler", "pid": finished.pid, "started_at": 1.0},
    ]}  # fmt: skip
    (home / STATE_FILE).write_text(json.dumps(record))
    assert main(["airflow", "status", "--home", str(home)]) == 1
    assert capsys.readouterr().out == f"No Airflow is running from {home}.\n"
    assert not (home / STATE_FILE).exists()
    (home / STATE_FILE).write_text("{not json")
    assert main(["airflow", "down", "--home", str(home)]) == 0
    assert capsys.readouterr().out == f"No Airflow is running from {home}.\n"
    assert not (home / STATE_FILE).exists()


@pytest.mark.parametrize("port", ["0", "70000"])
def test_up_refuses_a_port_out_of_range(tmp_path, capsys, port):
    assert (
        main(["airflow", "up", "--home", str(tmp_path / "home"), "--dags", str(tmp_path), "--port", port])
        == 1
    )
    assert "is not a port number" in capsys.readouterr().err
