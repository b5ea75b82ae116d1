"""A local Airflow with its UI, in one command: ``airflow-flowspec airflow up|down|status``.

``up`` starts the four services ``airflow standalone`` runs (scheduler with the LocalExecutor, DAG
processor, triggerer, API server), each as ``python -m airflow <service>`` in a process group of its
own, with its output in ``<home>/service-logs/<service>.log``, and records them in
``<home>/services.json``; ``down`` stops those groups (SIGINT, then SIGTERM, then SIGKILL) and every
process they started. Not ``airflow standalone`` itself: it binds the log servers to every interface
and its children outlive a SIGTERM to it.

Everything is configured in a generated ``<home>/airflow.cfg`` (so ``AIRFLOW_HOME=<home> airflow
...`` reaches the same Airflow), none of it in the environment: the caller's ``AIRFLOW__*``
variables are left out of the services' environment, and ``[flowspec]`` is written with the options
the caller's configuration resolves to, so the services store artifacts where ``python flow.py run``
and the client look. The file holds what services started one by one must agree on: a shared
``[api_auth] jwt_secret`` (without it each service signs tokens with a secret of its own and task
processes are refused with "Invalid auth token"), an ``[api] secret_key``
and a ``fernet_key`` (kept from one ``up`` to the next, or connections stored with the old key could
no longer be read), ``[core] execution_api_server_url`` and ``[api] base_url`` on the chosen port, DAGs
unpaused at creation, and a dags folder listed every few seconds.

Only 127.0.0.1 listens. The API server binds it (``[api] host``). The worker's and triggerer's log
servers are not started (``--skip-serve-logs``): Airflow 3.3.2's ``serve_logs`` binds every interface
and has no host setting, and on one machine it is not needed, since the API server reads a task's
log from the log folder the task wrote (``FileTaskHandler._read``: local files first; the log server
is asked only while a task runs, and its absence then adds one "Could not read served logs" line to
the log's source details, and a traceback to the API server's log, per read). The scheduler's
health server stays off (``[scheduler] enable_health_check``); the API server's health endpoint
tells whether every service is alive.

SQLite is the metadata database: nothing to install or start, and one user's local Airflow writes
little. LocalExecutor on SQLite is what ``airflow standalone`` runs.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import psutil

from airflow_flowspec import config
from airflow_flowspec.airflow.local_run import airflow_environment
from airflow_flowspec.errors import LocalAirflowError

HOST = "127.0.0.1"
#: Airflow's own default API port.
DEFAULT_PORT = 8080
SERVICES = ("scheduler", "dag-processor", "triggerer", "api-server")
#: Their command-line options: the log servers stay off (see the module's docstring).
SERVICE_OPTIONS = {"scheduler": ["--skip-serve-logs"], "triggerer": ["--skip-serve-logs"]}
#: What the health endpoint must report healthy before ``up`` returns.
HEALTH_COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
STATE_FILE = "services.json"
#: Set in every service's environment to the home it belongs to: ``down`` finds by it the
#: processes that left their service's tree (as long as they have not renamed themselves).
HOME_VARIABLE = "FLOWSPEC_AIRFLOW_SERVICES_HOME"
#: The simple auth manager's one user, and where it writes the password it generates.
ADMIN_USER = "admin"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"


def default_services_home(environ: Mapping[str, str] | None = None) -> Path:
    """Where ``up`` keeps its Airflow home, beside ``run``'s private one."""
    return config.default_home(environ) / "services"


@dataclass(frozen=True)
class ServiceProcess:
    """One started service: its pid (also its process group) and its start time, which tells it
    apart from a later process given the same pid."""

    name: str
    pid: int
    started_at: float

    def process(self) -> psutil.Process | None:
        """The process, if it still runs (and is this one, not a reuse of its pid)."""
        try:
            process = psutil.Process(self.pid)
            if abs(process.create_time() - self.started_at) > 0.05 or _is_zombie(process):
                return None
            return process
        except psutil.Error:
            return None


@dataclass(frozen=True)
class LocalAirflow:
    """A set of services ``up`` started, as its state file records them."""

    home: Path
    port: int
    dags_folder: Path
    services: tuple[ServiceProcess, ...]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def logs_dir(self) -> Path:
        return self.home / "service-logs"

    def running(self) -> list[psutil.Process]:
        return [process for service in self.services if (process := service.process()) is not None]

    def exited(self) -> list[str]:
        return [service.name for service in self.services if service.process() is None]

    def to_json(self) -> str:
        return json.dumps(
            {
                "port": self.port,
                "dags_folder": str(self.dags_folder),
                "services": [
                    {"name": s.name, "pid": s.pid, "started_at": s.started_at} for s in self.services
                ],
            },
            indent=2,
        )

    @classmethod
    def read(cls, home: Path) -> LocalAirflow | None:
        """The services recorded in ``home``, or None (no record, or one that cannot be read)."""
        try:
            recorded = json.loads((home / STATE_FILE).read_text())
            services = tuple(
                ServiceProcess(str(s["name"]), int(s["pid"]), float(s["started_at"]))
                for s in recorded["services"]
            )
            return cls(home, int(recorded["port"]), Path(recorded["dags_folder"]), services)
        except (OSError, ValueError, KeyError, TypeError):
            return None


