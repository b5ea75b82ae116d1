"""Flows run end to end on real Airflow (dag.test() on SQLite) with the local datastore."""

from __future__ import annotations

from datetime import datetime

import pytest
from harness import FLOWS, attempt, run_flow

from airflow_flowspec.errors import ArtifactNotFoundError

pytestmark = pytest.mark.usefixtures("airflow_db")


def test_static_branch_join_parameters_current_and_local_class():
    run = run_flow(FLOWS / "branch_flow.py", {"alpha": 0.25, "label": "tuned", "verbose": True})
    assert run.succeeded, run.states()
    end = run.artifacts("end")
    # Parameters arrive typed (from the trigger form / run_conf) and reach every step, joins included.
    assert (end["alpha"], end["epochs"], end["label"], end["verbose"]) == (0.25, 3, "tuned", True)
    assert end["config"] == {"depth": 2}
    # inputs.<step>.<attr>, iteration over inputs, and merge_artifacts of what inputs agree on.
    assert end["sides"] == ["left", "right"]
    assert end["left_value"] == 2.5  # the lambda artifact scaled alpha in another process' step
    assert end["right_value"] == 5
    assert end["shared"] == "same everywhere"
    assert end["summary"] == "tuned:True:same everywhere"
    # A class defined in the flow file survives pickling into other steps, isinstance included.
    assert end["point_is_point"] is True and end["norm2"] == 25
    assert type(end["point"]).__module__ == "flowspec_flows.BranchFlow"
    # @environment applies to its step only.
    assert end["greeting"] == "hello from left" and end["env_leaked"] is False
    seen = end["seen"]
    assert seen["flow_name"] == "BranchFlow" and seen["run_id"] == run.run_id
    assert (seen["step_name"], seen["task_id"], seen["retry_count"]) == ("start", "0", 0)
    assert seen["logical_date"] == run.dag_run.logical_date
    assert type(seen["logical_date"]) is datetime  # not Airflow's pendulum: it unpickles anywhere
    # The run is recorded for the client: metadata, status and the latest-successful pointer.
    assert run.datastore.latest_successful_run("BranchFlow") == run.run_id
    assert run.datastore.run_status("BranchFlow", run.run_id)["status"] == "succeeded"


def test_foreach_maps_one_task_per_item_and_join_sees_them_in_order():
    run = run_flow(FLOWS / "foreach_flow.py")
    assert run.succeeded, run.states()
    assert [run.state("upper", i) for i in range(4)] == ["success"] * 4
    end = run.artifacts("end")
    assert end["results"] == ["0:A", "1:B", "2:C", "3:D"]
    assert end["letters"] == ["a", "b", "c", "d"]
    assert "big" not in end  # merge_artifacts(include=...) merged only what was asked for
    # Every task of the foreach has its own manifest key (map index in the key).
    assert sorted(run.datastore.list_tasks("ForeachFlow", run.run_id, "upper")) == ["0", "1", "2", "3"]


def test_unchanged_artifacts_are_carried_by_reference():
    run = run_flow(FLOWS / "foreach_flow.py")
    start = run.manifest("start").artifacts["big"].to_json()
    # Steps that never touched `big` list the very same blob: it was written once, by start.
    for task_id in "0123":
        assert run.manifest("upper", task_id).artifacts["big"].hash == start["hash"]
    assert start["size"] > 2 * 1024 * 1024 and start["type"] == "bytes"


def test_nested_foreach_and_foreach_inside_a_branch():
    run = run_flow(FLOWS / "nested_foreach_flow.py")
    assert run.succeeded, run.states()
    end = run.artifacts("end")
    assert end["products"] == [[10], [20, 21], [30, 31, 32]]
    assert end["lengths"] == [1, 2]
    assert end["total"] == 10 + 41 + 93 + 3
    # foreach_stack() inside the inner body names both levels: (index, splits) outer then inner.
    assert end["stacks"] == [
        [(0, 3), (0, 1)],
        [(1, 3), (0, 2)],
        [(1, 3), (1, 2)],
        [(2, 3), (0, 3)],
        [(2, 3), (1, 3)],
        [(2, 3), (2, 3)],
    ]
    states = run.states()
    assert sum(1 for (task, _), _state in states.items() if task == "cell") == 6
    assert sum(1 for (task, _), _state in states.items() if task == "join_cols") == 3


@pytest.mark.parametrize(
    "mode, taken, skipped, answer",
    [
        ("fast", ["fast"], ["slow", "slow_more"], "TOOK THE FAST ARM"),
        ("slow", ["slow", "slow_more"], ["fast"], "TOOK THE SLOW ARM TWICE"),
    ],
)
def test_switch_runs_one_arm_and_skips_the_others(mode, taken, skipped, answer):
    run = run_flow(FLOWS / "switch_flow.py", {"mode": mode})
    assert run.succeeded, run.states()
    assert all(run.state(step) == "success" for step in taken)
    assert all(run.state(step) == "skipped" for step in skipped)
    assert run.artifacts("end")["final"] == answer


