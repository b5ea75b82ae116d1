"""The ``[flowspec]`` configuration, readable with or without Airflow installed.

A Batch container or a notebook has no Airflow, yet must find the same datastore as the workers.
So options resolve the way Airflow resolves them, without importing it: the environment variable
``AIRFLOW__FLOWSPEC__<OPTION>`` first, then ``[flowspec]`` in ``$AIRFLOW_CONFIG`` (default
``$AIRFLOW_HOME/airflow.cfg``), then the default below (the same defaults the provider declares).
A value we cannot use is a :class:`ConfigurationError` naming the option and what it accepts.

The few Airflow options lint and ``check`` need (``[core] max_map_length`` and the discovery
callable) resolve the same way, so ``check`` answers without starting Airflow.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from pathlib import Path

from airflow_flowspec.errors import ConfigurationError

SECTION = "flowspec"
#: Where steps run: on the Airflow worker, or each step as an AWS Batch job.
EXECUTION_MODES = ("local", "batch")
#: Set by ``python flow.py run --max-num-splits N``: its widest foreach (Airflow's own limit,
#: ``[core] max_map_length``, holds everywhere).
MAX_NUM_SPLITS_VARIABLE = "FLOWSPEC_MAX_NUM_SPLITS"
#: Tasks ``run`` runs at once, and the widest foreach it runs, unless told otherwise (Metaflow's).
DEFAULT_MAX_WORKERS = 16
DEFAULT_MAX_NUM_SPLITS = 100
#: Set to 1 by ``python flow.py run``: someone watches the terminal, so steps on AWS Batch print
#: their job's statuses and log lines there, and are polled at Metaflow's pace.
CONSOLE_VARIABLE = "FLOWSPEC_CONSOLE"
#: The longest pause between two status polls of a Batch job when ``batch_poll_seconds`` is empty:
#: under ``run`` (Metaflow's client never waits more than 5 s between DescribeJobs calls), and in
#: the dags folder, where nobody watches and many jobs share the account's Batch API quota.
CONSOLE_POLL_CEILING_SECONDS = 5.0
DAGS_POLL_CEILING_SECONDS = 30.0


def max_num_splits() -> int | None:
    """The widest foreach ``run`` allows (None outside ``run``)."""
    value = os.environ.get(MAX_NUM_SPLITS_VARIABLE, "")
    return int(value) if value.isdigit() else None


def default_home(environ: Mapping[str, str] | None = None) -> Path:
    """Where the embedded default keeps its Airflow home and local datastore."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("FLOWSPEC_HOME", Path.home() / ".airflow_flowspec"))


DEFAULTS: dict[str, str] = {
    "datastore_root": "",  # empty: <FLOWSPEC_HOME>/datastore
    "xcom_inline_max_bytes": "65536",
    "execution": "local",
    "s3_multipart_threshold_mb": "32",
    "scratch_dir": "",  # empty: <system temp>/airflow-flowspec-scratch-<uid>
    "sweep_after_hours": "24",
    "project_branch": "",  # empty: production
    "code_include": "",  # empty: the flow file and the modules it imports from its folder
    "batch_job_queue": "",
    "batch_job_definition": "",
    "batch_image": "",
    "batch_iam_role": "",
    "aws_conn_id": "aws_default",
    "region_name": "",
    "batch_poll_seconds": "",  # empty: 5 under `python flow.py run`, 30 in the dags folder
    "batch_deferrable": "False",
    "preload": "True",
    "preload_idle_minutes": "15",
    "preload_max_count": "2",
}

