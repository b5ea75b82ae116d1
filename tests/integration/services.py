"""Real Airflow services on loopback, with a throwaway PostgreSQL as the metadata database.

:func:`start_airflow` starts, for one test session: a PostgreSQL cluster made by ``initdb`` in a
temporary folder (or SQLite, with a warning saying why, when PostgreSQL is not installed), then
``airflow db migrate`` and the four services ``airflow standalone`` runs (scheduler with the
LocalExecutor, dag-processor, triggerer, api-server), each in its own process group with its own
log file. It returns an :class:`AirflowServices` to drive them over REST and the CLI;
:meth:`AirflowServices.stop` ends every process it started and checks that none is left.

Why not ``airflow standalone`` itself: it forces ``[core] auth_manager`` back to SimpleAuthManager
(``standalone_command.py``, ``calculate_env``), and the tests need their own auth manager (a user
refused one DAG, :mod:`auth_manager`). Separate services also give one log per service.

Stopping ends every process of the session, including those that left their service's process
group (task processes) or lost their parent: :class:`ProcessWatch` remembers each process seen in
the services' trees, and every process started here carries ``FLOWSPEC_INTEGRATION_SESSION`` in
its environment (found while it has not renamed itself).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from airflow_flowspec.airflow.local_services import (
    HEALTH_COMPONENTS,
    SERVICES,
    kill_all,
    port_is_listening,
    tail,
)

REPO = Path(__file__).resolve().parents[2]
#: What the services import our package from: this checkout, before any installed copy.
PYTHONPATH = str(REPO)
AUTH_MANAGER = "tests.integration.auth_manager.DagRefusingAuthManager"
#: user -> role. ``outsider`` is a viewer whom the auth manager refuses every DAG.
USERS = {"admin": "admin", "viewer": "viewer", "outsider": "viewer"}
SESSION_VARIABLE = "FLOWSPEC_INTEGRATION_SESSION"
POSTGRES_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/lib/postgresql/16/bin")
TERMINAL_RUN_STATES = ("success", "failed")
#: Debian's Chromium, which the browser tests drive with Playwright.
CHROMIUM = "/usr/bin/chromium"
#: Flags that keep Chromium off the network this machine closes (see the environment notes).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: The flow files every session's dags folder starts with, and their DAG ids.
DAG_FILES = [
    *sorted((REPO / "dags_examples").glob("*.py")),
    REPO / "tests" / "flows" / "nested_foreach_flow.py",
]
DAG_IDS = ["DailyReportFlow", "FeaturePipelineFlow", "HyperparameterSearchFlow", "NestedForeachFlow"]


class IntegrationSetupWarning(UserWarning):
    """The integration services run, but not as intended (e.g. SQLite instead of PostgreSQL)."""


class ServiceError(AssertionError):
    """A service did not start, answer or finish in time; the message carries the services' log tails."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    diagnose: Callable[[], str],
    interval: float = 0.5,
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds with
    ``what`` and ``diagnose()`` (log tails) in the message."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise ServiceError(f"Timed out after {timeout:.0f} s waiting for {what}.\n{diagnose()}")
        time.sleep(interval)


def session_processes(session_id: str, kind: str | None = None) -> list[psutil.Process]:
    """Processes started for this session (their environment carries the session's marker)."""
    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            marker = process.environ().get(SESSION_VARIABLE, "")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
        if marker.startswith(session_id) and (kind is None or marker == f"{session_id}:{kind}"):
            found.append(process)
    return found


# -- PostgreSQL ----------------------------------------------------------------------------------


