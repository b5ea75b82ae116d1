"""Every call the product makes to AWS Batch and CloudWatch Logs, and the one reading of AWS's errors.

Metaflow splits its Batch support the same way (``batch.py`` assembles a job, ``batch_client.py``
talks to AWS), and so does the Amazon provider (``BatchClientHook``): job assembly stays pure and
testable without AWS, and the operator, the deferrable trigger and the watcher share one set of
retries, one error classification and one log lookup instead of each parsing botocore's answers.

:class:`BatchClient` wraps the boto3 ``batch`` and ``logs`` clients its caller made (an Airflow
connection, boto3's default chain, the local AWS): nothing here creates a client or imports boto3,
so the module loads in a Batch container, a notebook or a DAG parse for free.

Where a job's log is: Batch writes a container's output with the ``awslogs`` driver to the group
its ``logConfiguration`` names (``awslogs-group``), by default ``/aws/batch/job``; a job with
another driver has no CloudWatch log at all (:func:`log_location`, as the provider's
``get_job_all_awslogs_info`` reads it).
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from airflow_flowspec.aws_batch.jobs import (
    FINISHED,
    BatchJobSettings,
    job_definition_document,
    job_definition_name,
)
from airflow_flowspec.errors import BatchJobFailedError, BatchJobSpecError

#: Where Batch's default ``awslogs`` configuration writes every job's output.
DEFAULT_LOG_GROUP = "/aws/batch/job"
#: The log driver whose output Batch sends to CloudWatch Logs (and the one Batch uses by default).
AWSLOGS_DRIVER = "awslogs"
#: DescribeJobs takes at most this many job ids per call.
MAX_JOBS_PER_DESCRIBE = 100
#: TerminateJob tries before giving up when AWS throttles or fails.
TERMINATE_ATTEMPTS = 3
#: DescribeJobs tries for a job just submitted, which Batch may not describe at once.
NEW_JOB_DESCRIBE_ATTEMPTS = 5
#: Batch's statuses of a job that has not ended.
UNFINISHED = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")

#: Error codes AWS uses for "slow down": a retry later is expected to work.
THROTTLING_ERROR_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "ProvisionedThroughputExceededException",
    }
)
#: Error codes AWS uses for "try again": its side failed, not the request.
TRANSIENT_ERROR_CODES = frozenset(
    {
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalError",
        "InternalServerError",
        "ServerException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
#: Error codes for "no such thing" (a log stream Batch named a moment before creating it).
NOT_FOUND_ERROR_CODES = frozenset({"ResourceNotFoundException"})
#: Error codes Batch answers a request it will not take with (a job definition it finds invalid).
REFUSED_ERROR_CODES = frozenset({"ClientException", "InvalidParameterValueException"})


class AwsErrorKind(enum.Enum):
    """What an exception from a boto3 call means for whoever made it."""

    #: AWS asked to slow down: try again later.
    THROTTLED = "throttled"
    #: AWS failed (a 5xx answer) or the connection did: try again later.
    TRANSIENT = "transient"
    #: AWS does not know the thing asked about.
    NOT_FOUND = "not found"
    #: AWS refused the request as invalid: asking again the same way fails the same way.
    REFUSED = "refused"
    #: Another answer from AWS, usually a missing permission or expired credentials.
    DENIED = "denied"
    #: Not an answer from AWS at all: a bug to raise, not a condition to handle.
    NOT_AWS = "not aws"

    @property
    def retryable(self) -> bool:
        return self in (AwsErrorKind.THROTTLED, AwsErrorKind.TRANSIENT)


def error_code(error: BaseException) -> str | None:
    """The AWS error code of a botocore ``ClientError`` (duck-typed: botocore is not imported)."""
    response = getattr(error, "response", None)
    if isinstance(response, Mapping):
        return (response.get("Error") or {}).get("Code") or None
    return None


def error_message(error: BaseException) -> str:
    """AWS's own message of ``error`` without its final period, else the exception's text."""
    response = getattr(error, "response", None)
    message = (response.get("Error") or {}).get("Message") if isinstance(response, Mapping) else None
    return str(message or error).rstrip(".")


def classify(error: BaseException) -> AwsErrorKind:
    """What ``error``, raised by a boto3 call, means: the one place AWS's answers are read."""
    response = getattr(error, "response", None)
    if isinstance(response, Mapping):
        code = error_code(error)
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
        if code in THROTTLING_ERROR_CODES or status == 429:
            return AwsErrorKind.THROTTLED
        if code in TRANSIENT_ERROR_CODES or status >= 500:
            return AwsErrorKind.TRANSIENT
        if code in NOT_FOUND_ERROR_CODES:
            return AwsErrorKind.NOT_FOUND
        if code in REFUSED_ERROR_CODES:
            return AwsErrorKind.REFUSED
        return AwsErrorKind.DENIED if code else AwsErrorKind.NOT_AWS
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:  # no botocore: then no botocore client raised this
        return AwsErrorKind.NOT_AWS
    if isinstance(error, (BotoConnectionError, HTTPClientError)):
        return AwsErrorKind.TRANSIENT
    return AwsErrorKind.NOT_AWS


