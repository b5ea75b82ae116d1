"""Following one AWS Batch job: its status changes, its CloudWatch log lines, why it waits in
RUNNABLE, and what to tell a data scientist when it fails.

Three reporters share :class:`JobWatcher`: the step operator's synchronous wait, the deferrable
trigger (which runs it in a thread) and the console of ``python flow.py run --with batch``. So it
prints and logs nothing itself: every line to show goes to the ``emit`` callable it is given, and
each reporter decides where lines go. It imports neither Airflow nor boto3 and calls AWS only
through the :class:`~airflow_flowspec.aws_batch.client.BatchClient` it is handed, so a notebook, a
Batch container or a test can drive it.

Polling Batch for hours meets throttling, 5xx answers and dropped connections; one of those is no
reason to fail a step whose job is running fine, so a poll that meets one shows nothing and returns
the last description it had (see :data:`MAX_CONSECUTIVE_FAILURES`).
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from airflow_flowspec.aws_batch.client import (
    AWSLOGS_DRIVER,
    AwsErrorKind,
    BatchClient,
    LogLocation,
    classify,
    log_driver,
    log_location,
)
from airflow_flowspec.aws_batch.jobs import FINISHED
from airflow_flowspec.aws_batch.polling import PollSchedule
from airflow_flowspec.runtime.task_log import lines_prefixed

#: Lines of the job's log kept for a failure message or a trigger event.
TAIL_LINES = 50
#: Lines of the log a failure message quotes: enough for a traceback's end, short enough to read.
FAILURE_TAIL_LINES = 20
#: A quoted line longer than this is cut: CloudWatch events reach 256 KB, messages should not.
MAX_QUOTED_LINE_CHARS = 2000
#: Transient errors in a row (per API) after which a poll raises instead of shrugging.
MAX_CONSECUTIVE_FAILURES = 10
#: Log pages read per poll at most, so one poll of a very chatty job still returns; the next poll
#: goes on from where this one stopped.
MAX_LOG_PAGES_PER_POLL = 50

#: Fargate's largest task: 16 vCPUs, 120 GiB, no GPU.
FARGATE_MAX_VCPUS = 16
FARGATE_MAX_MEMORY_MIB = 120 * 1024
#: More memory per vCPU than any EC2 instance type has (the memory-optimized families stay below
#: it), so a job asking for more than ``maxvCpus`` times this can never be placed.
MAX_MEMORY_MIB_PER_VCPU = 64 * 1024
#: EC2 instance families with NVIDIA GPUs that Batch can schedule GPU jobs on (p3, g4dn, g5g...).
GPU_FAMILY = re.compile(r"^(p\d|g\d|gr\d)")

WAITING_FOR_CAPACITY = (
    "so it is waiting for capacity: check the compute environment's scaling (other jobs may be "
    "using its maxvCpus; its instance types or Spot capacity may be unavailable in its subnets' "
    "availability zones), its service-linked role and instance role, and that its subnets reach ECS "
    "and ECR (a public IP or a NAT gateway). A job asking for all of an instance type's memory never "
    "fits one: ECS keeps some memory for itself."
)


class JobWatcher:
    """Follows one Batch job for whoever reports it; call :meth:`poll`, wait :meth:`next_pause`,
    and again until :meth:`is_finished`, then :meth:`drain`.

    ``emit`` receives each line to show, already prefixed with ``[label]`` (or ``[job id]`` without
    a label) so several jobs can share one console. ``runnable_hint_after``: seconds a job may sit in
    RUNNABLE before one line explains why it may be waiting (:func:`runnable_hint`).

    Not thread-safe: one caller polls at a time (the trigger polls from one worker thread at a
    time). ``job`` is the last description Batch gave; ``tail`` the last :data:`TAIL_LINES` lines
    of the job's log, without prefix.
    """

    def __init__(
        self,
        client: BatchClient,
        job_id: str,
        emit: Callable[[str], None],
        *,
        runnable_hint_after: float = 60.0,
        label: str = "",
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.emit = emit
        self.runnable_hint_after = runnable_hint_after
        self.label = label
        self.prefix = "" if label and lines_prefixed() else f"[{label}] " if label else f"[{job_id}] "
        self.job: dict[str, Any] | None = None
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._status: str | None = None
        self._status_since = time.monotonic()
        self._runnable_since: float | None = None
        self._hinted = False
        self._log_location: LogLocation | None = None
        self._log_token: str | None = None
        self._logs_readable = True
        self._log_driver_told = False
        self._describe_failures = 0
        self._log_failures = 0

    # --- polling -------------------------------------------------------------------------------

    def poll(self) -> dict[str, Any]:
        """One DescribeJobs (and the new log lines): the job's description, or the last one known
        when this poll met a transient error.

        Raises :class:`BatchJobFailedError` when Batch does not know the job, and re-raises the
        error of the :data:`MAX_CONSECUTIVE_FAILURES`-th transient failure in a row.
        """
        job = self._describe()
        if job is None:
            return self.job if self.job is not None else {"jobId": self.job_id}
        self.job = job
        status = job.get("status", "")
        if status != self._status:
            self._status = status
            self._status_since = time.monotonic()
            self._runnable_since = self._status_since if status == "RUNNABLE" else None
            self._hinted = False
            if status in FINISHED:  # the lines printed before the end come before the end
                self._read_logs(job)
                self.emit(self._status_line(job))
                return job
            self.emit(self._status_line(job))
        self._read_logs(job)
        if status == "RUNNABLE" and not self._hinted and self._runnable_since is not None:
            waited = time.monotonic() - self._runnable_since
            if waited > self.runnable_hint_after:
                self._hinted = True
                hint = runnable_hint(self.client, job)
                self.emit(f"{self.prefix}Still RUNNABLE after {_duration(waited)}. {hint}")
        return job

    @staticmethod
    def is_finished(job: dict[str, Any]) -> bool:
        return job.get("status") in FINISHED

    def next_pause(self, schedule: PollSchedule) -> float:
        """Seconds to wait before the next :meth:`poll`, by ``schedule`` and the time the job has
        spent in the status the last poll saw (a new status polls quickly again)."""
        return schedule.pause(time.monotonic() - self._status_since)

    def drain(self, *, settle_seconds: float = 0.0) -> None:
        """Read the log lines the job wrote that the last poll did not see.

        CloudWatch receives a container's last lines a little after Batch reports the job ended:
        the stream is read, then read once more after ``settle_seconds``.
        """
        if self.job is None:
            return
        self._read_logs(self.job)
        if settle_seconds > 0:
            time.sleep(settle_seconds)
        self._read_logs(self.job)

    def _describe(self) -> dict[str, Any] | None:
        try:
            job = self.client.describe_job(self.job_id)
        except Exception as error:
            if not classify(error).retryable:
                raise
            self._describe_failures += 1
            if self._describe_failures >= MAX_CONSECUTIVE_FAILURES:
                raise
            return None
        self._describe_failures = 0
        return job

    def _status_line(self, job: dict[str, Any]) -> str:
        status = job.get("status", "?")
        line = (
            f"{self.prefix}Job {self.job_id} status: {status}"
            if self.label
            else f"{self.prefix}Job status: {status}"
        )
        if status in FINISHED:
            details = [detail for detail in (job.get("statusReason"), _exit_code_text(job)) if detail]
            if details:
                line += f" ({', '.join(details)})"
        return line

    # --- the log -------------------------------------------------------------------------------

    def _read_logs(self, job: dict[str, Any]) -> None:
        """Show the lines of the job's log that are new since the last read, from the group the
        job's ``logConfiguration`` names."""
        if not self._logs_readable:
            return
        location = log_location(job)
        if location is None:
            self._tell_log_driver(job)
            return
        if location != self._log_location:  # each attempt of a job writes its own stream
            self._log_location = location
            self._log_token = None
        for _ in range(MAX_LOG_PAGES_PER_POLL):
            try:
                page = self.client.log_events(location, self._log_token)
            except Exception as error:
                self._log_read_failed(error, location)
                return
            self._log_failures = 0
            for message in page.messages:
                for line in message.splitlines() or [""]:
                    self.tail.append(line)
                    self.emit(self.prefix + line)
            if page.next_token is None or page.next_token == self._log_token:  # "no more for now"
                return
            self._log_token = page.next_token

    def _tell_log_driver(self, job: dict[str, Any]) -> None:
        driver = log_driver(job)
        if driver == AWSLOGS_DRIVER or self._log_driver_told:
            return  # an awslogs job without a stream yet: it has not started
        self._log_driver_told = True
        self.emit(
            f"{self.prefix}The job's log goes to its log driver '{driver}', not to CloudWatch Logs: "
            f"its lines will not be shown here."
        )

    def _log_read_failed(self, error: Exception, location: LogLocation) -> None:
        kind = classify(error)
        if kind is AwsErrorKind.NOT_FOUND:
            return  # the stream is created a moment after Batch names it
        if kind.retryable:
            self._log_failures += 1
            if self._log_failures >= MAX_CONSECUTIVE_FAILURES:
                raise error
            return
        if kind is AwsErrorKind.NOT_AWS:
            raise error  # not an answer from AWS: a bug, not a permission
        # Usually a missing logs:GetLogEvents permission: the job runs on regardless, so say it
        # once and go on watching its status rather than fail the step over its log.
        self._logs_readable = False
        self.emit(
            f"{self.prefix}Cannot read the job's log (group {location.group}, stream {location.stream}): "
            f"{error}. Its lines will not be shown here; the job goes on."
        )

    # --- failure -------------------------------------------------------------------------------

    def last_lines(self, count: int) -> list[str]:
        """The last ``count`` lines of the job's log, each cut to :data:`MAX_QUOTED_LINE_CHARS`."""
        lines = list(self.tail)[-count:] if count > 0 else []
        return [
            line if len(line) <= MAX_QUOTED_LINE_CHARS else line[:MAX_QUOTED_LINE_CHARS] + " [...]"
            for line in lines
        ]

    def failure_message(self, job: dict[str, Any], *, what: str) -> str:
        """One paragraph saying that ``what`` (e.g. "Step 'train' of flow TrainFlow") failed on
        Batch, with Batch's reasons, the exit code and the last lines of the log, indented."""
        container = _last_container(job)
        details = []
        reason = job.get("statusReason")
        if reason:
            details.append(f"Batch says: {reason}")
        container_reason = container.get("reason")
        if container_reason and container_reason != reason:
            details.append(f"container: {container_reason}")
        exit_text = _exit_code_text(job)
        if exit_text:
            details.append(exit_text)
        job_id, status = job.get("jobId", self.job_id), job.get("status", "?")
        message = f"{what} failed on AWS Batch (job {job_id}, status {status})"
        message += f": {'; '.join(details)}." if details else "."
        lines = self.last_lines(FAILURE_TAIL_LINES)
        if lines:
            quoted = "\n".join("    " + line for line in lines)
            message += f" The last {len(lines)} lines of its log:\n{quoted}"
        elif log_driver(job) != AWSLOGS_DRIVER:
            message += (
                f" Its log went to its log driver '{log_driver(job)}', not to CloudWatch Logs: look there."
            )
        else:
            message += " Its log has no lines: it failed before its command printed anything."
        return message