def login(home: Path) -> tuple[str, str] | None:
    """The admin's user name and password, once the API server has generated it."""
    try:
        passwords = json.loads((home / PASSWORDS_FILE).read_text())
    except (OSError, ValueError):
        return None
    password = passwords.get(ADMIN_USER) if isinstance(passwords, dict) else None
    return (ADMIN_USER, password) if password else None


# -- configuration -----------------------------------------------------------------------------


def parallelism() -> int:
    """LocalExecutor workers: all forked at the scheduler's start, about 140 MB each."""
    return max(4, min(16, os.cpu_count() or 4))


def airflow_cfg(home: Path, port: int, dags_folder: Path) -> dict[str, dict[str, str]]:
    """The generated airflow.cfg, by section: ``run``'s Airflow settings (:func:`airflow_environment`)
    plus what services in separate processes on one port need. The secrets of an existing file in
    ``home`` are kept."""
    sections: dict[str, dict[str, str]] = {}
    for variable, value in airflow_environment(home).items():
        if variable.startswith("AIRFLOW__"):
            section, _, option = variable.removeprefix("AIRFLOW__").partition("__")
            sections.setdefault(section.lower(), {})[option.lower()] = value
    kept = _cfg_secrets(home / "airflow.cfg")
    base_url = f"http://{HOST}:{port}"
    settings = {
        "core": {
            "dags_folder": str(dags_folder),
            "executor": "LocalExecutor",
            "parallelism": str(parallelism()),
            "execution_api_server_url": f"{base_url}/execution/",
            # Backfills and REST-triggered runs of a paused DAG wait queued, silently.
            "dags_are_paused_at_creation": "False",
            "fernet_key": kept.get(("core", "fernet_key")) or _fernet_key(),
            "auth_manager": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "simple_auth_manager_users": f"{ADMIN_USER}:admin",
            "simple_auth_manager_passwords_file": str(home / PASSWORDS_FILE),
        },
        "logging": {"logging_level": "INFO"},
        "api": {
            "host": HOST,
            "port": str(port),
            "base_url": base_url,
            "workers": "1",
            "secret_key": kept.get(("api", "secret_key")) or _secret(),
        },
        "api_auth": {"jwt_secret": kept.get(("api_auth", "jwt_secret")) or _secret()},
        # A new flow file is listed within seconds (default 300 s), an edited one re-parsed (30 s).
        "dag_processor": {"refresh_interval": "5", "min_file_process_interval": "10"},
        "scheduler": {"enable_health_check": "False"},
        config.SECTION: flowspec_options(),
    }
    for section, options in settings.items():
        sections.setdefault(section, {}).update(options)
    return sections


def flowspec_options() -> dict[str, str]:
    """The ``[flowspec]`` options as this process resolves them (environment, the user's airflow.cfg),
    where they differ from the defaults; the datastore root always, as an absolute path or URL."""
    options = {
        option: value
        for option, default in config.DEFAULTS.items()
        if (value := config.get_option(option)) != default
    }
    root = config.datastore_root()
    options["datastore_root"] = root if "://" in root else str(Path(root).expanduser().resolve())
    return options


def _cfg_secrets(cfg: Path) -> dict[tuple[str, str], str]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(cfg)
    except configparser.Error:
        return {}
    wanted = (("core", "fernet_key"), ("api", "secret_key"), ("api_auth", "jwt_secret"))
    return {key: parser.get(*key) for key in wanted if parser.has_option(*key) and parser.get(*key)}


def _secret() -> str:
    """A signing key long enough for the HS512 tokens Airflow signs with it (64 bytes or more)."""
    return secrets.token_urlsafe(64)


def _fernet_key() -> str:
    from cryptography.fernet import Fernet  # Airflow's own dependency, as is the key's format

    return Fernet.generate_key().decode()


def write_airflow_cfg(home: Path, port: int, dags_folder: Path) -> Path:
    """Write :func:`airflow_cfg` to ``home/airflow.cfg``, readable by this user only (it holds secrets)."""
    cfg = home / "airflow.cfg"
    lines = ["# Written by `airflow-flowspec airflow up` at each start; edits are overwritten.\n"]
    for section, options in airflow_cfg(home, port, dags_folder).items():
        lines.append(f"\n[{section}]\n")
        lines += [f"{option} = {value}\n" for option, value in options.items()]
    temporary = cfg.with_suffix(".cfg.tmp")
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
        file.writelines(lines)
    os.replace(temporary, cfg)
    return cfg