def is_transient(error: BaseException) -> bool:
    """Throttling, a 5xx answer, or a connection that failed or broke: worth trying again later."""
    return classify(error).retryable


# ---------------------------------------------------------------------- where a job's log is


@dataclass(frozen=True)
class LogLocation:
    """One CloudWatch Logs stream of a job: what GetLogEvents and the console link need.

    ``region`` is the ``awslogs-region`` option when the job's configuration names one, else None
    (the job's own region).
    """

    group: str
    stream: str
    region: str | None = None


@dataclass(frozen=True)
class LogPage:
    """One GetLogEvents answer: its messages in order, and the token to read on from."""

    messages: list[str]
    next_token: str | None


def log_driver(job: Mapping[str, Any]) -> str:
    """The log driver of the job's container: ``awslogs`` unless its configuration names another."""
    configuration = (job.get("container") or {}).get("logConfiguration") or {}
    return str(configuration.get("logDriver") or AWSLOGS_DRIVER)


def log_location(job: Mapping[str, Any]) -> LogLocation | None:
    """Where the job's current attempt writes its log, read from its description: the group its
    ``logConfiguration`` names, else :data:`DEFAULT_LOG_GROUP`. None while the job has no stream
    yet, and for a job whose log driver is not ``awslogs`` (its output is not in CloudWatch)."""
    container = job.get("container") or {}
    stream = container.get("logStreamName")
    if not stream or log_driver(job) != AWSLOGS_DRIVER:
        return None
    options = (container.get("logConfiguration") or {}).get("options") or {}
    return LogLocation(
        group=str(options.get("awslogs-group") or DEFAULT_LOG_GROUP),
        stream=str(stream),
        region=options.get("awslogs-region") or None,
    )


# ---------------------------------------------------------------------- definitions known


class KnownDefinitions:
    """Job definitions found ACTIVE or registered, so a process asks AWS once per definition.

    Keyed by (endpoint, region, name): two AWS accounts behind one endpoint and region in one
    process would share an entry. :data:`PROCESS_DEFINITIONS` is the process's; a test passes a
    fresh one to be "another process".
    """

    def __init__(self) -> None:
        self._known: set[tuple[str, str, str]] = set()
        self.lock = threading.Lock()

    def __contains__(self, key: tuple[str, str, str]) -> bool:
        return key in self._known

    def add(self, key: tuple[str, str, str]) -> None:
        self._known.add(key)


PROCESS_DEFINITIONS = KnownDefinitions()


# ---------------------------------------------------------------------- the client