# --- why a job waits ----------------------------------------------------------------------------


def runnable_hint(client: BatchClient, job: dict[str, Any]) -> str:
    """Why ``job`` may be sitting in RUNNABLE, said concretely when its queue and compute
    environments show a reason, else a paragraph on what to check. Never raises: a hint that
    failed must not fail the step it was meant to explain."""
    try:
        return _runnable_reason(client, job)
    except Exception as error:  # noqa: BLE001 - any failure here becomes the generic hint
        return (
            f"The job's queue and compute environments could not be described "
            f"({type(error).__name__}: {error}); if the queue is enabled and big enough, the job is "
            + WAITING_FOR_CAPACITY
        )


def _runnable_reason(client: BatchClient, job: dict[str, Any]) -> str:
    queue_ref = job.get("jobQueue")
    if not queue_ref:
        return "If its queue is enabled and big enough, the job is " + WAITING_FOR_CAPACITY
    queue = client.describe_job_queue(queue_ref)
    if queue is None:
        return f"Its job queue {queue_ref} was not found: it was deleted after the job was submitted."
    queue_name = queue.get("jobQueueName") or queue_ref
    if queue.get("state") != "ENABLED":
        return (
            f"Job queue '{queue_name}' is {queue.get('state')}: no job in it leaves RUNNABLE until it is "
            f"enabled (aws batch update-job-queue --job-queue {queue_name} --state ENABLED)."
        )
    if queue.get("status") not in (None, "VALID"):
        because = f" ({queue['statusReason']})" if queue.get("statusReason") else ""
        return f"Job queue '{queue_name}' is {queue['status']}, not VALID{because}: fix the queue first."
    order = sorted(queue.get("computeEnvironmentOrder") or [], key=lambda item: item.get("order", 0))
    arns = [item["computeEnvironment"] for item in order if item.get("computeEnvironment")]
    if not arns:
        return f"Job queue '{queue_name}' has no compute environment: attach one to it."
    environments = client.describe_compute_environments(arns)
    usable = [ce for ce in environments if ce.get("state") == "ENABLED" and ce.get("status") != "INVALID"]
    if not usable:
        described = "; ".join(_environment_state(ce) for ce in environments) or "none found"
        return (
            f"No compute environment of job queue '{queue_name}' can run jobs: {described}. Enable "
            f"one, or fix what its status reason says (often its service role or instance role)."
        )
    vcpus, memory, gpus = job_requirements(job)
    reasons = [_why_it_cannot_fit(ce, vcpus, memory, gpus) for ce in usable]
    asked = _requirements_text(vcpus, memory, gpus)
    if all(reasons):
        return (
            f"It will stay RUNNABLE: the job asks for {asked}, and no enabled compute environment of "
            f"job queue '{queue_name}' can place it: {'; '.join(reasons)}. Ask for less (@batch or "
            f"@resources cpu/memory/gpu) or enlarge the compute environment."
        )
    sizes = ", ".join(
        f"'{ce.get('computeEnvironmentName')}' (maxvCpus {_max_vcpus(ce) or '?'})" for ce in usable
    )
    environments_text = "compute environments" if len(usable) > 1 else "compute environment"
    return (
        f"Job queue '{queue_name}' is enabled and its {environments_text} {sizes} can hold the job's "
        f"{asked}, " + WAITING_FOR_CAPACITY
    )


