"""The ``[flowspec]`` configuration, readable with or without Airflow installed.

A Batch container or a notebook has no Airflow, yet must find the same datastore as the workers.
So options resolve the way Airflow resolves them, without importing it: the environment variable
``AIRFLOW__FLOWSPEC__<OPTION>`` first, then ``[flowspec]`` in ``$AIRFLOW_CONFIG`` (default
``$AIRFLOW_HOME/airflow.cfg``), then the default below (the same defaults the provider declares).
"""

from __future__ import annotations

import configparser
import os
from pathlib import Path

SECTION = "flowspec"


def default_home() -> Path:
    """Where the embedded default keeps its Airflow home and local datastore."""
    return Path(os.environ.get("FLOWSPEC_HOME", Path.home() / ".airflow_flowspec"))


DEFAULTS: dict[str, str] = {
    "datastore_root": "",  # empty: <FLOWSPEC_HOME>/datastore
    "xcom_inline_max_bytes": "65536",
    "execution": "local",
    "s3_multipart_threshold_mb": "32",
}

DESCRIPTIONS: dict[str, str] = {
    "datastore_root": "Where artifacts live: s3://bucket/prefix or a local folder. "
    "Empty means ~/.airflow_flowspec/datastore (the embedded default).",
    "xcom_inline_max_bytes": "XCom values of ordinary tasks up to this many bytes of JSON stay in "
    "Airflow's table; larger or non-JSON values are pickled to the datastore.",
    "execution": "Where steps run: 'local' (on the Airflow worker). "
    "'batch' comes with the AWS Batch operator.",
    "s3_multipart_threshold_mb": "Artifacts and XCom values from this size (MB) go to S3 in parallel "
    "parts (a multipart upload); smaller ones in one request. Blobs over both this size and 64 MB "
    "are downloaded in "
    "parallel ranges; smaller ones are unpickled from one request as it arrives. Parallel parts are "
    "what makes real S3 fast (about 90 MB/s per connection); S3 emulators that copy objects per part "
    "are faster with one request.",
}


def _airflow_cfg_path() -> Path:
    if os.environ.get("AIRFLOW_CONFIG"):
        return Path(os.environ["AIRFLOW_CONFIG"])
    home = os.environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
    return Path(home) / "airflow.cfg"


def get_option(option: str) -> str:
    env = os.environ.get(f"AIRFLOW__{SECTION.upper()}__{option.upper()}")
    if env is not None and env != "":
        return env
    value = _cfg_section(_airflow_cfg_path()).get(option, "")
    return value if value else DEFAULTS[option]


_cfg_cache: dict[Path, tuple[float, dict[str, str]]] = {}


def _cfg_section(cfg: Path) -> dict[str, str]:
    """``[flowspec]`` of airflow.cfg, re-read only when the file changes (options are read per XCom)."""
    try:
        mtime = cfg.stat().st_mtime
    except OSError:
        return {}
    cached = _cfg_cache.get(cfg)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(cfg)
    except configparser.Error:
        return {}  # an unreadable airflow.cfg is Airflow's error to report, not ours
    section = {}
    if parser.has_section(SECTION):
        section = {key: value.strip() for key, value in parser.items(SECTION)}
    _cfg_cache[cfg] = (mtime, section)
    return section


def datastore_root() -> str:
    root = get_option("datastore_root")
    return root if root else str(default_home() / "datastore")


def xcom_inline_max_bytes() -> int:
    return int(get_option("xcom_inline_max_bytes"))


def s3_multipart_threshold_bytes() -> int:
    return int(float(get_option("s3_multipart_threshold_mb")) * 1024 * 1024)
