"""``python flow.py run`` of a 3-step hello flow: ours vs Metaflow, with where our time goes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cases.vs_metaflow_blob import (
    FLOWS,
    alternate,
    first_run_note,
    flowspec_home,
    metaflow_copy,
    ours_env,
    run_metaflow,
    run_ours,
    warm_up,
)
from common import Context, Measurement, median, run_python

HELLO = FLOWS / "hello_flow.py"

# Our `run_locally`, phase by phase, in a fresh process (same environment as `python flow.py run`).
PHASES = """
import gc, json, sys, time
gc.disable()  # as run_locally does while Airflow is imported
phases = {}
def mark(name, start):
    now = time.perf_counter()
    phases[name] = now - start
    return now
t = time.perf_counter()
import airflow_flowspec
t = mark("import airflow_flowspec", t)
from airflow_flowspec.graph import graph_of
from airflow_flowspec.lint import lint_flow
from airflow_flowspec.flow_loader import load_flow_class
flow_class = load_flow_class(sys.argv[1], sys.argv[2])
lint_flow(graph_of(flow_class))
t = mark("flow file + graph + lint", t)
from airflow_flowspec.airflow import local_run
home = local_run.prepare_environment()
local_run.quiet_airflow_warnings()
import airflow.sdk
t = mark("import airflow.sdk (config, settings, ORM)", t)
from airflow_flowspec.airflow.registration import dag_for
dag = dag_for(flow_class, sys.argv[1])
t = mark("build DAG", t)
local_run.ensure_database(home)
t = mark("DB check", t)
local_run.sync_dag(dag)
t = mark("DAG sync", t)
from airflow_flowspec.airflow import _internals
_internals.build_lean_execution_api()
_internals.initialize_metrics()
t = mark("execution API routes import (newest version only)", t)
gc.freeze()
gc.enable()
from airflow.sdk.execution_time.supervisor import InProcessTestSupervisor
client = InProcessTestSupervisor._api_client(dag)
t = mark("execution API: app", t)
client.get("health")
t = mark("execution API: first request (Cadwyn builds its routers)", t)
from datetime import datetime, timezone
for name in ("first", "second"):
    now = datetime.now(timezone.utc)
    run = dag.test(logical_date=now, run_after=now)
    assert str(run.state) == "success", run.state
    t = mark(f"dag.test ({name})", t)
print(json.dumps(phases))
"""


# Airflow alone, for reference: the same three steps as a hand-written TaskFlow DAG run with
# dag.test() in a fresh process, with Airflow's default XCom backend and none of our code.
PLAIN_AIRFLOW_DAG = """
from airflow.sdk import dag, task


@dag(dag_id="plain_hello", schedule=None)
def plain_hello():
    @task
    def start():
        print("HelloFlow is starting.")

    @task
    def hello():
        print("Hello, world!")

    @task
    def end():
        print("HelloFlow is all done.")

    start() >> hello() >> end()


the_dag = plain_hello()

if __name__ == "__main__":
    assert str(the_dag.test().state) == "success"
"""


def plain_airflow_wall(context: Context) -> float:
    """Median wall time of the plain TaskFlow DAG's ``python dag.py`` (after one untimed run)."""
    from airflow_flowspec.airflow.local_run import airflow_environment

    home = flowspec_home(context) / "airflow"  # migrated by our warm-up run
    dags = context.workdir / "plain-airflow-dags"
    dags.mkdir(parents=True, exist_ok=True)
    script = dags / "plain_hello.py"
    script.write_text(PLAIN_AIRFLOW_DAG)
    env = {**os.environ, **airflow_environment(home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags)}
    for name in ("AIRFLOW__CORE__XCOM_BACKEND", "AIRFLOW__CORE__MIGHT_CONTAIN_DAG_CALLABLE"):
        env.pop(name)

    def wall() -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, str(script)], check=True, capture_output=True, env=env, cwd=dags)
        return time.perf_counter() - start

    wall()
    return median([wall() for _ in range(3)])


