"""Metaflow's client API on our datastore: flows run on real Airflow, then looked up as a notebook
user would, on the local store and on S3 (moto's server), and without Airflow installed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid

import pytest
from conftest import S3_TEST_BUCKET
from harness import FLOWS, REPO, a_manifest, run_flow

from airflow_flowspec import (
    DataArtifact,
    Flow,
    Metaflow,
    Run,
    Step,
    Task,
    client,
    get_metadata,
    metadata,
)
from airflow_flowspec.client.namespaces import default_namespace
from airflow_flowspec.client.source import client_datastore
from airflow_flowspec.datastore.store import Datastore
from airflow_flowspec.errors import MetaflowNotFound

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture
def fresh_client():
    """The client as a new process has it (the default namespace and root), and again after the test."""
    client.reset()
    yield
    client.reset()


@pytest.fixture(scope="module", params=["local", "s3"])
def store(request, tmp_path_factory):
    """A fresh datastore root with two foreach runs, a nested-foreach run, a @catch run and a failed run."""
    if request.param == "s3":
        request.getfixturevalue("s3_endpoint")
        root = f"s3://{S3_TEST_BUCKET}/client-{uuid.uuid4().hex[:8]}"
    else:
        root = str(tmp_path_factory.mktemp("client-store"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", root)
        runs = {
            "first": run_flow(FLOWS / "foreach_flow.py"),
            "second": run_flow(FLOWS / "foreach_flow.py"),
            "nested": run_flow(FLOWS / "nested_foreach_flow.py"),
            "caught": run_flow(FLOWS / "retry_catch_flow.py"),
            "failed": run_flow(FLOWS / "failing_flow.py"),
        }
        yield root, {name: run.run_id for name, run in runs.items()}


def test_a_notebook_answers_what_the_last_runs_produced(store):
    """The issue's three lines: the latest successful run's result, and each of the last runs'."""
    root, run_ids = store
    assert get_metadata() == (root if root.startswith("s3://") else f"local@{root}")

    run = Flow("ForeachFlow").latest_successful_run
    assert (
        run == Run(f"ForeachFlow/{run_ids['second']}")
        and repr(run) == f"Run('ForeachFlow/{run_ids['second']}')"
    )
    assert run.data.results == ["0:A", "1:B", "2:C", "3:D"] and run.data.count == 4
    assert [r.id for r in Flow("ForeachFlow")] == [run_ids["second"], run_ids["first"]]  # newest first
    assert [r.data.count for r in Flow("ForeachFlow").runs()] == [4, 4]
    assert Flow("ForeachFlow").latest_run.id == run_ids["second"]
    assert {flow.id for flow in Metaflow().flows} == {
        "ForeachFlow",
        "NestedForeachFlow",
        "RetryCatchFlow",
        "FailingFlow",
    }


def test_runs_steps_tasks_and_artifacts_by_every_path(store):
    _, run_ids = store
    run = Run(f"ForeachFlow/{run_ids['first']}")
    assert run.successful and run.finished and run.finished_at >= run.created_at
    assert [step.id for step in run] == ["end", "join", "upper", "start"]  # latest first, as Metaflow
    assert "upper" in run and "nope" not in run
    assert run.end_task == Task(f"{run.pathspec}/end/0")

    upper = run["upper"]
    assert isinstance(upper, Step) and [task.index for task in upper] == [0, 1, 2, 3]
    assert [task.data.result for task in upper] == ["0:A", "1:B", "2:C", "3:D"]
    assert upper["2"].data.result == Task(f"{run.pathspec}/upper/2").data.result == "2:C"

    start = run["start"].task
    assert start.successful and start.retry_count == 0 and start.index is None
    big = start["big"]
    assert isinstance(big, DataArtifact) and big.pathspec == f"{start.pathspec}/big"
    assert (big.type, big.size) == ("bytes", 2 * 1024 * 1024 + 9) and len(big.sha) == 64
    assert big.sha == run["upper"]["3"]["big"].sha  # carried through: the same blob
    assert big.created_at == start.finished_at
    assert big.data == b"x" * (2 * 1024 * 1024)
    assert [artifact.id for artifact in start] == ["big", "letters"] and "letters" in start.data


