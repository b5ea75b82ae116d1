"""The local AWS (``airflow_flowspec.testing.local_aws``): a Batch whose jobs really run, seen
through plain boto3, through the Amazon provider's BatchOperator, and from its command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from harness import REPO

TERMINAL = ("SUCCEEDED", "FAILED")


def submit(aws, code: str, **overrides) -> str:
    """Submit a job that runs ``python -c code`` on the emulator's queue; its id."""
    container = {"command": ["python", "-c", textwrap.dedent(code)], **overrides.pop("container", {})}
    response = aws.client("batch").submit_job(
        jobName="emulator-test",
        jobQueue=aws.job_queue,
        jobDefinition=aws.job_definition,
        containerOverrides=container,
        **overrides,
    )
    return response["jobId"]


def describe(aws, job_id: str) -> dict:
    return aws.client("batch").describe_jobs(jobs=[job_id])["jobs"][0]


def watch(aws, job_id: str, until=TERMINAL, timeout: float = 20.0) -> tuple[dict, list[str]]:
    """Poll the job until its status is in ``until``: its last description and every status seen."""
    batch = aws.client("batch")
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = batch.describe_jobs(jobs=[job_id])["jobs"][0]
        if not seen or seen[-1] != job["status"]:
            seen.append(job["status"])
        if job["status"] in until:
            return job, seen
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} still {seen[-1]} after {timeout}s (saw {seen})")


def log_lines(aws, job: dict) -> list[str]:
    events = aws.client("logs").get_log_events(
        logGroupName="/aws/batch/job", logStreamName=job["container"]["logStreamName"], startFromHead=True
    )["events"]
    timestamps = [event["timestamp"] for event in events]
    assert timestamps == sorted(timestamps), "log timestamps went backwards"
    return [event["message"] for event in events]


