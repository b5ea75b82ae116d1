"""``python -m airflow_flowspec.runtime`` as another process (an AWS Batch job) runs it: the spec by
datastore key, the result left in the datastore, and an exit status that says whether to retry.

Guards the contract the Batch operator will rely on: 0 succeeded, 1 the step failed (retry),
202 a flow mistake (do not retry; Metaflow's value), with one paragraph and no traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from harness import REPO

from airflow_flowspec.datastore import keys, open_datastore
from airflow_flowspec.datastore.keys import AttemptKey
from airflow_flowspec.datastore.views import task_view
from airflow_flowspec.errors import EXIT_DISALLOW_RETRY, EXIT_STEP_FAILED
from airflow_flowspec.identity import RunIdentity
from airflow_flowspec.runtime.process import read_step_result, write_task_spec
from airflow_flowspec.runtime.task_spec import RunContext, TaskSpec

FLOW = textwrap.dedent("""
    import threading

    from airflow_flowspec import FlowSpec, Parameter, catch, current, step


    class ProcessFlow(FlowSpec):
        mode = Parameter("mode", default="ok")
        count = Parameter("count", default=3)

        @catch(var="failure", print_exception=False)
        @step
        def start(self):
            self.doubled = self.count * 2
            self.who = current.username
            if self.mode == "raise":
                raise ValueError("the step's own failure")
            if self.mode == "lock":
                self.lock = threading.Lock()
            if self.mode == "misuse":
                self.merge_artifacts([])  # a join-only call: a flow mistake raised inside the step
            self.next(self.end)

        @step
        def end(self):
            pass
""")


@pytest.fixture
def flow_file(tmp_path: Path) -> Path:
    path = tmp_path / "process_flow.py"
    path.write_text(FLOW)
    return path


def spec_for(
    flow_file: Path, root: Path, *, step="start", attempt=1, max_attempts=1, **parameters
) -> TaskSpec:
    return TaskSpec(
        flow_file=str(flow_file),
        run=RunIdentity("ProcessFlow", "batch-run-1"),
        step=step,
        datastore_root=str(root),
        attempt=attempt,
        max_attempts=max_attempts,
        parameters=parameters,
        run_context=RunContext(username="ada"),
    )


def run_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "airflow_flowspec.runtime", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )


def run_by_key(spec: TaskSpec) -> subprocess.CompletedProcess:
    return run_process("--root", spec.datastore_root, "--spec-key", write_task_spec(spec))


def has_manifest(spec: TaskSpec) -> bool:
    datastore = open_datastore(spec.datastore_root)
    return datastore.latest_attempt_manifest(spec.flow_name, spec.run_id, spec.step, spec.task_id) is not None


def test_a_step_run_by_key_leaves_its_result_for_the_publisher(flow_file, tmp_path):
    spec = spec_for(flow_file, tmp_path / "store", count=5)
    result = run_by_key(spec)
    assert result.returncode == 0, result.stderr
    published = read_step_result(spec)
    assert published.manifest.pathspec == "ProcessFlow/batch-run-1/start/0"
    artifacts = open_datastore(spec.datastore_root).latest_attempt_manifest(
        "ProcessFlow", "batch-run-1", "start", "0"
    )
    assert artifacts == published.manifest  # the result and the manifest agree
    view = task_view(published.manifest, open_datastore(spec.datastore_root))
    assert (view.doubled, view.who, view.failure) == (10, "ada", None)  # RunContext reached current


def test_the_steps_own_exception_exits_1_so_the_caller_retries(flow_file, tmp_path):
    spec = spec_for(flow_file, tmp_path / "store", attempt=1, max_attempts=2, mode="raise")
    result = run_by_key(spec)
    assert result.returncode == EXIT_STEP_FAILED == 1
    assert "Traceback" in result.stderr and "ValueError: the step's own failure" in result.stderr
    assert not has_manifest(spec)
    # On the last attempt @catch takes it: the step succeeds with the exception as an artifact.
    last = spec_for(flow_file, tmp_path / "store", attempt=2, max_attempts=2, mode="raise")
    assert run_by_key(last).returncode == 0
    assert read_step_result(last).manifest.caught.type == "ValueError"


@pytest.mark.parametrize(
    "parameters, message",
    [
        ({"count": "many"}, "Parameter 'count' of flow ProcessFlow expects a value of type int, got 'many'"),
        ({"mode": "lock"}, "Artifact 'lock' set in step 'start' of flow ProcessFlow cannot be stored"),
        # Raised inside the step on its last attempt: @catch must not swallow a flow mistake.
        ({"mode": "misuse"}, "merge_artifacts(inputs) can only be called in a join step"),
    ],
    ids=["bad parameter", "unpicklable artifact", "misused API under @catch"],
)
def test_a_flow_mistake_exits_202_with_one_paragraph(flow_file, tmp_path, parameters, message):
    spec = spec_for(flow_file, tmp_path / "store", attempt=3, max_attempts=3, **parameters)
    result = run_by_key(spec)
    assert result.returncode == EXIT_DISALLOW_RETRY == 202, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.startswith("ProcessFlow: ")
    assert not has_manifest(spec)


def test_a_step_the_flow_no_longer_has_is_a_flow_mistake_not_a_key_error(flow_file, tmp_path):
    result = run_by_key(spec_for(flow_file, tmp_path / "store", step="train"))
    assert result.returncode == EXIT_DISALLOW_RETRY
    assert "has no step 'train'" in result.stderr and "(its steps: start, end)" in result.stderr
    assert "KeyError" not in result.stderr


def test_a_spec_not_stored_where_its_task_belongs_is_refused(flow_file, tmp_path):
    """The key is derived from the task's identity; a spec copied to another task's key is not run."""
    root = tmp_path / "store"
    spec = spec_for(flow_file, root)
    elsewhere = AttemptKey("ProcessFlow", "batch-run-1", "end", "0", 1)
    open_datastore(str(root)).write_task_spec(elsewhere, spec.to_json())
    result = run_process("--root", str(root), "--spec-key", keys.task_spec_key(elsewhere))
    assert result.returncode == EXIT_DISALLOW_RETRY
    assert "refusing to run a spec that is not where its task's spec belongs" in result.stderr
    assert not has_manifest(spec)


def test_unreadable_input_is_a_mistake_but_an_unreachable_datastore_is_retried(flow_file, tmp_path):
    broken = tmp_path / "spec.json"
    broken.write_text("{not json")
    result = run_process("--spec-file", str(broken))
    assert result.returncode == EXIT_DISALLOW_RETRY and "not valid JSON" in result.stderr
    assert run_process("--spec-key", "x").returncode == EXIT_DISALLOW_RETRY  # no --root: a usage error
    unusable_root = spec_for(flow_file, tmp_path)
    unusable_root.datastore_root = "gs://bucket/flows"
    broken.write_text(json.dumps(unusable_root.to_json()))
    result = run_process("--spec-file", str(broken))
    assert result.returncode == EXIT_DISALLOW_RETRY and "[flowspec] datastore_root" in result.stderr

    # S3 refusing connections is a network problem: the next attempt may well succeed.
    spec = spec_for(flow_file, Path("unused"))
    spec.datastore_root = "s3://no-such-bucket/flows"
    spec_file = tmp_path / "s3-spec.json"
    spec_file.write_text(json.dumps(spec.to_json()))
    offline = {
        "PATH": "/usr/bin:/bin",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # discard port: connection refused at once
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1",
    }
    result = run_process("--spec-file", str(spec_file), env=offline)
    assert result.returncode == EXIT_STEP_FAILED, result.stderr
    assert "s3://no-such-bucket/flows" in result.stderr