DESCRIPTIONS: dict[str, str] = {
    "datastore_root": "Where artifacts live: s3://bucket/prefix or a local folder. "
    "Empty means ~/.airflow_flowspec/datastore (the embedded default).",
    "xcom_inline_max_bytes": "XCom values of ordinary tasks up to this many bytes of JSON stay in "
    "Airflow's table; larger or non-JSON values are pickled to the datastore.",
    "execution": "Where steps run: 'local' (on the Airflow worker) or 'batch' (every step an AWS "
    "Batch job; needs batch_job_queue and batch_job_definition or batch_image, and an s3:// "
    "datastore_root). A step with @batch runs on Batch in either mode.",
    "s3_multipart_threshold_mb": "Artifacts and XCom values from this size (MB) go to S3 in parallel "
    "parts (a multipart upload); smaller ones in one request. Blobs over both this size and 64 MB "
    "are downloaded in "
    "parallel ranges; smaller ones are unpickled from one request as it arrives. Parallel parts are "
    "what makes real S3 fast (about 90 MB/s per connection); S3 emulators that copy objects per part "
    "are faster with one request.",
    "scratch_dir": "Where pickles and downloads of an S3 datastore wait on local disk (a local datastore "
    "uses <root>/.tmp). Files left by killed tasks are removed by the next task on the host. Empty "
    "means <system temp>/airflow-flowspec-scratch-<uid> (one per user).",
    "sweep_after_hours": "Scratch files of other hosts, and S3 multipart uploads that were never "
    "completed, are removed once they are this old (a task still writing is younger).",
    "project_branch": "The branch @project flows in the dags folder are deployed on, as `--branch` "
    "names it: 'staging' deploys the branch test.staging (DAG id <project>.test.staging.<Flow>). "
    "Empty or 'prod' means production (<project>.prod.<Flow>). A flow whose @project sets branch= "
    "or production= keeps its own.",
    "code_include": "Files besides the flow file and the modules it imports from its own folder "
    "that every task of a run must see as they were when the run started (data files, modules "
    "imported lazily inside a step): comma-separated glob patterns relative to the flow file's "
    "folder, e.g. 'sql/*.sql, lib/**/*.py'.",
    "batch_job_queue": "The AWS Batch job queue steps run in (a step's @batch(queue=...) wins).",
    "batch_job_definition": "An existing job definition (name, name:revision or ARN) to run steps "
    "with. Empty: one is registered per distinct image and settings from batch_image, named by "
    "their hash and reused.",
    "batch_image": "The container image of steps on Batch when no batch_job_definition is set (a "
    "step's @batch(image=...) wins). It needs Python with boto3, cloudpickle and airflow-flowspec "
    "(installed with --no-deps); never Airflow.",
    "batch_iam_role": "The IAM role the job's container runs as (a step's @batch(iam_role=...) wins); "
    "it needs read and write access to the datastore_root.",
    "aws_conn_id": "The Airflow connection the Batch operator uses for AWS (the worker's "
    "credentials); empty means boto3's default chain.",
    "region_name": "The AWS region of the Batch queue; empty means the connection's or boto3's.",
    "batch_poll_seconds": "The longest pause (seconds) between two status polls of a Batch job. "
    "Polls start a second apart and slow down as the job stays in one status (each pause a tenth "
    "of its time in that status) until they reach this. Empty means 5 under `python flow.py run` "
    "(as Metaflow) and 30 in the dags folder. A value under 1 polls at that fixed interval.",
    "batch_deferrable": "Whether Batch steps wait for their job in the triggerer (True) instead of "
    "holding a worker slot (False).",
    "preload": "Whether `python flow.py run` goes through a warm Airflow kept between runs (a "
    "preloader per user, started on first use) instead of starting Airflow each time.",
    "preload_idle_minutes": "A preloader with no run for this long exits.",
    "preload_max_count": "How many preloaders a user may have at once (there is one per Python and "
    "Airflow environment, about 180 MB each): a new one that would pass this number first makes the "
    "least recently used exit. `airflow-flowspec preloaders` lists them; `--stop` stops them.",
}


