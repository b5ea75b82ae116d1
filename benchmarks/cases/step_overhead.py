"""Per-step overhead, (T(22 linear steps) - T(2 steps)) / 20: vs TaskFlow under dag.test(), vs Metaflow."""

from __future__ import annotations

from cases.vs_metaflow_blob import (
    FLOWS,
    alternate,
    first_run_note,
    flowspec_home,
    metaflow_copy,
    run_metaflow,
    run_ours,
    warm_up,
)
from common import Context, Measurement, median, run_python

SHORT, LONG = 2, 22

# One measurement per fresh process: set up Airflow on the benchmark's private home (its DB is
# migrated once, by the warm-up run), build and sync the DAG, run a tiny DAG of the same kind once
# (the first dag.test in a process builds the in-process execution API: seconds of FastAPI/Cadwyn
# routes), then time dag.test() of the DAG measured, and nothing else.
CHILD = """
import json, logging, os, sys, time
from datetime import datetime, timezone
kind, steps, home, flows = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
from pathlib import Path
from airflow_flowspec.airflow.local_run import (
    airflow_environment,
    ensure_database,
    quiet_airflow_warnings,
    sync_dag,
)
os.environ.update(airflow_environment(Path(home)))
if kind != "ours":  # TaskFlow: Airflow's default XCom backend; ours: as `python flow.py run` sets it
    os.environ["AIRFLOW__CORE__XCOM_BACKEND"] = "airflow.sdk.execution_time.xcom.BaseXCom"
quiet_airflow_warnings()
logging.getLogger("airflow").setLevel(logging.WARNING)
ensure_database(Path(home))

def ours_dag(name, flow_name):
    from airflow_flowspec.airflow.registration import dag_for
    from airflow_flowspec.flow_loader import load_flow_class
    path = os.path.join(flows, name)
    return dag_for(load_flow_class(path, flow_name), path)

def taskflow_dag(n):
    from airflow.sdk import dag, task

    @dag(dag_id=f"taskflow_chain_{n}", schedule=None, catchup=False)
    def chain():
        @task
        def first():
            return {"step_0": 0}

        def make(k):
            @task(task_id=f"step_{k}")
            def step(state):
                return {**state, f"step_{k}": k}
            return step

        state = first()
        for k in range(1, n):
            state = make(k)(state)

    return chain()

if kind == "ours":
    warm = ours_dag("hello_flow.py", "HelloFlow")
    target = ours_dag(f"linear_{steps}_flow.py", f"Linear{steps}Flow")
else:
    warm, target = taskflow_dag(1), taskflow_dag(steps)
sync_dag(warm)
sync_dag(target)

def test(dag):
    now = datetime.now(timezone.utc)
    start = time.perf_counter()
    run = dag.test(logical_date=now, run_after=now)
    seconds = time.perf_counter() - start
    assert str(run.state) == "success", (dag.dag_id, run.state)
    assert len(run.get_task_instances()) == len(dag.tasks)
    return seconds

warm_up = test(warm)
print(json.dumps({"seconds": test(target), "warm_up": warm_up}))
"""


def _dag_test(context: Context, kind: str, steps: int, index: int) -> dict:
    env = {"AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(context.workdir / "datastores" / f"overhead-{index}")}
    home = flowspec_home(context) / "airflow"
    return run_python(CHILD, kind, str(steps), str(home), str(FLOWS), env=env)


def _per_step(short: list[float], long: list[float]) -> float:
    return (median(long) - median(short)) / (LONG - SHORT)


def run(context: Context) -> list[Measurement]:
    warm_up(context)  # migrates the private home's DB that the dag.test children share

    def dag_test(kind: str, steps: int):
        return lambda index: _dag_test(context, kind, steps, index)

    ours_short, ours_long, taskflow_short, taskflow_long = alternate(
        context,
        dag_test("ours", SHORT),
        dag_test("ours", LONG),
        dag_test("taskflow", SHORT),
        dag_test("taskflow", LONG),
    )
    ours_dag_test = _per_step([r["seconds"] for r in ours_short], [r["seconds"] for r in ours_long])
    taskflow_dag_test = _per_step(
        [r["seconds"] for r in taskflow_short], [r["seconds"] for r in taskflow_long]
    )

    flows = {steps: FLOWS / f"linear_{steps}_flow.py" for steps in (SHORT, LONG)}
    metaflow_flows = {steps: metaflow_copy(context, flow) for steps, flow in flows.items()}

    def cli(runner, steps: int, flow_files):
        def call(index: int) -> float:
            wall, _, output = runner(context, flow_files[steps], f"linear-{steps}-{index}")
            assert f"steps seen: {steps}" in output, output[-2000:]
            return wall

        return call

    cli_ours_short, cli_ours_long, cli_mf_short, cli_mf_long = alternate(
        context,
        cli(run_ours, SHORT, flows),
        cli(run_ours, LONG, flows),
        cli(run_metaflow, SHORT, metaflow_flows),
        cli(run_metaflow, LONG, metaflow_flows),
    )
    ours_cli = _per_step(cli_ours_short, cli_ours_long)
    metaflow_cli = _per_step(cli_mf_short, cli_mf_long)

    # The same, warm: our runs are children of the preloader (its start-up and first child untimed).
    from cases.hello_time import Preloaded

    preloaded = Preloaded(context)
    try:
        preloaded.start()
        warm_short, warm_long = alternate(
            context,
            cli(lambda _context, flow, tag: preloaded.run(flow, tag), SHORT, flows),
            cli(lambda _context, flow, tag: preloaded.run(flow, tag), LONG, flows),
        )
    finally:
        preloaded.stop()
    ours_warm = _per_step(warm_short, warm_long)

    def seconds(runs: list[dict]) -> str:
        return "/".join(f"{r['seconds']:.2f}" for r in runs)

    def walls(runs: list[float]) -> str:
        return "/".join(f"{w:.2f}" for w in runs)

    case = "7 per-step overhead"
    return [
        Measurement(
            case,
            "dag.test(): (T22 - T2) / 20",
            ours_dag_test,
            taskflow_dag_test,
            "s",
            "TaskFlow @task chain, default XCom",
            max_ratio=1.3,
            note=f"dag.test of 2/22 steps: ours {seconds(ours_short)} / {seconds(ours_long)} s, TaskFlow "
            f"{seconds(taskflow_short)} / {seconds(taskflow_long)} s (after one warm-up dag.test per "
            f"process: "
            f"ours {median([r['warm_up'] for r in ours_short + ours_long]):.2f} s, TaskFlow "
            f"{median([r['warm_up'] for r in taskflow_short + taskflow_long]):.2f} s)",
        ),
        Measurement(
            case,
            "python flow.py run wall, cold: (T22 - T2) / 20",
            ours_cli,
            metaflow_cli,
            "s",
            "Metaflow 2.19 local",
            max_ratio=0.3,
            note=f"wall of 2/22 steps: ours {walls(cli_ours_short)} / {walls(cli_ours_long)} s, Metaflow "
            f"{walls(cli_mf_short)} / {walls(cli_mf_long)} s; {first_run_note(context)}",
        ),
        Measurement(
            case,
            "python flow.py run wall, warm (preloader): (T22 - T2) / 20",
            ours_warm,
            metaflow_cli,
            "s",
            "Metaflow 2.19 local",
            max_ratio=0.3,
            note=f"wall of 2/22 steps, warm: ours {walls(warm_short)} / {walls(warm_long)} s; "
            "Metaflow as above",
        ),
    ]
