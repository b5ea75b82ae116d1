"""Run a flow once on the embedded default: Airflow's ``dag.test()`` on SQLite, local datastore.

Airflow reads its configuration when first imported, so the environment is prepared before that
import. With ``AIRFLOW_HOME`` unset we use a private home (``~/.airflow_flowspec/airflow``) with an
empty dags folder: ``dag.test()`` syncs its bundle to the database on every call and an empty
folder keeps that free; the flow's own DAG is written to the database directly.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
import re
import sys
import types
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_flowspec.airflow.discovery import DISCOVERY_CALLABLE
from airflow_flowspec.config import default_home
from airflow_flowspec.runtime.task_spec import stored_run_id

if TYPE_CHECKING:
    from airflow_flowspec.decorators.flow_decorators import ProjectBranch
    from airflow_flowspec.lint.registry import LintTarget

XCOM_BACKEND = "airflow_flowspec.xcom_backend.FlowspecXComBackend"


def airflow_environment(home: Path) -> dict[str, str]:
    """The Airflow settings of a private home: SQLite, our XCom backend and flow discovery, quiet logs.

    Shared by ``python flow.py run``, the tests and the benchmarks, so all three run the Airflow a
    user of the embedded default gets.
    """
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__XCOM_BACKEND": XCOM_BACKEND,
        "AIRFLOW__CORE__MIGHT_CONTAIN_DAG_CALLABLE": DISCOVERY_CALLABLE,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    }


def prepare_environment() -> Path:
    """Point Airflow at a ready-to-use home; return it. A user's AIRFLOW_HOME is left as it is."""
    if os.environ.get("AIRFLOW_HOME"):
        return Path(os.environ["AIRFLOW_HOME"])
    home = default_home() / "airflow"
    (home / "dags").mkdir(parents=True, exist_ok=True)
    os.environ["AIRFLOW_HOME"] = str(home)
    for name, value in airflow_environment(home).items():
        os.environ.setdefault(name, value)
    return home


def quiet_airflow_warnings() -> None:
    """Airflow's own deprecation chatter is noise to someone running a flow."""
    import warnings

    warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="fastapi")


def ensure_database(home: Path) -> None:
    """Create or migrate Airflow's metadata database once per Airflow version."""
    import airflow

    marker = home / f".flowspec-db-ready-{airflow.__version__}"
    if marker.exists() and os.environ.get("AIRFLOW_HOME") == str(home):
        return
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.utils import db

    db.upgradedb()
    # The dags-folder bundle must exist before a DAG is written under it; dag.test() keeps it in
    # sync afterwards, so this is needed (and paid for) once, not per run.
    DagBundlesManager().sync_bundles_to_db()
    marker.touch()


def sync_dag(dag: Any) -> None:
    """Write the flow's DAG to the database under the dags-folder bundle, as the DAG processor would."""
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    bag = DagBag(dag_folder=os.devnull, collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)


def run_locally(
    flow_class: type,
    flow_file: str,
    parameters: dict[str, Any],
    target: LintTarget,
    project: ProjectBranch | None = None,
) -> int:
    """Lint (for ``target``), register and run the flow once; return the exit status.

    A ``@project`` flow runs as the DAG of ``project``, its branch; its runs are stored, and
    reported, under the flow's own name.
    """
    home = prepare_environment()
    quiet_airflow_warnings()
    # Steps on AWS Batch show their job's statuses and log lines here, as local steps show output.
    os.environ.setdefault("FLOWSPEC_CONSOLE", "1")
    # Importing Airflow allocates hundreds of thousands of long-lived objects; the cyclic garbage
    # collector would walk them again and again (0.5-0.9 s here). Collect nothing while importing,
    # then move everything imported out of the collector's sight.
    gc.disable()
    try:
        from airflow_flowspec.airflow.registration import dag_for

        # Lint and @project errors surface here, before Airflow starts.
        dag = dag_for(flow_class, flow_file, target, project)
        logging.getLogger("airflow").setLevel(logging.WARNING)
        ensure_database(home)
        sync_dag(dag)
        _build_lean_execution_api()
        _initialize_metrics()
    finally:
        gc.freeze()
        gc.enable()

    from airflow.models.dagrun import DagRun
    from airflow.utils.types import DagRunType

    logical_date = datetime.now(timezone.utc)
    run_id = DagRun.generate_run_id(
        run_type=DagRunType.MANUAL, logical_date=logical_date, run_after=logical_date
    )
    branch = project.branch_name if project is not None else None
    print(f"Run id: {stored_run_id(run_id, branch)}", flush=True)
    if project is not None:
        print(f"Project: {project.project_name}, Branch: {project.branch_name}", flush=True)
    dag_run = dag.test(logical_date=logical_date, run_after=logical_date, run_conf=parameters)
    return _report(flow_class.__name__, dag_run, branch)


