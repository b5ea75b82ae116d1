"""How often a Batch job's status is asked (``airflow_flowspec.aws_batch.polling``): the schedule,
the option that sets its ceiling, and following a job for longer costing few more DescribeJobs
calls, counted by the local AWS (each job knows how many DescribeJobs answers described it). That a
step at the default schedule ends about a second after its job is in test_batch_flows.py."""

from __future__ import annotations

import asyncio

import pytest

from airflow_flowspec import config
from airflow_flowspec.aws_batch.polling import PollSchedule
from airflow_flowspec.errors import ConfigurationError
from airflow_flowspec.triggers.batch_job import BatchJobWaitTrigger


def test_the_schedule_polls_each_second_at_first_and_backs_off_to_its_ceiling():
    dags_folder = PollSchedule(30.0)
    assert [dags_folder.pause(seconds) for seconds in (0, 5, 10, 60, 300, 7200)] == [1, 1, 1, 6, 30, 30]
    # A ceiling under the first pause is a fixed interval, as batch_poll_seconds was before.
    assert {PollSchedule(0.05).pause(seconds) for seconds in (0, 10, 3600)} == {0.05}
    # What an hour in one status costs: logarithmic up to the ceiling, then one poll per ceiling.
    assert PollSchedule(30.0).polls_within(3600) < 1.5 * PollSchedule(30.0, first_seconds=30.0).polls_within(
        3600
    )
    assert PollSchedule(30.0).polls_within(60) == 29 and PollSchedule(30.0).polls_within(10) == 11
    for bad in (
        {"ceiling_seconds": 0},
        {"ceiling_seconds": 5, "first_seconds": 0},
        {"ceiling_seconds": 5, "growth": -1},
    ):
        with pytest.raises(ValueError, match="poll schedule"):
            PollSchedule(**bad)


def test_batch_poll_seconds_is_the_ceiling_and_empty_means_5_under_run_and_30_elsewhere(monkeypatch):
    monkeypatch.delenv("AIRFLOW__FLOWSPEC__BATCH_POLL_SECONDS", raising=False)
    monkeypatch.setenv("AIRFLOW_CONFIG", "/nonexistent/airflow.cfg")
    monkeypatch.delenv(config.CONSOLE_VARIABLE, raising=False)
    assert config.batch_poll_ceiling_seconds() == 30.0
    monkeypatch.setenv(config.CONSOLE_VARIABLE, "1")  # python flow.py run
    assert config.batch_poll_ceiling_seconds() == 5.0
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__BATCH_POLL_SECONDS", "60")  # a user's value holds under run too
    assert config.batch_poll_ceiling_seconds() == 60.0
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__BATCH_POLL_SECONDS", "-5")
    with pytest.raises(ConfigurationError, match="a number of seconds greater than 0 .*, or empty"):
        config.batch_poll_ceiling_seconds()


def test_the_later_seconds_of_a_longer_job_cost_fewer_describe_calls(local_aws_environment):
    """Guards the back-off, through the deferrable trigger (the operator's wait follows the same
    watcher and schedule), with the default's shape at a twentieth of its pace so that seconds stand
    for the default's minutes: the seconds a longer job adds cost well under a call per first pause."""
    aws = local_aws_environment
    schedule = PollSchedule(1.0, first_seconds=0.05)

    def submit(seconds: float) -> str:
        return aws.client("batch").submit_job(
            jobName="poll-test",
            jobQueue=aws.job_queue,
            jobDefinition=aws.job_definition,
            containerOverrides={"command": ["python", "-c", f"import time; time.sleep({seconds})"]},
        )["jobId"]

    async def wait(job_id: str) -> dict:
        trigger = BatchJobWaitTrigger(
            job_id, aws_conn_id=None, region_name=aws.region, poll_schedule=schedule.to_json()
        )
        events = trigger.run()
        try:
            return (await events.__anext__()).payload
        finally:
            await events.aclose()

    async def both(short: str, long: str) -> list[dict]:
        return await asyncio.gather(wait(short), wait(long))

    short, long = submit(0.5), submit(4)
    events = asyncio.run(asyncio.wait_for(both(short, long), 60))
    assert [event["status"] for event in events] == ["success", "success"]
    calls = {job_id: aws.describe_calls(job_id) for job_id in (short, long)}
    jobs = {job["jobId"]: job for job in aws.client("batch").describe_jobs(jobs=[short, long])["jobs"]}
    lasted = {job_id: (job["stoppedAt"] - job["createdAt"]) / 1000 for job_id, job in jobs.items()}
    assert lasted[long] - lasted[short] > 2.5, lasted
    # A fixed 0.05 s interval costs a call per 0.05 s of a job's life, the last seconds as the first.
    assert calls[long] < 0.5 * lasted[long] / 0.05, (calls, lasted)
    extra_calls, extra_seconds = calls[long] - calls[short], lasted[long] - lasted[short]
    assert extra_calls < 0.4 * extra_seconds / 0.05, (calls, lasted)
