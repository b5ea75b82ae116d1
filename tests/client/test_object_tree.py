"""The client's objects as one tree: children built from what their parent read, with a link to it.

Listing a run's steps, ``airflow-flowspec show Flow/run`` and the artifact view's run overview cost
as many requests for a 500-wide foreach as for a 5-wide one; a run's status is read once per
``Run``; ``Task(pathspec, attempt=n)`` reads attempt ``n`` as Metaflow's does; ``client.reset()``
forgets the namespace and root a notebook chose.

Runs are written through the Datastore calls the runtime makes (``number_run``, ``write_run_meta``,
``write_manifest``, ``index_run``, ``finish_run``), as tests/client/test_run_index.py does: a real
500-wide foreach would take minutes and show nothing more about what the client reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from harness import a_manifest, attempt

from airflow_flowspec import DataArtifact, Flow, Run, Step, Task, client, metadata
from airflow_flowspec.client import overview
from airflow_flowspec.client.source import client_datastore
from airflow_flowspec.datastore import keys
from airflow_flowspec.datastore.manifest import ForeachFrame
from airflow_flowspec.datastore.store import Datastore
from airflow_flowspec.errors import MetaflowNotFound
from airflow_flowspec.identity import RunIdentity
from airflow_flowspec.shell import main as shell_main

# The client in every namespace, its root and namespace forgotten after each test (conftest).
pytestmark = pytest.mark.usefixtures("every_namespace")

FLOW = "WideFlow"
GRAPH = [
    {"name": "start", "type": "foreach", "next": ["body"], "foreach": "items", "doc": ""},
    {"name": "body", "type": "linear", "next": ["join"], "foreach": None, "doc": ""},
    {"name": "join", "type": "join", "next": ["end"], "foreach": None, "doc": ""},
    {"name": "end", "type": "end", "next": [], "foreach": None, "doc": ""},
]


def record_run(
    datastore: Datastore, run_id: str, width: int, *, finished: bool | None = True, body_attempt: int = 1
) -> RunIdentity:
    """A start step that fans out to ``width`` body tasks, a join and an end, as the runtime records
    them (``finished``: True succeeded, False failed, None still running; ``body_attempt``: the
    attempt of each body task that stored its results)."""
    identity = RunIdentity(FLOW, run_id)
    meta = {"tags": ["user:ana"], "system_tags": ["user:ana"], "graph": GRAPH, "parameters": {"width": width}}
    meta["number"] = datastore.number_run(identity)
    record = datastore.write_run_meta(FLOW, run_id, meta, identity=identity)
    value = {"value": datastore.artifacts.save("value", width)}
    datastore.write_manifest(a_manifest(FLOW, run_id, "start", 0, 1, value))
    for index in range(width):
        frame = ForeachFrame(step="start", var="items", index=index, num_splits=width, item=value["value"])
        datastore.write_manifest(
            a_manifest(FLOW, run_id, "body", index + 1, body_attempt, value, foreach_stack=[frame])
        )
    datastore.write_manifest(a_manifest(FLOW, run_id, "join", width + 1, 1, value))
    datastore.write_manifest(a_manifest(FLOW, run_id, "end", width + 2, 1, value))
    datastore.index_run(FLOW, run_id, record)
    if finished is not None:
        datastore.finish_run(FLOW, run_id, finished, {})
    return identity


@pytest.fixture(scope="module")
def wide_runs(tmp_path_factory) -> tuple[Datastore, dict[int, RunIdentity]]:
    """Two finished runs of one flow: a 5-wide and a 500-wide foreach."""
    datastore = Datastore(str(tmp_path_factory.mktemp("wide-store")))
    return datastore, {width: record_run(datastore, f"manual__width-{width}", width) for width in (5, 500)}


@pytest.fixture
def store(wide_runs) -> Datastore:
    datastore, _ = wide_runs
    metadata(datastore.root)
    return datastore


def counted(action: Callable[..., Any], *arguments: Any) -> tuple[int, Any]:
    """What ``action(*arguments)`` returns, and the requests the client's datastore made for it."""
    counters = client_datastore().backend.counters
    before = counters.requests
    result = action(*arguments)
    return counters.requests - before, result


def steps_of(pathspec: str) -> list[Step]:
    return list(Run(pathspec))


def test_listing_a_runs_steps_and_showing_it_cost_the_same_whatever_the_foreach_width(
    wide_runs, store, capsys, monkeypatch
):
    """Guards the object tree: a run's steps come in the recorded graph's order (latest first) from
    one listing, a step's tasks from one more, and no task reads its manifest until asked, so
    ``list(run)``, ``airflow-flowspec show`` and the artifact view's run page (its first tasks of
    each step: set to 5 here, so that both widths show as many) do not grow with the width."""
    _, identities = wide_runs
    monkeypatch.setattr(overview, "TASKS_PER_STEP", 5)
    cost: dict[str, list[int]] = {"list(run)": [], "show": [], "overview": []}
    for width, identity in identities.items():
        requests, steps = counted(steps_of, identity.pathspec)
        cost["list(run)"].append(requests)
        assert [step.id for step in steps] == ["end", "join", "body", "start"]

        capsys.readouterr()
        requests, _ = counted(shell_main, ["show", identity.pathspec])
        cost["show"].append(requests)
        shown = capsys.readouterr().out.splitlines()
        assert shown[0].startswith(f"{identity.pathspec}\tsucceeded\tshort id ")
        assert shown[1:] == ["  end\t1 task", "  join\t1 task", f"  body\t{width} tasks", "  start\t1 task"]

        requests, page = counted(overview.run_overview, identity)
        cost["overview"].append(requests)
        body = next(step for step in page["steps"] if step["name"] == "body")
        assert (body["task_count"], len(body["tasks"])) == (width, 5)
        assert page["status"] == "succeeded" and page["parameters"] == {"width": width}
    for what, (narrow, wide) in cost.items():
        assert narrow == wide, f"{what}: {narrow} requests for a 5-wide foreach, {wide} for a 500-wide one"
    assert cost["list(run)"][0] <= 3  # the run's record and one listing of its steps


