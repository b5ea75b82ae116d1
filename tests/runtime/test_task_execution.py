"""One attempt as the runtime runs it (``TaskExecution``: prepare, execute, persist), without Airflow.

Guards the one task state a flow instance holds: parameters and a parent's artifacts read through
it, a step's own attributes saved as artifacts and nothing of the runtime's with them, and
``self.next`` recorded in it (a second call refused, naming the step). The write order that a kill
must not break is guarded by tests/reliability/test_kills.py.
"""

from __future__ import annotations

import textwrap

import pytest

from airflow_flowspec.datastore import open_datastore
from airflow_flowspec.errors import TransitionError
from airflow_flowspec.identity import RunIdentity
from airflow_flowspec.runtime.step_runner import run_step
from airflow_flowspec.runtime.task_spec import RunContext, TaskSpec

FLOW = textwrap.dedent("""
    from airflow_flowspec import FlowSpec, Parameter, step


    class StateFlow(FlowSpec):
        alpha = Parameter("alpha", default=2)

        @step
        def start(self):
            self.numbers = [1, 2, 3]
            self.next(self.middle)

        @step
        def middle(self):
            self.total = sum(self.numbers) * self.alpha
            self.next(self.end)

        @step
        def twice(self):
            self.next(self.end)
            self.next(self.end)

        @step
        def end(self):
            pass
""")


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """The flow file, the datastore root and the start step's manifest of one run."""
    folder = tmp_path_factory.mktemp("state")
    flow_file = folder / "state_flow.py"
    flow_file.write_text(FLOW)
    root = str(folder / "store")
    result = run_step(spec(flow_file, root, "start", parameters={"alpha": 5}), open_datastore(root))
    return flow_file, root, result.manifest


def spec(flow_file, root, step, **fields) -> TaskSpec:
    return TaskSpec(
        flow_file=str(flow_file),
        run=RunIdentity("StateFlow", "run-1"),
        step=step,
        datastore_root=root,
        run_context=RunContext(username="ada"),
        **fields,
    )


def test_a_step_reads_parameters_and_artifacts_and_saves_only_its_own_attributes(started):
    flow_file, root, start = started
    assert sorted(start.artifacts) == ["alpha", "numbers"]

    middle = run_step(spec(flow_file, root, "middle", input_manifests=[start]), open_datastore(root))
    artifacts = middle.manifest.artifacts
    assert sorted(artifacts) == ["alpha", "numbers", "total"]  # nothing of the runtime's state
    assert open_datastore(root).artifacts.load(artifacts["total"]) == 30
    assert artifacts["numbers"].hash == start.artifacts["numbers"].hash  # read, unchanged


def test_calling_next_twice_names_the_step_and_writes_no_manifest(started):
    flow_file, root, start = started
    with pytest.raises(TransitionError, match=r"self\.next\(\) was called twice in step twice\."):
        run_step(spec(flow_file, root, "twice", input_manifests=[start]), open_datastore(root))
    assert open_datastore(root).latest_attempt_manifest("StateFlow", "run-1", "twice", "0") is None
