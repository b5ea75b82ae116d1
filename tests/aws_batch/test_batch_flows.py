"""Whole flows with every step an AWS Batch job (``[flowspec] execution = batch``, what ``--with
batch`` sets): Airflow (``dag.test()``), the step operator (a ``BatchOperator``), and the local AWS,
whose jobs really run ``python -m airflow_flowspec.runtime`` as processes with the job's
environment, their output in CloudWatch Logs.

Guards the Batch path end to end: the same results as local mode, each step visibly a job (its
manifest written by the container, its job tagged with the task), failures with Batch's reason and
the log's last lines, a flow mistake not retried, timeouts and kills terminating the job.
"""

from __future__ import annotations

import textwrap

import pytest
from harness import FLOWS, console_lines, run_flow, run_id_of, short_id_of

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture
def batch(local_aws_environment, monkeypatch, capfd):
    """Every step on the local AWS's Batch, polled every 0.05 s: the default schedule's first pause
    of a second adds about that to each job, and dag.test() runs a flow's jobs one after another
    (test_polling.py proves the default schedule)."""
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__EXECUTION", "batch")
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__BATCH_POLL_SECONDS", "0.05")
    monkeypatch.setenv("FLOWSPEC_CONSOLE", "1")
    return local_aws_environment


def jobs_of(aws, run_id: str) -> list[dict]:
    """Every Batch job of an Airflow run (found by the tags the operator puts on each job)."""
    batch = aws.client("batch")
    found = []
    for status in ("SUCCEEDED", "FAILED"):
        summaries = batch.list_jobs(jobQueue=aws.job_queue, jobStatus=status)["jobSummaryList"]
        ids = [s["jobId"] for s in summaries]
        for start in range(0, len(ids), 100):
            for job in batch.describe_jobs(jobs=ids[start : start + 100])["jobs"]:
                if job.get("tags", {}).get("flowspec:run") == run_id:
                    found.append(job)
    return found


def test_branch_join_parameters_and_a_class_from_the_flow_file_on_batch(batch, capfd):
    run = run_flow(FLOWS / "branch_flow.py", {"alpha": 0.25, "label": "tuned", "verbose": True})
    assert run.succeeded, run.states()
    end = run.artifacts("end")
    assert (end["alpha"], end["label"], end["summary"]) == (0.25, "tuned", "tuned:True:same everywhere")
    assert end["left_value"] == 2.5 and end["point_is_point"] is True
    assert end["greeting"] == "hello from left" and end["env_leaked"] is False
    jobs = jobs_of(batch, run.run_id)
    assert sorted(job["tags"]["flowspec:step"] for job in jobs) == sorted(
        ["start", "left", "right", "join", "end"]
    )
    assert {job["status"] for job in jobs} == {"SUCCEEDED"}
    out = capfd.readouterr().out
    # Each step is visibly a job: its id, its statuses, and the step's own output from CloudWatch.
    # (RUNNING and SUCCEEDED: a loaded machine may poll past the local AWS's 0.2 s waiting statuses.)
    for status in ("RUNNING", "SUCCEEDED"):
        assert f"status: {status}" in out, out[-3000:]
    assert jobs[0]["jobId"] in out
    assert f"[{run.run_id}/end/0] Task finished successfully." in out


