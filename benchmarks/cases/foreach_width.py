"""Foreaches 2,000 and 10,000 wide under dag.test(): per mapped task cost vs a 100-wide one."""

from __future__ import annotations

import shutil
from pathlib import Path

from common import BENCHMARKS, Context, Measurement, median, private_airflow_env, run_python

FLOW = BENCHMARKS / "flows" / "width_flow.py"
SMALL, NARROW, WIDE, WIDEST = 1, 100, 2000, 10000

# One run per fresh process with its own copy of a migrated SQLite DB, so that earlier runs' rows
# never slow a later one down. Timed: dag.test() only (not the DB setup or the DAG sync). To see
# where the time goes: Runner(context).run(500, profile="/tmp/w500.prof") profiles the main thread
# with cProfile; any other path gets a JSON of wall-clock stack samples of every thread.
CHILD = """
import importlib.util, json, os, sys, time
flow_file, width, profile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.environ["BENCH_WIDTH"] = str(width)
from airflow_flowspec.airflow.local_run import ensure_database, quiet_airflow_warnings, sync_dag
quiet_airflow_warnings()
import logging
from pathlib import Path
home = Path(os.environ["AIRFLOW_HOME"])
ensure_database(home)
if width == 0:  # only migrate the template database
    print(json.dumps({}))
    sys.exit(0)


class Sampler:
    # Wall-clock sampling of every thread: cProfile sees only the main thread, and Airflow's
    # in-process API server answers the task's requests on another one.

    def __init__(self, interval=0.005):
        import threading
        self.inclusive, self.leaf, self.samples = {}, {}, {}
        self.running = True
        self.me = None
        self.thread = threading.Thread(target=self.loop, args=(interval,), daemon=True)
        self.thread.start()

    def loop(self, interval):
        import threading
        self.me = threading.get_ident()
        while self.running:
            for ident, frame in sys._current_frames().items():
                if ident == self.me:
                    continue
                seen = set()
                leaf = True
                while frame is not None:
                    code = frame.f_code
                    key = f"{code.co_filename}:{code.co_firstlineno}({code.co_name})"
                    if leaf:
                        self.leaf[key] = self.leaf.get(key, 0) + 1
                        leaf = False
                    if key not in seen:
                        seen.add(key)
                        self.inclusive[key] = self.inclusive.get(key, 0) + 1
                    frame = frame.f_back
                self.samples[ident] = self.samples.get(ident, 0) + 1
            time.sleep(interval)

    def stop(self, path):
        self.running = False
        self.thread.join()
        with open(path, "w") as out:
            json.dump({"inclusive": self.inclusive, "leaf": self.leaf, "samples": self.samples}, out)


width_errors = []
from airflow_flowspec.operators import step_task
_check_width = step_task.StepTaskMixin._check_width

def recording_check_width(self, width):
    try:
        return _check_width(self, width)
    except Exception as error:  # what the user would read in the task log
        width_errors.append(f"{type(error).__name__}: {error}")
        raise

step_task.StepTaskMixin._check_width = recording_check_width

# What each mapped child of body moves: its requests to the execution API and the bytes of the
# answers (the XComs it pulls), and its datastore requests and bytes read.
from airflow.sdk.execution_time import supervisor
from airflow_flowspec import config as flowspec_config
from airflow_flowspec.datastore import open_datastore as open_store
store_counters = open_store(flowspec_config.datastore_root()).backend.counters
child_costs = {"children": 0, "api_requests": 0, "api_bytes": 0, "store_requests": 0, "store_bytes_read": 0}
in_child = [False]
_send, _run_in_process = supervisor.InProcessSupervisorComms.send, supervisor.run_task_in_process

def counting_send(self, msg):
    answer = _send(self, msg)
    if in_child[0]:
        child_costs["api_requests"] += 1
        child_costs["api_bytes"] += len(answer.model_dump_json()) if answer is not None else 0
    return answer

def counting_run(ti, task, client=None):
    if ti.task_id != "body" or ti.map_index < 0:
        return _run_in_process(ti=ti, task=task, client=client)
    in_child[0] = True
    before = store_counters.snapshot()
    try:
        return _run_in_process(ti=ti, task=task, client=client)
    finally:
        in_child[0] = False
        after = store_counters.snapshot()
        child_costs["children"] += 1
        child_costs["store_requests"] += after["requests"] - before["requests"]
        child_costs["store_bytes_read"] += after["bytes_read"] - before["bytes_read"]

supervisor.InProcessSupervisorComms.send = counting_send
supervisor.run_task_in_process = counting_run
spec = importlib.util.spec_from_file_location("width_flow_bench", flow_file)
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
from airflow_flowspec.airflow.registration import dag_for
dag = dag_for(module.WidthFlow, flow_file)
sync_dag(dag)
logging.getLogger("airflow").setLevel(logging.WARNING)
sampler = None
if profile.endswith(".prof"):
    import cProfile
    profiler = cProfile.Profile()
    profiler.enable()
elif profile:
    sampler = Sampler()
import gc
gc_time = [0.0, 0.0, 0.0]
gc_count = [0, 0, 0]
gc_started = [0.0]

def on_gc(phase, info):
    if phase == "start":
        gc_started[0] = time.perf_counter()
    else:
        gc_time[info["generation"]] += time.perf_counter() - gc_started[0]
        gc_count[info["generation"]] += 1

gc.callbacks.append(on_gc)
start, cpu_start, started_at = time.perf_counter(), time.process_time(), time.time()
dag_run = dag.test()
elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
gc.callbacks.remove(on_gc)
gc_objects = len(gc.get_objects())
if profile.endswith(".prof"):
    profiler.disable()
    profiler.dump_stats(profile)
elif sampler is not None:
    sampler.stop(profile)
states = {}
for ti in dag_run.get_task_instances():
    states[str(ti.state)] = states.get(str(ti.state), 0) + 1
total = None
from airflow_flowspec import config
from airflow_flowspec.datastore import open_datastore
store = open_datastore(config.datastore_root())
start_saved = store.latest_attempt_manifest("WidthFlow", dag_run.run_id, "start", "0") is not None
if str(dag_run.state) == "success":
    manifest = store.latest_attempt_manifest("WidthFlow", dag_run.run_id, "join", "0")
    total = store.artifacts.load(manifest.artifacts["total"])
# Per mapped task: its run time and the gap before it (the loop's own work between two tasks).
mapped = [ti for ti in dag_run.get_task_instances() if ti.task_id == "body" and ti.map_index >= 0]
body = sorted((ti for ti in mapped if ti.start_date), key=lambda t: t.start_date)
durations = [(t.end_date - t.start_date).total_seconds() for t in body]
gaps = [(b.start_date - a.end_date).total_seconds() for a, b in zip(body, body[1:])]
# Where the run's time goes: before the first mapped task (the split, the expansion), the mapped
# tasks' own runs, the loop's gaps between them, and after the last (the join, the end).
phases = {
    "before_body": body[0].start_date.timestamp() - started_at,
    "body_runs": sum(durations),
    "body_gaps": sum(gaps),
    "after_body": started_at + elapsed - body[-1].end_date.timestamp(),
} if body else {}
steps = {ti.task_id: (ti.end_date - ti.start_date).total_seconds() for ti in dag_run.get_task_instances()
         if ti.task_id != "body" and ti.start_date and ti.end_date}
import resource
per_child = {name: value / max(1, child_costs["children"]) for name, value in child_costs.items()}
print(json.dumps({"time": elapsed, "cpu": cpu, "steps": steps, "state": str(dag_run.state),
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "per_child": per_child, "phases": phases,
                  "states": states, "total": total, "durations": durations, "gaps": gaps,
                  "gc_time": gc_time, "gc_count": gc_count,
                  "gc_objects": gc_objects, "width_errors": width_errors, "start_saved": start_saved,
                  "body_started": len(body)}))
"""


