"""The AWS Batch client layer (``airflow_flowspec.aws_batch.client``): the one reading of AWS's
errors, the job definition registered once per distinct content, the calls that retry while AWS
throttles, the search for a dead worker's job, and where each job's log is (against the local AWS,
whose Batch really runs jobs)."""

from __future__ import annotations

import dataclasses
import textwrap
import time
import uuid

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from airflow_flowspec.aws_batch.client import (
    DEFAULT_LOG_GROUP,
    AwsErrorKind,
    BatchClient,
    KnownDefinitions,
    LogLocation,
    classify,
    log_location,
)
from airflow_flowspec.aws_batch.jobs import BatchJobSettings
from airflow_flowspec.errors import BatchJobFailedError, BatchJobSpecError


def aws_error(code: str, status: int, operation: str = "DescribeJobs") -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": f"{code} says no."},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        operation,
    )


class Failing:
    """A boto3 client whose calls named in ``failing`` raise ``errors`` one by one first."""

    def __init__(self, client, failing: tuple[str, ...], *errors: Exception):
        self.client, self.failing, self.errors = client, failing, list(errors)
        self.meta = getattr(client, "meta", None)

    def __getattr__(self, name):
        if name not in self.failing:
            return getattr(self.client, name)

        def failing(**kwargs):
            if self.errors:
                raise self.errors.pop(0)
            return getattr(self.client, name)(**kwargs)

        return failing


# ---------------------------------------------------------------------- AWS's errors


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (aws_error("TooManyRequestsException", 429), AwsErrorKind.THROTTLED),
        (aws_error("ThrottlingException", 400), AwsErrorKind.THROTTLED),
        (aws_error("SlowDown", 429), AwsErrorKind.THROTTLED),
        (aws_error("ServiceUnavailableException", 503), AwsErrorKind.TRANSIENT),
        (aws_error("Whatever", 500), AwsErrorKind.TRANSIENT),
        (EndpointConnectionError(endpoint_url="https://batch"), AwsErrorKind.TRANSIENT),
        (aws_error("ResourceNotFoundException", 400, "GetLogEvents"), AwsErrorKind.NOT_FOUND),
        (aws_error("ClientException", 400, "RegisterJobDefinition"), AwsErrorKind.REFUSED),
        (aws_error("AccessDeniedException", 403), AwsErrorKind.DENIED),
        (aws_error("ExpiredTokenException", 400), AwsErrorKind.DENIED),
        (ValueError("a bug"), AwsErrorKind.NOT_AWS),
    ],
    ids=lambda value: value.name if isinstance(value, AwsErrorKind) else None,
)
def test_every_aws_error_is_read_one_way(error, kind):
    """Guards the one classification the operator, the trigger and the watcher share: only
    throttling and AWS's own failures are worth asking again."""
    assert classify(error) is kind
    assert kind.retryable == (kind in (AwsErrorKind.THROTTLED, AwsErrorKind.TRANSIENT))


# ---------------------------------------------------------------------- job definitions, on moto


def revisions(client, name):
    return client.describe_job_definitions(jobDefinitionName=name)["jobDefinitions"]


def unique_settings(**change) -> BatchJobSettings:
    return BatchJobSettings(
        flow_name="TrainFlow",
        step_name="train",
        queue="flowspec-queue",
        job_definition=None,
        image=f"repo/flowspec:{uuid.uuid4().hex}",
        iam_role=None,
        execution_role=None,
        cpu="1",
        memory="4096",
        gpu="0",
        **change,
    )


class CountingClient:
    """The real client, counting the AWS calls made through it."""

    def __init__(self, client):
        self.client = client
        self.meta = client.meta
        self.calls: list[str] = []

    def __getattr__(self, operation):
        self.calls.append(operation)
        return getattr(self.client, operation)


def fresh(client) -> BatchClient:
    """The layer as in a process that has not ensured any definition yet."""
    return BatchClient(client, known_definitions=KnownDefinitions())


