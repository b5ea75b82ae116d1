"""What a step task does with a failure, on real Airflow (``dag.test()`` honours retries).

Guards "a flow mistake fails at once, only the step's own exceptions are retried": every step that
fails here has ``@retry(times=3)``; a mistake must end the task on its first try, with its message
in the log, while the step's own exception uses all four tries.
"""

from __future__ import annotations

import textwrap

import pytest
from harness import run_flow

pytestmark = pytest.mark.usefixtures("airflow_db")

JOIN_FLOW = textwrap.dedent("""
    import threading

    from airflow_flowspec import FlowSpec, Parameter, retry, step


    class RetryJoinFlow(FlowSpec):
        mode = Parameter("mode", default="conflict")

        @step
        def start(self):
            self.next(self.left, self.right)

        @step
        def left(self):
            self.model = "left"
            self.next(self.join)

        @step
        def right(self):
            self.model = "right"
            self.next(self.join)

        @retry(times=3, minutes_between_retries=0)
        @step
        def join(self, inputs):
            if self.mode == "crash":
                raise RuntimeError("the join's own failure")
            if self.mode == "network":
                from airflow_flowspec.errors import DatastoreError

                raise DatastoreError("S3 did not answer")  # ours, but a retry may well succeed
            if self.mode == "lock":
                self.merge_artifacts(inputs, exclude=["model"])
                self.lock = threading.Lock()
            else:
                self.merge_artifacts(inputs)  # left and right disagree on model
            self.next(self.end)

        @step
        def end(self):
            pass
""")

WIDE_FLOW = textwrap.dedent("""
    from airflow_flowspec import FlowSpec, Parameter, retry, step


    class WideForeachFlow(FlowSpec):
        width = Parameter("width", default=5)

        @retry(times=3, minutes_between_retries=0)
        @step
        def start(self):
            self.items = [i for i in range(self.width)]  # a width lint cannot know
            self.next(self.body, foreach="items")

        @step
        def body(self):
            self.next(self.join)

        @step
        def join(self, inputs):
            self.next(self.end)

        @step
        def end(self):
            pass
""")


def tries(run, step: str) -> int:
    (ti,) = [ti for ti in run.dag_run.get_task_instances() if ti.task_id == step]
    return ti.try_number


@pytest.mark.parametrize(
    "mode, message",
    [
        ("conflict", "cannot merge artifact(s) model"),
        ("lock", "Artifact 'lock' set in step 'join' of flow RetryJoinFlow cannot be stored"),
    ],
)
def test_a_flow_mistake_fails_at_once_despite_retry(tmp_path, capfd, mode, message):
    flow_file = tmp_path / "retry_join_flow.py"
    flow_file.write_text(JOIN_FLOW)
    run = run_flow(flow_file, {"mode": mode})
    assert run.state("join") == "failed" and run.state("end") == "upstream_failed"
    assert tries(run, "join") == 1
    output = capfd.readouterr().out
    assert message in output and "a mistake in the flow: not retried" in output


@pytest.mark.parametrize(
    "mode, message",
    [("crash", "RuntimeError: the join's own failure"), ("network", "DatastoreError: S3 did not answer")],
)
def test_the_steps_own_exception_or_a_datastore_failure_uses_every_retry(tmp_path, capfd, mode, message):
    flow_file = tmp_path / "retry_join_flow.py"
    flow_file.write_text(JOIN_FLOW)
    run = run_flow(flow_file, {"mode": mode})
    assert run.state("join") == "failed"
    assert tries(run, "join") == 4  # the first try and three retries
    assert capfd.readouterr().out.count(message) >= 4


def test_a_foreach_wider_than_max_map_length_fails_at_once_with_the_setting(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "4")
    flow_file = tmp_path / "wide_foreach_flow.py"
    flow_file.write_text(WIDE_FLOW)
    run = run_flow(flow_file, {"width": 6})
    assert run.state("start") == "failed" and tries(run, "start") == 1
    assert "has 6 items, more than Airflow's [core] max_map_length (4)" in capfd.readouterr().out