def test_listing_artifacts_downloads_no_artifact_bodies(store):
    """Guards the laziness: names, types, sizes and hashes come from the manifest alone."""
    _, run_ids = store
    run = Run(f"ForeachFlow/{run_ids['first']}")
    counters = client_datastore().backend.counters
    before = counters.snapshot()
    described = [(a.id, a.type, a.size, a.sha) for step in run for task in step for a in task]
    read = counters.snapshot()["bytes_read"] - before["bytes_read"]
    assert len(described) == 19 and ("big", "bytes", 2 * 1024 * 1024 + 9) in [d[:3] for d in described]
    assert read < 64 * 1024, f"{read} bytes read just to list artifacts: bodies were downloaded"


def test_nested_foreach_tasks_come_in_index_order(store):
    _, run_ids = store
    run = Run(f"NestedForeachFlow/{run_ids['nested']}")
    cells = list(run["cell"])
    assert [task.data.product for task in cells] == [10, 20, 21, 30, 31, 32]
    assert [task.index for task in cells] == [0, 0, 1, 0, 1, 2]  # the innermost foreach's index
    assert [frame["index"] for frame in cells[4].metadata_dict["foreach_stack"]] == [2, 1]
    assert [task.index for task in run["row"]] == [0, 1, 2]
    assert run.data.total == sum([10, 20, 21, 30, 31, 32]) + 3


def test_a_caught_exception_and_a_retried_task(store):
    _, run_ids = store
    run = Run(f"RetryCatchFlow/{run_ids['caught']}")
    flaky, doomed = run["flaky"].task, run["doomed"].task
    assert flaky.retry_count == 1 and flaky.exception is None
    assert doomed.successful and doomed.retry_count == 1  # @catch took the failure: the flow went on
    assert doomed.exception.type == "builtins.ValueError" and "attempt 1 failed" in doomed.exception.exception
    assert doomed.data.before_failure == "kept"


def test_a_failed_run_says_so(store):
    _, run_ids = store
    run = Flow("FailingFlow").latest_run
    assert run.id == run_ids["failed"] and Flow("FailingFlow").latest_successful_run is None
    assert run.finished and not run.successful and run.data is None and run.end_task is None
    assert run["start"].task.data.prepared == "kept for a resume"
    # The failed step stored no artifacts, but its output and traceback are kept with its attempt.
    crunch = run["crunch"].task
    assert crunch.finished and not crunch.successful and list(crunch) == []
    assert crunch.exception == "ZeroDivisionError: the data had no rows to average"
    assert "Traceback (most recent call last)" in crunch.stderr and "crunching" in crunch.stdout


def test_a_run_in_progress_is_visible_unfinished(store):
    """A run whose start step has stored its results but which has not ended."""
    root, _ = store
    datastore = Datastore(root)
    run_id = f"manual__in-progress-{uuid.uuid4().hex[:6]}"
    mine = [default_namespace()]  # a run's user tag, as every start step records it
    datastore.write_run_meta("ForeachFlow", run_id, {"parameters": {}, "tags": mine, "system_tags": mine})
    datastore.write_manifest(a_manifest("ForeachFlow", run_id, "start"))
    run = Run(f"ForeachFlow/{run_id}")
    assert not run.finished and not run.successful and run.finished_at is None and run.data is None
    assert run["start"].task.finished and [step.id for step in run] == ["start"]


def test_unknown_names_say_what_exists_nearby(store):
    _, run_ids = store
    run_id = run_ids["first"]
    cases = [
        (lambda: Flow("ForachFlow"), "Flow 'ForachFlow' has no runs .* Did you mean 'ForeachFlow'"),
        (lambda: Run("ForeachFlow/not-a-run"), "has no run 'not-a-run'"),
        (lambda: Run(f"ForeachFlow/{run_id}")["uper"], "has no step 'uper'.*Did you mean 'upper'"),
        (lambda: Run(f"ForeachFlow/{run_id}")["upper"]["9"], "has no task '9'.*'0', '1', '2', '3'"),
        (
            lambda: Run(f"ForeachFlow/{run_id}")["start"].task["bog"],
            "has no artifact 'bog'.*Did you mean 'big'",
        ),
        (lambda: Run(f"ForeachFlow/{run_id}")["start"].task.data.bog, "has no artifact 'bog'"),
        (lambda: Run("ForeachFlow"), "a run pathspec looks like 'TrainFlow/<run_id>'"),
    ]
    for lookup, message in cases:
        with pytest.raises(MetaflowNotFound, match=message) as caught:
            lookup()
        assert isinstance(caught.value, KeyError) and not str(caught.value).startswith("'")