def environment(root: Path, *, max_map_length: int | None) -> dict[str, str]:
    env = private_airflow_env(root)
    if max_map_length is not None:
        env["AIRFLOW__CORE__MAX_MAP_LENGTH"] = str(max_map_length)
    return env


class Runner:
    """Fresh Airflow homes made from one migrated template (migrating takes many seconds)."""

    def __init__(self, context: Context):
        self.workdir = context.workdir / "foreach-width"
        self.template = self.workdir / "template"
        (self.template / "airflow" / "dags").mkdir(parents=True, exist_ok=True)
        run_python(CHILD, str(FLOW), "0", "", env=environment(self.template, max_map_length=None))
        self.count = 0

    def run(self, width: int, *, max_map_length: int | None = 4096, profile: str = "") -> dict:
        self.count += 1
        root = self.workdir / f"run-{self.count}"
        shutil.copytree(self.template, root)
        try:
            result = run_python(
                CHILD,
                str(FLOW),
                str(width),
                profile,
                env=environment(root, max_map_length=max_map_length),
                timeout=7200,
            )
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return result


def per_task(runs: list[dict], base: list[dict], width: int, key: str = "time") -> float:
    """Marginal cost of one more mapped task: (T(width) - T(1)) / (width - 1), medians."""
    return (median([r[key] for r in runs]) - median([r[key] for r in base])) / (width - SMALL)


def decile(values: list[float], which: str) -> float:
    k = max(1, len(values) // 10)
    return median(values[:k] if which == "first" else values[-k:])


def shape(result: dict, width: int) -> str:
    """How one wide run went: its time, its tasks early and late, the loop's gaps, the join, GCs."""
    durations, gaps = result["durations"], result["gaps"]
    return (
        f"T({width}) {result['time']:.0f} s (1 run), a mapped task's own run "
        f"{decile(durations, 'first') * 1000:.0f} ms in the first tenth, "
        f"{decile(durations, 'last') * 1000:.0f} ms in the last; the dag.test loop's gap between two "
        f"tasks {decile(gaps, 'first') * 1000:.0f} -> {decile(gaps, 'last') * 1000:.0f} ms; the join took "
        f"{result['steps']['join']:.1f} s; full GCs {result['gc_time'][2]:.0f} s ({result['gc_count'][2]}); "
        f"peak RSS {result['peak_rss'] / 2**20:.0f} MB; "
        + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result["phases"].items())
    )