def job_requirements(job: dict[str, Any]) -> tuple[float | None, int | None, int]:
    """(vCPUs, memory in MiB, GPUs) the job asked for: ``container.resourceRequirements``, else the
    legacy ``vcpus``/``memory`` fields; None when unknown."""
    container = job.get("container") or {}
    asked = {item.get("type"): item.get("value") for item in container.get("resourceRequirements") or []}
    vcpus = float(asked["VCPU"]) if asked.get("VCPU") else None
    if vcpus is None and container.get("vcpus"):
        vcpus = float(container["vcpus"])
    memory = int(float(asked["MEMORY"])) if asked.get("MEMORY") else None
    if memory is None and container.get("memory"):
        memory = int(container["memory"])
    gpus = int(float(asked.get("GPU") or 0))
    return vcpus, memory, gpus


def _why_it_cannot_fit(
    environment: dict[str, Any], vcpus: float | None, memory: int | None, gpus: int
) -> str:
    """Why no instance of this compute environment can take the job; "" when it may (or when its
    capacity is unknown, as for an unmanaged environment)."""
    name = environment.get("computeEnvironmentName", "?")
    resources = environment.get("computeResources") or {}
    if environment.get("type") == "UNMANAGED" or not resources:
        return ""
    kind = resources.get("type", "")
    max_vcpus = resources.get("maxvCpus")
    if vcpus is not None and max_vcpus is not None and vcpus > max_vcpus:
        return f"'{name}' has maxvCpus {max_vcpus}, fewer than the {vcpus:g} vCPUs asked"
    if kind.startswith("FARGATE"):
        if gpus:
            return f"'{name}' is Fargate, which has no GPUs"
        if vcpus is not None and vcpus > FARGATE_MAX_VCPUS:
            return f"'{name}' is Fargate, which allows at most {FARGATE_MAX_VCPUS} vCPUs"
        if memory is not None and memory > FARGATE_MAX_MEMORY_MIB:
            return f"'{name}' is Fargate, which allows at most {FARGATE_MAX_MEMORY_MIB} MiB"
        return ""
    if memory is not None and max_vcpus is not None and memory > max_vcpus * MAX_MEMORY_MIB_PER_VCPU:
        return f"'{name}' has maxvCpus {max_vcpus}: no instance type that small has {memory} MiB"
    instance_types = resources.get("instanceTypes") or []
    if (
        gpus
        and instance_types
        and not any(GPU_FAMILY.match(instance_type) for instance_type in instance_types)
    ):
        return f"'{name}' has no GPU instance types ({', '.join(instance_types)})"
    return ""


