"""Per-step overhead of a step on AWS Batch (the local AWS) vs the same step on the worker, and the
AWS API calls each Batch step makes."""

from __future__ import annotations

from cases.step_overhead import LONG, SHORT
from cases.vs_metaflow_blob import FLOWS, flowspec_home, warm_up
from common import Context, Measurement, median, run_python

#: Seconds a job of the local AWS waits in SUBMITTED, RUNNABLE and STARTING (its own start-up).
DWELL = 0.05

# One fresh process per measurement: a local AWS on 127.0.0.1 (its S3 holds the datastore in both
# modes, so only where the step runs differs), the benchmark's Airflow home, one warm-up run, then
# dag.test() of the linear flow measured. Requests are counted from the server's request log.
CHILD = """
import json, logging, os, sys, time
from datetime import datetime, timezone
from pathlib import Path
mode, steps, home, flows, dwell = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
from airflow_flowspec.airflow.local_run import (
    airflow_environment, ensure_database, quiet_airflow_warnings, sync_dag,
)
from airflow_flowspec.testing.local_aws import LocalAws

requests = {"batch": 0, "other": 0}

class Count(logging.Handler):
    def emit(self, record):
        line = record.getMessage()
        if '"POST /v1/' in line or '"GET /v1/' in line:
            requests["batch"] += 1
        elif '"POST / ' in line:
            requests["other"] += 1  # JSON-protocol APIs: CloudWatch Logs here

aws = LocalAws(dwell_seconds=dwell, max_vcpus=4).start()
try:
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.setLevel(logging.INFO)
    werkzeug.propagate = False
    werkzeug.addHandler(Count())
    os.environ.update(airflow_environment(Path(home)))
    os.environ.update(aws.environment)
    os.environ["AIRFLOW__FLOWSPEC__BATCH_POLL_SECONDS"] = "0.05"
    os.environ["FLOWSPEC_CONSOLE"] = "0"
    if mode == "batch":
        os.environ["AIRFLOW__FLOWSPEC__EXECUTION"] = "batch"
    quiet_airflow_warnings()
    logging.getLogger("airflow").setLevel(logging.WARNING)
    ensure_database(Path(home))
    from airflow_flowspec.airflow.registration import dag_for
    from airflow_flowspec.flow_loader import load_flow_class

    def dag(name, flow_name):
        path = os.path.join(flows, name)
        return dag_for(load_flow_class(path, flow_name), path)

    warm = dag("linear_2_flow.py", "Linear2Flow")
    target = dag(f"linear_{steps}_flow.py", f"Linear{steps}Flow")
    sync_dag(warm)
    sync_dag(target)

    def test(d):
        now = datetime.now(timezone.utc)
        start = time.perf_counter()
        run = d.test(logical_date=now, run_after=now)
        assert str(run.state) == "success", (d.dag_id, run.state)
        return time.perf_counter() - start

    test(warm)
    before = dict(requests)
    seconds = test(target)
    print(json.dumps({"seconds": seconds, "batch_calls": requests["batch"] - before["batch"],
                      "other_calls": requests["other"] - before["other"]}))
finally:
    aws.stop()
"""


def _run(context: Context, mode: str, steps: int) -> dict:
    home = flowspec_home(context) / "airflow"
    return run_python(CHILD, mode, str(steps), str(home), str(FLOWS), str(DWELL))


def run(context: Context) -> list[Measurement]:
    warm_up(context)  # migrates the private home's DB the children share
    runs: dict[tuple[str, int], list[dict]] = {}
    for _ in range(context.repeat):
        for mode in ("local", "batch"):
            for steps in (SHORT, LONG):
                runs.setdefault((mode, steps), []).append(_run(context, mode, steps))

    def per_step(mode: str, key: str = "seconds") -> float:
        long = median([r[key] for r in runs[(mode, LONG)]])
        short = median([r[key] for r in runs[(mode, SHORT)]])
        return (long - short) / (LONG - SHORT)

    local, batch = per_step("local"), per_step("batch")
    batch_calls = median([r["batch_calls"] / LONG for r in runs[("batch", LONG)]])
    log_calls = median([r["other_calls"] / LONG for r in runs[("batch", LONG)]])
    case = "13 Batch step (local AWS)"
    return [
        Measurement(
            case,
            "per-step time, a step on Batch vs on the worker",
            batch,
            local,
            "s",
            "the same step on the worker",
            note=f"(T({LONG} steps) - T({SHORT})) / {LONG - SHORT} under dag.test(), datastore on the local "
            f"AWS's S3 in both modes; a job waits {DWELL} s in each of SUBMITTED, RUNNABLE and STARTING "
            f"and starts a fresh Python (the emulator's start-up, not ours); polls every 0.05 s "
            "(the default: a second at first, backing off to 30 s)",
        ),
        Measurement(
            case,
            "Batch API calls per step",
            batch_calls,
            1.0,
            "calls",
            "per step",
            note=f"SubmitJob, DescribeJobs (one per poll), DescribeJobDefinitions once per process; "
            f"CloudWatch Logs calls per step: {log_calls:.1f}. At the default schedule a job is "
            "asked about every second at first, then less often (benchmarks/RESULTS.md, case 15)",
        ),
    ]
