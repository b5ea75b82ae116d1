"""Following a Batch job (``airflow_flowspec.aws_batch.watch``) on the local AWS, whose Batch really runs
each job: what a user sees while a step runs on Batch, when it fails, and when it cannot start."""

from __future__ import annotations

import secrets
import textwrap
import time

import pytest

from airflow_flowspec.aws_batch.client import BatchClient
from airflow_flowspec.aws_batch.watch import JobWatcher, runnable_hint
from airflow_flowspec.errors import BatchJobFailedError

BATCH_ORDER = ["SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED"]


@pytest.fixture
def aws(local_aws):
    """The session's local AWS (max 4 vCPUs, 0.2 s in each waiting status)."""
    return local_aws


def submit(aws, code: str, *, queue: str | None = None, **container) -> str:
    """Submit ``python -c code`` (dedented); its job id."""
    return aws.client("batch").submit_job(
        jobName="watch-test",
        jobQueue=queue or aws.job_queue,
        jobDefinition=aws.job_definition,
        containerOverrides={"command": ["python", "-c", textwrap.dedent(code)], **container},
    )["jobId"]


def watcher_for(aws, job_id: str, **options) -> tuple[JobWatcher, list[str]]:
    shown: list[str] = []
    client = BatchClient(aws.client("batch"), aws.client("logs"))
    return JobWatcher(client, job_id, shown.append, **options), shown


def follow(watcher: JobWatcher, timeout: float = 20.0) -> dict:
    """Poll every 0.05 s until the job ends, then drain: its last description."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = watcher.poll()
        if watcher.is_finished(job):
            watcher.drain()
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {watcher.job_id} did not end within {timeout}s")


def statuses(shown: list[str]) -> list[str]:
    return [line.split(" status: ", 1)[1].split()[0] for line in shown if " status: " in line]


def log_lines(shown: list[str], prefix: str) -> list[str]:
    return [line.removeprefix(prefix) for line in shown if " status: " not in line]


def wait_for_status(aws, job_id: str, status: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = aws.client("batch").describe_jobs(jobs=[job_id])["jobs"][0]
        if job["status"] == status:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {status}")


def test_a_succeeding_job_shows_each_status_once_in_order_and_every_line_once(aws):
    """Guards what a user reads while a step runs: each status Batch reports, once, in Batch's order,
    ending with SUCCEEDED; every line the job printed, once, in order, though it prints across many
    polls (CloudWatch is read from where the last poll stopped)."""
    job_id = submit(
        aws,
        """
        import time
        for number in range(12):
            print("line", number)
            time.sleep(0.03)
        print()
        print("done")
        """,
    )
    watcher, shown = watcher_for(aws, job_id)

    job = follow(watcher)

    seen = statuses(shown)
    assert job["status"] == "SUCCEEDED" and seen[-1] == "SUCCEEDED"
    # The first poll comes after the watcher's clients are made: on a loaded machine the job may
    # already be past RUNNABLE (each status lasts the emulator's dwell), never past RUNNING.
    assert seen[0] in ("SUBMITTED", "RUNNABLE", "STARTING") and {"STARTING", "RUNNING"} & set(seen)
    assert seen == sorted(set(seen), key=BATCH_ORDER.index), "a status repeated or out of order"
    printed = [f"line {number}" for number in range(12)] + ["", "done"]
    assert log_lines(shown, f"[{job_id}] ") == printed
    assert all(line.startswith(f"[{job_id}] ") for line in shown)
    assert list(watcher.tail) == printed
    assert shown[-1].endswith("Job status: SUCCEEDED (Essential container in task exited, exit code 0)")


def test_a_label_names_the_job_in_every_line(aws):
    """Guards the console with several jobs at once: every line says which step it is from, and the
    status lines still give the job id to look up in the AWS console."""
    # Long enough in RUNNING for a poll to see it on a loaded machine.
    job_id = submit(aws, "import time; print('hello'); time.sleep(0.5)")
    watcher, shown = watcher_for(aws, job_id, label="TrainFlow.train")

    follow(watcher)

    assert all(line.startswith("[TrainFlow.train] ") for line in shown)
    assert f"[TrainFlow.train] Job {job_id} status: RUNNING" in shown
    assert "[TrainFlow.train] hello" in shown


def test_a_failing_job_is_explained_with_its_exit_code_reason_and_last_lines(aws):
    """Guards the message a data scientist gets for a failed step: what failed, the job id, Batch's
    reason, the exit code, and the end of the step's output (the last 20 lines, indented)."""
    job_id = submit(
        aws,
        """
        import sys
        for number in range(25):
            print("progress", number)
        print("ValueError: the learning rate must be positive")
        sys.exit(3)
        """,
    )
    watcher, _ = watcher_for(aws, job_id)

    job = follow(watcher)
    message = watcher.failure_message(job, what="Step 'train' of flow TrainFlow")

    assert job["status"] == "FAILED"
    first, _, quoted = message.partition("\n")
    assert first.startswith(
        f"Step 'train' of flow TrainFlow failed on AWS Batch (job {job_id}, status FAILED)"
    )
    assert "Essential container in task exited" in first and "exit code 3" in first
    assert quoted.splitlines() == [f"    progress {n}" for n in range(6, 25)] + [
        "    ValueError: the learning rate must be positive"
    ]