def wait_for_line(aws, job_id: str, prefix: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = describe(aws, job_id)
        if job["container"].get("logStreamName"):
            found = [line for line in log_lines(aws, job) if line.startswith(prefix)]
            if found:
                return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no line starting {prefix!r} in job {job_id}'s log")


def process_gone(pid: int) -> bool:
    """No such process, or only its zombie (it has exited; its parent has not reaped it yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


def wait_until_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_gone(pid):
            return True
        time.sleep(0.05)
    return False


SPAWNS_A_SLEEPING_GRANDCHILD = """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print("pids", __import__("os").getpid(), child.pid, flush=True)
    time.sleep(120)
"""


def test_a_job_that_exits_0_succeeds_with_its_output_in_cloudwatch_in_order(local_aws):
    """Guards the happy path a poller and a log reader rely on: every status in Batch's order, the
    job's environment and overrides reaching the process, vCPU/memory recorded, its lines in
    CloudWatch in the order printed."""
    job_id = submit(
        local_aws,
        """
        import os
        for number in range(5):
            print("line", number)
        print("GREETING", os.environ["GREETING"], "job", os.environ["AWS_BATCH_JOB_ID"])
        print("WHERE", os.path.basename(os.getcwd()), os.environ["HOME"] == os.getcwd())
        print("BATCH", os.environ["AWS_BATCH_CE_NAME"], os.environ["AWS_EXECUTION_ENV"])
        """,
        container={
            "environment": [{"name": "GREETING", "value": "hello"}],
            "resourceRequirements": [{"type": "VCPU", "value": "2"}, {"type": "MEMORY", "value": "512"}],
        },
    )
    job, seen = watch(local_aws, job_id)

    assert job["status"] == "SUCCEEDED"
    assert seen == ["SUBMITTED", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED"]
    assert job["container"]["exitCode"] == 0 and job["statusReason"]
    assert (job["container"]["vcpus"], job["container"]["memory"]) == (2, 512)
    assert log_lines(local_aws, job) == [f"line {n}" for n in range(5)] + [
        f"GREETING hello job {job_id}",
        f"WHERE {job_id} True",  # a working directory (and home) of its own, as a container's
        f"BATCH {local_aws.compute_environment} AWS_ECS_EC2",  # what Metaflow's @batch records
    ]
    polled = local_aws.describe_calls(job_id)
    assert polled >= len(seen) and local_aws.describe_calls() >= polled
    describe(local_aws, job_id)
    assert local_aws.describe_calls(job_id) == polled + 1
    # Describing a job again does not grow its environment (moto's own Job does).
    assert describe(local_aws, job_id)["container"]["environment"] == job["container"]["environment"]


def test_a_job_that_exits_3_fails_with_its_exit_code_and_a_reason(local_aws):
    """Guards the failure an operator reports: FAILED, ``container.exitCode`` 3, a status reason,
    and the output printed before the exit."""
    job_id = submit(local_aws, "import sys; print('about to fail'); sys.exit(3)")
    job, _ = watch(local_aws, job_id)

    assert job["status"] == "FAILED"
    assert job["container"]["exitCode"] == 3
    assert job["statusReason"] == "Essential container in task exited"
    assert log_lines(local_aws, job) == ["about to fail"]


def test_terminate_job_kills_the_whole_process_tree_and_fails_the_job(local_aws):
    """Guards kill: terminate_job on a running job ends it FAILED with the caller's reason within a
    few seconds, and leaves neither the job's process nor the grandchild it started."""
    job_id = submit(local_aws, SPAWNS_A_SLEEPING_GRANDCHILD)
    watch(local_aws, job_id, until=("RUNNING",))
    _, job_pid, grandchild_pid = wait_for_line(local_aws, job_id, "pids").split()

    started = time.monotonic()
    local_aws.client("batch").terminate_job(jobId=job_id, reason="Killed by the test")
    job, _ = watch(local_aws, job_id, timeout=5)

    assert time.monotonic() - started < 4
    assert job["status"] == "FAILED" and job["statusReason"] == "Killed by the test"
    assert job["container"]["exitCode"] == 128 + signal.SIGTERM
    assert wait_until_gone(int(job_pid)) and wait_until_gone(int(grandchild_pid))


def test_a_job_that_allocates_beyond_its_memory_fails(local_aws):
    """Guards the memory limit: the job's MEMORY requirement bounds what its process can allocate
    (a job under the limit, started the same way, succeeds)."""
    allocate = "data = bytearray({megabytes} << 20); print('allocated', len(data) >> 20)"
    limit = {"resourceRequirements": [{"type": "MEMORY", "value": "256"}]}
    over = submit(local_aws, allocate.format(megabytes=600), container=limit)
    under = submit(local_aws, allocate.format(megabytes=32), container=limit)

    over_job, _ = watch(local_aws, over)
    under_job, _ = watch(local_aws, under)

    assert over_job["status"] == "FAILED" and over_job["container"]["exitCode"] != 0
    assert any("MemoryError" in line for line in log_lines(local_aws, over_job))
    assert under_job["status"] == "SUCCEEDED" and log_lines(local_aws, under_job) == ["allocated 32"]


def test_a_job_no_compute_environment_can_fit_stays_runnable_until_terminated(local_aws, monkeypatch):
    """Guards the RUNNABLE case a user must be told about: more vCPUs than the compute environment's
    maxvCpus never start (nothing runs), and terminating such a job fails it."""
    refusals = threading.Semaphore(0)  # released each time the local AWS finds the job does not fit
    fits = local_aws.fits

    def counted_fits(job):
        fitted = fits(job)
        if not fitted:
            refusals.release()
        return fitted

    monkeypatch.setattr(local_aws, "fits", counted_fits)
    job_id = submit(
        local_aws,
        "print('should never run')",
        container={"resourceRequirements": [{"type": "VCPU", "value": str(local_aws.max_vcpus + 1)}]},
    )
    watch(local_aws, job_id, until=("RUNNABLE",))
    for _ in range(3):  # asked three times, refused three times: it waits, as on AWS
        assert refusals.acquire(timeout=10), "the local AWS never asked whether the job fits"
    assert describe(local_aws, job_id)["status"] == "RUNNABLE"

    local_aws.client("batch").terminate_job(jobId=job_id, reason="Nothing can run it")
    job, _ = watch(local_aws, job_id, timeout=5)
    assert job["status"] == "FAILED" and job["statusReason"] == "Nothing can run it"
    assert "exitCode" not in job["container"] and not job["container"].get("logStreamName")


def test_a_job_past_its_attempt_duration_is_killed_and_fails(local_aws):
    """Guards ``timeout.attemptDurationSeconds``: the job is stopped when it runs past it, FAILED
    with Batch's reason, its processes gone."""
    job_id = submit(local_aws, SPAWNS_A_SLEEPING_GRANDCHILD, timeout={"attemptDurationSeconds": 1})
    job, _ = watch(local_aws, job_id, timeout=10)

    assert job["status"] == "FAILED"
    assert job["statusReason"] == "Job attempt duration exceeded timeout"
    _, job_pid, grandchild_pid = next(
        line for line in log_lines(local_aws, job) if line.startswith("pids")
    ).split()
    assert wait_until_gone(int(job_pid)) and wait_until_gone(int(grandchild_pid))


@pytest.fixture
def fast_batch_polling(monkeypatch):
    """BatchClientHook waits 1-10 s between polls by default; tests poll every 0.05 s."""
    from airflow.providers.amazon.aws.hooks.batch_client import BatchClientHook

    monkeypatch.setattr(BatchClientHook, "delay", staticmethod(lambda delay=None: time.sleep(0.05)))
    monkeypatch.setattr(BatchClientHook, "exponential_delay", staticmethod(lambda tries: 0.05))


@pytest.mark.usefixtures("airflow_db", "fast_batch_polling")
def test_the_upstream_batch_operator_runs_a_job_to_success_and_fails_on_a_failing_one(local_aws_environment):
    """Guards what the Batch step operator will stand on: the Amazon provider's BatchOperator (sync
    mode, CloudWatch log fetching on) against the emulator under ``dag.test()``: a job that exits 0
    is a successful task, one that exits 3 a failed task."""
    from datetime import timedelta

    from airflow.providers.amazon.aws.operators.batch import BatchOperator
    from airflow.sdk import DAG

    from airflow_flowspec.airflow.local_run import sync_dag

    aws = local_aws_environment

    def batch_task(task_id: str, code: str) -> BatchOperator:
        return BatchOperator(
            task_id=task_id,
            job_name=task_id,
            job_queue=aws.job_queue,
            job_definition=aws.job_definition,
            container_overrides={"command": ["python", "-c", code]},
            aws_conn_id=None,
            region_name=aws.region,
            deferrable=False,
            awslogs_enabled=True,
            awslogs_fetch_interval=timedelta(seconds=0.1),
            retries=0,
        )

    with DAG(dag_id="local_aws_batch_operator", schedule=None, catchup=False) as dag:
        batch_task("succeeds", "print('step output')")
        batch_task("fails", "import sys; print('step failing'); sys.exit(3)")
    sync_dag(dag)
    dag_run = dag.test()

    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    assert states == {"succeeds": "success", "fails": "failed"}
    jobs = aws.client("batch").list_jobs(
        jobQueue=aws.job_queue, filters=[{"name": "JOB_NAME", "values": ["succeeds"]}]
    )
    assert [job["status"] for job in jobs["jobSummaryList"]] == ["SUCCEEDED"]


def test_the_command_line_prints_exports_and_stops_cleanly_on_sigterm(tmp_path):
    """Guards ``python -m airflow_flowspec.testing.local_aws``: it prints ``export`` lines a shell can
    source (endpoint, credentials, region, flowspec settings), serves Batch on that endpoint, and on
    SIGTERM exits 0 leaving no job process behind."""
    import boto3

    server = subprocess.Popen(
        [sys.executable, "-m", "airflow_flowspec.testing.local_aws", "--dwell", "0.05"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        exports = {}
        while "AIRFLOW__FLOWSPEC__BATCH_JOB_DEFINITION" not in exports:
            line = server.stdout.readline()
            assert line, f"the command ended early: {server.stderr.read()}"
            name, _, value = line.strip().removeprefix("export ").partition("=")
            exports[name] = value
        assert exports["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
        assert exports["AIRFLOW__FLOWSPEC__DATASTORE_ROOT"].startswith("s3://")
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} <= exports.keys()

        class Remote:  # the helpers above take anything with a client() and the resource names
            job_queue = exports["AIRFLOW__FLOWSPEC__BATCH_JOB_QUEUE"]
            job_definition = exports["AIRFLOW__FLOWSPEC__BATCH_JOB_DEFINITION"]

            @staticmethod
            def client(service):
                return boto3.session.Session().client(
                    service,
                    endpoint_url=exports["AWS_ENDPOINT_URL"],
                    region_name=exports["AWS_DEFAULT_REGION"],
                    aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
                    aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
                )

        job_id = submit(Remote, SPAWNS_A_SLEEPING_GRANDCHILD)
        _, job_pid, grandchild_pid = wait_for_line(Remote, job_id, "pids").split()

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0
        assert wait_until_gone(int(job_pid)) and wait_until_gone(int(grandchild_pid))
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_importing_the_local_aws_imports_no_moto():
    """Guards the lazy import: a module that only names ``LocalAws`` (or the package itself) does not
    pay for moto, nor need it installed."""
    code = "import sys, airflow_flowspec, airflow_flowspec.testing.local_aws; print('moto' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    assert result.stdout.strip() == "False", result.stderr