def test_foreach_and_nested_foreach_on_batch(batch, monkeypatch):
    run = run_flow(FLOWS / "foreach_flow.py")
    assert run.succeeded, run.states()
    assert run.artifacts("end")["results"] == ["0:A", "1:B", "2:C", "3:D"]
    nested = run_flow(FLOWS / "nested_foreach_flow.py")
    assert nested.succeeded, nested.states()
    assert nested.artifacts("end")["products"] == [[10], [20, 21], [30, 31, 32]]
    assert len([j for j in jobs_of(batch, nested.run_id) if j["tags"]["flowspec:step"] == "cell"]) == 6

    # The artifact view reads a Batch run as any other: previews were recorded in the containers.
    from airflow_flowspec.client import namespaces
    from airflow_flowspec.client.overview import artifact_page, run_overview

    monkeypatch.setattr(namespaces, "_chosen", None)
    from airflow_flowspec.identity import RunIdentity

    overview = run_overview(RunIdentity("NestedForeachFlow", nested.run_id))
    cell = next(step for step in overview["steps"] if step["name"] == "cell")
    assert sorted(tuple(t["foreach_path"]) for t in cell["tasks"]) == [
        (0, 0),
        (1, 0),
        (1, 1),
        (2, 0),
        (2, 1),
        (2, 2),
    ]
    stacks = artifact_page(RunIdentity("NestedForeachFlow", nested.run_id), "end", "0", "stacks")
    assert len(stacks["repr"]) < len(stacks["text"]) == len(repr(nested.artifacts("end")["stacks"]))


def test_switch_retry_and_catch_on_batch(batch):
    switch = run_flow(FLOWS / "switch_flow.py", {"mode": "slow"})
    assert switch.succeeded and switch.state("fast") == "skipped"
    assert switch.artifacts("end")["final"] == "TOOK THE SLOW ARM TWICE"

    run = run_flow(FLOWS / "retry_catch_flow.py")
    assert run.succeeded, run.states()
    end = run.artifacts("end")
    assert end["attempts_seen"] == 1 and end["caught_message"] == "attempt 1 failed"
    flaky = [j for j in jobs_of(batch, run.run_id) if j["tags"]["flowspec:step"] == "flaky"]
    # An Airflow retry submits a fresh job: one failed, one succeeded, each tagged with its try.
    assert sorted((j["tags"]["flowspec:try"], j["status"]) for j in flaky) == [
        ("1", "FAILED"),
        ("2", "SUCCEEDED"),
    ]


MISTAKE_FLOW = textwrap.dedent("""
    from airflow_flowspec import FlowSpec, retry, step


    class MistakeFlow(FlowSpec):
        @step
        def start(self):
            self.next(self.work)

        @retry(times=3, minutes_between_retries=0)
        @step
        def work(self):
            self.merge_artifacts([])  # a join-only call: a flow mistake, the same on every try
            self.next(self.end)

        @step
        def end(self):
            pass
""")

FAILING_FLOW = textwrap.dedent("""
    from airflow_flowspec import FlowSpec, batch, step


    class FailingBatchFlow(FlowSpec):
        @batch(
            image="python:3.12-slim",
            log_driver="awslogs",
            log_options=["awslogs-group:/flowspec/failing-batch-flow"],
        )
        @step
        def start(self):
            for number in range(30):
                print(f"line {number}")
            raise RuntimeError("the model diverged")
            self.next(self.end)

        @step
        def end(self):
            pass
""")


def test_a_flow_mistake_fails_without_retries_and_a_failure_says_why(batch, tmp_path, capfd):
    path = tmp_path / "mistake_flow.py"
    path.write_text(MISTAKE_FLOW)
    run = run_flow(path)
    assert run.state("work") == "failed"
    work = [j for j in jobs_of(batch, run.run_id) if j["tags"]["flowspec:step"] == "work"]
    assert len(work) == 1  # @retry(times=3), yet one job: retrying a mistake repeats it
    assert work[0]["container"]["exitCode"] == 202
    assert "not retried" in capfd.readouterr().out

    path = tmp_path / "failing_flow.py"
    path.write_text(FAILING_FLOW)
    run = run_flow(path)
    assert run.state("start") == "failed"
    out = capfd.readouterr().out
    # The task's failure: Batch's status reason, the exit code and the log's last lines, read from
    # the log group the step's @batch(log_options=...) names.
    failure = out[
        out.index("BatchJobFailedError: Step 'start' of flow FailingBatchFlow failed on AWS Batch") :
    ]
    assert "Batch says: Essential container in task exited; exit code 1." in failure
    assert "    line 29\n" in failure and "RuntimeError: the model diverged" in failure
    (start,) = jobs_of(batch, run.run_id)
    assert start["container"]["logConfiguration"]["options"] == {
        "awslogs-group": "/flowspec/failing-batch-flow"
    }
    streams = batch.client("logs").describe_log_streams(logGroupName="/flowspec/failing-batch-flow")
    assert start["container"]["logStreamName"] in [s["logStreamName"] for s in streams["logStreams"]]