def test_a_job_too_big_for_the_compute_environment_gets_one_hint_naming_both_sizes(aws):
    """Guards the RUNNABLE hint (Metaflow users wait for hours with no clue): a job asking for more
    vCPUs than the compute environment's maxvCpus gets exactly one line saying so, with both numbers
    and the environment's name, however many polls follow."""
    job_id = submit(aws, "print('never runs')", resourceRequirements=[{"type": "VCPU", "value": "8"}])
    watcher, shown = watcher_for(aws, job_id, runnable_hint_after=0.2)
    try:
        # Poll until the hint shows (a loaded machine may need many seconds for a few polls), then
        # five polls more: the hint must not repeat.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any("Still RUNNABLE" in line for line in shown):
            job = watcher.poll()
            time.sleep(0.05)
        for _ in range(5):
            job = watcher.poll()
        assert job["status"] == "RUNNABLE"
        hints = [line for line in shown if "Still RUNNABLE" in line]
        assert len(hints) == 1, shown
        assert "8 vCPUs" in hints[0] and "maxvCpus 4" in hints[0]
        assert f"'{aws.job_queue}'" in hints[0]  # the environment is named like the queue here
    finally:
        aws.client("batch").terminate_job(jobId=job_id, reason="Test over")
    assert wait_for_status(aws, job_id, "FAILED")["statusReason"] == "Test over"


@pytest.fixture
def spare_queue(aws):
    """A queue of its own on the session's compute environment, for tests that disable things: its
    ARN. Deleted afterwards."""
    batch = aws.client("batch")
    name = f"{aws.job_queue}-{secrets.token_hex(3)}"
    environment = batch.describe_compute_environments(computeEnvironments=[aws.compute_environment])
    arn = environment["computeEnvironments"][0]["computeEnvironmentArn"]
    queue = batch.create_job_queue(
        jobQueueName=name,
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": arn}],
    )
    yield queue["jobQueueArn"]
    batch.update_job_queue(jobQueue=name, state="DISABLED")
    batch.delete_job_queue(jobQueue=name)


def queue_name(arn: str) -> str:
    return arn.rsplit("/", 1)[1]


def test_a_job_in_a_disabled_queue_is_told_so(aws, spare_queue):
    """Guards the first thing to check: a queue disabled after the job was submitted keeps it
    RUNNABLE, and the hint names the queue and how to enable it."""
    batch = aws.client("batch")
    job_id = submit(aws, "print('waits')", queue=spare_queue)
    wait_for_status(aws, job_id, "RUNNABLE")
    batch.update_job_queue(jobQueue=spare_queue, state="DISABLED")
    try:
        watcher, shown = watcher_for(aws, job_id, runnable_hint_after=0.0)
        watcher.poll()
        time.sleep(0.05)
        watcher.poll()
        (hint,) = [line for line in shown if "Still RUNNABLE" in line]
        assert f"Job queue '{queue_name(spare_queue)}' is DISABLED" in hint and "--state ENABLED" in hint
    finally:
        batch.terminate_job(jobId=job_id, reason="Test over")