def _airflow_cfg_path(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    if environ.get("AIRFLOW_CONFIG"):
        return Path(environ["AIRFLOW_CONFIG"])
    home = environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
    return Path(home) / "airflow.cfg"


def airflow_cfg_options(
    section: str, environ: Mapping[str, str] | None = None
) -> tuple[Path, dict[str, str]]:
    """The airflow.cfg Airflow would read with ``environ`` (default: this process's), and the
    options its ``section`` sets there (the file only: no environment variable, no default)."""
    cfg = _airflow_cfg_path(environ)
    return cfg, dict(_cfg_section(cfg, section))


def get_option(option: str) -> str:
    return airflow_option(SECTION, option, DEFAULTS[option])


def option_variable(section: str, option: str) -> str:
    """The environment variable that sets ``[section] option``, ahead of airflow.cfg."""
    return f"AIRFLOW__{section.upper()}__{option.upper()}"


def airflow_option(section: str, option: str, default: str) -> str:
    """An option of any airflow.cfg section, resolved as Airflow does (environment, file, default)."""
    env = os.environ.get(option_variable(section, option))
    if env is not None and env != "":
        return env
    value = _cfg_section(_airflow_cfg_path(), section).get(option, "")
    return value if value else default


_cfg_cache: dict[Path, tuple[float, dict[str, dict[str, str]]]] = {}


def _cfg_section(cfg: Path, section: str) -> dict[str, str]:
    """A section of airflow.cfg, re-read only when the file changes (options are read per XCom)."""
    try:
        mtime = cfg.stat().st_mtime
    except OSError:
        return {}
    cached = _cfg_cache.get(cfg)
    if cached is None or cached[0] != mtime:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(cfg)
        except configparser.Error:
            return {}  # an unreadable airflow.cfg is Airflow's error to report, not ours
        sections = {
            name: {key: value.strip() for key, value in parser.items(name)} for name in parser.sections()
        }
        cached = _cfg_cache[cfg] = (mtime, sections)
    return cached[1].get(section, {})


def _invalid(option: str, value: str, accepted: str) -> ConfigurationError:
    return ConfigurationError(
        f"[flowspec] {option} is {value!r}, which is not usable: it must be {accepted}. Fix it in "
        f"airflow.cfg ({_airflow_cfg_path()}) or in the environment variable "
        f"{option_variable(SECTION, option)}."
    )


def datastore_root() -> str:
    root = get_option("datastore_root")
    return root if root else str(default_home() / "datastore")


def xcom_inline_max_bytes() -> int:
    value = get_option("xcom_inline_max_bytes")
    try:
        limit = int(value)
    except ValueError:
        limit = -1
    if limit < 0:
        raise _invalid("xcom_inline_max_bytes", value, "a whole number of bytes, 0 or more (e.g. 65536)")
    return limit


def _finite_number(option: str, lowest: float, *, above: bool, accepted: str) -> float:
    """A number option: finite, and at least (or, with ``above``, more than) ``lowest``."""
    value = get_option(option)
    try:
        number = float(value)
    except ValueError:
        number = float("nan")  # fails every comparison below
    if not ((number > lowest) if above else (number >= lowest)) or number == float("inf"):
        raise _invalid(option, value, accepted)
    return number


def s3_multipart_threshold_bytes() -> int:
    # S3 refuses parts under 5 MB (but the last).
    megabytes = _finite_number(
        "s3_multipart_threshold_mb", 5, above=False, accepted="a number of megabytes, 5 or more (e.g. 32)"
    )
    return int(megabytes * 1024 * 1024)


def scratch_dir() -> str:
    import tempfile

    folder = get_option("scratch_dir")
    return (
        os.path.abspath(os.path.expanduser(folder))
        if folder
        # One folder per user: a shared one belongs to whoever made it first (0755 under the usual
        # umask), and nobody else could then write there or sweep what they left.
        else os.path.join(tempfile.gettempdir(), f"airflow-flowspec-scratch-{_user_tag()}")
    )


def _user_tag() -> str:
    if hasattr(os, "getuid"):
        return str(os.getuid())
    import getpass

    return getpass.getuser()


def sweep_after_seconds() -> float:
    hours = _finite_number(
        "sweep_after_hours", 0, above=False, accepted="a number of hours, 0 or more (e.g. 24)"
    )
    return hours * 3600


def execution() -> str:
    value = get_option("execution")
    if value not in EXECUTION_MODES:
        raise _invalid("execution", value, " or ".join(repr(mode) for mode in EXECUTION_MODES))
    return value


def code_include() -> list[str]:
    """``[flowspec] code_include``: glob patterns relative to the flow file's folder."""
    return [pattern.strip() for pattern in get_option("code_include").split(",") if pattern.strip()]


def batch_poll_ceiling_seconds() -> float:
    """The longest pause between two questions a Batch step asks about its job:
    ``batch_poll_seconds``, or by default 5 s under ``python flow.py run`` and 30 s in the dags
    folder (the ceiling of :class:`airflow_flowspec.aws_batch.polling.PollSchedule`)."""
    if get_option("batch_poll_seconds").strip() == "":
        watched = os.environ.get(CONSOLE_VARIABLE) == "1"
        return CONSOLE_POLL_CEILING_SECONDS if watched else DAGS_POLL_CEILING_SECONDS
    return _finite_number(
        "batch_poll_seconds", 0, above=True, accepted="a number of seconds greater than 0 (e.g. 30), or empty"
    )


def batch_options() -> dict[str, object]:
    """The ``[flowspec]`` options every Batch step of a DAG shares, read once (a DAG of many steps
    is parsed often): the defaults under a step's ``@batch``, and the operator's AWS settings."""
    return {
        "queue": get_option("batch_job_queue"),
        "job_definition": get_option("batch_job_definition"),
        "image": get_option("batch_image"),
        "iam_role": get_option("batch_iam_role"),
        "aws_conn_id": get_option("aws_conn_id") or None,
        "region_name": get_option("region_name") or None,
        "deferrable": batch_deferrable(),
    }


def batch_deferrable() -> bool:
    return _boolean("batch_deferrable")


def preload_enabled() -> bool:
    return _boolean("preload")


def preload_idle_minutes() -> float:
    return _finite_number("preload_idle_minutes", 0, above=True, accepted="a number of minutes above 0")


def preload_max_count() -> int:
    value = get_option("preload_max_count")
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise _invalid("preload_max_count", value, "a whole number of preloaders, 1 or more (e.g. 2)")
    return count


def _boolean(option: str) -> bool:
    value = get_option(option).strip().lower()
    if value not in ("true", "false", "1", "0", "t", "f"):
        raise _invalid(option, value, "True or False")
    return value in ("true", "1", "t")


def project_branch() -> str | None:
    """``[flowspec] project_branch`` as ``--branch`` takes it: None for production (empty or ``prod``)."""
    from airflow_flowspec.identity import MAX_NAME_LENGTH, is_valid_project_name

    value = get_option("project_branch").strip()
    if value in ("", "prod"):
        return None
    if not is_valid_project_name(value):
        raise _invalid(
            "project_branch",
            value,
            f"empty or 'prod' (production), or a branch name of lowercase letters, digits and "
            f"underscores, at most {MAX_NAME_LENGTH} characters (e.g. staging)",
        )
    return value


def max_map_length() -> int | None:
    """Airflow's ``[core] max_map_length`` (None if it is not a number: Airflow will say so)."""
    try:
        return int(airflow_option("core", "max_map_length", "1024"))
    except ValueError:
        return None


def might_contain_dag_callable() -> str:
    """Airflow's ``[core] might_contain_dag_callable`` as configured (its default when unset)."""
    return airflow_option("core", "might_contain_dag_callable", DEFAULT_DISCOVERY_CALLABLE)


def dag_discovery_safe_mode() -> bool:
    """``[core] dag_discovery_safe_mode``, read as Airflow's ``getboolean`` reads it."""
    value = airflow_option("core", "dag_discovery_safe_mode", "True").strip().lower()
    return value not in ("f", "false", "0")


#: Airflow's own default for ``[core] might_contain_dag_callable``.
DEFAULT_DISCOVERY_CALLABLE = "airflow.utils.file.might_contain_dag_via_default_heuristic"