def test_a_step_past_its_timeout_has_its_job_terminated(batch, tmp_path):
    # 8 s, not the flow's 2: the job must be submitted before the timeout, and on a loaded machine
    # creating the task's first AWS clients alone can take 2 s.
    flow_file = tmp_path / "timeout_flow.py"
    flow_file.write_text((FLOWS / "timeout_flow.py").read_text().replace("seconds=2", "seconds=8"))
    run = run_flow(flow_file)
    assert run.state("slow") == "failed"
    slow = [j for j in jobs_of(batch, run.run_id) if j["tags"]["flowspec:step"] == "slow"]
    assert len(slow) == 1 and slow[0]["status"] == "FAILED"
    assert "was stopped" in slow[0]["statusReason"]


MIXED_FLOW = textwrap.dedent("""
    import os

    from airflow_flowspec import FlowSpec, batch, resources, step


    class MixedFlow(FlowSpec):
        @step
        def start(self):
            self.where = [os.environ.get("AWS_BATCH_JOB_ID")]
            self.next(self.train)

        @batch(cpu=2)
        @resources(memory=1024)
        @step
        def train(self):
            self.where = self.where + [os.environ.get("AWS_BATCH_JOB_ID")]
            self.next(self.end)

        @step
        def end(self):
            self.where = self.where + [os.environ.get("AWS_BATCH_JOB_ID")]
""")


def test_in_local_mode_only_the_batch_step_is_a_job_with_its_resources_and_ends_with_it(
    local_aws_environment, tmp_path, monkeypatch
):
    """Also guards the default poll schedule (no override here): the task ends within a poll of a
    second after its job, where a fixed 30 s interval held it up to 30 s, and a job of a few seconds
    is asked about once a second (test_polling.py: the back-off of longer jobs)."""
    monkeypatch.delenv("AIRFLOW__FLOWSPEC__BATCH_POLL_SECONDS", raising=False)
    path = tmp_path / "mixed_flow.py"
    path.write_text(MIXED_FLOW)
    run = run_flow(path)
    assert run.succeeded, run.states()
    start, train, end = run.artifacts("end")["where"]
    assert start is None and end is None and train  # only train ran in a Batch job
    calls = local_aws_environment.describe_calls(train)
    (job,) = jobs_of(local_aws_environment, run.run_id)
    lasted = (job["stoppedAt"] - job["createdAt"]) / 1000
    task_end = run.dag_run.get_task_instance("train").end_date.timestamp()
    assert task_end - job["stoppedAt"] / 1000 < 2.5, (task_end, job["stoppedAt"])
    assert 2 <= calls <= lasted + 4, (calls, lasted)  # a poll a second, a link lookup, status changes
    assert job["jobId"] == train
    requirements = {r["type"]: r["value"] for r in job["container"]["resourceRequirements"]}
    assert requirements["VCPU"] == "2"  # @batch(cpu=2) over @resources' default 1
    assert requirements["MEMORY"] == "1024"  # @resources(memory=1024): @batch gave none


