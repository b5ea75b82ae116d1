"""Run a flow once on the embedded default: Airflow on SQLite, local datastore.

Airflow reads its configuration when first imported, so the environment is prepared before that
import. ``run`` always uses its private home (``$FLOWSPEC_HOME/airflow``, by default
``~/.airflow_flowspec/airflow``), whatever ``AIRFLOW_HOME`` says: its own SQLite database, quiet
logs, no example DAGs, our XCom backend, and an empty dags folder (the flow's own DAG is written to
the database directly). A user's airflow.cfg is only read, for what a flow depends on (the
``[flowspec]`` options, ``[core] max_map_length``), never written; nothing lands in their home.
The DAG run itself is :mod:`.concurrent_run`'s: ``dag.test()``'s loop, its ready tasks at once.

Steps that fail retry at once, as in Metaflow's local runtime (``@retry``'s
``minutes_between_retries`` is honoured by Airflow proper and by steps on AWS Batch).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_flowspec.airflow import _internals
from airflow_flowspec.airflow.discovery import DISCOVERY_CALLABLE
from airflow_flowspec.config import (
    CONSOLE_VARIABLE,
    DEFAULT_MAX_NUM_SPLITS,
    DEFAULT_MAX_WORKERS,
    DEFAULTS,
    MAX_NUM_SPLITS_VARIABLE,
    SECTION,
    airflow_cfg_options,
    default_home,
    option_variable,
)
from airflow_flowspec.identity import RunIdentity

if TYPE_CHECKING:
    from airflow_flowspec.decorators.flow_decorators import ProjectBranch
    from airflow_flowspec.lint.registry import LintTarget

XCOM_BACKEND = "airflow_flowspec.xcom_backend.FlowspecXComBackend"
#: The DAG bundle of the dags folder, the one bundle of a private home.
DAGS_FOLDER_BUNDLE = "dags-folder"
#: The logger Airflow's task runner reports a task's failure on.
TASK_LOGGER = "task"


def airflow_environment(home: Path) -> dict[str, str]:
    """The Airflow settings of a private home: SQLite, our XCom backend and flow discovery, quiet logs.

    Shared by ``python flow.py run``, the tests and the benchmarks, so all three run the Airflow a
    user of the embedded default gets.
    """
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW_CONFIG": str(home / "airflow.cfg"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__XCOM_BACKEND": XCOM_BACKEND,
        "AIRFLOW__CORE__MIGHT_CONTAIN_DAG_CALLABLE": DISCOVERY_CALLABLE,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    }


#: Options of a user's airflow.cfg that ``run`` keeps, besides its whole ``[flowspec]`` section:
#: what the lint checked the flow against must hold while it runs.
KEPT_AIRFLOW_OPTIONS = (("core", "max_map_length"),)


def run_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables ``python flow.py run`` sets in its own process, started with ``environ``.

    The private home's settings (:func:`airflow_environment`) always win: with them the output,
    the XCom backend and the database are the same whatever home or ``AIRFLOW__*`` variables the
    user has. From the airflow.cfg ``environ`` points to (``AIRFLOW_CONFIG``, ``AIRFLOW_HOME`` or
    ``~/airflow``) only the ``[flowspec]`` options and :data:`KEPT_AIRFLOW_OPTIONS` are carried, as
    ``AIRFLOW__*`` variables, where no variable already sets them: ``check``, the client and the
    user's Airflow read that file, and ``run`` must store artifacts where they look for them. It
    only reads (that file), so a parent process can compute it once for the runs it forks.
    """
    home = default_home(environ) / "airflow"
    private = airflow_environment(home)
    carried: dict[str, str] = {}
    user_cfg, flowspec_options = airflow_cfg_options(SECTION, environ)
    if user_cfg != Path(private["AIRFLOW_CONFIG"]):
        options = {(SECTION, name): value for name, value in flowspec_options.items()}
        for section, name in KEPT_AIRFLOW_OPTIONS:
            options[(section, name)] = airflow_cfg_options(section, environ)[1].get(name, "")
        for (section, name), value in options.items():
            variable = option_variable(section, name)
            if value and not environ.get(variable):
                carried[variable] = value
    # A failed task's traceback is shown by the operator, from the step's first frame
    # (airflow_flowspec.runtime.failures); Airflow's own "Task failed with exception" and its
    # frames stay off the terminal.
    private["AIRFLOW__LOGGING__NAMESPACE_LEVELS"] = f"{TASK_LOGGER}=critical"
    return {**carried, **_aws_connection(environ, carried), **private}


