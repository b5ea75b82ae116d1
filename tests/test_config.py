"""[flowspec] options resolve like Airflow's, without Airflow: environment, then airflow.cfg, then default."""

from __future__ import annotations

import os

import pytest

from airflow_flowspec import config
from airflow_flowspec.errors import ConfigurationError


def test_environment_beats_airflow_cfg_beats_default(tmp_path, monkeypatch):
    cfg = tmp_path / "airflow.cfg"
    cfg.write_text("[core]\ndags_folder = /dags\n\n[flowspec]\ndatastore_root = s3://team-bucket/flows\n")
    monkeypatch.setenv("AIRFLOW_CONFIG", str(cfg))
    monkeypatch.delenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", raising=False)
    monkeypatch.delenv("AIRFLOW__FLOWSPEC__XCOM_INLINE_MAX_BYTES", raising=False)

    assert config.datastore_root() == "s3://team-bucket/flows"
    assert config.xcom_inline_max_bytes() == 65536  # not in the file: the default

    monkeypatch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", "/mnt/flows")
    assert config.datastore_root() == "/mnt/flows"

    # An edited airflow.cfg is read again (it is cached only while unchanged).
    monkeypatch.delenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT")
    cfg.write_text("[flowspec]\ndatastore_root = s3://other/flows\nxcom_inline_max_bytes = 1024\n")
    os.utime(cfg, (cfg.stat().st_atime, cfg.stat().st_mtime + 5))
    assert (config.datastore_root(), config.xcom_inline_max_bytes()) == ("s3://other/flows", 1024)


def test_unset_root_is_the_embedded_default_under_flowspec_home(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONFIG", str(tmp_path / "missing.cfg"))
    monkeypatch.delenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", raising=False)
    monkeypatch.setenv("FLOWSPEC_HOME", str(tmp_path / "home"))
    assert config.datastore_root() == str(tmp_path / "home" / "datastore")


@pytest.mark.parametrize(
    "option, value, read, accepted",
    [
        ("xcom_inline_max_bytes", "64k", config.xcom_inline_max_bytes, "a whole number of bytes, 0 or more"),
        ("xcom_inline_max_bytes", "-1", config.xcom_inline_max_bytes, "a whole number of bytes, 0 or more"),
        ("s3_multipart_threshold_mb", "1", config.s3_multipart_threshold_bytes, "5 or more"),
        ("s3_multipart_threshold_mb", "lots", config.s3_multipart_threshold_bytes, "5 or more"),
        ("execution", "kubernetes", config.execution, "'local'"),
        ("sweep_after_hours", "a day", config.sweep_after_seconds, "a number of hours, 0 or more"),
        ("sweep_after_hours", "-1", config.sweep_after_seconds, "a number of hours, 0 or more"),
        ("sweep_after_hours", "inf", config.sweep_after_seconds, "a number of hours, 0 or more"),
        ("batch_poll_seconds", "0", config.batch_poll_ceiling_seconds, "a number of seconds greater than 0"),
        (
            "batch_poll_seconds",
            "often",
            config.batch_poll_ceiling_seconds,
            "a number of seconds greater than 0",
        ),
        ("batch_deferrable", "maybe", config.batch_deferrable, "True or False"),
        ("preload", "sometimes", config.preload_enabled, "True or False"),
        ("preload_idle_minutes", "0", config.preload_idle_minutes, "a number of minutes above 0"),
        ("preload_idle_minutes", "forever", config.preload_idle_minutes, "a number of minutes above 0"),
        ("preload_max_count", "0", config.preload_max_count, "a whole number of preloaders, 1 or more"),
        ("preload_max_count", "two", config.preload_max_count, "a whole number of preloaders, 1 or more"),
    ],
)
def test_a_bad_option_value_is_a_configuration_error_naming_option_and_accepted_values(
    monkeypatch, option, value, read, accepted
):
    monkeypatch.setenv(f"AIRFLOW__FLOWSPEC__{option.upper()}", value)
    with pytest.raises(ConfigurationError) as caught:
        read()
    message = str(caught.value)
    assert f"[flowspec] {option} is {value!r}" in message and accepted in message
    assert f"AIRFLOW__FLOWSPEC__{option.upper()}" in message


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize(
    "variable, value, expected",
    [
        ("EXECUTION", "batchh", "[flowspec] execution is 'batchh', which is not usable: it must be 'local'"),
        ("DATASTORE_ROOT", "gs://bucket/flows", "set [flowspec] datastore_root to s3://bucket/prefix"),
        ("XCOM_INLINE_MAX_BYTES", "lots", "[flowspec] xcom_inline_max_bytes is 'lots'"),
    ],
)
def test_check_and_run_refuse_a_bad_option_alike_without_a_traceback(command, variable, value, expected):
    from harness import FLOWS, run_cli

    result = run_cli(FLOWS / "foreach_flow.py", command, env={f"AIRFLOW__FLOWSPEC__{variable}": value})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("ForeachFlow: ") and expected in result.stderr
