"""A local AWS for Batch flows: moto's server on 127.0.0.1 with S3, CloudWatch Logs and a Batch
whose jobs really run, each as a local process (see ``process_job``).

    with LocalAws() as aws:
        os.environ.update(aws.environment)   # boto3, Airflow's amazon provider and flowspec use it
        ...

or, from a shell::

    python -m airflow_flowspec.testing.local_aws      # prints export lines, stops on Ctrl-C

Each ``LocalAws`` creates its own bucket, compute environment, job queue and job definition (names
carry a random suffix, since moto's backends are shared by every server in a process). Stopping it
terminates every job it ran, waits for their threads, stops the server and puts moto's ``Job``
class back: no job process outlives it.

moto is imported when a ``LocalAws`` starts, never when this module is imported.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
from typing import Any

REGION = "us-east-1"
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
#: The image is recorded, not pulled: jobs run with this machine's Python.
JOB_IMAGE = "public.ecr.aws/docker/library/python:3.12-slim"


class LocalAws:
    """moto's server with a Batch that runs jobs as local processes.

    ``dwell_seconds``: how long a job stays in SUBMITTED, RUNNABLE and STARTING (long enough for a
    poller to see each). ``max_vcpus``: the compute environment's size; a job asking for more stays
    RUNNABLE, as on AWS. ``job_memory``/``job_vcpus``: the job definition's defaults (MiB, vCPUs);
    the memory limit is enforced on each job's data segment.
    """

    def __init__(
        self,
        *,
        dwell_seconds: float = 0.2,
        max_vcpus: int = 16,
        job_vcpus: int = 1,
        job_memory: int = 2048,
        region: str = REGION,
        python: str = sys.executable,
    ) -> None:
        self.dwell_seconds = dwell_seconds
        self.max_vcpus = max_vcpus
        self.job_vcpus = job_vcpus
        self.job_memory = job_memory
        self.region = region
        self.python = python
        suffix = secrets.token_hex(3)
        self.bucket = f"flowspec-local-{suffix}"
        self.compute_environment = f"flowspec-local-{suffix}"
        self.job_queue = f"flowspec-local-{suffix}"
        self.job_definition = f"flowspec-local-{suffix}"
        self.endpoint_url = ""
        self.job_workdir = ""
        self.jobs: list[Any] = []
        self._jobs_lock = threading.Lock()
        self._server: Any = None
        self._original_job_class: Any = None
        self._closed = False
        self._clients: dict[str, Any] = {}

    # --- what clients need ---------------------------------------------------------------------

    @property
    def environment(self) -> dict[str, str]:
        """The variables that point boto3, Airflow's amazon provider and flowspec at this AWS."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AIRFLOW__FLOWSPEC__DATASTORE_ROOT": f"s3://{self.bucket}/flows",
            "AIRFLOW__FLOWSPEC__BATCH_JOB_QUEUE": self.job_queue,
            "AIRFLOW__FLOWSPEC__BATCH_JOB_DEFINITION": self.job_definition,
        }

    def client(self, service: str) -> Any:
        """A boto3 client for this AWS (made once per service; boto3 clients are thread-safe)."""
        if service not in self._clients:
            import boto3

            self._clients[service] = boto3.session.Session().client(
                service,
                endpoint_url=self.endpoint_url,
                region_name=self.region,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
            )
        return self._clients[service]

    # --- what jobs ask of it -------------------------------------------------------------------

    @property
    def job_base_environment(self) -> dict[str, str]:
        """What a job's process starts from, before the job's own environment: no more of this
        process's environment than a container would have."""
        return {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": self.job_workdir,
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",  # else a job's lines reach CloudWatch out of order
            **{key: value for key, value in self.environment.items() if key.startswith("AWS_")},
        }

    def resolve_command(self, command: list[str]) -> list[str]:
        """``python``/``python3`` in a job's command means this machine's interpreter."""
        if command and command[0] in ("python", "python3"):
            return [self.python, *command[1:]]
        return command

    def fits(self, job: Any) -> bool:
        """Can the job leave RUNNABLE: its queue is ENABLED and one of the queue's ENABLED compute
        environments has at least the job's vCPUs."""
        if job.job_queue.state != "ENABLED":
            return False
        vcpus = job.requirement("VCPU", 1)
        for environment in job.job_queue.environments:
            resources = environment.compute_resources or {}
            if environment.state == "ENABLED" and int(resources.get("maxvCpus", 0)) >= vcpus:
                return True
        return False

    def adopt(self, job: Any) -> None:
        with self._jobs_lock:
            self.jobs.append(job)

    def describe_calls(self, job_id: str | None = None) -> int:
        """How many DescribeJobs answers have described job ``job_id`` (every job's, without it),
        whoever asked."""
        with self._jobs_lock:
            return sum(job.describe_calls for job in self.jobs if job_id in (None, job.job_id))

    # --- life ----------------------------------------------------------------------------------

    def start(self) -> LocalAws:
        import moto.batch.models as batch_models
        from moto.server import ThreadedMotoServer

        from airflow_flowspec.testing.process_job import ProcessJob

        self.job_workdir = tempfile.mkdtemp(prefix="flowspec-local-aws-jobs-")
        self._original_job_class = batch_models.Job
        batch_models.Job = type(
            "LocalProcessJob", (ProcessJob,), {"emulator": self, "__module__": ProcessJob.__module__}
        )
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        try:
            self._create_resources()
        except BaseException:
            self.stop()
            raise
        return self

    def _create_resources(self) -> None:
        self.client("s3").create_bucket(Bucket=self.bucket)
        iam = self.client("iam")
        trust = '{"Version":"2012-10-17","Statement":[]}'
        service_role = iam.create_role(
            RoleName=f"{self.compute_environment}-service", AssumeRolePolicyDocument=trust
        )
        iam.create_instance_profile(InstanceProfileName=f"{self.compute_environment}-instance")
        ec2 = self.client("ec2")
        subnets = [subnet["SubnetId"] for subnet in ec2.describe_subnets()["Subnets"]]
        groups = [group["GroupId"] for group in ec2.describe_security_groups()["SecurityGroups"]]
        batch = self.client("batch")
        environment = batch.create_compute_environment(
            computeEnvironmentName=self.compute_environment,
            type="MANAGED",
            state="ENABLED",
            serviceRole=service_role["Role"]["Arn"],
            computeResources={
                "type": "EC2",
                "minvCpus": 0,  # moto starts fake EC2 instances for the minimum: none
                "maxvCpus": self.max_vcpus,
                "instanceTypes": ["optimal"],
                "instanceRole": f"{self.compute_environment}-instance",
                "subnets": subnets[:1],
                "securityGroupIds": groups[:1],
            },
        )
        batch.create_job_queue(
            jobQueueName=self.job_queue,
            state="ENABLED",
            priority=1,
            computeEnvironmentOrder=[
                {"order": 1, "computeEnvironment": environment["computeEnvironmentArn"]}
            ],
        )
        batch.register_job_definition(
            jobDefinitionName=self.job_definition,
            type="container",
            containerProperties={
                "image": JOB_IMAGE,
                "command": ["python", "-c", "print('hello from a local Batch job')"],
                "resourceRequirements": [
                    {"type": "VCPU", "value": str(self.job_vcpus)},
                    {"type": "MEMORY", "value": str(self.job_memory)},
                ],
            },
        )

    def terminate_all_jobs(self, reason: str = "Local AWS stopped") -> None:
        """Terminate every job this emulator ran and wait for its thread (and so its processes)."""
        with self._jobs_lock:
            jobs = list(self.jobs)
        for job in jobs:
            job.terminate(reason)
        for job in jobs:
            if job.is_alive():
                job.join()

    def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.terminate_all_jobs()
        finally:
            if self._server is not None:
                self._server.stop()
            if self._original_job_class is not None:
                import moto.batch.models as batch_models

                batch_models.Job = self._original_job_class
            if self.job_workdir:
                shutil.rmtree(self.job_workdir, ignore_errors=True)

    def __enter__(self) -> LocalAws:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def export_lines(environment: dict[str, str]) -> list[str]:
    import shlex

    return [f"export {name}={shlex.quote(value)}" for name, value in environment.items()]


def main(argv: list[str] | None = None) -> int:
    """Start a local AWS in the foreground, print its ``export`` lines, stop on SIGINT/SIGTERM."""
    import argparse
    import logging

    parser = argparse.ArgumentParser(
        prog="python -m airflow_flowspec.testing.local_aws", description=main.__doc__
    )
    parser.add_argument(
        "--dwell", type=float, default=0.2, help="seconds a job spends in each waiting status"
    )
    parser.add_argument("--max-vcpus", type=int, default=16, help="the compute environment's maxvCpus")
    arguments = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    stopping = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    with LocalAws(dwell_seconds=arguments.dwell, max_vcpus=arguments.max_vcpus) as aws:
        print("\n".join(export_lines(aws.environment)), flush=True)
        print(f"# local AWS on {aws.endpoint_url}; Ctrl-C stops it", file=sys.stderr, flush=True)
        while not stopping.wait(0.5):
            pass
    print("# local AWS stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
