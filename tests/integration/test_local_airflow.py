"""``airflow-flowspec airflow up`` and ``down``, as a new user runs them: a folder with one flow, the
flow's DAG in Airflow's REST API, a run triggered there that succeeds with its task log readable,
nothing listening beyond loopback, and nothing left running after ``down``.

It starts its own Airflow (SQLite, through the command under test), not the session's
``airflow_services``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import httpx
import psutil

from airflow_flowspec.airflow.local_services import HOME_VARIABLE, LocalAirflow, port_is_listening

from .services import REPO, free_port, tail, wait_until

FLOW_FILE = REPO / "dags_examples" / "hyperparameter_search.py"
DAG_ID = "HyperparameterSearchFlow"
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def shell(*args: str, env: dict[str, str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "airflow_flowspec.shell", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def tree(services: LocalAirflow) -> list[psutil.Process]:
    leaders = services.running()
    found = list(leaders)
    for leader in leaders:
        try:
            found += leader.children(recursive=True)
        except psutil.Error:
            continue
    return found


def listening(processes: list[psutil.Process]) -> set[tuple[str, int, int]]:
    """(address, port, pid) of every listening TCP socket of ``processes``."""
    found = set()
    for process in processes:
        try:
            connections = process.net_connections(kind="tcp")
        except psutil.Error:
            continue
        found |= {
            (c.laddr.ip, c.laddr.port, process.pid) for c in connections if c.status == psutil.CONN_LISTEN
        }
    return found


def test_up_shows_the_flow_runs_it_on_loopback_and_down_leaves_nothing(tmp_path: Path):
    dags = tmp_path / "flows"
    dags.mkdir()
    shutil.copy(FLOW_FILE, dags / FLOW_FILE.name)
    home = (tmp_path / "services").resolve()
    port = free_port()
    # A user's environment, without the test session's own Airflow settings.
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AIRFLOW", "FLOWSPEC", "PYTEST"))
    }
    env["FLOWSPEC_HOME"] = str(tmp_path / "flowspec-home")
    up = shell("airflow", "up", "--home", str(home), "--port", str(port), env=env, cwd=dags)
    services = LocalAirflow.read(home)
    processes = tree(services) if services else []
    try:
        assert up.returncode == 0, f"{up.stdout}\n{up.stderr}\n" + "\n".join(
            f"--- {log}\n{tail(log)}" for log in sorted((home / "service-logs").glob("*.log"))
        )
        assert services is not None and services.dags_folder == dags.resolve()
        password = (home / "simple_auth_manager_passwords.json.generated").read_text()
        url = f"http://127.0.0.1:{port}"
        assert f"Airflow UI: {url}" in up.stdout
        login_line = next(line for line in up.stdout.splitlines() if line.startswith("Login:"))
        assert login_line.split()[1] == "admin" and login_line.split()[-1] in password

        again = shell("airflow", "up", "--home", str(home), "--port", str(port), env=env, cwd=dags)
        assert again.returncode == 0, again.stderr
        assert f"already running at {url}" in again.stdout
        assert LocalAirflow.read(home) == services  # the same processes, no second set

        with httpx.Client(base_url=url, timeout=30) as http:
            token = http.post(
                "/auth/token", json={"username": "admin", "password": login_line.split()[-1]}
            ).json()["access_token"]
            http.headers["Authorization"] = f"Bearer {token}"

            def dag() -> dict | None:
                response = http.get(f"/api/v2/dags/{DAG_ID}")
                return response.json() if response.status_code == 200 else None

            def diagnose() -> str:
                return "\n".join(f"--- {log}\n{tail(log)}" for log in sorted(services.logs_dir.glob("*.log")))

            # Unpaused at creation: the REST run below starts without a PATCH first.
            assert wait_until(dag, 60, f"{DAG_ID} to be listed", diagnose)["is_paused"] is False
            conf = {"learning_rates": [0.1, 0.2], "epochs": 20}
            run_id = http.post(
                f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf}
            ).json()["dag_run_id"]
            run_path = f"/api/v2/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}"

            def ended() -> str | None:
                state = http.get(run_path).json()["state"]
                return state if state in ("success", "failed") else None

            assert wait_until(ended, 90, f"run {run_id} to end", diagnose) == "success"
            log = http.get(f"{run_path}/taskInstances/start/logs/1", headers={"Accept": "application/json"})
            assert log.status_code == 200
            events = [entry.get("event", "") for entry in log.json()["content"]]
            assert "Trying learning rates [0.1, 0.2] for 20 epochs each" in events

        processes = tree(services)  # now with the task runs' workers
        sockets = listening(processes)
        assert port in {p for _, p, _ in sockets}, sockets
        assert {address for address, _, _ in sockets} <= LOOPBACK, sockets
    finally:
        down = shell("airflow", "down", "--home", str(home), env=env, cwd=dags, timeout=60)
    assert down.returncode == 0, down.stderr
    assert f"Stopped the Airflow at http://127.0.0.1:{port}" in down.stdout
    left = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [p.cmdline() for p in left]
    marked = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(HOME_VARIABLE) == str(home):
                marked.append(process)
        except (psutil.Error, OSError):
            continue
    assert not marked
    assert not port_is_listening(port)
    status = shell("airflow", "status", "--home", str(home), env=env, cwd=dags)
    assert status.returncode == 1 and "No Airflow is running" in status.stdout