def test_metadata_switches_the_root(store, tmp_path, fresh_client):
    root, run_ids = store
    assert metadata(str(tmp_path / "empty")) == f"local@{tmp_path / 'empty'}"
    assert Metaflow().flows == []
    with pytest.raises(MetaflowNotFound, match="There are no flows here"):
        Flow("ForeachFlow")
    metadata(root if root.startswith("s3://") else f"local@{root}")
    assert Flow("ForeachFlow").latest_successful_run.id == run_ids["second"]


def test_a_step_reads_another_flows_latest_successful_run(store, tmp_path):
    """Metaflow's tutorial pattern: a flow that starts from another flow's results."""
    _, run_ids = store
    flow_file = tmp_path / "consumer_flow.py"
    flow_file.write_text(
        textwrap.dedent("""
            from airflow_flowspec import Flow, FlowSpec, step


            class ConsumerFlow(FlowSpec):
                @step
                def start(self):
                    upstream = Flow("ForeachFlow").latest_successful_run
                    self.upstream_run = upstream.id
                    self.upstream_results = upstream.data.results
                    self.next(self.end)

                @step
                def end(self):
                    pass
        """)
    )
    consumer = run_flow(flow_file)
    assert consumer.succeeded, consumer.states()
    assert consumer.artifacts("start")["upstream_run"] == run_ids["second"]
    assert consumer.artifacts("start")["upstream_results"] == ["0:A", "1:B", "2:C", "3:D"]


