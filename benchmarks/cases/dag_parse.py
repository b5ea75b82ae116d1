"""DagBag parse of a 60-step flow file vs a hand-written 60-task BatchOperator DAG; import cost."""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import Context, Measurement, median, private_airflow_env, run_python

MS = 1000.0

# The shape, 60 steps: a static branch (2 arms x 8), a foreach whose body is a chain of 10 mapped
# steps, another static branch (2 x 5), then a linear tail of 17.
BRANCH_A = [f"a{i}" for i in range(1, 9)]
BRANCH_B = [f"b{i}" for i in range(1, 9)]
BODY = [f"body{i}" for i in range(1, 11)]
BRANCH_C = [f"c{i}" for i in range(1, 6)]
BRANCH_D = [f"d{i}" for i in range(1, 6)]
TAIL = [f"l{i}" for i in range(1, 18)]
FLOW_NAME = "ParseSixtyFlow"


def _edges() -> tuple[list[str], dict[str, list[str]], dict[str, str]]:
    """Steps in order, each step's successors, and each step's kind (linear/split/foreach/join)."""
    edges: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}

    def chain(names: list[str], last_to: str) -> None:
        for here, there in zip(names, names[1:] + [last_to], strict=True):
            edges[here] = [there]
            kinds.setdefault(here, "linear")

    edges["start"], kinds["start"] = [BRANCH_A[0], BRANCH_B[0]], "split"
    chain(BRANCH_A, "join_ab")
    chain(BRANCH_B, "join_ab")
    edges["join_ab"], kinds["join_ab"] = ["each"], "join"
    edges["each"], kinds["each"] = [BODY[0]], "foreach"
    chain(BODY, "join_each")
    edges["join_each"], kinds["join_each"] = ["fan_out"], "join"
    edges["fan_out"], kinds["fan_out"] = [BRANCH_C[0], BRANCH_D[0]], "split"
    chain(BRANCH_C, "join_cd")
    chain(BRANCH_D, "join_cd")
    edges["join_cd"], kinds["join_cd"] = [TAIL[0]], "join"
    chain(TAIL, "end")
    edges["end"], kinds["end"] = [], "end"
    order = ["start", *BRANCH_A, *BRANCH_B, "join_ab", "each", *BODY, "join_each", "fan_out"]
    order += [*BRANCH_C, *BRANCH_D, "join_cd", *TAIL, "end"]
    assert len(order) == 60 and set(order) == set(edges), (len(order), set(order) ^ set(edges))
    return order, edges, kinds


def flow_source() -> str:
    order, edges, kinds = _edges()
    lines = ["from airflow_flowspec import FlowSpec, step", "", "", f"class {FLOW_NAME}(FlowSpec):"]
    for name in order:
        kind = kinds[name]
        signature = "self, inputs" if kind.startswith("join") else "self"
        lines += ["    @step", f"    def {name}({signature}):"]
        if kind.startswith("join"):
            lines.append("        self.value = sum(i.value for i in inputs)")
        elif name == "start":
            lines.append("        self.value = 0")
        elif kind == "foreach":
            lines.append("        self.items = list(range(4))")
        elif name in BODY:
            lines.append("        self.value = self.input + 1")
        else:
            lines.append("        self.value += 1")
        targets = ", ".join(f"self.{t}" for t in edges[name])
        if kind == "foreach":
            lines.append(f'        self.next({targets}, foreach="items")')
        elif targets:
            lines.append(f"        self.next({targets})")
        lines.append("")
    lines += ["", 'if __name__ == "__main__":', f"    {FLOW_NAME}()", ""]
    return "\n".join(lines)


