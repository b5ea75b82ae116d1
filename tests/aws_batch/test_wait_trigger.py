"""The deferrable wait for a Batch job (``airflow_flowspec.triggers.batch_job``) run as the triggerer
runs it (an asyncio task iterating ``run()``), against the local AWS with boto3's default
credentials (``aws_conn_id=None``): the events a step operator resumes with, and which ways of
stopping a wait stop the job."""

from __future__ import annotations

import asyncio
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from airflow_flowspec.aws_batch.polling import PollSchedule
from airflow_flowspec.triggers.batch_job import BatchJobWaitTrigger

#: What the triggerer passes to ``Task.cancel`` when a user acts on the task (Airflow 3.3).
USER_ACTION = "__airflow_user_action__"


@pytest.fixture
def aws(local_aws_environment):
    """The session's local AWS, with the AWS_* variables boto3's default chain reads."""
    return local_aws_environment


def submit(aws, code: str) -> str:
    return aws.client("batch").submit_job(
        jobName="trigger-test",
        jobQueue=aws.job_queue,
        jobDefinition=aws.job_definition,
        containerOverrides={"command": ["python", "-c", textwrap.dedent(code)]},
    )["jobId"]


def describe(aws, job_id: str) -> dict:
    return aws.client("batch").describe_jobs(jobs=[job_id])["jobs"][0]