def test_switch_on_a_value_with_no_arm_fails_naming_the_value(capfd):
    run = run_flow(FLOWS / "switch_flow.py", {"mode": "medium"})
    assert not run.succeeded
    assert run.state("start") == "failed"
    assert "switch condition self.route is 'medium'" in capfd.readouterr().out


def test_retry_then_success_and_catch_after_the_last_retry():
    run = run_flow(FLOWS / "retry_catch_flow.py")
    assert run.succeeded, run.states()
    end = run.artifacts("end")
    assert end["attempts_seen"] == 1  # flaky succeeded on its second attempt
    assert end["flaky_error"] is None  # @catch's variable is None when nothing was caught
    assert end["caught_type"] == "builtins.ValueError"
    assert end["caught_message"] == "attempt 1 failed"  # caught only after the last retry
    assert end["before_failure"] == "kept"  # what the failing step set before raising is kept
    assert run.manifest("doomed").caught.type == "ValueError"
    # The first attempt of flaky failed without a manifest (its traceback is kept in its own
    # folder); the second wrote its own key.
    attempts = run.datastore.list_attempts("RetryCatchFlow", run.run_id, "flaky", "0")
    assert attempts == [1, 2]
    with pytest.raises(ArtifactNotFoundError):
        run.datastore.read_manifest(attempt("RetryCatchFlow", run.run_id, "flaky", "0", 1))
    failed_log = run.datastore.read_attempt_file(attempt("RetryCatchFlow", run.run_id, "flaky"), "stderr.log")
    assert b"RuntimeError: first attempt always fails" in failed_log


def test_timeout_fails_the_step():
    run = run_flow(FLOWS / "timeout_flow.py")
    assert not run.succeeded
    assert run.state("slow") == "failed" and run.state("end") == "upstream_failed"
    assert run.datastore.run_status("TimeoutFlow", run.run_id)["status"] == "failed"


def test_include_file_stores_content_read_once(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("première version", encoding="utf-8")
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\x00\xffbinary")
    run = run_flow(FLOWS / "include_file_flow.py", {"notes": str(notes), "blob": str(blob), "threshold": 7})
    notes.write_text("changed afterwards", encoding="utf-8")
    assert run.succeeded, run.states()
    end = run.artifacts("end")
    assert end["notes_seen"] == "première version"
    assert end["blob_seen"] == b"\x00\xffbinary"
    assert end["threshold"] == 7


def test_required_parameter_missing_is_refused_before_the_run_starts():
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="threshold"):
        run_flow(FLOWS / "include_file_flow.py", {"notes": "x", "blob": "y"})


def test_unpicklable_artifact_names_artifact_and_step(capfd):
    run = run_flow(FLOWS / "bad_artifact_flow.py")
    assert not run.succeeded and run.state("start") == "failed"
    out = capfd.readouterr().out
    assert "Artifact 'lock' set in step 'start' of flow BadArtifactFlow cannot be stored" in out
    assert "cannot pickle '_thread.lock' object" in out
    # No manifest for the failed task: downstream can never read half-written data.
    assert run.datastore.latest_attempt_manifest("BadArtifactFlow", run.run_id, "start", "0") is None


def test_merge_artifacts_conflict_names_the_artifact(capfd):
    run = run_flow(FLOWS / "merge_conflict_flow.py")
    assert not run.succeeded and run.state("join") == "failed"
    out = capfd.readouterr().out
    assert "cannot merge artifact(s) model" in out and "exclude=['model']" in out


def test_metaflow_parameter_forms_separator_and_a_default_from_its_context():
    """``separator=","`` gives the steps a list; ``default=lambda ctx: ...`` gets Metaflow's
    ParameterContext (a bare TypeError while the DAG was built, before)."""
    run = run_flow(FLOWS / "metaflow_parameters_flow.py", {"names": "x,y,z"})
    assert run.succeeded, run.states()
    names, owner, plain, user = run.artifacts("start")["seen"]
    assert names == ["x", "y", "z"]
    assert owner == f"MetaflowParametersFlow/owner/{user}" and plain == "no context"


def test_a_separator_on_a_parameter_that_is_not_text_is_refused_naming_it():
    from airflow_flowspec import Parameter
    from airflow_flowspec.errors import ParameterError

    with pytest.raises(ParameterError, match="Parameter 'sizes' has separator=','.*only allowed for str"):
        Parameter("sizes", default=3, separator=",")
