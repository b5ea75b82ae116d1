"""Every Airflow name this package uses that is not part of Airflow's public interface.

The package is pinned to one Airflow minor version (``apache-airflow>=3.3,<3.4``) because of what
is here: DAG registration during a DagBag import, the pieces ``dag.test()`` is built from, the
in-process execution API, the metrics modules. Each function below says why we need the private
name and what public interface would replace it. An Airflow upgrade is audited in this file alone:
``tests/airflow/test_airflow_internals.py`` imports every name used here and checks the attribute
or signature relied on, so an upgrade fails there first, with the name in the message; and
``tests/test_import_graph.py`` keeps private Airflow paths out of every other module.

Nothing here imports Airflow when this module is imported: :func:`dagbag_importing` runs whenever
a flow class is defined, with or without Airflow installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

#: Where Airflow keeps the DAG context a DagBag import registers DAGs in.
DAG_CONTEXT_MODULE = "airflow.sdk.definitions._internal.contextmanager"
#: The user ``dag.test()`` triggers its runs as (and so does ``python flow.py run``).
DAG_TEST_USER = "dag_test"
#: The execution API's module of published versions, which :func:`build_lean_execution_api` thins.
EXECUTION_API_VERSIONS_MODULE = "airflow.api_fastapi.execution_api.versions"
#: Modules every run imports, loaded once by the preloader before it forks runs.
TASK_RUN_MODULES = (
    "airflow.api_fastapi.execution_api.app",
    "airflow.dag_processing.dagbag",
    "airflow.sdk.execution_time.task_runner",
)
#: (the metrics package, its ``stats_utils``) of Airflow core and of the task SDK: each has its
#: own copy of the stats module, and both emit during a run.
METRICS_PACKAGES = (
    ("airflow._shared.observability.metrics", "airflow.observability.metrics.stats_utils"),
    ("airflow.sdk._shared.observability.metrics", "airflow.sdk.observability.metrics.stats_utils"),
)
#: Airflow's time-zone modules (core's and the task SDK's copies), re-read by a preloaded run.
TIMEZONE_MODULES = ("airflow._shared.timezones.timezone", "airflow.sdk._shared.timezones.timezone")


# --- DAG registration -------------------------------------------------------------------------


def dagbag_importing(module_name: str) -> bool:
    """Whether a DagBag is importing ``module_name`` now.

    Why: a flow file has no ``with DAG(...)`` for Airflow to see; the flow class registers its DAG
    itself, and only during a DagBag import. Replace with: a public parse-time hook, if Airflow
    ever offers one (``airflow.sdk.get_parsing_context()`` tells the DAG id, not the module).
    """
    context = sys.modules.get(DAG_CONTEXT_MODULE)
    if context is None:  # Airflow not imported: certainly no DagBag import
        return False
    return bool(context.DagContext.current_autoregister_module_name == module_name)


def unregister_dag(stale_dag: Any) -> None:
    """Drop ``stale_dag``, by identity, from the DAGs the DagBag import in progress collects.

    Why: a class decorator that changes a flow after its class was created builds its DAG again,
    and the first one must go; ``set.discard`` cannot find it, since its hash covers task ids added
    since. Replace with: a public way to withdraw a DAG from the import (none in Airflow 3.3: this
    mutates ``DagContext.autoregistered_dags``).
    """
    registered = sys.modules[DAG_CONTEXT_MODULE].DagContext.autoregistered_dags
    kept = {entry for entry in registered if entry[0] is not stale_dag}
    registered.clear()
    registered.update(kept)


# --- What a step task reads from Airflow ------------------------------------------------------


def is_dag_test_run(dag_run: Any) -> bool:
    """Whether ``dag_run`` was started by ``dag.test()`` (``airflow dags test``, ``python flow.py
    run``): not a production run, and its user is whoever ran it.

    Why: the task SDK's DagRun carries the triggering user but not ``triggered_by``, so
    ``dag.test()``'s runs are known by the user name it sets. Replace with: a public
    ``triggered_by`` on the task SDK's DagRun.
    """
    triggering_user = getattr(dag_run, "triggering_user_name", None)
    triggered_by = str(getattr(dag_run, "triggered_by", "") or "").lower()
    return triggering_user == DAG_TEST_USER or "test" in triggered_by


def lazy_xcom_sequence(xcom_arg: Any, ti: Any) -> Sequence[Any]:
    """The XComs of every map index of a mapped task, as the lazy sequence Airflow hands a task
    downstream of it; a slice of it is read in one request.

    Why: a foreach child reads only its own chunk of the split's list. Replace with: a public
    ranged ``xcom_pull`` (``ti.xcom_pull(map_indexes=range(...))`` reads one request per index).
    """
    from airflow.sdk.execution_time.lazy_sequence import LazyXComSequence

    return LazyXComSequence(xcom_arg=xcom_arg, ti=ti)


# --- The metadata database, as python flow.py run uses it ----------------------------------------


def migrate_database() -> None:
    """Create or upgrade Airflow's metadata database, and record the configured DAG bundles.

    Why: ``run`` sets up its private home itself, without the ``airflow db migrate`` command.
    Replace with: a public ``airflow.sdk``-level setup call, if one appears; else the command.
    """
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.utils import db

    db.upgradedb()
    DagBundlesManager().sync_bundles_to_db()


def write_dag_to_database(dag: Any, bundle_name: str) -> None:
    """Serialize ``dag`` into the database under ``bundle_name``, as the DAG processor would.

    Why: ``run`` runs the DAG it built in this process (its branch, its retry delays), not one
    parsed again from a dags folder. Replace with: none public; the DAG processor's own path.
    """
    import os

    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    bag = DagBag(dag_folder=os.devnull, collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, bundle_name, None)


def airflow_config_path() -> str:
    """The airflow.cfg Airflow read in this process.

    Why: a preloader is stale when that file changes. Replace with: none public.
    """
    from airflow.configuration import AIRFLOW_CONFIG

    return str(AIRFLOW_CONFIG)


# --- dag.test()'s pieces, as python flow.py run's concurrent loop uses them -----------------------


def scheduler_dag(dag: Any) -> Any:
    """The scheduler's view of ``dag`` (a serialized DAG), as ``dag.test()`` builds it.

    Why: creating a DAG run and asking which tasks are ready take the scheduler's DAG. Replace
    with: none public; ``dag.test()`` is the public whole these pieces come from.
    """
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))


def create_test_dag_run(
    scheduler_dag: Any,
    dag: Any,
    *,
    run_id: str,
    logical_date: datetime,
    conf: dict[str, Any],
    session: Any,
) -> Any:
    """The DAG run ``run_id``, created and marked as ``dag.test()`` creates and marks its own (so
    the step tasks read it as a local test run: :func:`is_dag_test_run`).

    Why: ``run`` keeps ``dag.test()``'s loop but runs the ready tasks at once. Replace with: none
    public (``get_or_create_dagrun`` is what ``dag.test()`` calls).
    """
    from airflow.models.dagrun import get_or_create_dagrun
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.utils.types import DagRunTriggeredByType

    data_interval = coerce_to_core_timetable(dag.timetable).infer_manual_data_interval(run_after=logical_date)
    return get_or_create_dagrun(
        dag=scheduler_dag,
        run_id=run_id,
        logical_date=logical_date,
        data_interval=data_interval,
        run_after=logical_date,
        conf=conf,
        triggered_by=DagRunTriggeredByType.TEST,
        triggering_user_name=DAG_TEST_USER,
        start_date=logical_date,
        session=session,
    )


def run_task_in_process(ti: Any, task: Any) -> None:
    """Run one task instance in this process, with retries and deferral as ``dag.test()`` runs it.

    Why: each of ``run``'s workers runs its tasks this way. Replace with: none public
    (``airflow.sdk.definitions.dag._run_task`` is ``dag.test()``'s own).
    """
    from airflow.sdk.definitions.dag import _run_task

    _run_task(ti=ti, task=task, run_triggerer=True)


# --- The in-process execution API ---------------------------------------------------------------


def in_process_execution_app() -> Any:
    """The ASGI app of this process's in-process execution API (one per process, cached).

    Why: it is built, and its routers generated, before tasks are forked, so no task pays for it.
    Replace with: none public; only ``dag.test()`` uses it.
    """
    from airflow.sdk.execution_time.supervisor import in_process_api_server

    return in_process_api_server().app


def build_lean_execution_api() -> None:
    """Let dag.test()'s in-process execution API serve only the API version our task runner speaks.

    Airflow's execution API keeps every version it has published and builds the routers of all of
    them on the first request, which is half of a small flow's run. A ``python flow.py run``
    process only talks to itself with the current client, which speaks the newest version, so that
    version alone is enough. It applies only when the versions match and everything is where this
    Airflow has it; otherwise nothing changes and the run is just slower. Workers and API servers
    never run this: it is for the CLI process and its preloader.

    Why private: it replaces ``sys.modules`` entry :data:`EXECUTION_API_VERSIONS_MODULE` with a
    stand-in whose version is read from that module's source, and drops routes cadwyn tags
    ``_DELETED_ROUTE_TAG``. Replace with: an execution API that builds versions on demand.
    """
    name = EXECUTION_API_VERSIONS_MODULE
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
        sys.modules[name].bundle = lean_bundle  # type: ignore[attr-defined]
    else:
        # Importing the real module defines the schema changes of every version, only for them
        # to be dropped: read its newest version from the source instead, and stand in.
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            return
        newest = newest_execution_api_version(Path(spec.origin).read_text())
        if newest != API_VERSION:
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


def newest_execution_api_version(versions_source: str) -> str | None:
    """The first ``Version("YYYY-MM-DD")`` in the source of the execution API's versions module:
    Airflow lists its newest version first."""
    newest = re.search(r'Version\(\s*"(\d{4}-\d{2}-\d{2})"', versions_source)
    return None if newest is None else newest.group(1)


def import_task_run_modules() -> None:
    """Import what every run imports (:data:`TASK_RUN_MODULES`), so forked runs find it loaded.

    Why: the preloader's point is to pay these imports once. Replace with: nothing needed; a
    module missing in another Airflow is only a slower run.
    """
    for name in TASK_RUN_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            continue


# --- Metrics and time zone --------------------------------------------------------------------


@dataclass(frozen=True)
class MetricsCopy:
    """One of Airflow's copies of its stats module, with what :func:`initialize_metrics` uses."""

    stats: types.ModuleType  # initialize(factory=, export_legacy_names=)
    no_exporter: type  # the factory Airflow uses when no exporter is configured
    stats_utils: types.ModuleType  # get_stats_factory(): the configured exporter's factory


def metrics_copies() -> list[MetricsCopy]:
    """Airflow core's and the task SDK's stats modules, those laid out as :data:`METRICS_PACKAGES`
    says (a copy laid out differently in this Airflow is left out)."""
    copies = []
    for package, utils in METRICS_PACKAGES:
        try:
            stats = importlib.import_module(f"{package}.stats")
            no_exporter = importlib.import_module(f"{package}.base_stats_logger").NoStatsLogger
            stats_utils = importlib.import_module(utils)
        except (ImportError, AttributeError):
            continue
        copies.append(MetricsCopy(stats, no_exporter, stats_utils))
    return copies


def initialize_metrics() -> None:
    """Set up Airflow's metrics the way its own processes do when they start; dag.test() does not.

    Left at its module defaults, the first metric a run emits loads Airflow's YAML registry of
    legacy metric names only to hand the names to a logger that drops them. Legacy names matter
    only to an exporter, so with none configured we skip them; with statsd, Datadog or
    OpenTelemetry on, ``[metrics] legacy_names_on`` decides, as in the scheduler and the task
    runner.

    Why private: the stats modules live in ``airflow._shared``. Replace with: metrics set up by
    ``dag.test()`` itself.
    """
    from airflow.sdk import conf

    for copy in metrics_copies():
        factory = copy.stats_utils.get_stats_factory()
        legacy_names = factory is not copy.no_exporter and conf.getboolean("metrics", "legacy_names_on")
        copy.stats.initialize(factory=factory, export_legacy_names=legacy_names)


def use_system_time_zone() -> None:
    """Make Airflow's loaded time-zone modules read the system zone again.

    Why: a preloaded run takes its caller's ``TZ``; Airflow read the preloader's. Replace with:
    none public (``initialize`` of the ``_shared`` time-zone modules).
    """
    for name in TIMEZONE_MODULES:
        timezone = sys.modules.get(name)
        if timezone is not None:
            timezone.initialize("system")