def dag_source() -> str:
    """What our translator builds, written by hand with AWS Batch operators: the same edges, the
    same trigger form (the "Run tags" field every flow's DAG has; Airflow checks each param's schema
    for every task whenever it serializes a DAG, so a param costs the same in either file)."""
    order, edges, _ = _edges()
    in_foreach = set(BODY)
    lines = [
        "from datetime import datetime, timezone",
        "",
        "from airflow.providers.amazon.aws.operators.batch import BatchOperator",
        "from airflow.sdk import DAG, Param",
        "",
        "",
        "def record_failed_run(context):",
        "    pass",
        "",
        "",
        "with DAG(",
        '    dag_id="ParseSixtyDag",',
        "    schedule=None,",
        "    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),",
        "    catchup=False,",
        '    params={"flowspec_tags": Param([], type="array", title="Run tags", description="Your tags")},',
        '    tags=["flowspec"],',
        "    max_active_runs=16,",
        "    on_failure_callback=record_failed_run,",
        "):",
    ]
    common = 'job_definition="flow-job", job_queue="default-queue"'
    for name in order:
        if name in in_foreach:
            lines.append(
                f'    {name} = BatchOperator.partial(task_id="{name}", job_name="{name}", {common}, '
                f'trigger_rule="all_success").expand(container_overrides=each.output)'
            )
        else:
            lines.append(
                f'    {name} = BatchOperator(task_id="{name}", job_name="{name}", {common}, '
                f'container_overrides={{"command": ["step", "{name}"]}}, trigger_rule="all_success")'
            )
    for name in order:
        for child in edges[name]:
            lines.append(f"    {name} >> {child}")
    return "\n".join(lines) + "\n"


def write_files(workdir: Path) -> tuple[Path, Path]:
    ours = workdir / "parse_ours"
    base = workdir / "parse_batch"
    for folder in (ours, base):
        folder.mkdir(parents=True, exist_ok=True)
    (ours / "parse_sixty_flow.py").write_text(flow_source())
    (base / "parse_sixty_dag.py").write_text(dag_source())
    return ours / "parse_sixty_flow.py", base / "parse_sixty_dag.py"


def airflow_env(workdir: Path) -> dict[str, str]:
    return private_airflow_env(workdir / "parse")


def bytecode_env() -> dict[str, str]:
    """Children cache bytecode (as an installed package does) in a private tree, not in the repo.

    This machine sets PYTHONDONTWRITEBYTECODE=1, and the package is an editable install without
    .pyc files: every fresh process would compile our modules from source while Airflow's come from
    site-packages' .pyc, which no real deployment does.
    """
    return {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(PYCACHE)}


PYCACHE = Path(tempfile.gettempdir()) / "flowspec-bench-pycache"
HEAVY = ("boto3", "botocore", "cloudpickle")

# Both files in one process, imports warm (each parsed once), then N parses of each, alternating so
# that the machine's load (other sessions) hits both alike. Each DagBag re-executes the file (the
# importer deletes the module from sys.modules first), which the changing DAG identity confirms.
WARM = """
import gc, json, sys, time
import airflow
from airflow.dag_processing.dagbag import DagBag
folders, n = {"ours": sys.argv[1], "base": sys.argv[2]}, int(sys.argv[3])

def parse(folder):
    bag = DagBag(dag_folder=folder)
    assert not bag.import_errors, bag.import_errors
    (dag,) = bag.dags.values()
    assert len(dag.tasks) == 60, len(dag.tasks)
    return dag

previous = {mode: parse(folder) for mode, folder in folders.items()}
gc.collect()
gc.freeze()  # as the DAG processor does: a full collection must not land in one sample only
times = {mode: [] for mode in folders}
for _ in range(n):
    for mode, folder in folders.items():
        gc.collect()
        start = time.perf_counter()
        dag = parse(folder)
        times[mode].append(time.perf_counter() - start)
        assert dag is not previous[mode]
        previous[mode] = dag
print(json.dumps(times))
"""