def test_hints_for_a_disabled_compute_environment_a_gpu_and_a_fitting_job(aws, spare_queue):
    """Guards the hint's reading of real queue and compute-environment descriptions: a GPU asked of
    CPU-only instance types, a job that fits (so it waits for capacity), a disabled environment."""
    batch = aws.client("batch")
    gpu_job = {
        "jobQueue": spare_queue,
        "container": {
            "resourceRequirements": [{"type": "VCPU", "value": "2"}, {"type": "GPU", "value": "1"}]
        },
    }
    fitting_job = {"jobQueue": spare_queue, "container": {"vcpus": 2, "memory": 1024}}

    gpu_hint = runnable_hint(BatchClient(batch), gpu_job)
    fitting_hint = runnable_hint(BatchClient(batch), fitting_job)
    batch.update_compute_environment(computeEnvironment=aws.compute_environment, state="DISABLED")
    try:
        disabled_hint = runnable_hint(BatchClient(batch), fitting_job)
    finally:
        batch.update_compute_environment(computeEnvironment=aws.compute_environment, state="ENABLED")

    assert "has no GPU instance types (optimal)" in gpu_hint and "1 GPU" in gpu_hint
    assert "waiting for capacity" in fitting_hint and "service-linked role" in fitting_hint
    assert "maxvCpus 4" in fitting_hint and "2 vCPUs, 1024 MiB" in fitting_hint
    assert f"No compute environment of job queue '{queue_name(spare_queue)}' can run jobs" in disabled_hint
    assert f"'{aws.compute_environment}' is DISABLED" in disabled_hint


def test_a_hint_never_raises():
    """Guards the step against its own diagnostics: when describing the queue fails, the hint is the
    generic paragraph and says what failed."""

    class Unreachable:
        def describe_job_queues(self, **_):
            raise OSError("network is unreachable")

    hint = runnable_hint(BatchClient(Unreachable()), {"jobQueue": "arn:aws:batch:us-east-1:1:job-queue/q"})

    assert "could not be described (OSError: network is unreachable)" in hint
    assert "waiting for capacity" in hint


class Flaky:
    """A client whose calls named in ``failing`` raise ``error`` the next ``times`` times."""

    def __init__(self, client, error: Exception, failing: tuple[str, ...], times: int):
        self.client, self.error, self.failing, self.times = client, error, failing, times

    def __getattr__(self, name):
        call = getattr(self.client, name)
        if name not in self.failing:
            return call

        def flaky(**kwargs):
            if self.times > 0:
                self.times -= 1
                raise self.error
            return call(**kwargs)

        return flaky


def throttling() -> Exception:
    from botocore.exceptions import ClientError

    return ClientError(
        {
            "Error": {"Code": "TooManyRequestsException", "Message": "Too Many Requests"},
            "ResponseMetadata": {"HTTPStatusCode": 429},
        },
        "DescribeJobs",
    )


def test_throttling_and_lost_connections_skip_a_poll_without_losing_lines(aws):
    """Guards long waits against AWS's bad moments: throttled DescribeJobs calls and broken log
    reads in the middle of a job show nothing and change nothing; the job is followed to its end with
    every line once."""
    from botocore.exceptions import EndpointConnectionError

    job_id = submit(aws, "import time\nfor n in range(8):\n    print('line', n)\n    time.sleep(0.05)")
    shown: list[str] = []
    batch = Flaky(aws.client("batch"), throttling(), ("describe_jobs",), times=0)
    logs = Flaky(
        aws.client("logs"), EndpointConnectionError(endpoint_url="http://logs"), ("get_log_events",), 0
    )
    watcher = JobWatcher(BatchClient(batch, logs), job_id, shown.append)
    first = watcher.poll()

    batch.times = 3
    assert [watcher.poll() for _ in range(3)] == [first] * 3  # the last description, nothing shown
    assert len(shown) == 1
    wait_for_status(aws, job_id, "RUNNING")
    logs.times = 5
    job = follow(watcher)

    assert job["status"] == "SUCCEEDED" and logs.times == 0
    assert log_lines(shown, f"[{job_id}] ") == [f"line {n}" for n in range(8)]