def wait_for_status(aws, job_id: str, status: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = describe(aws, job_id)
        if job["status"] == status:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {status}")


def make_trigger(aws, job_id: str, *, deadline: str | None = None) -> BatchJobWaitTrigger:
    return BatchJobWaitTrigger(
        job_id,
        aws_conn_id=None,
        region_name=aws.region,
        poll_schedule=PollSchedule(0.05).to_json(),  # a ceiling under a second: every 0.05 s
        deadline=deadline,
        label="Flow.step",
    )


class RecordingLog:
    """Stands in for the trigger's logger: keeps each line as the triggerer would write it."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def _record(self, message: str, *args) -> None:
        self.lines.append(message % args if args else message)

    info = warning = error = debug = exception = _record


def recorded(trigger: BatchJobWaitTrigger) -> RecordingLog:
    trigger._log = RecordingLog()  # LoggingMixin's cached logger
    return trigger._log


async def first_event(trigger: BatchJobWaitTrigger) -> dict:
    events = trigger.run()
    try:
        return (await events.__anext__()).payload
    finally:
        await events.aclose()


def run_to_first_event(trigger: BatchJobWaitTrigger, timeout: float = 30.0) -> dict:
    return asyncio.run(asyncio.wait_for(first_event(trigger), timeout))


async def until_logged(log: RecordingLog, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in line for line in log.lines):
        assert time.monotonic() < deadline, f"never logged {text!r}: {log.lines}"
        await asyncio.sleep(0.02)


def process_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


SLEEPS_A_MINUTE = """
    import os, time
    print("pid", os.getpid(), flush=True)
    time.sleep(60)
"""


def test_a_job_that_exits_0_fires_success_with_its_log_in_the_trigger_log(aws):
    """Guards the happy path of a deferred step: one success event with the exit code and the tail
    of the log, and the job's statuses and lines written to the trigger's log, which Airflow shows in
    the task's log."""
    job_id = submit(aws, "print('epoch 1'); print('epoch 2')")
    trigger = make_trigger(aws, job_id)
    log = recorded(trigger)

    event = run_to_first_event(trigger)

    assert event == {
        "status": "success",
        "job_id": job_id,
        "status_reason": "Essential container in task exited",
        "exit_code": 0,
        "message": None,
        "log_tail": ["epoch 1", "epoch 2"],
    }
    assert "[Flow.step] epoch 1" in log.lines and "[Flow.step] epoch 2" in log.lines
    assert log.lines[-1].startswith(f"[Flow.step] Job {job_id} status: SUCCEEDED")


def test_a_job_that_exits_1_fires_failure_with_a_message(aws):
    """Guards the failed step: a failure event whose message names the step, the job, the exit code
    and the output the step printed before failing."""
    job_id = submit(aws, "import sys; print('loading data'); print('KeyError: label'); sys.exit(1)")

    event = run_to_first_event(make_trigger(aws, job_id))

    assert event["status"] == "failure" and event["exit_code"] == 1
    assert event["log_tail"] == ["loading data", "KeyError: label"]
    assert event["message"].startswith(f"Flow.step failed on AWS Batch (job {job_id}, status FAILED)")
    assert "exit code 1" in event["message"] and event["message"].endswith("    KeyError: label")


def test_a_job_past_its_deadline_is_terminated_and_fires_timeout(aws):
    """Guards execution_timeout for a deferred step (Airflow's trigger timeout would leave the job
    running): past the deadline the trigger terminates the job, whose process is gone soon after,
    and fires a timeout event saying so."""
    job_id = submit(aws, SLEEPS_A_MINUTE)
    wait_for_status(aws, job_id, "RUNNING")
    deadline = (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat()
    started = time.monotonic()

    event = run_to_first_event(make_trigger(aws, job_id, deadline=deadline))

    assert time.monotonic() - started < 5
    assert event["status"] == "timeout" and event["job_id"] == job_id
    assert "deadline" in event["status_reason"] and "terminated" in event["message"]
    job = wait_for_status(aws, job_id, "FAILED", timeout=5)
    assert job["statusReason"] == event["status_reason"]
    (pid,) = [int(line.split()[1]) for line in event["log_tail"] if line.startswith("pid")]
    assert process_gone(pid)


def test_on_kill_terminates_the_job(aws):
    """Guards marking a deferred task failed (or clearing it): Airflow cancels run() with its
    user-action message and awaits on_kill, which terminates the job, saying why."""
    job_id = submit(aws, SLEEPS_A_MINUTE)
    trigger = make_trigger(aws, job_id)
    log = recorded(trigger)

    async def user_marks_failed() -> None:
        waiting = asyncio.create_task(first_event(trigger))
        await until_logged(log, "status: RUNNING")
        waiting.cancel(USER_ACTION)
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await trigger.on_kill()

    asyncio.run(user_marks_failed())

    job = wait_for_status(aws, job_id, "FAILED", timeout=5)
    assert "was stopped by a user" in job["statusReason"]
    assert any("Terminating AWS Batch job" in line for line in log.lines)


def test_cancelling_the_wait_leaves_the_job_running(aws):
    """Guards triggerer restarts and rebalancing: cancelling run() (as a triggerer that shuts down
    does) must not stop the job another triggerer will go on waiting for."""
    job_id = submit(aws, SLEEPS_A_MINUTE)
    trigger = make_trigger(aws, job_id)
    log = recorded(trigger)

    async def triggerer_shuts_down() -> None:
        waiting = asyncio.create_task(first_event(trigger))
        await until_logged(log, "status: RUNNING")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    try:
        asyncio.run(triggerer_shuts_down())
        time.sleep(0.5)
        assert describe(aws, job_id)["status"] == "RUNNING"
    finally:
        aws.client("batch").terminate_job(jobId=job_id, reason="Test over")
    wait_for_status(aws, job_id, "FAILED")


def test_serialize_round_trips():
    """Guards the triggerer's rebuilding of the trigger from its stored kwargs."""
    trigger = BatchJobWaitTrigger(
        "abc",
        aws_conn_id="aws_batch",
        region_name="eu-west-1",
        poll_schedule=PollSchedule(15.0).to_json(),
        deadline="2030-01-01T00:00:00+00:00",
        label="TrainFlow.train",
        runnable_hint_after=120.0,
    )

    classpath, kwargs = trigger.serialize()
    job_id = kwargs.pop("job_id")

    assert classpath == "airflow_flowspec.triggers.batch_job.BatchJobWaitTrigger"
    assert BatchJobWaitTrigger(job_id, **kwargs).serialize() == trigger.serialize()


def test_a_trigger_stored_with_a_fixed_interval_keeps_polling_at_it():
    """Guards triggers deferred before the poll schedule: the triggerer rebuilds them from the
    ``poll_seconds`` they were stored with, which stays their fixed interval."""
    trigger = BatchJobWaitTrigger(
        "abc", aws_conn_id=None, region_name="eu-west-1", poll_seconds=15.0, deadline=None
    )
    assert [trigger.poll_schedule.pause(seconds) for seconds in (0, 60, 3600)] == [15.0, 15.0, 15.0]
    assert trigger.serialize()[1]["poll_schedule"] == {
        "ceiling_seconds": 15.0,
        "first_seconds": 15.0,
        "growth": 0.0,
    }
    with pytest.raises(TypeError, match="poll_schedule"):
        BatchJobWaitTrigger("abc", aws_conn_id=None, region_name="eu-west-1")
