"""``python flow.py run --with batch`` of a 12-wide foreach on the local AWS: this checkout, the same
run with main's code (its fixed 30 s poll), and Metaflow 2.19's ``run --with batch`` of the same
flow file, with the DescribeJobs calls each makes per job.

All three go through one local AWS started here (16 vCPUs, so the twelve jobs fit at once), which
runs every job as a local process in a working directory of its own and counts the DescribeJobs
answers that described each job. "main" is ``git archive main`` unpacked in the work folder and put
first on ``PYTHONPATH`` of the ``run`` process (its jobs run this checkout's step runtime, which
the poll schedule does not touch). Metaflow's jobs run its own bootstrap (``pip install`` of boto3
and requests, already installed here, then its code package from S3), as in its containers. Our
runs are cold (no preloader).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from cases.vs_metaflow_blob import FLOWS, alternate, metaflow_copy, metaflow_env, ours_env, warm_up
from common import REPO, Context, Measurement, median, run_command

FLOW = FLOWS / "sleep_foreach_flow.py"
#: The foreach this case runs: twelve two-second jobs.
SHAPE = ["--width", "12", "--seconds", "2"]
#: Seconds a job of the local AWS waits in SUBMITTED, RUNNABLE and STARTING.
DWELL = 0.2
#: start, the twelve naps, join, end.
JOBS = 15


def _main_source(context: Context) -> Path:
    target = context.workdir / "main-source"
    if not target.exists():
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", "main", "airflow_flowspec"],
            check=True,
            capture_output=True,
        ).stdout
        target.mkdir(parents=True)
        with tempfile.TemporaryFile() as buffer:
            buffer.write(archive)
            buffer.seek(0)
            with tarfile.open(fileobj=buffer) as tar:
                tar.extractall(target, filter="data")
    return target


def run(context: Context) -> list[Measurement]:
    from airflow_flowspec.testing.local_aws import LocalAws

    warm_up(context)
    main_source = _main_source(context)
    metaflow_flow = metaflow_copy(context, FLOW)
    # A job's `python` (Metaflow's bootstrap runs it from bash) is this environment's.
    path = os.environ["PATH"]
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), path])
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    aws = LocalAws(dwell_seconds=DWELL, max_vcpus=16).start()
    calls: dict[str, list[float]] = {"ours": [], "main": [], "Metaflow": []}
    spans: dict[str, list[str]] = {"ours": [], "main": [], "Metaflow": []}
    try:

        def runner(which: str):
            def run_once(index: int) -> float:
                tag = f"batch-foreach-{which}-{index}"
                if which == "Metaflow":
                    argv = [sys.executable, str(metaflow_flow), "run", "--with", "batch", *SHAPE]
                    env = {
                        **metaflow_env(context, tag),
                        **aws.environment,
                        "METAFLOW_DEFAULT_DATASTORE": "s3",
                        "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{aws.bucket}/{tag}",
                        "METAFLOW_S3_ENDPOINT_URL": aws.endpoint_url,
                        "METAFLOW_DEFAULT_METADATA": "local",
                        "METAFLOW_BATCH_JOB_QUEUE": aws.job_queue,
                        "METAFLOW_BATCH_CONTAINER_IMAGE": "python:3.11",
                        "METAFLOW_ECS_S3_ACCESS_IAM_ROLE": "arn:aws:iam::123456789012:role/local",
                    }
                else:
                    argv = [sys.executable, str(FLOW), "run", "--with", "batch", *SHAPE]
                    env = {
                        **ours_env(context, tag),
                        **aws.environment,
                        "AIRFLOW__FLOWSPEC__DATASTORE_ROOT": f"s3://{aws.bucket}/{tag}",
                    }
                    if which == "main":
                        env["PYTHONPATH"] = os.pathsep.join(
                            [str(main_source), os.environ.get("PYTHONPATH", "")]
                        )
                before = aws.describe_calls()
                cwd = tempfile.mkdtemp(prefix="cwd-", dir=context.workdir)
                wall, _, output = run_command(argv, env=env, cwd=cwd)
                assert "12 naps within" in output, output[-3000:]
                calls[which].append((aws.describe_calls() - before) / JOBS)
                spans[which].append(output.split("12 naps within ", 1)[1].split()[0])
                return wall

            return run_once

        ours_walls, main_walls, metaflow_walls = alternate(
            context, runner("ours"), runner("main"), runner("Metaflow")
        )
    finally:
        aws.stop()
        os.environ["PATH"] = path

    def seconds(walls: list[float]) -> str:
        return "/".join(f"{wall:.1f}" for wall in walls)

    case = "15 Batch foreach (local AWS)"
    label = "12-wide foreach of 2 s jobs, `run --with batch`: wall time"
    spans_text = "; ".join(f"{which} {', '.join(values)} s" for which, values in spans.items())
    calls_text = ", ".join(f"{which} {median(values):.1f}" for which, values in calls.items())
    return [
        Measurement(
            case,
            label,
            median(ours_walls),
            median(main_walls),
            "s",
            "main: a fixed 30 s poll",
            max_ratio=0.5,
            note=f"ours {seconds(ours_walls)} s, main {seconds(main_walls)} s; the twelve naps ran within: "
            f"{spans_text}; DescribeJobs calls per job: {calls_text}; jobs wait {DWELL} s in each "
            "of SUBMITTED, RUNNABLE and STARTING",
        ),
        Measurement(
            case,
            label + " vs Metaflow",
            median(ours_walls),
            median(metaflow_walls),
            "s",
            "Metaflow 2.19 --with batch",
            max_ratio=1.1,
            note=f"Metaflow {seconds(metaflow_walls)} s; its jobs bootstrap (pip, code package) and run its "
            "task runtime: the step, not the poll, is most of the difference",
        ),
        Measurement(
            case,
            "DescribeJobs calls per job",
            median(calls["ours"]),
            median(calls["main"]),
            "calls",
            "main",
            note=f"counted by the local AWS; Metaflow {median(calls['Metaflow']):.1f}; each job lives a few "
            "seconds here",
        ),
    ]