def timeline(context: Context) -> dict[str, float]:
    """One diagnostic ``python flow.py run`` (ours), timestamping its output lines."""
    env = {**os.environ, **ours_env(context, "timeline")}
    cwd = tempfile.mkdtemp(prefix="cwd-", dir=context.workdir)
    marks: dict[str, float] = {}
    start = time.perf_counter()
    with subprocess.Popen(
        [sys.executable, str(HELLO), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=cwd,
    ) as process:
        for line in process.stdout:
            now = time.perf_counter() - start
            if "Workflow starting (run-id " in line:
                marks["run id printed"] = now
            elif "Task is starting." in line:
                marks.setdefault("first task starts", now)
            elif "Task finished successfully." in line:
                marks["last task finished"] = now
            elif line.rstrip().endswith(" Done!"):
                marks["run reported"] = now
    assert process.wait() == 0 and len(marks) == 4, marks
    marks["process exited"] = time.perf_counter() - start
    shutil.rmtree(cwd, ignore_errors=True)
    shutil.rmtree(context.workdir / "datastores" / "timeline", ignore_errors=True)
    return marks


def _wall(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start


def breakdown(context: Context) -> str:
    bare = median([_wall([sys.executable, "-c", "pass"]) for _ in range(3)])
    marks = timeline(context)
    phases = run_python(PHASES, str(HELLO), "HelloFlow", env=ours_env(context, "phases"))
    shutil.rmtree(context.workdir / "datastores" / "phases", ignore_errors=True)
    steps = 3
    plain = plain_airflow_wall(context)
    line = (
        f"Airflow alone (the same 3 steps as a hand-written TaskFlow DAG, `python dag.py` calling "
        f"dag.test(), default XCom, no airflow_flowspec): {plain:.2f} s. "
        f"CLI timeline (one run): 'Run id' printed at {marks['run id printed']:.2f} s (interpreter "
        f"{bare:.2f} s, imports, DB check, DAG sync), first task starts at "
        f"{marks['first task starts']:.2f} s "
        f"(dag.test set-up incl. the in-process execution API), last task done at "
        f"{marks['last task finished']:.2f} s, exit at {marks['process exited']:.2f} s "
        f"({marks['process exited'] - marks['run reported']:.2f} s of interpreter teardown after the "
        f"result line). Phases in a fresh process: "
        + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in phases.items())
        + f"; steady per task {phases['dag.test (second)'] / steps * 1000:.0f} ms"
    )
    return line


LINEAR_6 = FLOWS / "linear_6_flow.py"


class Preloaded:
    """Our runs through the preloader (``FLOWSPEC_PRELOAD=1``), in a preloader folder of this
    benchmark's own; the first run is cold and starts the preloader, which is stopped at the end."""

    def __init__(self, context: Context):
        self.context = context
        self.runtime = Path(tempfile.mkdtemp(prefix="bp-", dir="/tmp"))  # socket paths stay short
        self.env = {"FLOWSPEC_PRELOAD": "1", "XDG_RUNTIME_DIR": str(self.runtime)}

    def run(self, flow: Path, tag: str) -> tuple[float, int, str]:
        return run_ours(self.context, flow, tag, self.env)

    def start(self) -> None:
        self.run(HELLO, "preload-start")
        deadline = time.monotonic() + 120
        while " ready at " not in self._log():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the preloader did not start:\n{self._log()}")
            time.sleep(0.2)
        self.run(HELLO, "preload-first-warm")  # its first child pays for what forks share

    def _log(self) -> str:
        return "".join(path.read_text() for path in self.runtime.glob("*/*.log"))

    def served(self) -> int:
        return self._log().count(" serves ")

    def stop_preloaders(self) -> None:
        """Stop this benchmark's preloaders, if any, and wait until they are gone."""
        pattern = f"--socket {self.runtime}"
        subprocess.run(["pkill", "-f", "--", pattern], check=False)
        deadline = time.monotonic() + 30
        while subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True).returncode == 0:
            if time.monotonic() > deadline:
                subprocess.run(["pkill", "-9", "-f", "--", pattern], check=False)
            time.sleep(0.1)

    def stop(self) -> None:
        self.stop_preloaders()
        shutil.rmtree(self.runtime, ignore_errors=True)