def find_postgres_bin() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres, or None."""
    found = shutil.which("initdb")
    candidates = ([str(Path(found).resolve().parent)] if found else []) + list(POSTGRES_BIN_DIRS)
    for folder in candidates:
        if all((Path(folder) / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    return None


def unprivileged_account() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as when we are root (initdb and postgres refuse root); None when
    we are not root (then they run as us)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise ServiceError(
        "Running as root, and neither a 'postgres' nor a 'nobody' account exists to run PostgreSQL."
    )


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with a database named ``airflow``.

    The server runs as our child (not daemonized by ``pg_ctl start``), so its exit is ours to reap.
    """

    bin_dir: Path
    session_id: str
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="flowspec-pg-")))
    port: int = field(default_factory=free_port)
    server: subprocess.Popen | None = None
    _known: set[psutil.Process] = field(default_factory=set)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://airflow@127.0.0.1:{self.port}/airflow"

    @property
    def postmaster_pid(self) -> int | None:
        return self.server.pid if self.server is not None else None

    def _as_account(self) -> dict[str, Any]:
        """Popen arguments running a program as :func:`unprivileged_account`, in the cluster's folder."""
        account = unprivileged_account()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "LANG": "C",
            SESSION_VARIABLE: f"{self.session_id}:postgres",
        }
        arguments: dict[str, Any] = {"cwd": self.root, "env": env}
        if account is not None:
            arguments.update(user=account.pw_uid, group=account.pw_gid, extra_groups=[])
        return arguments

    def _run(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False, **self._as_account()
        )

    def start(self, timeout: float = 60) -> None:
        account = unprivileged_account()
        if account is not None:
            os.chown(self.root, account.pw_uid, account.pw_gid)
        self.root.chmod(0o700)
        initdb = self._run(
            "initdb", "-D", str(self.data_dir), "-U", "airflow", "--auth=trust", "--encoding=UTF8",
            "--locale=C", "--no-sync", timeout=120,
        )  # fmt: skip
        if initdb.returncode != 0:
            raise ServiceError(f"initdb failed ({initdb.returncode}):\n{initdb.stdout}\n{initdb.stderr}")
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "200",
            # A throwaway cluster: durability buys nothing here and costs seconds of fsync.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# airflow-flowspec integration tests\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        with open(self.log_file, "w") as log:
            self.server = subprocess.Popen(
                [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                **self._as_account(),
            )
        wait_until(self._create_database, timeout, "PostgreSQL to accept connections", self._log_tail)
        self._known.update(self.processes())

    def _log_tail(self) -> str:
        return f"--- {self.log_file}\n{tail(self.log_file)}"

    def _create_database(self) -> bool:
        import psycopg2

        if self.server is None or self.server.poll() is not None:
            code = None if self.server is None else self.server.returncode
            raise ServiceError(f"PostgreSQL exited with {code}.\n{self._log_tail()}")
        try:
            connection = psycopg2.connect(
                host="127.0.0.1", port=self.port, user="airflow", dbname="postgres", connect_timeout=2
            )
        except psycopg2.OperationalError:
            return False
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("CREATE DATABASE airflow")
        finally:
            connection.close()
        return True

    def processes(self) -> list[psutil.Process]:
        """The postmaster and its children (they rename themselves: the session marker cannot find them)."""
        if self.server is None:
            return []
        try:
            postmaster = psutil.Process(self.server.pid)
            return [postmaster, *postmaster.children(recursive=True)]
        except psutil.Error:
            return []

    def running(self) -> list[psutil.Process]:
        return [p for p in self._known if p.is_running() and not _is_zombie(p)]

    def stop(self) -> None:
        """``pg_ctl stop -m fast``, then SIGKILL whatever of the cluster is left."""
        if self.server is None:
            return
        self._known.update(self.processes())
        if self.server.poll() is None:
            try:
                self._run(
                    "pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "20", "stop", timeout=30
                )
            except subprocess.TimeoutExpired:
                pass
        try:
            self.server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait(timeout=10)
        kill_all(self.running() + session_processes(self.session_id, "postgres"))


# -- Airflow -------------------------------------------------------------------------------------


class ProcessWatch(threading.Thread):
    """Once a second, records every process in the trees of the session's root processes, and the
    memory they use.

    Airflow's processes rename themselves (setproctitle), which overwrites what /proc shows of
    their environment, and task processes get process groups of their own: neither the session
    marker nor the process groups find them all. Every process ever seen in the trees is kept
    (``psutil.Process`` checks its identity, so a reused pid is not mistaken for it), so stopping
    can end those whose parent died first.
    """

    def __init__(self, roots: Callable[[], list[int]]):
        super().__init__(daemon=True, name="airflow-process-watch")
        self._roots = roots
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self.seen: set[psutil.Process] = set()
        self.baseline_used = psutil.virtual_memory().used
        self.peak_rss = 0
        self.peak_used = self.baseline_used

    def record(self) -> list[psutil.Process]:
        """The trees' processes now (also remembered); their summed RSS updates the peak."""
        processes = []
        for pid in self._roots():
            try:
                root = psutil.Process(pid)
                processes += [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
        total = 0
        for process in processes:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                continue
        with self._lock:
            self.seen.update(processes)
            self.peak_rss = max(self.peak_rss, total)
            self.peak_used = max(self.peak_used, psutil.virtual_memory().used)
        return processes

    def running(self) -> list[psutil.Process]:
        with self._lock:
            return [process for process in self.seen if process.is_running() and not _is_zombie(process)]

    def run(self) -> None:
        while not self._stop_event.wait(1.0):
            self.record()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def report(self) -> str:
        mib = 1024 * 1024
        return (
            f"peak summed RSS of the services {self.peak_rss / mib:.0f} MiB (shared pages counted per "
            f"process); peak machine memory in use {(self.peak_used - self.baseline_used) / mib:.0f} MiB "
            f"above the {self.baseline_used / mib:.0f} MiB in use at start"
        )


def _is_zombie(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass(repr=False)
class AirflowServices:
    """A running Airflow: where it lives and how to talk to it.

    ``env`` is the environment of its services; pass it to any ``airflow`` CLI call (or use
    :meth:`airflow_cli`). ``passwords`` holds the users' passwords (``USERS`` gives their roles).
    """

    root: Path
    home: Path
    dags_folder: Path
    datastore_root: Path
    port: int
    env: dict[str, str]
    passwords: dict[str, str]
    session_id: str
    database: str
    postgres: Postgres | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    watch: ProcessWatch | None = None
    _tokens: dict[str, str] = field(default_factory=dict)
    _http: httpx.Client | None = None

    def __repr__(self) -> str:  # the environment holds secrets: keep them out of failure reports
        return f"AirflowServices({self.base_url}, home={self.home}, database={self.database})"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def logs_dir(self) -> Path:
        return self.root / "service-logs"

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(base_url=self.base_url, timeout=30)
        return self._http

    # -- diagnostics -----------------------------------------------------------------------------

    def log_tails(self, lines: int = 40) -> str:
        files = sorted(self.logs_dir.glob("*.log"))
        if self.postgres is not None:
            files.append(self.postgres.log_file)
        parts = [f"--- {path} (last {lines} lines)\n{tail(path, lines)}" for path in files]
        exited = [
            f"{name} exited with {p.returncode}" for name, p in self.processes.items() if p.poll() is not None
        ]
        return "\n".join(([f"Services that exited: {', '.join(exited)}"] if exited else []) + parts)

    def task_log_tails(self, dag_id: str, run_id: str, lines: int = 30) -> str:
        """The end of each task log of a run (the files the task runners wrote under the home)."""
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
        return "\n".join(
            f"--- {path.relative_to(folder)}\n{tail(path, lines)}" for path in sorted(folder.rglob("*.log"))
        )

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise ServiceError(f"Airflow's {name} exited with {process.returncode}.\n{self.log_tails()}")

    # -- REST ------------------------------------------------------------------------------------

    def token(self, user: str = "admin") -> str:
        """A JWT for ``user`` from ``POST /auth/token`` (cached: tokens last a day)."""
        if user not in self._tokens:
            response = self.http.post(
                "/auth/token", json={"username": user, "password": self.passwords[user]}
            )
            if response.status_code not in (200, 201):
                raise ServiceError(f"POST /auth/token for {user!r}: {response.status_code} {response.text}")
            self._tokens[user] = response.json()["access_token"]
        return self._tokens[user]

    def api(
        self, method: str, path: str, json: Any = None, user: str = "admin", params: dict | None = None
    ) -> httpx.Response:
        """One REST call as ``user`` (``path`` like ``/api/v2/dags``); the response, whatever its status."""
        headers = {"Authorization": f"Bearer {self.token(user)}"}
        return self.http.request(method, path, json=json, params=params, headers=headers)

    def get_json(self, path: str, params: dict | None = None, user: str = "admin") -> Any:
        response = self.api("GET", path, user=user, params=params)
        if response.status_code != 200:
            raise ServiceError(f"GET {path} as {user}: {response.status_code} {response.text}")
        return response.json()

    def dags(self) -> dict[str, dict]:
        """Every DAG Airflow lists, by id."""
        listing = self.get_json("/api/v2/dags", params={"limit": 1000})
        return {dag["dag_id"]: dag for dag in listing["dags"]}

    def import_errors(self) -> list[dict]:
        return self.get_json("/api/v2/importErrors", params={"limit": 1000})["import_errors"]

    def wait_for_dags(
        self, ids: Iterable[str], timeout: float = 90, files: Iterable[Path] = ()
    ) -> dict[str, dict]:
        """Wait until Airflow lists every DAG in ``ids``; returns them by id. An import error of one of
        ``files`` fails the wait at once; any import error is in the message of a timeout."""
        wanted = set(ids)
        names = {Path(path).name for path in files}

        def listed() -> dict[str, dict] | None:
            self._check_alive()
            dags = self.dags()
            if wanted <= set(dags):
                return {dag_id: dags[dag_id] for dag_id in wanted}
            ours = [error for error in self.import_errors() if Path(error["filename"]).name in names]
            if ours:
                raise ServiceError(f"Waiting for DAGs {sorted(wanted - set(dags))}: {_describe(ours)}")
            return None

        def diagnose() -> str:
            return f"Listed: {sorted(self.dags())}; {_describe(self.import_errors())}\n{self.log_tails()}"

        return wait_until(listed, timeout, f"DAGs {sorted(wanted)} to be listed", diagnose, interval=1)

    def unpause(self, dag_id: str) -> None:
        response = self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        if response.status_code != 200:
            raise ServiceError(f"Unpausing {dag_id}: {response.status_code} {response.text}")

    def trigger(self, dag_id: str, conf: dict | None = None, user: str = "admin") -> str:
        """Unpause the DAG and start a run through REST (no logical date, like the UI's trigger);
        returns its run id."""
        self.unpause(dag_id)
        body = {"logical_date": None, "conf": conf or {}}
        response = self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body, user=user)
        if response.status_code != 200:
            raise ServiceError(f"Triggering {dag_id}: {response.status_code} {response.text}")
        return response.json()["dag_run_id"]

    def task_states(self, dag_id: str, run_id: str) -> dict[tuple[str, int], str | None]:
        listing = self.get_json(
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000}
        )
        return {(ti["task_id"], ti["map_index"]): ti["state"] for ti in listing["task_instances"]}

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 120, state: str = "success") -> dict:
        """Wait until the run ends; returns it. Ending in another state than ``state`` fails at once,
        with the task states and task logs."""

        def ended() -> dict | None:
            self._check_alive()
            run = self.get_json(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            return run if run["state"] in TERMINAL_RUN_STATES else None

        def diagnose() -> str:
            return (
                f"Task states: {self.task_states(dag_id, run_id)}\n"
                f"{self.task_log_tails(dag_id, run_id)}\n{self.log_tails()}"
            )

        run = wait_until(ended, timeout, f"run {dag_id}/{run_id} to end", diagnose)
        if run["state"] != state:
            raise ServiceError(f"Run {dag_id}/{run_id} ended {run['state']}, not {state}.\n{diagnose()}")
        return run

    # -- CLI -------------------------------------------------------------------------------------

    def airflow_cli(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess:
        """``airflow <args>`` with the services' environment; output captured (text)."""
        result = subprocess.run(
            ["airflow", *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise ServiceError(
                f"airflow {' '.join(args)} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    # -- life cycle ------------------------------------------------------------------------------

    def start(self, startup_timeout: float = 180) -> None:
        began = time.monotonic()
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        migrate_log = self.logs_dir / "db-migrate.log"
        with open(migrate_log, "w") as log:
            migrated = subprocess.run(
                ["airflow", "db", "migrate"], env=self.env, stdout=log, stderr=subprocess.STDOUT, timeout=300
            )
        if migrated.returncode != 0:
            raise ServiceError(
                f"airflow db migrate exited with {migrated.returncode}:\n{tail(migrate_log, 60)}"
            )
        self.timings["db migrated"] = time.monotonic() - began
        for name in SERVICES:
            log = open(self.logs_dir / f"{name}.log", "w")  # noqa: SIM115 - kept open by the child
            self.processes[name] = subprocess.Popen(
                ["airflow", name],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.root,
            )
            log.close()
        self.watch = ProcessWatch(self._roots)
        self.watch.start()
        what = "Airflow's health endpoint to report every component healthy"
        wait_until(self._healthy, startup_timeout, what, self.log_tails)
        self.timings["healthy"] = time.monotonic() - began

    def _roots(self) -> list[int]:
        pids = [p.pid for p in self.processes.values() if p.poll() is None]
        if self.postgres is not None and self.postgres.postmaster_pid:
            pids.append(self.postgres.postmaster_pid)
        return pids

    def _healthy(self) -> bool:
        self._check_alive()
        try:
            response = self.http.get("/api/v2/monitor/health", timeout=5)
        except httpx.HTTPError:
            return False
        if response.status_code != 200:
            return False
        health = response.json()
        return all((health.get(c) or {}).get("status") == "healthy" for c in HEALTH_COMPONENTS)

    def stop(self, grace: float = 20) -> list[str]:
        """Stop everything; return a description of each process or port left behind (none, we hope).

        SIGINT to each service's process group, up to ``grace`` seconds for them to exit, then
        SIGKILL to the groups and to every process ever seen in their trees (LocalExecutor workers
        ignore SIGTERM; task processes have groups of their own); then PostgreSQL (``pg_ctl stop
        -m fast``, then SIGKILL).
        """
        if self._http is not None:
            self._http.close()
        watch = self.watch or ProcessWatch(self._roots)
        watch.stop()
        watch.record()
        for process in self.processes.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                watch.record()  # what the stuck service started meanwhile
        for process in self.processes.values():
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        database = set(self.postgres.processes()) if self.postgres is not None else set()
        kill_all(
            [p for p in watch.running() if p not in database] + session_processes(self.session_id, "airflow")
        )
        if self.postgres is not None:
            self.postgres.stop()
        left = [*watch.running(), *session_processes(self.session_id)]
        if self.postgres is not None:
            left += self.postgres.running()
        described = [f"process {p.pid} ({' '.join(_cmdline(p))})" for p in set(left)]
        ports = {"api": self.port, **({"postgres": self.postgres.port} if self.postgres else {})}
        ports["worker log server"] = int(self.env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"])
        ports["triggerer log server"] = int(self.env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"])
        described += [
            f"port {port} ({name}) still listening" for name, port in ports.items() if port_is_listening(port)
        ]
        return described


def _describe(import_errors: list[dict]) -> str:
    if not import_errors:
        return "no import errors"
    return "import errors:\n" + "\n".join(f"{e['filename']}:\n{e['stack_trace']}" for e in import_errors)


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ["?"]


def service_environment(
    root: Path, home: Path, port: int, database_url: str, passwords_file: Path, session_id: str
) -> dict[str, str]:
    """The environment of every Airflow process of the session (and of CLI calls against it)."""
    from cryptography.fernet import Fernet

    from airflow_flowspec.airflow.discovery import DISCOVERY_CALLABLE
    from airflow_flowspec.airflow.local_run import XCOM_BACKEND

    # Nothing of the test process's own Airflow (the unit tests' private home) leaks in.
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AIRFLOW", "FLOWSPEC", "PYTEST", "AWS_")) and name != "PYTHONPATH"
    }
    base_url = f"http://127.0.0.1:{port}"
    airflow = {
        "CORE": {
            "LOAD_EXAMPLES": "False",
            "DAGS_FOLDER": str(home / "dags"),
            "EXECUTOR": "LocalExecutor",
            # Each LocalExecutor worker is a ~140 MB process, all forked up front.
            "PARALLELISM": "4",
            "XCOM_BACKEND": XCOM_BACKEND,
            "MIGHT_CONTAIN_DAG_CALLABLE": DISCOVERY_CALLABLE,
            "EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
            "AUTH_MANAGER": AUTH_MANAGER,
            "SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{user}:{role}" for user, role in USERS.items()),
            "SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
            "FERNET_KEY": Fernet.generate_key().decode(),
            # An edited file makes its new version at the next parse, not up to 30 s later.
            "MIN_SERIALIZED_DAG_UPDATE_INTERVAL": "2",
        },
        "DATABASE": {"SQL_ALCHEMY_CONN": database_url},
        "FLOWSPEC": {"DATASTORE_ROOT": str(root / "datastore")},
        "API": {
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "BASE_URL": base_url,
            "WORKERS": "1",
            "SECRET_KEY": secrets.token_urlsafe(32),
        },
        "API_AUTH": {"JWT_SECRET": secrets.token_urlsafe(32)},
        # New and edited files are seen within seconds (defaults: 300 s and 30 s).
        "DAG_PROCESSOR": {"REFRESH_INTERVAL": "2", "MIN_FILE_PROCESS_INTERVAL": "2"},
        "SCHEDULER": {"SCHEDULER_HEARTBEAT_SEC": "2", "JOB_HEARTBEAT_SEC": "2"},
        "TRIGGERER": {"JOB_HEARTBEAT_SEC": "2"},
        # Airflow binds its log servers to every interface (no setting for it): free ports at least.
        "LOGGING": {"WORKER_LOG_SERVER_PORT": str(free_port()), "TRIGGER_LOG_SERVER_PORT": str(free_port())},
    }
    env = {
        **inherited,
        "AIRFLOW_HOME": str(home),
        "FLOWSPEC_HOME": str(root / "flowspec-home"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{inherited.get('PATH', '')}",
        "PYTHONPATH": PYTHONPATH,
        "PYTHONUNBUFFERED": "1",
        "NO_COLOR": "1",
        SESSION_VARIABLE: f"{session_id}:airflow",
    }
    for section, options in airflow.items():
        env.update({f"AIRFLOW__{section}__{option}": value for option, value in options.items()})
    return env


def start_airflow(dag_files: Iterable[Path] = (), startup_timeout: float = 180) -> AirflowServices:
    """Start PostgreSQL (or SQLite, with a warning) and Airflow's services; return them running.

    ``dag_files`` are copied into the dags folder before the start. ``FLOWSPEC_INTEGRATION_DB=sqlite``
    chooses SQLite on purpose. On any failure everything started so far is stopped again.
    """
    session_id = uuid.uuid4().hex
    root = Path(tempfile.mkdtemp(prefix="flowspec-integration-"))
    home = root / "airflow"
    dags_folder = home / "dags"
    dags_folder.mkdir(parents=True)
    (root / "datastore").mkdir()
    for path in dag_files:
        shutil.copy(path, dags_folder / Path(path).name)
    passwords = {user: secrets.token_urlsafe(12) for user in USERS}
    passwords_file = root / "passwords.json"
    passwords_file.write_text(json.dumps(passwords))

    postgres = None
    began = time.monotonic()
    bin_dir = find_postgres_bin()
    drivers_missing = [name for name in ("psycopg2", "asyncpg") if importlib.util.find_spec(name) is None]
    if os.environ.get("FLOWSPEC_INTEGRATION_DB") == "sqlite":
        reason = "FLOWSPEC_INTEGRATION_DB=sqlite"
    elif drivers_missing:
        missing = " and ".join(drivers_missing)
        reason = f"{missing} not installed (both are in the test extra: pip install -e '.[test]')"
    elif bin_dir is None:
        reason = f"PostgreSQL's initdb, pg_ctl and postgres were not found on PATH nor in {POSTGRES_BIN_DIRS}"
    else:
        reason = ""
    if reason:
        message = f"Integration tests use SQLite as Airflow's metadata database, not PostgreSQL: {reason}."
        warnings.warn(message, IntegrationSetupWarning, stacklevel=2)
        print(message, file=sys.stderr)
        database_url = f"sqlite:///{home / 'airflow.db'}"
    else:
        postgres = Postgres(bin_dir, session_id)
        database_url = postgres.url

    port = free_port()
    services = AirflowServices(
        root=root,
        home=home,
        dags_folder=dags_folder,
        datastore_root=root / "datastore",
        port=port,
        env=service_environment(root, home, port, database_url, passwords_file, session_id),
        passwords=passwords,
        session_id=session_id,
        database="postgresql" if postgres else "sqlite",
        postgres=postgres,
    )
    try:
        if postgres is not None:
            postgres.start()
            services.timings["postgres up"] = time.monotonic() - began
        services.start(startup_timeout)
    except BaseException:
        left = services.stop()
        if left:
            print(f"Left behind after a failed start: {left}", file=sys.stderr)
        print(f"Kept {root} (service logs in {services.logs_dir}) after a failed start", file=sys.stderr)
        raise
    return services