def _max_vcpus(environment: dict[str, Any]) -> Any:
    return (environment.get("computeResources") or {}).get("maxvCpus")


def _environment_state(environment: dict[str, Any]) -> str:
    name = environment.get("computeEnvironmentName", "?")
    text = f"'{name}' is {environment.get('state')}, {environment.get('status')}"
    if environment.get("statusReason"):
        text += f" ({environment['statusReason']})"
    return text


def _requirements_text(vcpus: float | None, memory: int | None, gpus: int) -> str:
    parts = [f"{vcpus:g} vCPUs" if vcpus is not None else "an unknown number of vCPUs"]
    if memory is not None:
        parts.append(f"{memory} MiB")
    if gpus:
        parts.append(f"{gpus} GPU{'s' if gpus > 1 else ''}")
    return ", ".join(parts)


# --- small helpers ------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


def _last_container(job: dict[str, Any]) -> dict[str, Any]:
    """The job's container details, completed from its last attempt (where Batch keeps the exit
    code and reason of a container that has gone)."""
    container = dict(job.get("container") or {})
    attempts = job.get("attempts") or []
    if attempts:
        for key, value in (attempts[-1].get("container") or {}).items():
            container.setdefault(key, value)
    return container


def exit_code(job: dict[str, Any]) -> int | None:
    """The exit code of the job's container (of its last attempt), None if it never ran."""
    return _last_container(job).get("exitCode")


def _exit_code_text(job: dict[str, Any]) -> str:
    code = exit_code(job)
    return f"exit code {code}" if code is not None else ""
