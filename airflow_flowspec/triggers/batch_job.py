"""Waiting for an AWS Batch job in the triggerer, so a deferred step holds no worker slot.

The Amazon provider's ``BatchJobTrigger`` needs aiobotocore, whose pins conflict with the botocore
Airflow's provider installs; and it neither shows the job's log nor stops the job when the task is
killed. This trigger builds ordinary boto3 clients from the Airflow connection and leaves every AWS
call to :class:`BatchClient`, polling in a worker thread (:class:`JobWatcher`, the same follower the
synchronous wait uses); it writes the job's status changes and log lines to the
trigger's log (which Airflow shows in the task's log), and terminates the job in exactly two cases:
its ``deadline`` passed, or a user acted on the deferred task (:meth:`on_kill`).

Being cancelled is not one of them: the triggerer cancels every trigger when it shuts down or hands
triggers to another triggerer, and the job must keep running for whoever picks the trigger up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_flowspec.aws_batch.client import BatchClient
from airflow_flowspec.aws_batch.polling import PollSchedule
from airflow_flowspec.aws_batch.watch import JobWatcher, exit_code

#: Lines of the job's log an event carries (events are stored in Airflow's database).
EVENT_TAIL_LINES = 20
#: The longest pause between the end of a job and the last read of its log.
MAX_SETTLE_SECONDS = 2.0


class BatchJobWaitTrigger(BaseTrigger):
    """Fires one event when the Batch job ``job_id`` ends or its ``deadline`` passes.

    ``aws_conn_id``: an Airflow AWS connection, or None for boto3's default credential chain.
    ``poll_schedule``: :class:`PollSchedule` as JSON, when to call DescribeJobs; or ``poll_seconds``, a
    fixed interval (what a trigger serialized by an earlier version carries, and the triggerer
    rebuilds it from the database). ``deadline``: an ISO 8601 UTC time after which
    the job is terminated and a ``timeout`` event fires (None: wait for as long as the job runs).
    ``label``: names the job in log lines and messages (e.g. ``TrainFlow.train``).
    ``runnable_hint_after``: seconds in RUNNABLE before the log says why the job may be waiting.

    Every event's payload has the keys ``status`` (``success``, ``failure`` or ``timeout``),
    ``job_id``, ``status_reason``, ``exit_code``, ``message`` (a paragraph for a data scientist;
    None on success) and ``log_tail`` (the last lines of the job's log).
    """

    def __init__(
        self,
        job_id: str,
        *,
        aws_conn_id: str | None,
        region_name: str | None,
        poll_schedule: dict[str, Any] | None = None,
        deadline: str | None = None,
        label: str = "",
        runnable_hint_after: float = 60.0,
        lease: dict[str, Any] | None = None,
        poll_seconds: float | None = None,
    ) -> None:
        super().__init__()
        if poll_schedule is not None:
            self.poll_schedule = PollSchedule.from_json(poll_schedule)
        elif poll_seconds is not None:
            self.poll_schedule = PollSchedule(poll_seconds, first_seconds=poll_seconds, growth=0.0)
        else:
            raise TypeError("BatchJobWaitTrigger needs a poll_schedule")
        self.lease = lease
        self.job_id = job_id
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.deadline = deadline
        self.label = label
        self.runnable_hint_after = runnable_hint_after
        self._client: BatchClient | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_id": self.job_id,
                "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name,
                "poll_schedule": self.poll_schedule.to_json(),
                "deadline": self.deadline,
                "label": self.label,
                "runnable_hint_after": self.runnable_hint_after,
                "lease": self.lease,
            },
        )

    # --- waiting -------------------------------------------------------------------------------

    async def run(self) -> AsyncIterator[TriggerEvent]:
        lease = await asyncio.to_thread(self._take_lease)
        try:
            async for event in self._wait():
                yield event
        finally:
            if lease is not None:
                await asyncio.to_thread(lease.__exit__, None, None, None)

    def _take_lease(self) -> Any:
        """The step's run lease, held while the job is waited for here (the worker let go of it),
        so ``airflow-flowspec gc`` counts the run as running however long the job queues. Best
        effort: the job runs on whatever happens to the lease, and its step takes one of its own."""
        if not self.lease:
            return None
        from airflow_flowspec.datastore import open_datastore
        from airflow_flowspec.datastore.leases import Lease
        from airflow_flowspec.identity import RunIdentity

        try:
            lease = Lease(
                open_datastore(self.lease["root"]), RunIdentity.from_json(self.lease["run"]), holder="trigger"
            )
            return lease.__enter__()
        except Exception as error:  # noqa: BLE001 - waiting for the job matters more
            self.log.warning("%s: no lease on the run while waiting (%s)", self.label or self.job_id, error)
            return None

    async def _wait(self) -> AsyncIterator[TriggerEvent]:
        client = await asyncio.to_thread(self._get_client)
        lines: list[str] = []
        watcher = JobWatcher(
            client,
            self.job_id,
            lines.append,
            runnable_hint_after=self.runnable_hint_after,
            label=self.label,
        )
        deadline = parse_deadline(self.deadline)
        while True:
            job = await asyncio.to_thread(watcher.poll)
            self._log_lines(lines)
            if watcher.is_finished(job):
                await asyncio.to_thread(
                    watcher.drain, settle_seconds=min(self.poll_schedule.ceiling_seconds, MAX_SETTLE_SECONDS)
                )
                self._log_lines(lines)
                yield TriggerEvent(self._finished_event(watcher, job))
                return
            pause = watcher.next_pause(self.poll_schedule)
            if deadline is not None:
                remaining = (deadline - datetime.now(timezone.utc)).total_seconds()
                if remaining <= 0:
                    event = await self._time_out(watcher, job)
                    self._log_lines(lines)
                    yield TriggerEvent(event)
                    return
                pause = min(pause, remaining)
            await asyncio.sleep(pause)

    def _log_lines(self, lines: list[str]) -> None:
        """Log from the event loop, not from the polling thread: the triggerer routes a line to the
        task's log by the context the trigger's coroutine runs in."""
        for line in lines:
            self.log.info("%s", line)
        lines.clear()

    def _finished_event(self, watcher: JobWatcher, job: dict[str, Any]) -> dict[str, Any]:
        succeeded = job.get("status") == "SUCCEEDED"
        return self._event(
            "success" if succeeded else "failure",
            watcher,
            status_reason=job.get("statusReason"),
            exit_code=exit_code(job),
            message=None if succeeded else watcher.failure_message(job, what=self._what()),
        )

    async def _time_out(self, watcher: JobWatcher, job: dict[str, Any]) -> dict[str, Any]:
        reason = f"Timed out: the Airflow task's deadline {self.deadline} passed"
        self.log.warning(
            "Deadline %s passed while AWS Batch job %s was %s: terminating it.",
            self.deadline,
            self.job_id,
            job.get("status", "unknown"),
        )
        failed_to_terminate = await asyncio.to_thread(self._terminate, reason)
        await asyncio.to_thread(watcher.drain)  # the lines printed until now
        message = (
            f"{self._what()} ran past its deadline ({self.deadline}) on AWS Batch (job {self.job_id}, "
            f"{job.get('status', 'status unknown')})"
        )
        if failed_to_terminate:
            message += f", and terminating the job failed ({failed_to_terminate}): it may still be running."
        else:
            message += ": the job was terminated."
        return self._event("timeout", watcher, status_reason=reason, exit_code=None, message=message)

    def _event(
        self,
        status: str,
        watcher: JobWatcher,
        *,
        status_reason: str | None,
        exit_code: int | None,
        message: str | None,
    ) -> dict[str, Any]:
        return {
            "status": status,
            "job_id": self.job_id,
            "status_reason": status_reason,
            "exit_code": exit_code,
            "message": message,
            "log_tail": watcher.last_lines(EVENT_TAIL_LINES),
        }

    def _what(self) -> str:
        return self.label or "The job"

    # --- killing -------------------------------------------------------------------------------

    async def on_kill(self) -> None:
        """Terminate the job: a user marked the deferred task failed or successful, or cleared it.

        Airflow calls this only for those user actions, never when the triggerer shuts down or the
        trigger times out, so the job is not stopped by a deployment."""
        task = self._task_text()
        reason = f"The Airflow task{task} was stopped by a user (marked failed or success, or cleared)"
        self.log.info("Terminating AWS Batch job %s: %s.", self.job_id, reason)
        failed = await asyncio.to_thread(self._terminate, reason)
        if failed:
            self.log.warning("Could not terminate AWS Batch job %s: %s", self.job_id, failed)

    def _task_text(self) -> str:
        task_instance = self.task_instance
        if task_instance is None:
            return ""
        return f" {task_instance.dag_id}.{task_instance.task_id} (run {task_instance.run_id})"

    def _terminate(self, reason: str) -> str | None:
        """TerminateJob (retried by the client while AWS throttles); None once done, else what went
        wrong (the caller reports it rather than failing: an event or a kill must still go through)."""
        try:
            self._get_client().terminate_job(self.job_id, reason)
        except Exception as error:  # noqa: BLE001 - reported to the caller
            return f"{type(error).__name__}: {error}"
        return None

    def _get_client(self) -> BatchClient:
        """The Batch layer over clients from the Airflow connection (or boto3's defaults).

        Called in a thread: building a client reads the connection (a request to the API server in
        a triggerer) and botocore's data files, neither of which may block the event loop."""
        if self._client is None:
            from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

            def client(service: str) -> Any:
                return AwsBaseHook(
                    aws_conn_id=self.aws_conn_id, client_type=service, region_name=self.region_name
                ).conn

            self._client = BatchClient(client("batch"), client("logs"))
        return self._client


def parse_deadline(deadline: str | None) -> datetime | None:
    """An ISO 8601 time as an aware UTC datetime; a time without zone is taken as UTC."""
    if not deadline:
        return None
    moment = datetime.fromisoformat(deadline.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)
