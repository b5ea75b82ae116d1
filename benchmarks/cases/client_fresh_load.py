"""Client: one artifact (a dict of 10,000 items) loaded by a fresh ``python -c``, ours vs Metaflow's.

The whole process is timed: interpreter start, importing the client, finding the latest successful
run of a flow with a few runs (the newest failed) and unpickling its end step's ``table``. Both
datastores come from one real run of ``benchmarks/flows/client_flow.py`` each (see
``benchmarks/client_datastores.py``). Our process must not import Airflow; it says whether it did.
Metaflow's on-disk blob cache is a fresh folder per process (as on a first read).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

from cases.vs_metaflow_blob import alternate
from client_datastores import (
    FLOW,
    TABLE_ITEMS,
    build_metaflow,
    build_ours,
    failed_runs,
    latest_successful,
    metaflow_env,
    templates,
    user_env,
)
from common import Context, Measurement, median, run_python

RUNS = 5

_CHILD = (
    "import sys; from {package} import Flow; run = Flow({flow!r}).latest_successful_run; "
    "print(run.id, len(run.data.table), 'airflow' in sys.modules)"
)
OURS = _CHILD.format(package="airflow_flowspec", flow=FLOW)
METAFLOW = _CHILD.format(package="metaflow", flow=FLOW)

# The same process, phase by phase (for the note): sys.argv[1] is the package.
_PHASES = """
import json, sys, time
start = time.perf_counter()
Flow = getattr(__import__(sys.argv[1], fromlist=["Flow"]), "Flow")
t_import = time.perf_counter()
run = Flow(sys.argv[2]).latest_successful_run
t_run = time.perf_counter()
table = run.data.table
end = time.perf_counter()
print(json.dumps({"import + Flow attribute": t_import - start, "latest_successful_run": t_run - t_import,
                  ".data.table": end - t_run}))
"""


def _process(code: str, env: dict[str, str]) -> tuple[float, str]:
    """Wall time and output of ``python -c code`` (with only ``env`` added to this environment)."""
    environment = {**os.environ, **env}
    environment.pop("PYTHONPATH", None)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=120
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"python -c {code!r} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return wall, result.stdout.strip()


def _import_times(env: dict[str, str], package: str, top: int = 6) -> str:
    """The biggest cumulative imports under ``python -X importtime`` (first level below the package)."""
    environment = {**os.environ, **env}
    environment.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", OURS if package == "airflow_flowspec" else METAFLOW],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=True,
    )
    rows = []
    for line in result.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if match:
            rows.append((int(match.group(2)), len(match.group(3)), match.group(4)))
    total = sum(cumulative for cumulative, depth, _ in rows if depth == 1)
    biggest = sorted((row for row in rows if row[1] <= 3), reverse=True)[:top]
    return f"{total / 1000:.0f} ms of imports in all; biggest: " + ", ".join(
        f"{name} {cumulative / 1000:.1f} ms" for cumulative, _, name in biggest
    )


def run(context: Context) -> list[Measurement]:
    template = templates(context)
    base = context.workdir / "client-fresh-load"
    failed = failed_runs(RUNS)
    try:
        ours_root, metaflow_root = base / "ours", base / "metaflow"
        ours_ids = build_ours(template, ours_root, RUNS, failed)
        metaflow_ids = build_metaflow(template, metaflow_root, RUNS, failed)
        ours_env = {**user_env(), "AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(ours_root)}

        def mf_env(tag: str) -> dict[str, str]:
            return metaflow_env(metaflow_root, base / f"metaflow-client-cache-{tag}")

        ours_expected = f"{latest_successful(ours_ids, failed)} {TABLE_ITEMS} False"
        metaflow_expected = f"{latest_successful(metaflow_ids, failed)} {TABLE_ITEMS}"

        def ours(index: int) -> float:
            wall, output = _process(OURS, ours_env)
            # The last word says whether Airflow was imported.
            assert output == ours_expected, f"{output!r} != {ours_expected!r}"
            return wall

        def metaflow(index: int) -> float:
            wall, output = _process(METAFLOW, mf_env(str(index)))
            assert output.startswith(metaflow_expected + " "), (output, metaflow_expected)
            return wall

        ours(-1), metaflow(-1)  # untimed: both start from compiled bytecode and a warm page cache
        ours_walls, metaflow_walls = alternate(context, ours, metaflow)

        bare = median([_process("pass", {})[0] for _ in range(3)])
        ours_phases = run_python(_PHASES, "airflow_flowspec", FLOW, env=ours_env)
        metaflow_phases = run_python(_PHASES, "metaflow", FLOW, env=mf_env("phases"))
        imports = _import_times(ours_env, "airflow_flowspec"), _import_times(mf_env("importtime"), "metaflow")
    finally:
        shutil.rmtree(base, ignore_errors=True)

    def phases(values: dict[str, float]) -> str:
        return ", ".join(f"{name} {seconds * 1000:.1f} ms" for name, seconds in values.items())

    note = (
        f"ours {_runs(ours_walls)} ms, Metaflow {_runs(metaflow_walls)} ms; "
        f"`python -c pass` {bare * 1000:.0f} ms; "
        f"our process did not import Airflow. In-process phases (one run each): ours {phases(ours_phases)}; "
        f"Metaflow {phases(metaflow_phases)}. Imports (-X importtime): ours {imports[0]}; Metaflow "
        f"{imports[1]}. {RUNS} runs each side, the {len(failed)} newest failed"
    )
    return [
        Measurement(
            "12 client: fresh-process artifact load",
            f"python -c: Flow(f).latest_successful_run.data.table ({TABLE_ITEMS:,}-item dict): wall time",
            median(ours_walls),
            median(metaflow_walls),
            "s",
            "Metaflow 2.19 client, local",
            max_ratio=0.5,
            note=note,
        )
    ]


def _runs(values: list[float]) -> str:
    return "/".join(f"{v * 1000:.0f}" for v in values)