def bytes_per_child(result: dict) -> str:
    cost = result["per_child"]
    return (
        f"{cost['api_requests']:.1f} API requests answering {cost['api_bytes'] / 1024:.1f} KB, "
        f"{cost['store_requests']:.1f} datastore requests reading {cost['store_bytes_read'] / 1024:.1f} KB"
    )


def run(context: Context) -> list[Measurement]:
    runner = Runner(context)
    small, narrow = [], []
    # One 2000-wide run (4 to 6 minutes under dag.test() on 2 cores) and one 10000-wide run (about
    # 20 minutes), bracketed by the small runs so that a change in the machine's load (other
    # sessions) hits both sides alike. The 10000-wide run raises [core] max_map_length to its
    # width, as the error a wider foreach gets tells the user to.
    for _ in range(context.repeat):
        small.append(runner.run(SMALL))
        narrow.append(runner.run(NARROW))
    wide = [runner.run(WIDE)]
    widest = [runner.run(WIDEST, max_map_length=WIDEST)]
    for _ in range(context.repeat):
        small.append(runner.run(SMALL))
        narrow.append(runner.run(NARROW))
    too_wide = runner.run(1100, max_map_length=None)
    runs = (
        [(r, SMALL) for r in small] + [(r, NARROW) for r in narrow] + [(wide[0], WIDE), (widest[0], WIDEST)]
    )
    for result, width in runs:
        assert result["state"] == "success", result["states"]
        assert result["total"] == width * (width - 1), result["total"]
    case = "8 foreach width (dag.test)"
    narrow_durations = narrow[0]["durations"]
    t_small, t_narrow = median([r["time"] for r in small]), median([r["time"] for r in narrow])
    timing = (
        f"T(1) {t_small:.1f} s, T(100) {t_narrow:.1f} s ({len(small)} runs each); a mapped task's own run "
        f"(TI start to end) {median(narrow_durations) * 1000:.0f} ms at 100 ("
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in narrow[0]["phases"].items())
        + f"); {shape(wide[0], WIDE)}"
    )
    narrow_peak = median([r["peak_rss"] for r in narrow])
    return [
        Measurement(
            case,
            "wall time per mapped task: 2000 wide vs 100 wide",
            per_task(wide, small, WIDE),
            per_task(narrow, small, NARROW),
            "s",
            "per task at 100",
            max_ratio=1.2,
            note=timing,
        ),
        Measurement(
            case,
            "CPU time per mapped task: 2000 wide vs 100 wide",
            per_task(wide, small, WIDE, "cpu"),
            per_task(narrow, small, NARROW, "cpu"),
            "s",
            "per task at 100",
            max_ratio=1.2,
            note="process CPU time (all threads), which other sessions' load on the machine does not inflate",
        ),
        Measurement(
            case,
            "wall time per mapped task: 10000 wide vs 100 wide",
            per_task(widest, small, WIDEST),
            per_task(narrow, small, NARROW),
            "s",
            "per task at 100",
            max_ratio=1.2,
            note=shape(widest[0], WIDEST),
        ),
        Measurement(
            case,
            "CPU time per mapped task: 10000 wide vs 100 wide",
            per_task(widest, small, WIDEST, "cpu"),
            per_task(narrow, small, NARROW, "cpu"),
            "s",
            "per task at 100",
            max_ratio=1.2,
        ),
        Measurement(
            case,
            "bytes a mapped child pulls (XCom answers + datastore reads): 10000 wide vs 100 wide",
            round(
                (widest[0]["per_child"]["api_bytes"] + widest[0]["per_child"]["store_bytes_read"]) / 1024, 1
            ),
            round(
                (narrow[0]["per_child"]["api_bytes"] + narrow[0]["per_child"]["store_bytes_read"]) / 1024, 1
            ),
            "KB",
            "per child at 100",
            note=f"per child at 100: {bytes_per_child(narrow[0])}; at 2000: {bytes_per_child(wide[0])}; at "
            f"10000: {bytes_per_child(widest[0])}",
        ),
        Measurement(
            case,
            "peak RSS of the dag.test() process: 10000 wide vs 100 wide",
            float(widest[0]["peak_rss"]),
            float(narrow_peak),
            "B",
            "100 wide",
            note=f"peak RSS: 1 wide {median([r['peak_rss'] for r in small]) / 2**20:.0f} MB, 100 wide "
            f"{narrow_peak / 2**20:.0f} MB, 2000 wide {wide[0]['peak_rss'] / 2**20:.0f} MB, 10000 wide "
            f"{widest[0]['peak_rss'] / 2**20:.0f} MB",
        ),
        Measurement(
            case,
            "1100-wide foreach, default max_map_length 1024: mapped tasks started",
            float(too_wide["body_started"]),
            1100.0,
            "tasks",
            "foreach items",
            max_ratio=0.0,
            note=f"run {too_wide['state']}, start's artifacts saved: {too_wide['start_saved']}; the start "
            f"task fails with: {' | '.join(too_wide['width_errors']) or 'NO ForeachTooWideError raised'}",
        ),
    ]
