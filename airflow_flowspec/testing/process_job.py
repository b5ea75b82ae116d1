"""moto's Batch job, run as a local process instead of a Docker container.

moto's ``BatchBackend.submit_job`` looks up the module-level name ``Job`` each time it is called, so
``LocalAws`` swaps in a subclass of ``ProcessJob`` (bound to itself) while it runs and puts moto's
class back when it stops. Everything else (queues, compute environments, job definitions,
DescribeJobs, CloudWatch Logs) stays moto's.

What a job does, as AWS Batch would show it: SUBMITTED, (PENDING while it has unfinished
dependencies), RUNNABLE (for as long as no ENABLED compute environment of an ENABLED queue can fit
its vCPUs), STARTING, RUNNING, then SUCCEEDED or FAILED by the command's exit code, with
``statusReason`` and ``container.exitCode``. Its output goes to CloudWatch Logs line by line as it
is printed, stream ``<job definition>/default/<job id>``, in the group its job definition's
``logConfiguration`` names (``awslogs-group``), else ``/aws/batch/job``; a job whose definition
names another log driver writes no CloudWatch log, as on AWS.

A job knows the emulator that runs it only as a :class:`JobHost`, so this module does not import
``local_aws`` (which imports this one). It imports moto at the top: only ``LocalAws.start`` imports
it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from datetime import datetime
from typing import Any, Protocol

import moto.batch.models as batch_models

#: Where a job's output goes when its job definition names no log group (Batch's default).
DEFAULT_LOG_GROUP = "/aws/batch/job"
#: Runs as ``python -I -S -c LIMITER <bytes> <command...>``: sets the data-segment limit, then
#: becomes the job's command. ``RLIMIT_DATA`` rather than ``RLIMIT_AS``: the address-space limit
#: counts reserved but unused memory (thread stacks, read-only maps) and breaks ordinary programs
#: long before they use their memory. An exec trampoline rather than ``preexec_fn``, which is unsafe
#: in a process with threads (moto's server is one).
LIMITER = (
    "import os,resource,sys;n=int(sys.argv[1]);"
    "resource.setrlimit(resource.RLIMIT_DATA,(n,n));os.execvp(sys.argv[2],sys.argv[2:])"
)
#: How long a terminated job's processes get between SIGTERM and SIGKILL.
KILL_GRACE_SECONDS = 2.0
TERMINAL = ("SUCCEEDED", "FAILED")


class JobHost(Protocol):
    """What a job asks of the emulator that runs it (``LocalAws`` is one)."""

    dwell_seconds: float
    job_workdir: str
    python: str

    @property
    def job_base_environment(self) -> dict[str, str]: ...

    def resolve_command(self, command: list[str]) -> list[str]: ...

    def fits(self, job: Any) -> bool: ...

    def adopt(self, job: Any) -> None: ...


class ProcessJob(batch_models.Job):
    """One Batch job: a thread that runs the job's command as a local process group.

    ``emulator`` is set on the per-``LocalAws`` subclass: it gives the dwell per status, the
    environment every job starts from, and whether a job fits its queue.
    """

    emulator: JobHost

    # moto's ManagedState advances the status when it is read; here only run() moves it.
    status = property(lambda self: self._status, lambda self, value: setattr(self, "_status", value))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.process: subprocess.Popen[bytes] | None = None
        self._last_log_timestamp = 0
        #: DescribeJobs answers that included this job: what following it cost.
        self.describe_calls = 0
        self.emulator.adopt(self)

    # --- what DescribeJobs shows -------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        self.describe_calls += 1  # only DescribeJobs describes a job in full
        return super().describe()

    def _get_container_property(self, p: str, default: Any) -> Any:
        if p == "environment":  # moto's version appends to the overrides on every describe
            return [{"name": name, "value": value} for name, value in self.batch_environment().items()]
        if p == "vcpus":
            return self.requirement("VCPU", default)
        if p == "memory":
            return self.requirement("MEMORY", default)
        return super()._get_container_property(p, default)

    def _container_details(self) -> dict[str, Any]:
        details = super()._container_details()  # moto drops the exitCode describe_short set
        if self.exit_code is not None:
            details["exitCode"] = self.exit_code
        if self.job_stopped and self.job_stopped_reason:
            details["reason"] = self.job_stopped_reason
        # As Batch shows them: the sizes the job runs with, overrides applied.
        details["resourceRequirements"] = [
            {"type": "VCPU", "value": str(self.requirement("VCPU", 1))},
            {"type": "MEMORY", "value": str(self.requirement("MEMORY", 2048))},
        ] + [r for r in self.container_overrides.get("resourceRequirements", []) if r.get("type") == "GPU"]
        log_configuration = self._get_container_property("logConfiguration", None)
        if log_configuration:  # as Batch shows it; moto leaves it out
            details["logConfiguration"] = log_configuration
        return details

    def log_group(self) -> str | None:
        """The CloudWatch group the job's output goes to, None when its log driver is another."""
        configuration = self._get_container_property("logConfiguration", None) or {}
        if configuration.get("logDriver", "awslogs") != "awslogs":
            return None
        return (configuration.get("options") or {}).get("awslogs-group") or DEFAULT_LOG_GROUP

    def batch_environment(self) -> dict[str, str]:
        """The job definition's environment, the overrides' on top, then what Batch itself sets."""
        properties = self.job_definition.container_properties or {}
        environment = {item["name"]: item["value"] for item in properties.get("environment", [])}
        environment.update(
            {item["name"]: item["value"] for item in self.container_overrides.get("environment", [])}
        )
        environment["AWS_BATCH_JOB_ID"] = self.job_id
        environment["AWS_BATCH_JOB_ATTEMPT"] = str(len(self.attempts) or 1)
        environment["AWS_BATCH_JQ_NAME"] = self.job_queue.name
        # What ECS and Batch set besides, which Metaflow's @batch records in each task's metadata.
        if self.job_queue.environments:
            environment["AWS_BATCH_CE_NAME"] = self.job_queue.environments[0].name
        environment["AWS_EXECUTION_ENV"] = "AWS_ECS_EC2"
        if "index" in self.array_properties:
            environment["AWS_BATCH_JOB_ARRAY_INDEX"] = str(self.array_properties["index"])
        return environment

    def requirement(self, kind: str, default: Any) -> int:
        """vCPUs or memory (MiB): the overrides' ``resourceRequirements`` (or their legacy
        ``vcpus``/``memory``), else the job definition's. moto ignores the overrides' list."""
        for item in self.container_overrides.get("resourceRequirements", []):
            if item.get("type") == kind:
                return int(float(item["value"]))
        legacy = "vcpus" if kind == "VCPU" else "memory"
        if legacy in self.container_overrides:
            return int(self.container_overrides[legacy])
        return int(self.job_definition._get_resource_requirement(legacy, default))

    # --- the job's life ------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except Exception as error:  # an emulator bug must end the job, not leave it RUNNING forever
            self.job_stopped_reason = self.job_stopped_reason or f"Emulator error: {error!r}"
            self.kill_process_group()
            self._mark_stopped(success=False)

    def _run(self) -> None:
        self._dwell()
        if self.depends_on:
            self.status = "PENDING"
            if not self._dependencies_succeeded():
                return
        self.status = "RUNNABLE"
        self._dwell()
        while not self.stop and not self.emulator.fits(self):  # as Batch: unfit jobs wait here
            time.sleep(0.1)
        if self.stop:
            self._mark_stopped(success=False)
            return
        self.status = "STARTING"
        self._dwell()
        self.job_started_at = datetime.now()
        self.log_stream_name = self._stream_name
        group = self.log_group()
        if group is not None:
            self._log_backend.ensure_log_group(group)
            self._log_backend.ensure_log_stream(group, self.log_stream_name)
        self._start_attempt()
        command = self.emulator.resolve_command(
            self._add_parameters_to_command(self._get_container_property("command", []))
        )
        memory_bytes = self.requirement("MEMORY", 2048) << 20
        # Each container has a file system of its own: jobs running side by side must not share
        # a working directory (Metaflow's bootstrap unpacks its code package and logs into it).
        workdir = os.path.join(self.emulator.job_workdir, self.job_id)
        os.makedirs(workdir, exist_ok=True)
        self.process = subprocess.Popen(
            [self.emulator.python, "-I", "-S", "-c", LIMITER, str(memory_bytes), *command],
            env={**self.emulator.job_base_environment, "HOME": workdir, **self.batch_environment()},
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.status = "RUNNING"
        pump = threading.Thread(
            target=self._pump_output, args=(group,), name=f"{self.name}-logs", daemon=True
        )
        pump.start()
        limit = self._get_attempt_duration()
        while self.process.poll() is None:
            timed_out = limit is not None and (datetime.now() - self.job_started_at).total_seconds() > limit
            if self.stop or timed_out:
                if timed_out and not self.stop:
                    self.job_stopped_reason = "Job attempt duration exceeded timeout"
                self.kill_process_group()
                break
            time.sleep(0.05)
        self.process.wait()
        self._kill_leftovers()  # a container's processes end with it
        pump.join(5)
        code = self.process.returncode
        self.exit_code = 128 - code if code < 0 else code  # killed by signal n: 128 + n, as Docker
        self.job_stopped_reason = self.job_stopped_reason or "Essential container in task exited"
        self._mark_stopped(success=code == 0 and not self.stop)

    def _dwell(self) -> None:
        deadline = time.monotonic() + self.emulator.dwell_seconds
        while not self.stop and time.monotonic() < deadline:
            time.sleep(0.01)

    def _dependencies_succeeded(self) -> bool:
        wanted = [dependency["jobId"] for dependency in self.depends_on or []]
        while not self.stop:
            statuses = [getattr(self.all_jobs.get(job_id), "status", None) for job_id in wanted]
            if "FAILED" in statuses:
                self.job_stopped_reason = "Dependent Job failed"
                self._mark_stopped(success=False)
                return False
            if all(status == "SUCCEEDED" for status in statuses):
                return True
            time.sleep(0.1)
        self._mark_stopped(success=False)
        return False

    def _pump_output(self, group: str | None) -> None:
        """Send each line the job prints to its log group (read and dropped without one: a
        container's output goes to its log driver, whatever that is)."""
        assert self.process is not None and self.process.stdout is not None
        for raw_line in iter(self.process.stdout.readline, b""):
            if group is None:
                continue
            # moto's GetLogEvents sorts by timestamp and pages by index: a timestamp that went
            # backwards would make a reader skip or repeat lines.
            self._last_log_timestamp = max(int(time.time() * 1000), self._last_log_timestamp)
            message = raw_line.decode("utf-8", "replace").rstrip("\r\n")
            self._log_backend.put_log_events(
                group, self.log_stream_name, [{"timestamp": self._last_log_timestamp, "message": message}]
            )

    def kill_process_group(self) -> None:
        """SIGTERM the job's process group, SIGKILL after ``KILL_GRACE_SECONDS``, as ECS stops a
        container."""
        if self.process is None or self.process.poll() is not None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.process.wait()

    def _kill_leftovers(self) -> None:
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, signum: int) -> None:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signum)  # start_new_session: the group id is the pid
        except (ProcessLookupError, PermissionError):
            pass

    def terminate(self, reason: str) -> None:
        if not self.job_stopped:  # moto's would rewrite a finished job's reason
            super().terminate(reason)

    def is_finished(self) -> bool:
        return self.job_stopped or self._status in TERMINAL