SLOW_FLOW = textwrap.dedent("""
    import time

    from airflow_flowspec import FlowSpec, current, retry, step


    class SlowFlow(FlowSpec):
        @step
        def start(self):
            self.next(self.work)

        @retry(times=1, minutes_between_retries=0)
        @step
        def work(self):
            time.sleep(2)
            self.ran_as_attempt = current.retry_count
            self.next(self.end)

        @step
        def end(self):
            pass
""")


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "died-before-recording"])
def test_a_retry_after_the_worker_died_waits_for_the_running_job_instead_of_a_duplicate(
    batch, tmp_path, monkeypatch, recorded
):
    """Guards the adoption of an earlier try's job: the first try stops waiting as a dead worker
    would, without terminating its job; the retry finds that job still running (by the task state
    store's record, or, when the worker died before recording it, by its name and tags), waits for
    it and publishes its result, and no second job runs the step."""
    from airflow_flowspec.aws_batch.watch import JobWatcher
    from airflow_flowspec.operators.batch_step import StepBatchOperator

    if not recorded:
        monkeypatch.setattr(StepBatchOperator, "_remember_job", lambda self, context, attempt: None)

    polls = {"work": 0}
    real_poll = JobWatcher.poll

    def poll_then_die(self):
        job = real_poll(self)
        if self.label == "work" and job.get("status") == "RUNNING" and polls["work"] == 0:
            polls["work"] += 1
            raise ConnectionResetError("the worker died")  # as a lost worker, without on_kill
        return job

    monkeypatch.setattr(JobWatcher, "poll", poll_then_die)
    path = tmp_path / "slow_flow.py"
    path.write_text(SLOW_FLOW)
    run = run_flow(path)
    assert run.succeeded, run.states()
    work = [j for j in jobs_of(batch, run.run_id) if j["tags"]["flowspec:step"] == "work"]
    assert [(j["tags"]["flowspec:try"], j["status"]) for j in work] == [("1", "SUCCEEDED")]
    assert run.artifacts("work")["ran_as_attempt"] == 0  # the first try's job, adopted


def test_deferrable_batch_steps_wait_in_the_trigger(batch, monkeypatch, capfd):
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__BATCH_DEFERRABLE", "True")
    run = run_flow(FLOWS / "foreach_flow.py")
    assert run.succeeded, run.states()
    assert run.artifacts("end")["results"] == ["0:A", "1:B", "2:C", "3:D"]
    # Resumed after the trigger's event, the task shows the end of the step's log.
    assert f"[{run.run_id}/end/0] Task finished successfully." in capfd.readouterr().out


def test_a_flow_edited_mid_run_keeps_its_code_in_every_container(batch, tmp_path, monkeypatch):
    """Guards code pinning where it matters most: each step runs in a fresh container that has no
    dags folder; every one loads the package the start task recorded, not the edited files."""
    from harness import write_pinned_flow

    folder = write_pinned_flow(tmp_path / "dags", monkeypatch)
    try:
        run = run_flow(folder / "pinned_flow.py", {"edit_dir": str(folder)})  # start edits both files
    finally:
        import sys

        sys.modules.pop("pinned_helpers", None)
    assert run.succeeded, run.states()
    assert 'VERSION = "EDITED"' in (folder / "pinned_helpers.py").read_text()
    assert run.artifacts("end")["flow_version"] == run.artifacts("end")["helper_version"] == "ORIGINAL"