def test_ten_throttled_polls_in_a_row_raise(aws):
    """Guards against waiting blind forever: the tenth transient failure in a row is raised."""
    job_id = submit(aws, "print('hi')")
    batch = Flaky(aws.client("batch"), throttling(), ("describe_jobs",), times=10)
    watcher = JobWatcher(BatchClient(batch, aws.client("logs")), job_id, lambda line: None)

    for _ in range(9):
        assert watcher.poll() == {"jobId": job_id}
    with pytest.raises(Exception, match="TooManyRequestsException"):
        watcher.poll()
    follow(watcher)


def test_a_job_batch_does_not_know_is_a_clear_error(aws):
    """Guards a job id from another region or account: one error naming the job and what to check,
    not an IndexError."""
    watcher, _ = watcher_for(aws, "00000000-0000-0000-0000-000000000000")

    with pytest.raises(BatchJobFailedError, match="AWS Batch knows no job 00000000-.*region"):
        watcher.poll()


@pytest.fixture
def custom_log_definition(aws):
    """A job definition whose jobs write to a log group of their own (``@batch(log_driver="awslogs",
    log_options=["awslogs-group:..."])`` registers one like it): (its name, the group)."""
    suffix = secrets.token_hex(3)
    name, group = f"{aws.job_definition}-logs-{suffix}", f"/flowspec/test-{suffix}"
    aws.client("batch").register_job_definition(
        jobDefinitionName=name,
        type="container",
        containerProperties={
            "image": "python:3.12-slim",
            "command": ["python", "-V"],
            "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "512"}],
            "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": group}},
        },
    )
    return name, group


def test_a_job_logging_to_its_own_group_shows_its_lines_and_a_failure_quotes_them(aws, custom_log_definition):
    """Guards the log group a job's configuration names (it was always read from /aws/batch/job, so
    such a step showed nothing and failed with "Its log has no lines"): the lines appear as the job
    prints them, and the failure message quotes the last of them."""
    definition, group = custom_log_definition
    job_id = aws.client("batch").submit_job(
        jobName="custom-log-group",
        jobQueue=aws.job_queue,
        jobDefinition=definition,
        containerOverrides={
            "command": ["python", "-c", "import sys\nfor n in range(3):\n    print('epoch', n)\nsys.exit(4)"]
        },
    )["jobId"]
    watcher, shown = watcher_for(aws, job_id)

    job = follow(watcher)
    message = watcher.failure_message(job, what="Step 'train' of flow TrainFlow")

    assert job["container"]["logConfiguration"]["options"]["awslogs-group"] == group
    assert log_lines(shown, f"[{job_id}] ") == ["epoch 0", "epoch 1", "epoch 2"]
    assert message.endswith("The last 3 lines of its log:\n    epoch 0\n    epoch 1\n    epoch 2")
    assert "no lines" not in message
    streams = aws.client("logs").describe_log_streams(logGroupName=group)["logStreams"]
    assert [stream["logStreamName"] for stream in streams] == [job["container"]["logStreamName"]]


def test_a_job_with_another_log_driver_is_said_to_log_elsewhere(aws, custom_log_definition):
    """Guards a log driver that is not CloudWatch's: one line says where the log goes instead of
    the watcher reading a stream that never fills, and a failure says where to look."""
    definition, _ = custom_log_definition
    name = f"{definition}-syslog"
    aws.client("batch").register_job_definition(
        jobDefinitionName=name,
        type="container",
        containerProperties={
            "image": "python:3.12-slim",
            "command": ["python", "-V"],
            "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "512"}],
            "logConfiguration": {"logDriver": "syslog"},
        },
    )
    job_id = aws.client("batch").submit_job(
        jobName="syslog-driver",
        jobQueue=aws.job_queue,
        jobDefinition=name,
        containerOverrides={"command": ["python", "-c", "print('to syslog'); raise SystemExit(2)"]},
    )["jobId"]
    watcher, shown = watcher_for(aws, job_id)

    job = follow(watcher)

    told = [line for line in shown if "log driver" in line]
    assert told == [
        f"[{job_id}] The job's log goes to its log driver 'syslog', not to CloudWatch Logs: its lines "
        "will not be shown here."
    ]
    assert (
        "Its log went to its log driver 'syslog', not to CloudWatch Logs: look there."
        in watcher.failure_message(job, what="Step 'train' of flow TrainFlow")
    )