def test_a_definition_is_registered_once_and_again_only_when_the_container_changes(local_aws):
    client = local_aws.client("batch")
    aws = fresh(client)
    settings = unique_settings()
    name = aws.ensure_job_definition(settings)
    assert aws.ensure_job_definition(settings) == name
    assert aws.ensure_job_definition(dataclasses.replace(settings, cpu="8", memory="32768")) == name
    assert len(revisions(client, name)) == 1
    registered = revisions(client, name)[0]
    assert registered["status"] == "ACTIVE" and registered["containerProperties"]["image"] == settings.image

    changed = aws.ensure_job_definition(dataclasses.replace(settings, shared_memory=1024))
    assert changed != name
    assert len(revisions(client, changed)) == 1 and len(revisions(client, name)) == 1


def test_a_process_asks_aws_once_per_definition(local_aws):
    client = CountingClient(local_aws.client("batch"))
    known = KnownDefinitions()
    settings = unique_settings()
    BatchClient(client, known_definitions=known).ensure_job_definition(settings)
    assert client.calls == ["describe_job_definitions", "register_job_definition"]
    client.calls.clear()
    for attempt in range(3):  # a new layer per task, as the operator makes one
        BatchClient(client, known_definitions=known).ensure_job_definition(
            dataclasses.replace(settings, cpu=str(attempt + 1))
        )
    assert client.calls == []


def test_an_active_definition_registered_by_another_process_is_reused(local_aws):
    client = local_aws.client("batch")
    settings = unique_settings()
    name = fresh(client).ensure_job_definition(settings)
    assert fresh(client).ensure_job_definition(settings) == name  # another worker, same content
    assert len(revisions(client, name)) == 1


def test_an_inactive_definition_is_registered_again(local_aws):
    client = local_aws.client("batch")
    settings = unique_settings()
    name = fresh(client).ensure_job_definition(settings)
    client.deregister_job_definition(jobDefinition=revisions(client, name)[0]["jobDefinitionArn"])
    assert fresh(client).ensure_job_definition(settings) == name
    assert sorted(revision["status"] for revision in revisions(client, name)) == ["ACTIVE", "INACTIVE"]


def test_a_configured_definition_is_returned_without_asking_aws():
    settings = dataclasses.replace(unique_settings(), job_definition="team-flows:3")
    assert fresh(object()).ensure_job_definition(settings) == "team-flows:3"


def test_a_definition_batch_refuses_names_the_step_and_batchs_reason(local_aws):
    settings = unique_settings(
        container_properties={"resourceRequirements": [{"type": "MEMORY", "value": "2"}]}
    )
    with pytest.raises(BatchJobSpecError) as error:
        fresh(local_aws.client("batch")).ensure_job_definition(settings)
    message = str(error.value)
    assert "step 'train' of flow TrainFlow" in message and "memory limit" in message


def test_a_registration_aws_denies_is_not_taken_for_a_mistake_in_the_flow(local_aws):
    """Guards retries of a step whose credentials failed: only a definition Batch refuses as invalid
    is a flow mistake; a denied call is raised as AWS answered it."""
    client = Failing(
        local_aws.client("batch"),
        ("register_job_definition",),
        aws_error("AccessDeniedException", 403, "RegisterJobDefinition"),
    )
    with pytest.raises(ClientError, match="AccessDeniedException"):
        fresh(client).ensure_job_definition(unique_settings())


# ---------------------------------------------------------------------- jobs, on the local AWS


def submit(aws, code: str, *, name: str = "client-test", tags: dict[str, str] | None = None) -> str:
    return aws.client("batch").submit_job(
        jobName=name,
        jobQueue=aws.job_queue,
        jobDefinition=aws.job_definition,
        containerOverrides={"command": ["python", "-c", textwrap.dedent(code)]},
        tags=tags or {},
    )["jobId"]