def service_environment(home: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The services' environment: ``environ`` without its Airflow settings (the generated
    airflow.cfg holds them all), this Python's scripts first on PATH (Airflow starts ``airflow``
    from PATH), and the home's marker."""
    kept = {
        name: value
        for name, value in environ.items()
        if not name.startswith("AIRFLOW__") and name not in ("AIRFLOW_HOME", "AIRFLOW_CONFIG", HOME_VARIABLE)
    }
    return {
        **kept,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW_CONFIG": str(home / "airflow.cfg"),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), kept.get("PATH", os.defpath)]),
        "PYTHONUNBUFFERED": "1",
        HOME_VARIABLE: str(home),
    }


# -- up, down, status --------------------------------------------------------------------------


@contextlib.contextmanager
def home_lock(home: Path) -> Iterator[None]:
    """One ``up`` or ``down`` at a time per home."""
    import fcntl

    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def inspect(home: Path) -> LocalAirflow | None:
    """The services recorded in ``home`` if any of them runs; a record of none running is removed."""
    recorded = LocalAirflow.read(home)
    if recorded is None or not recorded.running():
        (home / STATE_FILE).unlink(missing_ok=True)
        return None
    return recorded


def up(
    home: Path,
    dags_folder: Path,
    port: int = DEFAULT_PORT,
    timeout: float = 180,
    say: Callable[[str], None] = print,
) -> tuple[LocalAirflow, bool]:
    """Start the services in ``home`` unless they already run; returns them, and whether they were
    started now. Returns once the health endpoint reports every service healthy; on a failure
    everything started is stopped again and the error names the service's log."""
    if not 0 < port < 65536:
        raise LocalAirflowError(f"--port {port} is not a port number: use one from 1 to 65535, e.g. 8080.")
    if not dags_folder.is_dir():
        raise LocalAirflowError(
            f"The dags folder {dags_folder} does not exist: give a folder of flow files with --dags."
        )
    with home_lock(home):
        current = inspect(home)
        if current is not None:
            exited = current.exited()
            if not exited:
                return current, False
            say(
                f"Of the Airflow services in {home}, {', '.join(exited)} had exited (see "
                f"{current.logs_dir}): stopping the others and starting all again."
            )
            _stop(current)
        if port_is_listening(port):
            raise LocalAirflowError(
                f"Port {port} on {HOST} is already in use by another program: choose a free one with "
                f"--port (e.g. --port {port + 1})."
            )
        return _start(home, dags_folder.resolve(), port, timeout, say), True


def _start(
    home: Path, dags_folder: Path, port: int, timeout: float, say: Callable[[str], None]
) -> LocalAirflow:
    write_airflow_cfg(home, port, dags_folder)
    environment = service_environment(home, os.environ)
    logs_dir = home / "service-logs"
    logs_dir.mkdir(exist_ok=True)
    _migrate(home, environment, logs_dir / "db-migrate.log", say)
    started: list[ServiceProcess] = []
    services = LocalAirflow(home, port, dags_folder, ())
    try:
        for name in SERVICES:
            with open(logs_dir / f"{name}.log", "w") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "airflow", name, *SERVICE_OPTIONS.get(name, [])],
                    env=environment,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    cwd=home,
                )
            started.append(ServiceProcess(name, process.pid, psutil.Process(process.pid).create_time()))
            services = LocalAirflow(home, port, dags_folder, tuple(started))
            (home / STATE_FILE).write_text(services.to_json())
        say(f"Started {', '.join(SERVICES)}; waiting for Airflow to answer on {services.url} ...")
        _wait_until_healthy(services, timeout)
    except BaseException:
        _stop(services)
        raise
    return services


def _migrate(home: Path, environment: Mapping[str, str], log_file: Path, say: Callable[[str], None]) -> None:
    """``airflow db migrate``, once per Airflow version of the home's database."""
    marker = home / f".db-migrated-{metadata.version('apache-airflow')}"
    if marker.exists() and (home / "airflow.db").exists():
        return
    say(f"Creating Airflow's database in {home} (once) ...")
    with open(log_file, "w") as log:
        migrated = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=home,
            check=False,
        )
    if migrated.returncode != 0:
        raise LocalAirflowError(
            f"airflow db migrate exited with {migrated.returncode}; its output is in {log_file}:\n"
            f"{tail(log_file, 20)}"
        )
    marker.touch()