def test_the_client_works_where_airflow_is_not_installed(store):
    root, run_ids = store
    script = textwrap.dedent("""
        import importlib.abc, sys

        class BlockAirflow(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "airflow" or name.startswith("airflow."):
                    raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
                return None

        sys.meta_path.insert(0, BlockAirflow())
        from airflow_flowspec import Flow
        run = Flow("ForeachFlow").latest_successful_run
        print(run.id, run.data.count, run["upper"]["1"].data.result)
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "AIRFLOW__FLOWSPEC__DATASTORE_ROOT": root, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [run_ids["second"], "4", "1:B"]


NAMESPACE_FLOW = textwrap.dedent("""
    from airflow_flowspec import Flow, FlowSpec, current, get_namespace, step


    class NamespaceFlow(FlowSpec):
        @step
        def start(self):
            self.namespace_seen = current.namespace
            self.client_namespace = get_namespace()
            self.next(self.end)

        @step
        def end(self):
            pass


    if __name__ == "__main__":
        NamespaceFlow()
""")


def test_runs_carry_their_user_and_tags_and_the_client_filters_by_namespace(
    tmp_path, monkeypatch, fresh_client
):
    """`run --tag` and the CLI user become tags; the default namespace is the user's; other users'
    runs (and production ones) are hidden until namespace(None) or their tag is chosen."""
    import getpass

    from harness import run_cli

    from airflow_flowspec import get_namespace, namespace
    from airflow_flowspec.errors import MetaflowNamespaceMismatch
    from airflow_flowspec.identity import RunIdentity
    from airflow_flowspec.runtime.step_runner import run_step
    from airflow_flowspec.runtime.task_spec import RunContext, TaskSpec

    root = tmp_path / "store"
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", str(root))
    flow_file = tmp_path / "namespace_flow.py"
    flow_file.write_text(NAMESPACE_FLOW)
    result = run_cli(flow_file, "run", "--tag", "exp1", "--tag", "baseline")
    assert result.returncode == 0, result.stderr
    me = f"user:{getpass.getuser()}"

    (mine,) = Flow("NamespaceFlow").runs()
    assert mine.tags == {me, "exp1", "baseline"} and get_namespace() == me
    assert [r.id for r in Flow("NamespaceFlow").runs("exp1", "baseline")] == [mine.id]
    assert list(Flow("NamespaceFlow").runs("exp2")) == []
    start = mine["start"].task.data
    assert start.namespace_seen == me and start.client_namespace == me  # a step sees its run's namespace

    # A scheduled run (the production namespace) and another user's later run, stored by the runtime.
    for run_id, context in (
        ("scheduled__2026-11-01", RunContext(username="airflow", run_type="scheduled")),
        ("manual__by-ana", RunContext(username="ana", run_type="manual")),
    ):
        spec = TaskSpec(
            str(flow_file), RunIdentity("NamespaceFlow", run_id), "start", str(root), run_context=context
        )
        run_step(spec)
    assert Flow("NamespaceFlow").latest_run.id == mine.id  # the newer runs are not in my namespace
    with pytest.raises(MetaflowNamespaceMismatch, match="not in the namespace 'user:.*namespace\\(None\\)"):
        Run("NamespaceFlow/manual__by-ana")
    with pytest.raises(MetaflowNamespaceMismatch):
        Task("NamespaceFlow/manual__by-ana/start/0")

    namespace("production:NamespaceFlow")
    (scheduled,) = Flow("NamespaceFlow").runs()
    assert scheduled.tags == {"user:airflow", "production:NamespaceFlow"}
    assert scheduled["start"].task.data.namespace_seen == "production:NamespaceFlow"
    namespace(None)
    assert {r.id for r in Flow("NamespaceFlow")} == {mine.id, "scheduled__2026-11-01", "manual__by-ana"}
    assert Flow("NamespaceFlow").latest_run.id == "manual__by-ana"


@pytest.mark.parametrize(
    "tags, problem",
    [
        (("ok", ""), "'' of run r1 of flow NamespaceFlow is refused: it is empty"),
        (("ok", 7), "7 of run r1 of flow NamespaceFlow is refused: it is not a string but int"),
        (("ok", "exp\nfake\trow"), r"'exp\\nfake\\trow' of run r1 .* control character '\\n'"),
        (("\x1b[2Jcleared",), r"'\\x1b\[2Jcleared' of run r1 .* control character '\\x1b'"),
    ],
)
def test_tags_that_break_the_tag_rule_are_refused_by_the_start_step(tmp_path, tags, problem):
    """Guards the start step's call of the shared tag rule (run_tags.check_tags), which is what
    refuses tags from the trigger form or a trigger's conf: named, with the rule, before anything
    is written."""
    from airflow_flowspec.errors import ParameterError
    from airflow_flowspec.identity import RunIdentity
    from airflow_flowspec.runtime.step_runner import run_step
    from airflow_flowspec.runtime.task_spec import RunContext, TaskSpec

    flow_file = tmp_path / "namespace_flow.py"
    flow_file.write_text(NAMESPACE_FLOW)
    spec = TaskSpec(
        str(flow_file),
        RunIdentity("NamespaceFlow", "r1"),
        "start",
        str(tmp_path / "store"),
        run_context=RunContext(tags=tags),
    )
    with pytest.raises(ParameterError, match=f"The tag {problem}. The rule: a tag is a non-empty string"):
        run_step(spec)
    assert not (tmp_path / "store").exists()  # refused before anything was written


def test_user_tags_can_be_added_replaced_and_removed_but_not_system_tags(tmp_path, monkeypatch, fresh_client):
    from airflow_flowspec import namespace
    from airflow_flowspec.identity import RunIdentity
    from airflow_flowspec.runtime.step_runner import run_step
    from airflow_flowspec.runtime.task_spec import RunContext, TaskSpec

    root = tmp_path / "store"
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", str(root))
    flow_file = tmp_path / "namespace_flow.py"
    flow_file.write_text(NAMESPACE_FLOW)
    context = RunContext(username="ana", tags=("draft",))
    run_step(
        TaskSpec(str(flow_file), RunIdentity("NamespaceFlow", "r1"), "start", str(root), run_context=context)
    )
    namespace(None)

    run = Run("NamespaceFlow/r1")
    assert (run.system_tags, run.user_tags) == ({"user:ana"}, {"draft"})
    run.add_tag("candidate")
    run.replace_tag("draft", "reviewed")
    assert Run("NamespaceFlow/r1").user_tags == {"candidate", "reviewed"}  # stored, not just in memory
    assert [r.id for r in Flow("NamespaceFlow").runs("reviewed")] == ["r1"]
    run.remove_tags(["candidate", "reviewed"])
    assert Run("NamespaceFlow/r1").tags == {"user:ana"}
    with pytest.raises(ValueError, match="user:ana of run NamespaceFlow/r1 is a system tag"):
        run.remove_tag("user:ana")
    with pytest.raises(ValueError, match="non-empty string"):
        run.add_tag("")
    assert Run("NamespaceFlow/r1").tags == {"user:ana"}


def test_each_run_records_the_code_it_started_with_once_per_content(tmp_path, monkeypatch, fresh_client):
    """run.code gives back the flow file as it was when the run started, after the file changed;
    an unchanged file is stored once (the package is content-addressed and built deterministically)."""
    from harness import run_cli

    from airflow_flowspec import namespace

    monkeypatch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", str(tmp_path / "store"))
    namespace(None)
    flow_file = tmp_path / "namespace_flow.py"
    flow_file.write_text(NAMESPACE_FLOW)
    for _ in range(2):
        assert run_cli(flow_file, "run").returncode == 0
    edited = NAMESPACE_FLOW.replace(
        "self.namespace_seen = current.namespace", "self.namespace_seen = 'edited'"
    )
    flow_file.write_text(edited)
    assert run_cli(flow_file, "run").returncode == 0

    newest, second, first = Flow("NamespaceFlow").runs()
    assert first.code.flowspec == second.code.flowspec == NAMESPACE_FLOW and newest.code.flowspec == edited
    assert first.code.path == "namespace_flow.py"
    records = [
        Datastore(str(tmp_path / "store")).read_run_meta(run.flow_name, run.id)
        for run in (first, second, newest)
    ]
    packages = [record["code"]["source"]["hash"] for record in records]
    assert packages[0] == packages[1] != packages[2]
    extracted = first.code.extract(str(tmp_path / "unpacked"))
    assert open(extracted).read() == NAMESPACE_FLOW
    with first.code.tarball as tar:
        assert tar.extractfile("namespace_flow.py").read().decode() == NAMESPACE_FLOW
    assert first.versions["airflow_flowspec"] and first.versions["airflow"].startswith("3.")


def test_tags_from_the_trigger_form_and_no_impersonating_system_tags(tmp_path, monkeypatch, every_namespace):
    """The trigger form has a "Run tags" field (a DAG param) whose tags the run carries; a user's
    tag may not take a system prefix (``user:``, ``production:``...), which the run index trusts
    to say who started a run, neither when triggering nor with add_tag."""
    from harness import load_flow

    from airflow_flowspec.airflow.registration import dag_for

    monkeypatch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", str(tmp_path / "store"))
    flow_file = tmp_path / "namespace_flow.py"
    flow_file.write_text(NAMESPACE_FLOW)
    form = dag_for(load_flow(flow_file), str(flow_file)).params.get_param("flowspec_tags")
    assert form.value == [] and form.schema["title"] == "Run tags"
    assert form.schema["type"] == ["array", "null"]  # optional: the form does not mark it required

    tagged = run_flow(flow_file, params={"flowspec_tags": ["from_form", "exp7"]})
    assert tagged.succeeded, tagged.states()
    assert {"from_form", "exp7"} <= Run(f"NamespaceFlow/{tagged.run_id}").tags
    assert [r.id for r in Flow("NamespaceFlow").runs("from_form")] == [tagged.run_id]

    impostor = run_flow(flow_file, params={"flowspec_tags": ["user:mallory"]})
    assert impostor.state("start") == "failed"
    assert impostor.run_id not in Flow("NamespaceFlow")
    with pytest.raises(ValueError, match="production:NamespaceFlow cannot be added .* the system's"):
        Run(f"NamespaceFlow/{tagged.run_id}").add_tag("production:NamespaceFlow")


def test_a_parameter_may_not_take_the_run_tags_fields_name(tmp_path):
    """A flow parameter named like the trigger form's "Run tags" field would have its value read
    as the run's tags: refused at once with one paragraph, before anything runs."""
    from harness import run_cli

    flow_file = tmp_path / "tags_param_flow.py"
    flow_file.write_text(
        "from airflow_flowspec import FlowSpec, Parameter, step\n\n\n"
        "class TagsParamFlow(FlowSpec):\n"
        "    flowspec_tags = Parameter('flowspec_tags', default='a')\n\n"
        "    @step\n"
        "    def start(self):\n"
        "        self.next(self.end)\n\n"
        "    @step\n"
        "    def end(self):\n"
        "        pass\n\n\n"
        "if __name__ == '__main__':\n"
        "    TagsParamFlow()\n"
    )
    result = run_cli(flow_file, "run", env={"AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(tmp_path / "store")})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "TagsParamFlow has a parameter named 'flowspec_tags'" in result.stderr
    assert not (tmp_path / "store").exists()