def _aws_connection(environ: Mapping[str, str], carried: Mapping[str, str]) -> dict[str, str]:
    """An empty AWS connection under the configured id, unless a variable defines one.

    ``run`` sees no connection stored in a database, so the Amazon provider would warn "Unable
    to find AWS Connection ID" on every hook and then use boto3's own credentials anyway (the
    environment, ``~/.aws``, an instance role). An empty connection of type ``aws`` does the same
    without the warning; a user's ``AIRFLOW_CONN_*`` variable still wins.
    """
    variable = option_variable(SECTION, "aws_conn_id")
    conn_id = environ[variable] if variable in environ else carried.get(variable, DEFAULTS["aws_conn_id"])
    name = f"AIRFLOW_CONN_{conn_id.upper()}"
    if not conn_id or environ.get(name):
        return {}
    return {name: '{"conn_type": "aws"}'}


def prepare_environment() -> Path:
    """Point this process at ``run``'s private Airflow home, ready to use; return the home.

    Sets :func:`run_environment` in ``os.environ`` (idempotent: a second call changes nothing) and
    creates the home's dags folder. Call it before Airflow is imported.
    """
    environment = run_environment(os.environ)
    home = Path(environment["AIRFLOW_HOME"])
    (home / "dags").mkdir(parents=True, exist_ok=True)
    os.environ.update(environment)
    return home


def quiet_airflow_warnings() -> None:
    """Airflow's own deprecation chatter is noise to someone running a flow.

    A filter already in place is left where it is: a preloaded run calls this again after its
    preloader did (and imported Airflow, which adds filters of its own), and must end up with the
    filters in the order a cold run has them."""
    import warnings

    for message, category, module in (
        (".*httpx.*starlette.testclient.*", Warning, ""),
        ("", DeprecationWarning, "fastapi"),
    ):
        if not any(
            action == "ignore"
            and getattr(pattern, "pattern", "") == message
            and kind is category
            and getattr(where, "pattern", "") == module
            for action, pattern, kind, where, _line in warnings.filters
        ):
            warnings.filterwarnings("ignore", message=message, category=category, module=module)


def ensure_database(home: Path) -> None:
    """Create or migrate Airflow's metadata database once per Airflow version.

    Runs started at once in a new home (two terminals, a script) take turns (:func:`home_lock`):
    the first migrates, the others find it done."""
    import airflow

    marker = home / f".flowspec-db-ready-{airflow.__version__}"
    if marker.exists() and os.environ.get("AIRFLOW_HOME") == str(home):
        return
    with home_lock(home):
        if marker.exists() and os.environ.get("AIRFLOW_HOME") == str(home):
            return
        # The dags-folder bundle must exist before a DAG is written under it; it is kept as it
        # is afterwards, so this is needed (and paid for) once, not per run.
        _internals.migrate_database()
        marker.touch()