def _build_lean_execution_api() -> None:
    """Let dag.test()'s in-process execution API serve only the API version our task runner speaks.

    Airflow's execution API keeps every version it has ever published (nine in 3.3) and builds the
    routers of all of them on the first request: about 4 s, half of a small flow's run. A
    ``python flow.py run`` process only talks to itself with the current client, which speaks the
    newest version, so that version alone is enough. This touches Airflow internals, so it applies
    only when the versions match and everything is where 3.3 has it; otherwise nothing changes
    and the run is just slower. Workers and API servers never run this: it is for the CLI process.
    """
    name = "airflow.api_fastapi.execution_api.versions"
    try:
        from airflow.sdk.api.datamodels._generated import API_VERSION
        from cadwyn import HeadVersion, Version, VersionBundle
        from cadwyn.route_generation import _DELETED_ROUTE_TAG
    except ImportError:
        return
    lean_bundle = VersionBundle(HeadVersion(), Version(API_VERSION))
    if name in sys.modules:
        if getattr(sys.modules[name].bundle.versions[0], "value", None) != API_VERSION:
            return
        sys.modules[name].bundle = lean_bundle
    else:
        # Importing the real module defines the schema changes of every version (about 1 s), only
        # for them to be dropped: read its newest version from the source instead, and stand in.
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            return
        newest = re.search(r'Version\(\s*"(\d{4}-\d{2}-\d{2})"', Path(spec.origin).read_text())
        if newest is None or newest.group(1) != API_VERSION:
            return
        stand_in = types.ModuleType(name, "The newest execution API version only (see airflow_flowspec).")
        stand_in.bundle = lean_bundle  # type: ignore[attr-defined]
        sys.modules[name] = stand_in
    from airflow.api_fastapi.execution_api.routes import execution_api_router

    # Routes kept only for older versions would have no version left to live in.
    execution_api_router.routes[:] = [
        route
        for route in execution_api_router.routes
        if _DELETED_ROUTE_TAG not in (getattr(route, "tags", None) or [])
    ]


def _initialize_metrics() -> None:
    """Set up Airflow's metrics the way its own processes do when they start; dag.test() does not.

    Left at its module defaults, the first metric a run emits loads Airflow's 30 KB YAML registry of
    legacy metric names (0.3 s with PyYAML's pure-Python loader) only to hand the names to a
    logger that drops them. Legacy names matter only to an exporter, so with none configured we
    skip them; with statsd, Datadog or OpenTelemetry on, ``[metrics] legacy_names_on`` decides, as
    in the scheduler and the task runner. Both copies of the stats module (Airflow core's and the
    task SDK's) are set up, since both emit during a run.
    """
    from airflow.configuration import conf

    for shared, utils in (
        ("airflow._shared.observability.metrics", "airflow.observability.metrics.stats_utils"),
        ("airflow.sdk._shared.observability.metrics", "airflow.sdk.observability.metrics.stats_utils"),
    ):
        try:
            stats = importlib.import_module(f"{shared}.stats")
            no_exporter = importlib.import_module(f"{shared}.base_stats_logger").NoStatsLogger
            factory = importlib.import_module(utils).get_stats_factory()
        except (ImportError, AttributeError):
            continue  # laid out differently in this Airflow version: keep its defaults
        legacy_names = factory is not no_exporter and conf.getboolean("metrics", "legacy_names_on")
        stats.initialize(factory=factory, export_legacy_names=legacy_names)


def _report(flow_name: str, dag_run: Any, branch: str | None) -> int:
    from airflow.utils.state import DagRunState, TaskInstanceState

    run_id = stored_run_id(dag_run.run_id, branch)
    if dag_run.state == DagRunState.SUCCESS:
        print(f"Flow {flow_name} run {run_id} succeeded.", flush=True)
        return 0
    failed = sorted(
        (ti.task_id, ti.map_index)
        for ti in dag_run.get_task_instances()
        if ti.state in (TaskInstanceState.FAILED, TaskInstanceState.UPSTREAM_FAILED)
        and ti.state == TaskInstanceState.FAILED
    )
    names = ", ".join(t if m < 0 else f"{t}[{m}]" for t, m in failed) or "unknown"
    print(
        f"Flow {flow_name} run {run_id} failed in step(s): {names}. The step's error is shown above.",
        file=sys.stderr,
        flush=True,
    )
    return 1
