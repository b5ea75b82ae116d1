"""Run a step as an AWS Batch job: the Amazon provider's ``BatchOperator`` submits it and links it
in the UI, the shared mixin builds the task spec and publishes the manifest, and the container runs
the same step runtime as a worker does (``python -m airflow_flowspec.runtime``).

What this subclass adds is what a step needs and ``BatchOperator`` does not do: the job assembled
from the step's decorators at run time (a registered, content-named job definition; overrides
that carry only the spec's datastore key), a wait that reports every status change and the step's
own log lines and explains a job stuck in RUNNABLE, a failure message with Batch's reason and the
log's last lines, a flow mistake (the runtime's exit status 202) failing without retries, and a
job found again after the worker that submitted it died, instead of a duplicate beside it.

It holds parameters and decides; every AWS call but the submission (``BatchOperator.submit_job``)
goes through :class:`~airflow_flowspec.aws_batch.client.BatchClient`, built over the hook's client.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.providers.amazon.aws.links.batch import (
    BatchJobDefinitionLink,
    BatchJobDetailsLink,
    BatchJobQueueLink,
)
from airflow.providers.amazon.aws.links.logs import CloudWatchEventsLink
from airflow.providers.amazon.aws.operators.batch import BatchOperator
from airflow.sdk import SkipMixin
from airflow.sdk.exceptions import AirflowFailException

from airflow_flowspec import config
from airflow_flowspec.aws_batch.client import NEW_JOB_DESCRIBE_ATTEMPTS, BatchClient, log_location
from airflow_flowspec.aws_batch.jobs import (
    FINISHED,
    BatchJobSettings,
    container_overrides,
    job_name,
    job_tags,
)
from airflow_flowspec.aws_batch.polling import PollSchedule
from airflow_flowspec.client.namespaces import RUN_NAMESPACE_VARIABLE
from airflow_flowspec.errors import EXIT_DISALLOW_RETRY, BatchJobFailedError, BatchJobSpecError
from airflow_flowspec.operators.step_task import StepTaskMixin, flow_mistakes_fail_at_once
from airflow_flowspec.runtime.task_log import LINES_PREFIXED, lines_prefixed

#: The task state store key holding the job this task instance submitted (kept across tries).
JOB_RECORD_KEY = "flowspec_batch_job"
#: ``[flowspec]`` options a step's container needs to read and write the datastore as a worker does.
CONTAINER_OPTIONS = ("s3_multipart_threshold_mb",)
#: Set by ``python flow.py run``: job statuses and the step's log lines go to the terminal too.
CONSOLE_ENVIRONMENT_VARIABLE = config.CONSOLE_VARIABLE


class StepBatchOperator(StepTaskMixin, BatchOperator, SkipMixin):
    """One flow step, executed as an AWS Batch job."""

    ui_color = "#f4e3c1"
    # The overrides and names are built in execute(); the rendered-fields view shows those.
    overwrite_rtif_after_execution = True

    def __init__(
        self,
        *,
        flow_file: str,
        flow_name: str,
        step_name: str,
        input_pulls: list[dict[str, Any]],
        batch_settings: BatchJobSettings | dict[str, Any],
        catches: bool = False,
        start_parameters: list[Any] | None = None,
        foreach_frame: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        missing = [name for name in ("aws_conn_id", "region_name", "deferrable") if name not in kwargs]
        if missing:  # the translator passes them; an operator made by hand reads the options
            options = config.batch_options()
            kwargs.update({name: options[name] for name in missing})
        if not isinstance(batch_settings, BatchJobSettings):
            batch_settings = BatchJobSettings.from_arguments(batch_settings)
        super().__init__(
            job_name=f"{flow_name}-{step_name}",  # the real ones are made per task in execute()
            job_definition=batch_settings.job_definition or "",
            job_queue=batch_settings.queue,
            awslogs_enabled=False,  # the step's log lines come through JobWatcher
            **kwargs,
        )
        self.flow_file = flow_file
        self.flow_name = flow_name
        self.step_name = step_name
        self.input_pulls = input_pulls
        self.foreach_frame = foreach_frame
        self.batch_settings = batch_settings
        self.catches = catches  # the step has @catch
        self.start_parameters = start_parameters or []  # the flow's Parameters (start step only)
        self._attempt: int | None = None

    # -- execute ---------------------------------------------------------------------------------

    def execute(self, context: Any) -> Any:
        # Held while this worker waits; a deferred wait is held by the trigger, the job by its step.
        with flow_mistakes_fail_at_once(), self.task_lease(context):
            spec = self.build_task_spec(context)
            if not spec.datastore_root.startswith("s3://"):
                raise BatchJobSpecError(
                    f"Step '{self.step_name}' of flow {self.flow_name} runs on AWS Batch, which reads and "
                    f"writes artifacts in S3, but [flowspec] datastore_root is {spec.datastore_root!r}. "
                    f"Set it to s3://bucket/prefix (a bucket the job role can read and write)."
                )
            if self._adopt_earlier_job(context, spec) is None:
                self._submit(context, spec)
            # An adopted job runs (and stores its result under) the attempt that submitted it.
            return self._wait_and_publish(context, self._attempt or spec.attempt, spec)

    def _submit(self, context: Any, spec: Any) -> None:
        from airflow_flowspec.runtime.process import write_task_spec

        if self.start_parameters:
            from airflow_flowspec.datastore import open_datastore
            from airflow_flowspec.runtime.parameter_values import resolve_where_the_run_starts

            spec.parameters = resolve_where_the_run_starts(
                self.start_parameters, spec.parameters, open_datastore(spec.datastore_root), self.flow_name
            )
        self._assemble_job(context, spec, write_task_spec(spec))
        self.submit_job(context)
        self._attempt = spec.attempt
        self._remember_job(context, spec.attempt)

    def _assemble_job(self, context: Any, spec: Any, spec_key: str) -> None:
        settings = self.batch_settings
        ti = context["ti"]
        self.job_definition = self._aws().ensure_job_definition(settings)
        self.job_queue = settings.queue
        self.job_name = job_name(spec.flow_name, spec.run_id, spec.step, spec.task_id, spec.attempt)
        self.tags = _task_job_tags(ti, spec, spec.attempt, settings.tags)
        command = [
            "python",
            "-m",
            "airflow_flowspec.runtime",
            "--root",
            spec.datastore_root,
            "--spec-key",
            spec_key,
        ]
        values = {option: config.get_option(option) for option in CONTAINER_OPTIONS}
        environment = {
            config.option_variable(config.SECTION, option): value
            for option, value in values.items()
            if value != config.DEFAULTS[option]
        }
        if lines_prefixed():  # python flow.py run relays the job's log lines, prefixed already
            environment[LINES_PREFIXED] = "1"
        if RUN_NAMESPACE_VARIABLE in os.environ:  # run --namespace: what the step's client sees
            environment[RUN_NAMESPACE_VARIABLE] = os.environ[RUN_NAMESPACE_VARIABLE]
        self.container_overrides = container_overrides(settings, command=command, environment=environment)
        self.submit_job_timeout = settings.timeout_seconds

    # -- one job per try; a dead worker's job is adopted, not duplicated ---------------------------

    def _adopt_earlier_job(self, context: Any, spec: Any) -> dict[str, Any] | None:
        """The job an earlier try of this task submitted, if it is still going and can stand for
        this try: the worker that waited for it died, and a second job beside it would run the step
        twice at once. A finished job is not adopted (a cleared task means: run it again).

        The job is the one the task state store recorded; without a record (the worker died
        between submitting and recording), the one Batch knows by the previous try's name whose
        tags name this very task instance."""
        aws = self._aws()
        record = _get_record(context.get("task_state_store"))
        if not record or not record.get("job_id"):
            record = self._find_by_name_and_tags(aws, context, spec)
        if not record:
            return None
        jobs = aws.describe_jobs([record["job_id"]])
        if not jobs or jobs[0].get("status") in FINISHED:
            return None
        catch_on_last_try = self.catches and spec.attempt >= spec.max_attempts
        if catch_on_last_try and record.get("attempt", 0) < spec.attempt:
            # Its spec says it is not the last attempt, so @catch would not take its failure.
            aws.terminate_job(record["job_id"], "Replaced by the last try, whose @catch applies")
            return None
        self.job_id = record["job_id"]
        self._attempt = int(record.get("attempt") or spec.attempt)
        self.log.info(
            "AWS Batch job %s of an earlier try of this task is still %s: waiting for it instead of "
            "submitting another.",
            self.job_id,
            jobs[0]["status"],
        )
        # submit_job links the jobs it submits; this one was submitted by an earlier try.
        BatchJobDetailsLink.persist(
            context=context,
            operator=self,
            region_name=self.hook.conn_region_name,
            aws_partition=self.hook.conn_partition,
            job_id=self.job_id,
        )
        return jobs[0]

    def _find_by_name_and_tags(self, aws: BatchClient, context: Any, spec: Any) -> dict[str, Any] | None:
        ti = context["ti"]
        for attempt in (spec.attempt - 1, spec.attempt):
            if attempt < 1:
                continue
            name = job_name(spec.flow_name, spec.run_id, spec.step, spec.task_id, attempt)
            job = aws.find_active_job(self.batch_settings.queue, name, _task_job_tags(ti, spec, attempt, {}))
            if job is not None:
                return {"job_id": job["jobId"], "attempt": attempt}
        return None

    def _remember_job(self, context: Any, attempt: int) -> None:
        store = context.get("task_state_store")
        if store is None:
            return
        try:
            store.set(JOB_RECORD_KEY, {"job_id": self.job_id, "attempt": attempt})
        except Exception as error:  # noqa: BLE001 - a lost record costs a duplicate, never the step
            self.log.warning("Could not record AWS Batch job %s for a retry to find: %s", self.job_id, error)

    # -- waiting --------------------------------------------------------------------------------

    def _wait_and_publish(self, context: Any, attempt: int, spec: Any) -> Any:
        job = self._aws().describe_job(self.job_id, attempts=NEW_JOB_DESCRIBE_ATTEMPTS)
        self._link_job(context, job)
        if self.deferrable and job.get("status") not in FINISHED:
            from airflow_flowspec.triggers.batch_job import BatchJobWaitTrigger

            deadline = None
            if self.execution_timeout:
                started = getattr(context.get("ti"), "start_date", None) or datetime.now(timezone.utc)
                deadline = (started + self.execution_timeout).isoformat()
            self.defer(
                trigger=BatchJobWaitTrigger(
                    job_id=self.job_id,
                    aws_conn_id=self.aws_conn_id,
                    region_name=self.region_name,
                    poll_schedule=PollSchedule(config.batch_poll_ceiling_seconds()).to_json(),
                    deadline=deadline,
                    label=self.step_name,
                    lease={"root": spec.datastore_root, "run": spec.run.to_json()},
                ),
                method_name="execute_complete",
                kwargs={"attempt": attempt},
                # A backstop only: the trigger's own deadline terminates the job first.
                timeout=self.execution_timeout + timedelta(minutes=5) if self.execution_timeout else None,
            )
        # Imported here: the DAG processor imports this module for every parse, the watcher is
        # needed only by a running task.
        from airflow_flowspec.aws_batch.watch import JobWatcher

        watcher = JobWatcher(self._aws(with_logs=True), self.job_id, self._emit, label=self.step_name)
        schedule = PollSchedule(config.batch_poll_ceiling_seconds())
        job = watcher.poll()
        while not watcher.is_finished(job):
            time.sleep(watcher.next_pause(schedule))
            job = watcher.poll()
        watcher.drain()
        self._link_log(context, job)
        if job["status"] != "SUCCEEDED":
            self._fail(
                job, watcher.failure_message(job, what=f"Step '{self.step_name}' of flow {self.flow_name}")
            )
        return self._publish(context, attempt)

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None, attempt: int = 1) -> Any:
        event = event or {}
        self.job_id = event.get("job_id") or self.job_id
        self._link_log(context)
        for line in event.get("log_tail") or []:
            self._emit(line)
        if event.get("status") == "timeout":
            from airflow.sdk.exceptions import AirflowTaskTimeout

            raise AirflowTaskTimeout(event.get("message") or f"{self._what()}: the job ran past its timeout.")
        if event.get("status") != "success":
            self._fail(
                {"container": {"exitCode": event.get("exit_code")}}, event.get("message") or str(event)
            )
        with flow_mistakes_fail_at_once(), self.task_lease(context):
            return self._publish(context, attempt)

    def _fail(self, job: dict[str, Any], message: str) -> None:
        exit_code = (job.get("container") or {}).get("exitCode")
        if exit_code == EXIT_DISALLOW_RETRY:
            # The step process said what it was (a flow mistake, a missing artifact...) in its log.
            raise AirflowFailException(f"{message} (another attempt would fail the same way: not retried)")
        raise BatchJobFailedError(message)

    def _publish(self, context: Any, attempt: int) -> Any:
        from airflow_flowspec.datastore import open_datastore
        from airflow_flowspec.runtime.task_spec import StepResult

        ti = context["ti"]
        task_id = str(max(ti.map_index if ti.map_index is not None else -1, 0))
        from airflow_flowspec.datastore.keys import AttemptKey

        where = AttemptKey(
            self.flow_name, self.run_identity(context).run_id, self.step_name, task_id, attempt
        )
        document = open_datastore(config.datastore_root()).read_step_result(where)
        return self.publish_result(context, StepResult.from_json(document))

    # -- kill -----------------------------------------------------------------------------------

    def on_kill(self) -> None:
        """The task was killed or timed out while waiting: the job must not run on unwatched."""
        if not self.job_id:
            return
        try:
            self._aws().terminate_job(self.job_id, f"The Airflow task running {self._what()} was stopped")
            self.log.info("AWS Batch job %s terminated.", self.job_id)
        except Exception as error:  # noqa: BLE001 - report, the kill goes on
            self.log.error("Could not terminate AWS Batch job %s: %s", self.job_id, error)

    # -- links ----------------------------------------------------------------------------------

    def _link_job(self, context: Any, job: dict[str, Any]) -> None:
        """The task's links to the job's definition and queue (BatchOperator's, through their
        public ``persist``)."""
        region, partition = self.hook.conn_region_name, self.hook.conn_partition
        if job.get("jobDefinition"):
            BatchJobDefinitionLink.persist(
                context=context,
                operator=self,
                region_name=region,
                aws_partition=partition,
                job_definition_arn=job["jobDefinition"],
            )
        if job.get("jobQueue"):
            BatchJobQueueLink.persist(
                context=context,
                operator=self,
                region_name=region,
                aws_partition=partition,
                job_queue_arn=job["jobQueue"],
            )

    def _link_log(self, context: Any, job: dict[str, Any] | None = None) -> None:
        """The task's link to the job's CloudWatch log stream, in the group the job's
        ``logConfiguration`` names. Best effort: a missing link never fails the step."""
        if not self.do_xcom_push or not self.job_id:
            return
        try:
            location = log_location(job if job is not None else self._aws().describe_job(self.job_id))
        except Exception as error:  # noqa: BLE001 - the link is a convenience
            self.log.warning("Could not find the log of AWS Batch job %s: %s", self.job_id, error)
            return
        if location is None:
            return
        CloudWatchEventsLink.persist(
            context=context,
            operator=self,
            region_name=self.hook.conn_region_name,
            aws_partition=self.hook.conn_partition,
            awslogs_region=location.region or self.hook.conn_region_name,
            awslogs_group=location.group,
            awslogs_stream_name=location.stream,
        )

    # -- helpers --------------------------------------------------------------------------------

    def _aws(self, *, with_logs: bool = False) -> BatchClient:
        """Batch (and CloudWatch Logs) through the task's Airflow connection."""
        logs_client = None
        if with_logs:
            from airflow.providers.amazon.aws.hooks.logs import AwsLogsHook

            logs_client = AwsLogsHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name).conn
        return BatchClient(self.hook.client, logs_client)

    def _emit(self, line: str) -> None:
        self.log.info("%s", line)
        if os.environ.get(CONSOLE_ENVIRONMENT_VARIABLE) == "1":
            print(line, flush=True)

    def _what(self) -> str:
        return f"step '{self.step_name}' of flow {self.flow_name}"


def _task_job_tags(ti: Any, spec: Any, attempt: int, extra: dict[str, str]) -> dict[str, str]:
    """The tags naming the task instance and try a job runs for (how a retry finds it again)."""
    return job_tags(
        dag_id=ti.dag_id,
        run_id=ti.run_id,
        task_id=ti.task_id,
        map_index=spec.map_index,
        try_number=attempt,
        flow_name=spec.flow_name,
        step=spec.step,
        extra=extra,
    )


def _get_record(store: Any) -> dict[str, Any] | None:
    if store is None:
        return None
    try:
        record = store.get(JOB_RECORD_KEY)
    except Exception:  # noqa: BLE001 - no store (an older API server): no adoption, a fresh job
        return None
    return record if isinstance(record, dict) else None