@contextlib.contextmanager
def home_lock(home: Path) -> Iterator[None]:
    """Hold the private home's lock: one process at a time creates or changes what runs share
    (the database's tables, a flow's DAG row)."""
    descriptor = os.open(home / ".flowspec-home.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def sync_dag(dag: Any) -> None:
    """Write the flow's DAG to the database under the dags-folder bundle, as the DAG processor would.

    Two runs of a flow new to this home, started at once, would both find no row for its DAG and
    both insert one: they take turns (:func:`home_lock`).
    """
    from airflow import settings

    with home_lock(Path(os.environ.get("AIRFLOW_HOME") or settings.AIRFLOW_HOME)):
        _internals.write_dag_to_database(dag, DAGS_FOLDER_BUNDLE)


def run_locally(
    flow_class: type,
    flow_file: str,
    parameters: dict[str, Any],
    target: LintTarget,
    project: ProjectBranch | None = None,
    *,
    max_workers: int = DEFAULT_MAX_WORKERS,
    max_num_splits: int = DEFAULT_MAX_NUM_SPLITS,
    run_id_file: str | None = None,
    user_namespace: str | None = None,
) -> int:
    """Lint (for ``target``), register and run the flow once; return the exit status.

    A ``@project`` flow runs as the DAG of ``project``, its branch; its runs are stored, and
    reported, under the flow's own name. Up to ``max_workers`` tasks run at once
    (:mod:`.concurrent_run`); a foreach of more than ``max_num_splits`` items fails its step.
    The run's short id (its number, ``TrainFlow/12``) is printed first and names the run in the
    terminal's prefixes, as Metaflow's run id does; Airflow's run id, which ``airflow`` commands
    take, is printed next. The short id is what ``run_id_file`` gets, as Metaflow's
    ``--run-id-file`` gets the id its commands take back. ``user_namespace`` is the client
    namespace its steps see, as Metaflow's ``run --namespace``.
    """
    os.environ[MAX_NUM_SPLITS_VARIABLE] = str(max_num_splits)
    if user_namespace is not None:
        from airflow_flowspec.client.namespaces import RUN_NAMESPACE_VARIABLE

        os.environ[RUN_NAMESPACE_VARIABLE] = user_namespace
    home = prepare_environment()
    quiet_airflow_warnings()
    # Steps on AWS Batch show their job's statuses and log lines here, as local steps show output.
    os.environ.setdefault(CONSOLE_VARIABLE, "1")
    # Importing Airflow allocates hundreds of thousands of long-lived objects; the cyclic garbage
    # collector would walk them again and again (0.5-0.9 s here). Collect nothing while importing,
    # then move everything imported out of the collector's sight.
    gc.disable()
    try:
        from airflow_flowspec.airflow.registration import dag_for

        # Lint and @project errors surface here, before Airflow starts.
        dag = dag_for(flow_class, flow_file, target, project)
        retry_at_once(dag)
        logging.getLogger("airflow").setLevel(logging.WARNING)
        ensure_database(home)
        sync_dag(dag)
        _internals.build_lean_execution_api()
        _internals.initialize_metrics()
        prebuild_execution_api()
    finally:
        gc.freeze()
        gc.enable()

    from airflow.models.dagrun import DagRun
    from airflow.utils.types import DagRunType

    logical_date = datetime.now(timezone.utc)
    airflow_run_id = DagRun.generate_run_id(
        run_type=DagRunType.MANUAL, logical_date=logical_date, run_after=logical_date
    )
    run = RunIdentity.of_deployment(flow_class.__name__, airflow_run_id, project)
    from airflow_flowspec import config
    from airflow_flowspec.airflow.concurrent_run import Console, run_dag
    from airflow_flowspec.datastore.store import Datastore

    # Numbered here, before Airflow starts the run, so its first line can name it as Metaflow's
    # does; the start step finds the number taken. A datastore of its own, not the process's
    # shared one: the workers forked from this process must not inherit an S3 client in use.
    short_id = str(Datastore(config.datastore_root()).number_run(run))
    console = Console()
    if project is not None:
        print(f"Project: {project.project_name}, Branch: {project.branch_name}", flush=True)
    if run_id_file is not None:
        Path(run_id_file).write_text(short_id)
    console.run_line(f"Workflow starting (run-id {short_id}):")
    console.run_line(f"Airflow runs it as run {airflow_run_id} of the DAG {run.dag_id}.")

    def label_of(task_id: str, map_index: int) -> str:
        return f"{short_id}/{task_id}/{max(map_index, 0)}"

    dag_run = run_dag(
        dag,
        run_id=airflow_run_id,
        label_of=label_of,
        logical_date=logical_date,
        conf=parameters,
        max_workers=max_workers,
        console=console,
    )
    return _report(run, short_id, dag_run, console)


def retry_at_once(dag: Any) -> None:
    """Let the run's steps retry as soon as they fail, as Metaflow's local runtime does.

    ``dag.test()`` waits out a task's ``retry_delay`` (``@retry``'s ``minutes_between_retries``,
    2 by default) polling once a second and warning "No tasks to run" each time. Only this
    process's copy of the DAG changes: the dags folder's DAG keeps its delay, and so do steps on
    AWS Batch, whose retries Metaflow delays too (a job may fail for reasons that take time to pass).
    """
    from airflow_flowspec.operators.local_step import LocalStepOperator

    for task in dag.task_dict.values():
        operator_class = getattr(task, "operator_class", type(task))  # a foreach step is mapped
        runs_here = isinstance(operator_class, type) and issubclass(operator_class, LocalStepOperator)
        if runs_here and task.retries:
            task.retry_delay = timedelta(0)


def prebuild_execution_api() -> None:
    """Build the in-process execution API, and its versioned routers, before forking tasks.

    Airflow keeps one in-process execution API per process
    (:func:`._internals.in_process_execution_app`); its app is built on first use and Cadwyn
    generates the routers on the first request: about half a second, which every forked task
    would pay again. Both are done here (in the preloader,
    and in a cold run before its first task), the request served on an event loop that is closed
    again, so no thread is left running at the fork; each task's process starts the transport
    thread of its inherited instance as usual.
    """
    import asyncio

    try:
        import httpx

        app = _internals.in_process_execution_app()
    except ImportError:
        return

    async def first_request() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://in-process") as client:
            await client.get("/execution/health")

    try:
        asyncio.run(first_request())
    except Exception as error:  # noqa: BLE001 - only a speed-up: the child builds them if not
        print(f"execution API not prebuilt ({error})", file=sys.stderr, flush=True)


def _report(run: RunIdentity, short_id: str, dag_run: Any, console: Any) -> int:
    from airflow.utils.state import DagRunState, TaskInstanceState

    if dag_run.state == DagRunState.SUCCESS:
        console.run_line("Done!")
        return 0
    failed = sorted(
        (ti.task_id, ti.map_index)
        for ti in dag_run.get_task_instances()
        if ti.state == TaskInstanceState.FAILED
    )
    names = ", ".join(t if m < 0 else f"{t}[{m}]" for t, m in failed) or "unknown"
    console.run_line("Workflow failed.", error=True)
    print(
        f"Flow {run.flow} run {short_id} (Airflow run {run.airflow_run_id}) failed in step(s): {names}. "
        f"The step's error is shown above.",
        file=sys.stderr,
        flush=True,
    )
    return 1