def test_python_flow_py_run_with_batch_prints_each_jobs_statuses_and_output(local_aws_environment):
    from harness import run_cli

    result = run_cli(
        FLOWS / "foreach_flow.py",
        "run",
        "--with",
        "batch",
        env={"AIRFLOW__FLOWSPEC__BATCH_POLL_SECONDS": "0.1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    # The local AWS keeps a job 0.2 s in each waiting status, which a loaded machine may poll past
    # (test_watch checks every status in order); a job runs for longer than that.
    for status in ("RUNNING", "SUCCEEDED"):
        assert f"status: {status}" in out, out[-3000:]
    run_id = short_id_of(out)
    lines = console_lines(out)
    upper = [line for line in lines if line.startswith(f"[{run_id}/upper/0] ")]
    assert any(" status: SUCCEEDED" in line for line in upper), upper
    assert f"[{run_id}/end/0] Task finished successfully." in lines
    assert lines[-1] == "Done!"
    # run has no connections database: an empty AWS connection stands in, without the provider's
    # "Unable to find AWS Connection ID" warning on every hook
    assert "AWS Connection" not in out + result.stderr


BATCH_RETRY_FLOW = textwrap.dedent("""
    from airflow_flowspec import FlowSpec, current, retry, step


    class BatchRetryFlow(FlowSpec):
        @step
        def start(self):
            self.next(self.flaky)

        @retry(times=1, minutes_between_retries=0.05)
        @step
        def flaky(self):
            if current.retry_count == 0:
                raise RuntimeError("the first job fails")
            self.next(self.end)

        @step
        def end(self):
            pass


    if __name__ == "__main__":
        BatchRetryFlow()
""")


def test_python_flow_py_run_with_batch_waits_before_a_retry_and_says_so_once(local_aws_environment, tmp_path):
    """As in Metaflow, a step on Batch waits minutes_between_retries before its next job (a local
    step retries at once); `run` says so in one line, not a "No tasks to run" warning a second."""
    from harness import run_cli

    flow_file = tmp_path / "batch_retry_flow.py"
    flow_file.write_text(BATCH_RETRY_FLOW)
    result = run_cli(
        flow_file, "run", "--with", "batch", env={"AIRFLOW__FLOWSPEC__BATCH_POLL_SECONDS": "0.1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_id = run_id_of(result.stdout)
    output = result.stdout + result.stderr
    assert "No tasks to run" not in output
    waits = [line for line in console_lines(output) if "Sleeping" in line]
    assert waits == [f"[{short_id_of(result.stdout)}/flaky/0] Sleeping 0.05 minute(s) before the next retry."]
    first, second = sorted(
        (job for job in jobs_of(local_aws_environment, run_id) if job["tags"]["flowspec:step"] == "flaky"),
        key=lambda job: job["createdAt"],
    )
    assert (first["status"], second["status"]) == ("FAILED", "SUCCEEDED")
    assert second["createdAt"] - first["stoppedAt"] >= 3000  # milliseconds: the 3 s delay was kept


WORKER_VALUES_FLOW = textwrap.dedent("""
    import os

    from airflow_flowspec import FlowSpec, IncludeFile, Parameter, step


    class WorkerValuesFlow(FlowSpec):
        notes = IncludeFile("notes", help="a text file, relative to where the run starts")
        owner = Parameter("owner", default=lambda: os.environ["FLOWSPEC_TEST_OWNER"])
        token = Parameter("token", secret=True, default=lambda: os.environ["FLOWSPEC_TEST_TOKEN"])

        @step
        def start(self):
            self.token_length = len(self.token)
            self.next(self.end)

        @step
        def end(self):
            self.seen = (self.notes, self.owner)
""")


def test_include_files_and_callable_defaults_are_read_where_the_run_starts(batch, tmp_path, monkeypatch):
    """Guards parameter_values: the start job's container has neither the machine's files (a path
    relative to where `run` was typed) nor its environment; the worker reads both, and a secret
    travels as a salted artifact, never in the spec the container reads."""
    path = tmp_path / "worker_values_flow.py"
    path.write_text(WORKER_VALUES_FLOW)
    (tmp_path / "notes.txt").write_text("première version", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLOWSPEC_TEST_OWNER", "ada")
    monkeypatch.setenv("FLOWSPEC_TEST_TOKEN", "s3cr3t-value")
    run = run_flow(path, {"notes": "notes.txt"})
    assert run.succeeded, run.states()
    assert run.artifacts("end")["seen"] == ("première version", "ada")
    assert run.artifacts("start")["token_length"] == len("s3cr3t-value")
    from airflow_flowspec.datastore import keys
    from airflow_flowspec.datastore.keys import AttemptKey

    spec = run.datastore.read_task_spec(
        keys.task_spec_key(AttemptKey("WorkerValuesFlow", run.run_id, "start", "0", 1))
    )
    assert "s3cr3t-value" not in str(spec)
    assert spec["parameters"]["notes"]["ref"]["type"] == "str"  # the content, by reference