def run(context: Context) -> list[Measurement]:
    measurements = _cold(context)
    measurements += _warm(context)
    return measurements


def _warm(context: Context) -> list[Measurement]:
    preloaded = Preloaded(context)
    metaflow_copies = {flow: metaflow_copy(context, flow) for flow in (HELLO, LINEAR_6)}
    try:
        preloaded.start()
        rows = []
        for flow, label, expected in (
            (HELLO, "hello flow (3 steps)", "HelloFlow is all done."),
            (LINEAR_6, "6-step linear flow", "steps seen: 6"),
        ):
            before = preloaded.served()

            def ours(index: int, flow=flow, expected=expected):
                result = preloaded.run(flow, f"warm-{flow.stem}-{index}")
                assert expected in result[2], result[2][-2000:]
                return result[0]

            metaflow = _metaflow_runner(context, metaflow_copies[flow], f"warm-{flow.stem}", expected)
            ours_walls, metaflow_walls = alternate(context, ours, metaflow)
            assert preloaded.served() - before == len(ours_walls), "a run was not served warm"
            rows.append(_vs_metaflow(f"{label}, warm (preloader)", ours_walls, metaflow_walls, 0.5))
        rows.append(_after_the_preloader_is_gone(context, preloaded, metaflow_copies[HELLO]))
        return rows
    finally:
        preloaded.stop()


def _metaflow_runner(context: Context, flow: Path, tag: str, expected: str) -> Callable[[int], float]:
    """Metaflow's run of its copy of a flow, checked for ``expected`` in its output: its wall time."""

    def metaflow(index: int) -> float:
        result = run_metaflow(context, flow, f"{tag}-{index}")
        assert expected in result[2], result[2][-2000:]
        return result[0]

    return metaflow


def _vs_metaflow(
    label: str, ours: list[float], metaflow: list[float], max_ratio: float, details: str = ""
) -> Measurement:
    """Case 10's row: our median wall time against Metaflow's, every wall time in the note."""

    def seconds(walls: list[float]) -> str:
        return "/".join(f"{wall:.2f}" for wall in walls)

    walls = f"ours {seconds(ours)} s, Metaflow {seconds(metaflow)} s"
    return Measurement(
        "10 hello flow vs Metaflow",
        f"{label}: wall time",
        median(ours),
        median(metaflow),
        "s",
        "Metaflow 2.19 local",
        max_ratio=max_ratio,
        note=f"{walls}; {details}" if details else walls,
    )


def _after_the_preloader_is_gone(context: Context, preloaded: Preloaded, metaflow_flow: Path) -> Measurement:
    """The issue's cold case: preloading on, but its preloader gone (idle, or stale). Such a run
    is cold and starts a new preloader as it exits; that one is stopped before anything else is
    timed, so its warm-up never overlaps a measurement."""
    expected = "HelloFlow is all done."

    def ours(index: int):
        preloaded.stop_preloaders()
        before = preloaded.served()
        result = preloaded.run(HELLO, f"after-gone-{index}")
        assert expected in result[2] and preloaded.served() == before, result[2][-2000:]
        preloaded.stop_preloaders()
        return result[0]

    ours_walls, metaflow_walls = alternate(
        context, ours, _metaflow_runner(context, metaflow_flow, "after-gone", expected)
    )
    label = "hello flow, cold: the first run after the preloader is gone"
    return _vs_metaflow(label, ours_walls, metaflow_walls, 1.5)


def _cold(context: Context) -> list[Measurement]:
    metaflow_flow = metaflow_copy(context, HELLO)
    warm_up(context)
    expected = "HelloFlow is all done."

    def ours(index: int):
        result = run_ours(context, HELLO, f"hello-{index}")
        assert expected in result[2], result[2][-2000:]
        return result[0]

    ours_walls, metaflow_walls = alternate(
        context, ours, _metaflow_runner(context, metaflow_flow, "hello", expected)
    )
    label = "python flow.py run (3 steps), cold (no preloader)"
    details = f"{first_run_note(context)}. " + breakdown(context)
    return [_vs_metaflow(label, ours_walls, metaflow_walls, 1.5, details)]