def _wait_until_healthy(services: LocalAirflow, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        exited = services.exited()
        if exited:
            name = exited[0]
            log = services.logs_dir / f"{name}.log"
            raise LocalAirflowError(
                f"Airflow's {name} exited while starting; the end of its log ({log}):\n{tail(log, 30)}"
            )
        if _healthy(services.url):
            return
        if time.monotonic() > deadline:
            raise LocalAirflowError(
                f"Airflow did not report every service healthy on {services.url}/api/v2/monitor/health "
                f"within {timeout:.0f} s; the services' logs are in {services.logs_dir}."
            )
        time.sleep(0.5)


#: Straight to loopback, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _healthy(url: str) -> bool:
    try:
        with _DIRECT.open(f"{url}/api/v2/monitor/health", timeout=5) as response:
            health = json.load(response)
    except (OSError, ValueError):
        return False
    return all((health.get(part) or {}).get("status") == "healthy" for part in HEALTH_COMPONENTS)


def down(home: Path, grace: float = 15) -> LocalAirflow | None:
    """Stop the services recorded in ``home`` and every process they started; returns them, or None
    when none ran. A process that survives SIGKILL is an error naming it."""
    with home_lock(home):
        current = inspect(home)
        if current is None:
            return None
        left = _stop(current, grace)
        if left:
            described = ", ".join(f"{p.pid} ({' '.join(_cmdline(p))[:80]})" for p in left)
            raise LocalAirflowError(f"These processes of the Airflow in {home} did not stop: {described}.")
        return current


def _stop(services: LocalAirflow, grace: float = 15) -> list[psutil.Process]:
    """SIGINT to each service's process group, then to those still there the signals of
    :func:`_escalation`; then SIGKILL to every process seen in their trees (idle LocalExecutor
    workers ignore SIGTERM, task processes have groups of their own) or carrying the home's marker.
    Returns the processes still alive after that (none, normally)."""
    schedules = {
        process: _escalation(service.name, grace)
        for service in services.services
        if (process := service.process()) is not None
    }
    seen = set(schedules) | set(_descendants(schedules))
    _signal_groups(schedules, signal.SIGINT)
    began = time.monotonic()
    while True:
        running = [leader for leader in schedules if leader.is_running() and not _is_zombie(leader)]
        seen |= set(_descendants(running))
        if not running or not any(schedules[leader] for leader in running):
            break
        for leader in running:
            if schedules[leader] and time.monotonic() - began >= schedules[leader][0][0]:
                _signal_groups([leader], schedules[leader].pop(0)[1])
        psutil.wait_procs(running, timeout=0.2)
    remaining = [p for p in seen | set(_marked(services.home)) if p.is_running() and not _is_zombie(p)]
    left = kill_all(remaining)
    (services.home / STATE_FILE).unlink(missing_ok=True)
    return left


def _escalation(service: str, grace: float) -> list[tuple[float, int]]:
    """The signals a service still running gets, at seconds after the first SIGINT.

    The scheduler waits for running tasks to finish, up to ``grace``. The triggerer waits 10 s for
    its trigger runner after one signal and ends it at once after a second (its triggers, if any,
    are picked up again at the next start). The DAG processor and the API server keep nothing worth
    waiting for, yet the DAG processor can hang in its signal handler while a file is being parsed.
    """
    if service == "scheduler":
        return [(grace, signal.SIGTERM), (grace + 5, signal.SIGKILL)]
    if service == "triggerer":
        return [(2, signal.SIGINT), (5, signal.SIGTERM), (10, signal.SIGKILL)]
    return [(5, signal.SIGTERM), (10, signal.SIGKILL)]


def _signal_groups(leaders: Iterable[psutil.Process], signal_number: int) -> None:
    for leader in leaders:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(leader.pid, signal_number)


def _descendants(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    found = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            found += process.children(recursive=True)
    return found


def _marked(home: Path) -> list[psutil.Process]:
    """This user's processes whose environment names ``home`` as theirs."""
    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error, OSError):
            if process.environ().get(HOME_VARIABLE) == str(home):
                found.append(process)
    return found


def service_processes(services: LocalAirflow) -> list[psutil.Process]:
    """Every running process of the services' trees."""
    leaders = services.running()
    return [*leaders, *_descendants(leaders)]


# -- small process and socket helpers, shared with tests/integration ---------------------------


def port_is_listening(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file (or why it cannot be read)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"(cannot read {path}: {error})"
    return "\n".join(text.splitlines()[-lines:])


def kill_all(processes: Iterable[psutil.Process], timeout: float = 5) -> list[psutil.Process]:
    """SIGKILL ``processes``; return those still alive after ``timeout``."""
    processes = list(processes)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return [process for process in alive if not _is_zombie(process)]


def _is_zombie(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return ["?"]
