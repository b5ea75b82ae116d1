"""What a step stored, as its task's log reports it (issue 13): each artifact saved with its size
and whether it was new or already stored, and the bytes the task moved.

Guards ``written`` in ``ArtifactStore.save_many`` (through packs, batches and large blobs) and the
``storage`` a ``StepResult`` carries to the operator, which logs it at the end of the task.
"""

from __future__ import annotations

import textwrap

from airflow_flowspec.datastore import open_datastore
from airflow_flowspec.identity import RunIdentity
from airflow_flowspec.runtime.step_runner import run_step
from airflow_flowspec.runtime.task_spec import RunContext, TaskSpec

FLOW = textwrap.dedent("""
    import os

    from airflow_flowspec import FlowSpec, Parameter, step


    class StoredFlow(FlowSpec):
        seed = Parameter("seed", default=1)

        @step
        def start(self):
            self.small = "same every run"
            self.weights = bytes(3 * 1024 * 1024)  # a large blob, stored on its own
            self.fresh = os.urandom(16) if self.seed == 2 else b"fixed"
            self.next(self.end)

        @step
        def end(self):
            pass
""")


def run_start(flow_file, root, run_id, seed):
    spec = TaskSpec(
        flow_file=str(flow_file),
        run=RunIdentity("StoredFlow", run_id),
        step="start",
        datastore_root=str(root),
        parameters={"seed": seed},
        run_context=RunContext(username="ada"),
    )
    return run_step(spec, open_datastore(str(root))).storage


def test_each_saved_artifact_is_reported_new_or_reused_with_the_bytes_moved(tmp_path):
    flow_file = tmp_path / "stored_flow.py"
    flow_file.write_text(FLOW)
    root = tmp_path / "store"

    first = run_start(flow_file, root, "run-1", seed=1)
    states = {name: (size, state) for name, size, state in first["saved"]}
    assert {name: state for name, (_, state) in states.items()} == {
        "seed": "new",
        "small": "new",
        "weights": "new",
        "fresh": "new",
    }
    assert states["weights"][0] > 3 * 1024 * 1024  # the pickle's size
    assert first["bytes_written"] > 3 * 1024 * 1024

    second = run_start(flow_file, root, "run-2", seed=2)
    states = {name: state for name, _, state in second["saved"]}
    # The same large value is found stored; the changed ones are new, and so is the small one packed
    # with them (a task relies on nothing it did not see stored since its lease: gc's trash rule).
    # Nothing large moves again.
    assert states == {"seed": "new", "small": "new", "weights": "reused", "fresh": "new"}
    assert second["bytes_written"] < 1024 * 1024