def wait_for_status(aws, job_id: str, statuses: tuple[str, ...], timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = aws.client("batch").describe_jobs(jobs=[job_id])["jobs"][0]
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {statuses}")


def test_terminating_a_job_asks_again_while_aws_throttles(local_aws):
    """Guards the kill of a deferred or timed-out step: two throttled TerminateJob calls, then the
    job is terminated; the pauses come from the layer's clock, not a real sleep."""
    job_id = submit(local_aws, "import time; time.sleep(60)")
    slept: list[float] = []
    batch = Failing(
        local_aws.client("batch"),
        ("terminate_job",),
        aws_error("TooManyRequestsException", 429, "TerminateJob"),
        aws_error("ServiceUnavailableException", 503, "TerminateJob"),
    )

    BatchClient(batch, sleep=slept.append).terminate_job(job_id, "Test over")

    assert slept == [1, 2]
    assert wait_for_status(local_aws, job_id, ("FAILED",))["statusReason"] == "Test over"


def test_terminating_gives_up_at_once_on_a_denial_and_after_three_throttled_tries():
    slept: list[float] = []
    denied = Failing(object(), ("terminate_job",), aws_error("AccessDeniedException", 403, "TerminateJob"))
    with pytest.raises(ClientError, match="AccessDenied"):
        BatchClient(denied, sleep=slept.append).terminate_job("job-1", "stop")
    assert slept == []

    throttled = Failing(
        object(), ("terminate_job",), *[aws_error("ThrottlingException", 400, "TerminateJob")] * 3
    )
    with pytest.raises(ClientError, match="ThrottlingException"):
        BatchClient(throttled, sleep=slept.append).terminate_job("job-1", "stop")
    assert slept == [1, 2]


def test_a_job_batch_does_not_describe_yet_is_asked_about_again_then_explained(local_aws):
    """Guards the first description after a submission (DescribeJobs may not know the job yet):
    asked again with growing pauses, then one error naming the job and what to check."""
    slept: list[float] = []
    aws = BatchClient(local_aws.client("batch"), sleep=slept.append)

    with pytest.raises(BatchJobFailedError, match="AWS Batch knows no job 00000000-.*region"):
        aws.describe_job("00000000-0000-0000-0000-000000000000", attempts=3)
    assert slept == [1, 2]


def test_an_earlier_tries_job_is_found_by_its_queue_name_and_tags_while_it_runs(local_aws):
    """Guards job adoption: the running job named for this try, carrying every tag that names the
    task, is found; one whose tags differ, or that has ended, is not."""
    name = f"find-{uuid.uuid4().hex[:8]}"
    tags = {"flowspec:run": "manual_1", "flowspec:try": "1"}
    job_id = submit(local_aws, "import time; time.sleep(60)", name=name, tags=tags)
    aws = BatchClient(local_aws.client("batch"))
    try:
        found = aws.find_active_job(local_aws.job_queue, name, tags)
        assert found is not None and found["jobId"] == job_id
        assert aws.find_active_job(local_aws.job_queue, name, {**tags, "flowspec:try": "2"}) is None
        assert aws.find_active_job(local_aws.job_queue, f"{name}-other", tags) is None
    finally:
        aws.terminate_job(job_id, "Test over")
    wait_for_status(local_aws, job_id, ("FAILED",))
    assert aws.find_active_job(local_aws.job_queue, name, tags) is None


# ---------------------------------------------------------------------- where a job's log is


def described(**container) -> dict:
    return {"jobId": "j", "container": {"logStreamName": "def/default/abc", **container}}


def test_a_jobs_log_is_in_the_group_its_log_configuration_names():
    """Guards the log-group lookup the watcher and the console link share (as the provider's
    ``get_job_all_awslogs_info``): the configured group and region, else Batch's default group."""
    assert log_location(described()) == LogLocation(DEFAULT_LOG_GROUP, "def/default/abc")
    assert log_location(described(logConfiguration={"logDriver": "awslogs"})) == LogLocation(
        DEFAULT_LOG_GROUP, "def/default/abc"
    )
    custom = described(
        logConfiguration={
            "logDriver": "awslogs",
            "options": {"awslogs-group": "/team/flows", "awslogs-region": "eu-west-1"},
        }
    )
    assert log_location(custom) == LogLocation("/team/flows", "def/default/abc", "eu-west-1")


def test_a_job_without_a_stream_or_with_another_log_driver_has_no_cloudwatch_log():
    assert log_location({"jobId": "j", "container": {}}) is None
    assert log_location(described(logConfiguration={"logDriver": "splunk", "options": {"x": "y"}})) is None