# What the DAG processor does per file: the manager (all of Airflow imported, which includes our
# package's top level through provider discovery; gc frozen) pre-imports the airflow.* modules the
# file names, then forks a child that parses and serializes the file. One parent for both files,
# children alternating.
FORKED = """
import gc, json, os, sys, time
import airflow
import structlog
from airflow.dag_processing import processor
from airflow.dag_processing.dagbag import DagBag
from airflow.serialization.serialized_objects import DagSerialization
paths, n = {"ours": sys.argv[1], "base": sys.argv[2]}, int(sys.argv[3])
for path in paths.values():
    processor._pre_import_airflow_modules(path, structlog.get_logger())
gc.collect()
gc.freeze()

def child(path):
    start = time.perf_counter()
    bag = DagBag(dag_folder=path)
    parsed = time.perf_counter()
    serialized = [DagSerialization.to_dict(dag) for dag in bag.dags.values()]
    done = time.perf_counter()
    return {
        "parse": parsed - start,
        "serialize": done - parsed,
        "tasks": sum(len(d.tasks) for d in bag.dags.values()),
        "errors": list(bag.import_errors.values()),
        "size": len(json.dumps(serialized, default=str)),
    }

runs = {mode: [] for mode in paths}
for _ in range(n):
    for mode, path in paths.items():
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            os.write(write, json.dumps(child(path)).encode())
            os._exit(0)
        os.close(write)
        data = b""
        while chunk := os.read(read, 1 << 16):
            data += chunk
        os.close(read)
        os.waitpid(pid, 0)
        runs[mode].append(json.loads(data))
print(json.dumps(runs))
"""

# The worker re-parses the file for every task (task_runner.parse: safe_mode off, parsing context
# set); the task process has Airflow imported, but not what the DAG file itself imports.
WORKER = """
import json, os, sys, time
from pathlib import Path
import airflow
from airflow.dag_processing.dagbag import BundleDagBag
from airflow.sdk.definitions._internal.dag_parsing_context import _airflow_parsing_context_manager
path, dag_id, task_id = sys.argv[1:4]
heavy_names = sys.argv[4].split(",")
before = sorted(m for m in heavy_names if m in sys.modules)
start = time.perf_counter()
with _airflow_parsing_context_manager(dag_id=dag_id, task_id=task_id):
    bag = BundleDagBag(dag_folder=path, safe_mode=False, load_op_links=False,
                       bundle_path=Path(path).parent, bundle_name="dags-folder")
elapsed = time.perf_counter() - start
assert not bag.import_errors, bag.import_errors
assert task_id in bag.dags[dag_id].task_dict
print(json.dumps({"time": elapsed, "heavy_before": before,
                  "heavy_after": sorted(m for m in heavy_names if m in sys.modules)}))
"""

# `import airflow` already imports our package (provider discovery loads airflow_flowspec.provider),
# so timing "import airflow.sdk" against "import airflow.sdk; import airflow_flowspec" shows
# nothing. What the package adds on top of airflow.sdk is measured by dropping it from sys.modules
# and importing it again: our modules execute again, their dependencies are the ones Airflow has.
IMPORT = """
import json, sys, time
heavy_names = sys.argv[1].split(",")
start = time.perf_counter()
import airflow.sdk
sdk = time.perf_counter() - start
already = "airflow_flowspec" in sys.modules
ours = [name for name in sys.modules if name == "airflow_flowspec" or name.startswith("airflow_flowspec.")]
for name in ours:
    del sys.modules[name]
start = time.perf_counter()
import airflow_flowspec
added = time.perf_counter() - start
heavy = sorted(m for m in heavy_names if m in sys.modules)
print(json.dumps({"sdk": sdk, "added": added, "already": already, "heavy": heavy,
                  "modules": len([n for n in sys.modules if n.startswith("airflow_flowspec")])}))
"""

# Without Airflow at all (a Batch container): the package alone.
STANDALONE = """
import json, sys, time
start = time.perf_counter()
import airflow_flowspec
elapsed = time.perf_counter() - start
print(json.dumps({"time": elapsed, "airflow": "airflow" in sys.modules,
                  "heavy": sorted(m for m in sys.argv[1].split(",") if m in sys.modules)}))
"""


