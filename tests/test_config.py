"""[flowspec] options resolve like Airflow's, without Airflow: environment, then airflow.cfg, then default."""

from __future__ import annotations

import os

from airflow_flowspec import config


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