def test_children_link_to_the_objects_they_came_from(store, wide_runs):
    _, identities = wide_runs
    run = Run(identities[5].pathspec)
    body = run["body"]
    task = body["3"]
    artifact = task["value"]
    assert artifact.parent is task and task.parent is body and body.parent is run
    assert run.parent == Flow(FLOW) and Flow(FLOW).parent is None
    assert Task(task.pathspec).parent.parent == run  # named directly: its parents are found once
    assert "3" in body and 3 in body and "9" not in body and body[3] == task
    assert [t.id for t in body] == ["1", "2", "3", "4", "5"] and body.task == body["1"]
    assert [t.index for t in body] == [0, 1, 2, 3, 4]
    assert artifact.data == 5 and DataArtifact(artifact.pathspec) == artifact
    with pytest.raises(MetaflowNotFound, match="has no task '9'"):
        body["9"]


def test_run_status_is_read_once_per_run_and_shared_by_its_tasks(tmp_path):
    """``Run.status`` says running, succeeded or failed; the tasks reached from a run ask that run,
    so they agree with it: a run that ends afterwards is seen ended by a new ``Run``."""
    datastore = Datastore(str(tmp_path / "store"))
    identity = record_run(datastore, "manual__going", 2, finished=None)
    # A body task that started but stored nothing yet: whether it finished is the run's answer.
    datastore.write_attempt_file(attempt(FLOW, identity.run_id, "body", 9), keys.STDOUT_FILE, b"working\n")
    metadata(datastore.root)

    run = Run(identity.pathspec)
    assert (run.status, run.finished, run.successful) == ("running", False, False)
    datastore.finish_run(FLOW, identity.run_id, False, {})
    started = run["body"]["9"]
    assert not started.finished and started.stdout == "working\n"  # the status this Run read
    again = Run(identity.pathspec)
    assert (again.status, again.finished, again.successful) == ("failed", True, False)
    assert again["body"]["9"].finished and not again["body"]["9"].successful
    record_run(datastore, "manual__done", 1)
    assert Run(f"{FLOW}/manual__done").status == "succeeded"


def test_a_task_attempt_is_read_as_metaflow_numbers_it(tmp_path):
    """``attempt=0`` is the first attempt (stored as Airflow's try 1): its output and outcome, not
    the retry's; an attempt that does not exist, or is not a number, is refused saying so."""
    datastore = Datastore(str(tmp_path / "store"))
    identity = record_run(datastore, "manual__retried", 1, body_attempt=2)
    pathspec = f"{identity.pathspec}/body/1"
    # The first attempt failed (no manifest, its traceback kept); the retry stored its results.
    failed = b"Traceback (most recent call last):\nValueError: flaky\n"
    datastore.write_attempt_file(attempt(FLOW, identity.run_id, "body", 1), keys.STDERR_FILE, failed)
    metadata(datastore.root)

    latest = Task(pathspec)
    assert (latest.retry_count, latest.current_attempt, latest.data.value) == (1, 1, 1)
    first = Task(pathspec, attempt=0)
    assert repr(first) == f"Task('{pathspec}', attempt=0)" and first != latest
    assert (first.successful, first.finished, first.retry_count) == (False, True, 0)
    assert first.exception == "ValueError: flaky" and list(first) == []
    second = Task(pathspec, attempt=1)
    assert second.successful and second.data.value == 1 and second["value"].sha == latest["value"].sha
    assert repr(second["value"]) == f"DataArtifact('{pathspec}/value', attempt=1)"
    assert DataArtifact(f"{pathspec}/value", attempt=1).data == 1
    with pytest.raises(
        MetaflowNotFound, match=r"has no attempt 2: its attempts are 0, 1 \(attempt=0 is the first"
    ):
        Task(pathspec, attempt=2)
    for wrong in (-1, "x", True, 1.5):
        with pytest.raises(MetaflowNotFound, match="an attempt is a whole number, 0 for a task's first"):
            Task(pathspec, attempt=wrong)


def test_reset_forgets_the_namespace_and_root_a_notebook_chose(tmp_path, monkeypatch):
    configured = tmp_path / "configured"
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", str(configured))
    client.namespace("user:bob")
    metadata(str(tmp_path / "elsewhere"))
    client.reset()
    assert client.get_namespace() == client.default_namespace()
    assert client.get_metadata() == f"local@{configured}"