def run(context: Context) -> list[Measurement]:
    flow_file, dag_file = write_files(context.workdir)
    env = {**airflow_env(context.workdir), **bytecode_env()}
    heavy = ",".join(HEAVY)
    n = 15
    # Warm-up: fills the bytecode cache for both files' imports (the first run compiles).
    run_python(FORKED, str(flow_file), str(dag_file), "1", env=env)

    warm = {"ours": [], "base": []}
    forked = {"ours": [], "base": []}
    worker = {"ours": [], "base": []}
    imports = []
    for _ in range(context.repeat):
        times = run_python(WARM, str(flow_file.parent), str(dag_file.parent), str(n), env=env)
        runs = run_python(FORKED, str(flow_file), str(dag_file), str(n), env=env)
        for mode in ("ours", "base"):
            warm[mode].append(median(times[mode]))
            for r in runs[mode]:
                assert r["tasks"] == 60 and not r["errors"], r
            forked[mode].append(runs[mode])
        for mode, file, dag_id in (("ours", flow_file, FLOW_NAME), ("base", dag_file, "ParseSixtyDag")):
            worker[mode].append(run_python(WORKER, str(file), dag_id, "body5", heavy, env=env))
        imports.append(run_python(IMPORT, heavy, env=env))
    # The same flow file with every step a StepBatchOperator ([flowspec] execution = batch).
    batch_env = {
        **env,
        "AIRFLOW__FLOWSPEC__EXECUTION": "batch",
        "AIRFLOW__FLOWSPEC__BATCH_JOB_QUEUE": "default-queue",
        "AIRFLOW__FLOWSPEC__BATCH_IMAGE": "my-registry/flow:1",
    }
    run_python(FORKED, str(flow_file), str(dag_file), "1", env=batch_env)
    batch_forked = {"ours": [], "base": []}
    batch_worker = {"ours": [], "base": []}
    for _ in range(context.repeat):
        runs = run_python(FORKED, str(flow_file), str(dag_file), str(n), env=batch_env)
        for mode in ("ours", "base"):
            assert all(r["tasks"] == 60 and not r["errors"] for r in runs[mode]), runs[mode][:1]
            batch_forked[mode].append(runs[mode])
        for mode, file, dag_id in (("ours", flow_file, FLOW_NAME), ("base", dag_file, "ParseSixtyDag")):
            batch_worker[mode].append(run_python(WORKER, str(file), dag_id, "body5", heavy, env=batch_env))
    standalone = [run_python(STANDALONE, heavy, env=env) for _ in range(context.repeat)]
    no_pyc = [
        run_python(IMPORT, heavy, env={**env, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": ""})
        for _ in range(context.repeat)
    ]

    def fork_median(mode: str, key: str) -> float:
        return median([median([r[key] for r in runs]) for runs in forked[mode]])

    def fork_total(mode: str) -> float:
        return median([median([r["parse"] + r["serialize"] for r in runs]) for runs in forked[mode]])

    heavy_worker = sorted({m for w in worker["ours"] for m in w["heavy_after"]})
    heavy_import = sorted({m for i in imports for m in i["heavy"]})
    heavy_base = sorted({m for w in worker["base"] for m in w["heavy_after"]})
    loaded = sorted(set(heavy_worker) | set(heavy_import))
    case = "6 DAG parse (60 steps)"
    ours_parse, base_parse = fork_median("ours", "parse"), fork_median("base", "parse")
    ours_ser, base_ser = fork_median("ours", "serialize"), fork_median("base", "serialize")
    forked_note = (
        f"parse alone {ours_parse * MS:.1f} ms vs {base_parse * MS:.1f} ms ({ours_parse / base_parse:.2f}x), "
        f"serialize {ours_ser * MS:.1f} ms vs {base_ser * MS:.1f} ms. The parent pre-imports the airflow.* "
        "modules the file names (Airflow's parsing_pre_import_modules): that covers BatchOperator, and "
        "airflow_flowspec's top level is there too (provider discovery imports it), but its parse-time "
        "modules (graph, lint, translator, operators, runtime.task_spec) are imported again in every child"
    )
    worker_note = (
        "task_runner.parse: BundleDagBag(safe_mode=False) under the parsing context (dag_id, task_id=body5), "
        "the file's own imports cold; the translator builds all 60 tasks either way (so does the "
        f"hand-written file, which imports {', '.join(heavy_base) or 'nothing heavy'})"
    )
    sdk_time = median([i["sdk"] for i in imports])
    already = all(i["already"] for i in imports)
    import_note = (
        f"import airflow.sdk itself takes {sdk_time:.2f} s and already imports airflow_flowspec (provider "
        f"discovery loads airflow_flowspec.provider): {already}, so 'airflow.sdk + airflow_flowspec' minus "
        "'airflow.sdk' is 0; measured instead: drop our modules from sys.modules and import again. "
        f"Without .pyc files (this machine sets PYTHONDONTWRITEBYTECODE=1; editable install): "
        f"{median([i['added'] for i in no_pyc]) * MS:.1f} ms; alone, without Airflow: "
        f"{median([s['time'] for s in standalone]) * MS:.1f} ms (Airflow imported: "
        f"{any(s['airflow'] for s in standalone)})"
    )
    heavy_note = (
        f"after import airflow_flowspec (on top of airflow.sdk): {heavy_import or 'none'}; after a DagBag "
        f"parse of the flow file in a fresh process: {heavy_worker or 'none'} (the BatchOperator file: "
        f"{', '.join(heavy_base) or 'none'})"
    )
    baseline = "hand-written BatchOperator DAG"

    def batch_fork_total(mode: str) -> float:
        return median([median([r["parse"] + r["serialize"] for r in runs]) for runs in batch_forked[mode]])

    heavy_batch = sorted({m for w in batch_worker["ours"] for m in w["heavy_after"]})
    batch_rows = [
        Measurement(
            case,
            "execution=batch: DAG processor parse + serialize",
            batch_fork_total("ours"),
            batch_fork_total("base"),
            "s",
            baseline,
            max_ratio=1.2,
            note="every step a StepBatchOperator (a BatchOperator subclass; job settings resolved from "
            "@batch/@resources and [flowspec] at parse, no AWS call)",
        ),
        Measurement(
            case,
            "execution=batch: worker re-parse for one task",
            median([w["time"] for w in batch_worker["ours"]]),
            median([w["time"] for w in batch_worker["base"]]),
            "s",
            baseline,
            max_ratio=1.2,
            note=f"heavy after the parse: {', '.join(heavy_batch) or 'none'} (the BatchOperator file: "
            f"{', '.join(sorted({m for w in batch_worker['base'] for m in w['heavy_after']})) or 'none'})",
        ),
    ]
    return batch_rows + [
        Measurement(
            case,
            "DagBag parse, imports warm",
            median(warm["ours"]),
            median(warm["base"]),
            "s",
            baseline,
            max_ratio=1.2,
            note=f"median of {n} parses of each file in each of {context.repeat} processes, alternating; "
            "every parse re-executes the file (new module, new DAG object)",
        ),
        Measurement(
            case,
            "DAG processor: forked child parses + serializes",
            fork_total("ours"),
            fork_total("base"),
            "s",
            baseline,
            max_ratio=1.2,
            note=forked_note,
        ),
        Measurement(
            case,
            "worker re-parse for one task (file's imports cold)",
            median([w["time"] for w in worker["ours"]]),
            median([w["time"] for w in worker["base"]]),
            "s",
            baseline,
            max_ratio=1.2,
            note=worker_note,
        ),
        Measurement(
            case,
            "import airflow_flowspec on top of airflow.sdk",
            median([i["added"] for i in imports]),
            0.030,
            "s",
            "30 ms budget",
            max_ratio=1.0,
            note=import_note,
        ),
        Measurement(
            case,
            "boto3/botocore/cloudpickle loaded by import + parse",
            float(len(loaded)),
            1.0,
            "modules",
            "any is a failure",
            max_ratio=0.0,
            note=heavy_note,
        ),
    ]