class BatchClient:
    """AWS Batch and CloudWatch Logs as the product uses them.

    ``batch_client`` and ``logs_client`` are boto3 clients (or anything with their methods); the
    logs client is needed only to read logs. ``sleep`` waits between retries (a test passes one
    that does not). Thread-safe as boto3 clients are.
    """

    def __init__(
        self,
        batch_client: Any,
        logs_client: Any = None,
        *,
        known_definitions: KnownDefinitions = PROCESS_DEFINITIONS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.batch_client = batch_client
        self.logs_client = logs_client
        self.known_definitions = known_definitions
        self.sleep = sleep

    # --- job definitions -----------------------------------------------------------------------

    def ensure_job_definition(self, settings: BatchJobSettings) -> str:
        """The job definition to submit the step's jobs with, registered when it does not exist yet.

        A configured definition is returned as it is. Otherwise the definition is named by its
        content: an ACTIVE one of that name (registered by any process, any run) is reused, so a
        definition is registered once per distinct content, never per run. Returns the name, which
        Batch resolves to its latest ACTIVE revision. Two processes racing may both register: the
        revisions are identical, so either serves.

        A definition Batch refuses is a :class:`BatchJobSpecError` with Batch's reason; other AWS
        errors are raised as they are.
        """
        if settings.job_definition:
            return settings.job_definition
        document = job_definition_document(settings)
        name = job_definition_name(document)
        meta = getattr(self.batch_client, "meta", None)
        cache_key = (str(getattr(meta, "endpoint_url", "")), str(getattr(meta, "region_name", "")), name)
        if cache_key in self.known_definitions:
            return name
        with self.known_definitions.lock:
            if cache_key in self.known_definitions:
                return name
            if not self.has_active_job_definition(name):
                try:
                    self.batch_client.register_job_definition(jobDefinitionName=name, **document)
                except Exception as error:
                    if classify(error) is not AwsErrorKind.REFUSED:
                        raise
                    raise BatchJobSpecError(
                        f"AWS Batch refused the job definition of step '{settings.step_name}' of flow "
                        f"{settings.flow_name}: {error_message(error)}. Check the step's @batch "
                        f"arguments (container_properties especially) and that the role has "
                        f"batch:RegisterJobDefinition."
                    ) from error
            self.known_definitions.add(cache_key)
        return name

    def has_active_job_definition(self, name: str) -> bool:
        request: dict[str, Any] = {"jobDefinitionName": name, "status": "ACTIVE"}
        while True:
            response = self.batch_client.describe_job_definitions(**request)
            if response.get("jobDefinitions"):
                return True
            if not response.get("nextToken"):
                return False
            request["nextToken"] = response["nextToken"]

    # --- jobs ----------------------------------------------------------------------------------

    def describe_jobs(self, job_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The descriptions Batch has of ``job_ids`` (jobs it does not know are left out)."""
        jobs: list[dict[str, Any]] = []
        for start in range(0, len(job_ids), MAX_JOBS_PER_DESCRIBE):
            chunk = list(job_ids[start : start + MAX_JOBS_PER_DESCRIBE])
            jobs.extend(self.batch_client.describe_jobs(jobs=chunk).get("jobs") or [])
        return jobs

    def describe_job(self, job_id: str, *, attempts: int = 1) -> dict[str, Any]:
        """The job's description; :class:`BatchJobFailedError` when Batch does not know it.

        With ``attempts`` over 1, an empty answer or a throttled or failed call is asked again
        (after 1 s, 2 s, ...): a job submitted a moment ago may not be described yet, as Metaflow's
        ``RunningJob.update`` and the provider's ``get_job_description`` also allow for.
        """
        for attempt in range(1, attempts + 1):
            try:
                jobs = self.describe_jobs([job_id])
            except Exception as error:
                if not is_transient(error) or attempt == attempts:
                    raise
                jobs = []
            if jobs:
                return jobs[0]
            if attempt < attempts:
                self.sleep(attempt)
        raise BatchJobFailedError(
            f"AWS Batch knows no job {job_id}: DescribeJobs returned nothing. The job was "
            f"submitted in another region or account than the one asked now, or ended long enough "
            f"ago (about 7 days) for Batch to forget it. Check the region and credentials in use."
        )

    def find_active_job(self, queue: str, job_name: str, tags: Mapping[str, str]) -> dict[str, Any] | None:
        """A job of ``queue`` named ``job_name`` that has not ended and carries every one of ``tags``
        (how a retry finds the job its dead worker submitted), else None."""
        request: dict[str, Any] = {"jobQueue": queue, "filters": [{"name": "JOB_NAME", "values": [job_name]}]}
        active: list[str] = []
        while True:
            response = self.batch_client.list_jobs(**request)
            active += [
                summary["jobId"]
                for summary in response.get("jobSummaryList") or []
                if summary.get("status") not in FINISHED
            ]
            if not response.get("nextToken"):
                break
            request["nextToken"] = response["nextToken"]
        for job in self.describe_jobs(active):
            if job.get("status") in FINISHED:
                continue
            job_tags = job.get("tags") or {}
            if all(job_tags.get(key) == value for key, value in tags.items()):
                return job
        return None

    def terminate_job(self, job_id: str, reason: str) -> None:
        """TerminateJob, tried again (after 1 s, then 2 s) while AWS throttles or fails; the error
        of the last try, or of a try AWS refused, is raised."""
        for attempt in range(1, TERMINATE_ATTEMPTS + 1):
            try:
                self.batch_client.terminate_job(jobId=job_id, reason=reason)
                return
            except Exception as error:
                if not is_transient(error) or attempt == TERMINATE_ATTEMPTS:
                    raise
                self.sleep(attempt)

    # --- queues and compute environments -------------------------------------------------------

    def describe_job_queue(self, queue: str) -> dict[str, Any] | None:
        """The queue (a name or an ARN), None when Batch does not know it."""
        queues = self.batch_client.describe_job_queues(jobQueues=[queue]).get("jobQueues") or []
        return queues[0] if queues else None

    def describe_compute_environments(self, names: Sequence[str]) -> list[dict[str, Any]]:
        """The compute environments (names or ARNs) Batch knows."""
        response = self.batch_client.describe_compute_environments(computeEnvironments=list(names))
        return response.get("computeEnvironments") or []

    # --- logs ----------------------------------------------------------------------------------

    def log_events(self, location: LogLocation, next_token: str | None = None) -> LogPage:
        """One page of the stream's events, from its start or from ``next_token``."""
        if self.logs_client is None:
            raise TypeError("BatchClient needs a CloudWatch Logs client to read a job's log")
        request: dict[str, Any] = {
            "logGroupName": location.group,
            "logStreamName": location.stream,
            "startFromHead": True,
        }
        if next_token is not None:
            request["nextToken"] = next_token
        response = self.logs_client.get_log_events(**request)
        return LogPage(
            messages=[str(event.get("message", "")) for event in response.get("events") or []],
            next_token=response.get("nextForwardToken"),
        )
