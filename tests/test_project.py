"""``@project``: each run belongs to a branch of a project, named as Metaflow names it.

A project flow runs with ``python flow.py run`` on the user's branch, on ``test.<x>`` with ``--branch
x`` and on ``prod`` with ``--production``; in the dags folder it is the DAG
``<project>.<branch>.<Flow>`` so branches deploy side by side. Its runs are stored under the flow's
name and tagged ``project:`` and ``project_branch:``, which the client filters on.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from harness import FLOWS, load_flow, parse_dags_folder, run_cli, run_flow, run_id_of

from airflow_flowspec import Flow, FlowSpec, current, namespace, project
from airflow_flowspec.client import namespaces, source
from airflow_flowspec.decorators.flow_decorators import branch_for_deployment, branch_for_run
from airflow_flowspec.errors import ConfigurationError, ProjectError

PROJECT_FLOW = FLOWS / "project_flow.py"
SOURCE = PROJECT_FLOW.read_text()
ME = getpass.getuser()
PROJECT = "demand_forecast"


def variant(folder: Path, file_name: str, decorator: str) -> Path:
    """The project flow with another ``@project(...)`` line (on line 6, as in the original)."""
    path = folder / file_name
    path.write_text(SOURCE.replace(f'@project(name="{PROJECT}")', decorator))
    return path


def started_by(output: str) -> str:
    return run_id_of(output)


@pytest.fixture
def client_store(tmp_path, monkeypatch):
    """A fresh datastore root, for the runs of this test and for the client reading them."""
    root = tmp_path / "store"
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", str(root))
    monkeypatch.setattr(namespaces, "_chosen", namespaces._UNSET)
    monkeypatch.setattr(source, "_chosen_root", None)  # whatever metadata() chose before
    return root


def test_run_branch_and_production_name_the_branch_and_the_client_filters_by_it(client_store):
    """The issue's three command lines, then the client: the project's namespace holds every branch,
    ``runs("project_branch:...")`` one branch."""
    runs = {}
    for label, args in (
        ("user", ["run"]),
        ("test", ["run", "--branch", "nightly"]),
        ("prod", ["run", "--production"]),
        ("prod_branch", ["--branch", "nightly", "run", "--production"]),  # Metaflow's place, and ours
    ):
        result = run_cli(PROJECT_FLOW, *args)
        assert result.returncode == 0, result.stdout + result.stderr
        runs[label] = started_by(result.stdout)
    expected = {
        "user": (f"user.{ME}", True, False),
        "test": ("test.nightly", False, False),
        "prod": ("prod", False, True),
        "prod_branch": ("prod.nightly", False, True),
    }

    namespace(f"project:{PROJECT}")
    assert {run.id for run in Flow("ProjectFlow")} == set(runs.values())  # stored under the flow's name
    for label, (branch, is_user_branch, is_production) in expected.items():
        run = Flow("ProjectFlow").runs(f"project_branch:{branch}")
        (only,) = run
        assert only.id == runs[label]
        assert only.system_tags == {f"user:{ME}", f"project:{PROJECT}", f"project_branch:{branch}"}
        start = only["start"].task.data
        assert start.seen == {
            "project_name": PROJECT,
            "branch_name": branch,
            "project_flow_name": f"{PROJECT}.{branch}.ProjectFlow",
            "is_user_branch": is_user_branch,
            "is_production": is_production,
        }
        # The namespace is the user's, as in Metaflow; the pathspec names the flow, not the branch.
        assert start.namespace_seen == f"user:{ME}"
        assert start.pathspec_seen == f"ProjectFlow/{runs[label]}/start/0"
    assert [run.id for run in Flow("ProjectFlow").runs("project_branch:prod")] == [runs["prod"]]
    namespace("project_branch:test.nightly")
    assert [run.id for run in Flow("ProjectFlow")] == [runs["test"]]
    namespace(f"project:{PROJECT}_other")
    assert list(Flow("ProjectFlow")) == []


def test_run_prints_the_branch_and_refuses_a_branch_the_decorator_already_sets(tmp_path, client_store):
    flow_file = variant(tmp_path, "pinned_flow.py", f'@project(name="{PROJECT}", branch="candidate")')
    result = run_cli(flow_file, "run", "--branch", "other")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(
        f"ProjectFlow: {flow_file}, line 6: Flow ProjectFlow is run with --branch "
    )
    assert "already sets branch='candidate'" in result.stderr and "drop --branch" in result.stderr

    result = run_cli(flow_file, "run", "--production")  # allowed, as in Metaflow
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == f"Project: {PROJECT}, Branch: prod.candidate"


@pytest.mark.parametrize("command", ["run", "check"])
def test_a_bad_project_name_fails_at_once_with_one_paragraph(tmp_path, command):
    flow_file = variant(tmp_path, "bad_name_flow.py", '@project(name="Demand-Forecast")')
    result = run_cli(flow_file, command)
    assert result.returncode == 1 and "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr == (
        f"ProjectFlow: {flow_file}, line 6: @project(name='Demand-Forecast') on flow ProjectFlow is not "
        f"a usable project name: as in Metaflow it may contain only lowercase letters, digits and "
        f"underscores, at most 128 characters (it becomes part of the DAG id and of the tag "
        f"project:<name>). Fix: e.g. @project(name='demand_forecast').\n"
    )


def test_a_bad_branch_is_refused_before_anything_runs():
    result = run_cli(PROJECT_FLOW, "run", "--branch", "Nightly Build")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        "The branch 'Nightly Build' of flow ProjectFlow (from --branch) is not a usable branch"
        in result.stderr
    )
    assert "Fix: e.g. 'nightly_build'." in result.stderr


def test_check_tells_the_dag_id_in_the_dags_folder():
    result = run_cli(PROJECT_FLOW, "check", env={"AIRFLOW__FLOWSPEC__PROJECT_BRANCH": "staging"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == (
        f"Project {PROJECT}: run uses branch user.{ME}; in Airflow's dags folder the flow is the DAG "
        f"{PROJECT}.test.staging.ProjectFlow ([flowspec] project_branch)."
    )


@pytest.mark.usefixtures("airflow_db")
def test_dags_folder_deploys_branches_side_by_side_and_the_decorator_pins_its_own(tmp_path):
    folder = tmp_path / "dags"
    folder.mkdir()
    shutil.copy(PROJECT_FLOW, folder / "project_flow.py")
    shutil.copy(FLOWS / "scheduled_flow.py", folder / "scheduled_flow.py")
    variant(folder, "candidate_flow.py", f'@project(name="{PROJECT}", branch="candidate")')
    bad = variant(folder, "bad_name_flow.py", '@project(name="Demand-Forecast")')

    production = parse_dags_folder(folder)
    assert set(production["dags"]) == {
        f"{PROJECT}.prod.ProjectFlow",
        f"{PROJECT}.test.candidate.ProjectFlow",
        "ScheduledFlow",  # without @project: the class name, as before
    }
    ((path, error),) = production["errors"].items()
    assert path.endswith("bad_name_flow.py")
    assert f"{bad}, line 6: @project(name='Demand-Forecast') on flow ProjectFlow is not a usable" in error

    staging = parse_dags_folder(folder, {"AIRFLOW__FLOWSPEC__PROJECT_BRANCH": "staging"})
    assert set(staging["dags"]) == {
        f"{PROJECT}.test.candidate.ProjectFlow",  # the decorator's branch wins over the option
        f"{PROJECT}.test.staging.ProjectFlow",
        "ScheduledFlow",
    }
    assert parse_dags_folder(folder, {"AIRFLOW__FLOWSPEC__PROJECT_BRANCH": "prod"})["dags"].keys() == (
        production["dags"].keys()
    )


@pytest.mark.usefixtures("airflow_db")
def test_a_deployed_branch_runs_on_airflow_and_its_runs_are_the_flows(client_store, monkeypatch):
    """``dag.test()`` of the DAGs the dags folder would build, production then staging, for the
    same interval: both get the same Airflow run id (as two branches' schedules do), and each run
    is stored under its project's and branch's run id, so neither writes into the other's run."""
    from datetime import datetime, timezone

    interval = datetime(2026, 11, 2, tzinfo=timezone.utc)
    production = run_flow(PROJECT_FLOW, logical_date=interval, run_after=interval)
    assert production.succeeded, production.states()
    assert production.dag_run.dag_id == f"{PROJECT}.prod.ProjectFlow"
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__PROJECT_BRANCH", "staging")
    staging = run_flow(PROJECT_FLOW, logical_date=interval, run_after=interval)
    assert staging.succeeded and staging.dag_run.dag_id == f"{PROJECT}.test.staging.ProjectFlow"
    assert staging.run_id == production.run_id  # Airflow's

    namespace(None)
    assert len(list(Flow("ProjectFlow"))) == 2
    for run, branch, is_production in ((production, "prod", True), (staging, "test.staging", False)):
        (found,) = Flow("ProjectFlow").runs(f"project_branch:{branch}")
        assert found.id == f"{PROJECT}.{branch}:{run.run_id}" and found.successful
        assert found.identity.dag_id == run.dag_run.dag_id and found.identity.airflow_run_id == run.run_id
        assert {f"project:{PROJECT}", f"project_branch:{branch}"} <= found.system_tags
        seen = found["start"].task.data.seen
        assert (seen["branch_name"], seen["is_production"], seen["is_user_branch"]) == (
            branch,
            is_production,
            False,
        )


@pytest.mark.usefixtures("airflow_db")
def test_a_failed_project_run_is_recorded_under_the_flow_name(tmp_path, client_store):
    failing = SOURCE.replace('print("branch", current.branch_name)', "raise ValueError('no forecast')")
    flow_file = tmp_path / "failing_project_flow.py"
    flow_file.write_text(failing)
    run = run_flow(flow_file)
    assert not run.succeeded and run.dag_run.dag_id == f"{PROJECT}.prod.ProjectFlow"
    namespace(None)
    latest = Flow("ProjectFlow").latest_run
    assert latest.id == f"{PROJECT}.prod:{run.run_id}" and latest.finished and not latest.successful


@pytest.mark.usefixtures("airflow_db")
def test_airflow_dags_test_runs_a_configured_branch_from_the_dags_folder(tmp_path, client_store):
    folder = tmp_path / "dags"
    folder.mkdir()
    shutil.copy(PROJECT_FLOW, folder / "project_flow.py")
    env = {
        **os.environ,
        "AIRFLOW__CORE__DAGS_FOLDER": str(folder),
        "AIRFLOW__FLOWSPEC__PROJECT_BRANCH": "staging",
    }
    airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
    dag_id = f"{PROJECT}.test.staging.ProjectFlow"
    result = subprocess.run(
        [airflow, "dags", "test", dag_id], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    namespace(f"project:{PROJECT}")
    (run,) = Flow("ProjectFlow")
    assert run.successful and "project_branch:test.staging" in run.system_tags
    assert run["start"].task.data.seen["project_flow_name"] == dag_id


NO_PROJECT_FLOW = textwrap.dedent("""
    from airflow_flowspec import FlowSpec, current, step


    class PlainFlow(FlowSpec):
        @step
        def start(self):
            try:
                current.project_name
            except AttributeError as error:
                self.missing = str(error)
            self.got = [current.get(name) for name in ("project_name", "branch_name", "project_flow_name")]
            self.contained = "project_name" in current or "is_user_branch" in current
            self.flow_name_contained = "flow_name" in current
            self.is_production = current.is_production
            self.next(self.end)

        @step
        def end(self):
            pass
""")


def test_a_flow_without_project_has_no_project_fields_as_in_metaflow(tmp_path):
    from airflow_flowspec.datastore import open_datastore
    from airflow_flowspec.identity import RunIdentity
    from airflow_flowspec.runtime.step_runner import run_step
    from airflow_flowspec.runtime.task_spec import RunContext, TaskSpec

    flow_file = tmp_path / "plain_flow.py"
    flow_file.write_text(NO_PROJECT_FLOW)
    root = str(tmp_path / "store")
    run_step(
        TaskSpec(
            str(flow_file),
            RunIdentity("PlainFlow", "r1"),
            "start",
            root,
            run_context=RunContext(username="ana"),
        )
    )
    datastore = open_datastore(root)
    refs = datastore.latest_attempt_manifest("PlainFlow", "r1", "start", "0").artifacts
    data = {name: datastore.artifacts.load(ref) for name, ref in refs.items()}
    assert "current.project_name exists only in flows decorated with @project" in data["missing"]
    assert data["got"] == [None, None, None] and data["contained"] is False
    assert data["flow_name_contained"] is True and data["is_production"] is False
    assert datastore.read_run_meta("PlainFlow", "r1")["system_tags"] == ["user:ana"]
    assert current.get("project_name", "outside") == "outside"  # outside a step, as Metaflow's None


# ---------------------------------------------------------------------- naming, as Metaflow's code does it

_METAFLOW_FORMAT_NAME = textwrap.dedent("""
    import json, sys
    from metaflow.plugins.project_decorator import format_name
    answers = []
    for project_name, production, branch in json.loads(sys.argv[1]):
        try:
            answers.append(list(format_name("ProjectFlow", project_name, production, branch, "ana")))
        except Exception as error:
            answers.append(type(error).__name__)
    print(json.dumps(answers))
""")

NAMING_CASES = [
    ("demand_forecast", False, None),
    ("demand_forecast", False, "nightly"),
    ("demand_forecast", True, None),
    ("demand_forecast", True, "nightly"),
    ("demand_forecast", False, ""),
    ("x" * 128, False, "y" * 128),
    ("x" * 129, False, None),
    ("demand_forecast", False, "y" * 129),
    ("Demand", False, None),
    ("demand-forecast", False, None),
    ("demand.forecast", False, None),
    ("", False, None),
    ("demand_forecast", False, "Nightly"),
    ("demand_forecast", True, "night.ly"),
]


def flow_with(**arguments):
    return project(**arguments)(type("ProjectFlow", (FlowSpec,), {"__module__": __name__}))


def test_branch_names_and_name_rules_are_metaflows():
    """Metaflow 2.19's own ``format_name`` (run in a subprocess) gives the same names and refuses the
    same names."""
    metaflow = subprocess.run(
        [sys.executable, "-c", _METAFLOW_FORMAT_NAME, json.dumps(NAMING_CASES)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "METAFLOW_USER": "ana"},
    )
    assert metaflow.returncode == 0, metaflow.stderr
    for case, expected in zip(NAMING_CASES, json.loads(metaflow.stdout.splitlines()[-1]), strict=True):
        name, production, branch = case
        try:
            ours = branch_for_run(flow_with(name=name), "ana", branch=branch, production=production)
            answer = [ours.project_flow_name, ours.branch_name]
        except ProjectError:
            answer = "MetaflowException"
        assert answer == expected, case


def test_decorator_arguments_and_the_command_line_combine_as_in_metaflow():
    def branch(decorator, **cli):
        return branch_for_run(flow_with(**decorator), "ana", **cli)

    assert branch({"name": "p"}).branch_name == "user.ana" and branch({"name": "p"}).is_user_branch
    assert branch({"name": "p", "branch": "b"}, production=True).branch_name == "prod.b"
    assert branch({"name": "p", "production": True}, branch="b").branch_name == "prod.b"
    assert branch({"name": "p", "production": True}, production=True).is_production  # the same: allowed
    assert branch({"name": "p", "branch": "b"}, branch="b").branch_name == "test.b"
    with pytest.raises(ProjectError, match="already sets production=False"):
        branch({"name": "p", "production": False}, production=True)
    with pytest.raises(ProjectError, match="needs a name"):
        branch({})
    assert branch_for_run(type("Plain", (FlowSpec,), {}), "ana", branch="b") is None


def test_the_option_decides_unless_the_decorator_pins_the_branch():
    def deployed(decorator, configured):
        return branch_for_deployment(flow_with(**decorator), configured, "ana").branch_name

    assert deployed({"name": "p"}, None) == "prod"
    assert deployed({"name": "p"}, "staging") == "test.staging"
    assert deployed({"name": "p", "branch": "b"}, None) == "test.b"
    assert deployed({"name": "p", "production": True}, "staging") == "prod"
    assert deployed({"name": "p", "branch": "b", "production": True}, "staging") == "prod.b"


@pytest.mark.parametrize("value, branch", [("", None), ("prod", None), (" staging ", "staging")])
def test_project_branch_option(monkeypatch, value, branch):
    from airflow_flowspec import config

    monkeypatch.setenv("AIRFLOW__FLOWSPEC__PROJECT_BRANCH", value)
    assert config.project_branch() == branch


def test_a_bad_project_branch_option_names_the_option(monkeypatch):
    from airflow_flowspec import config

    monkeypatch.setenv("AIRFLOW__FLOWSPEC__PROJECT_BRANCH", "test.staging")
    with pytest.raises(
        ConfigurationError, match=r"\[flowspec\] project_branch is 'test.staging'.*e\.g\. staging"
    ):
        config.project_branch()


def test_project_is_used_like_metaflows_decorator():
    with pytest.raises(Exception, match="takes its name as a keyword"):
        project("demand_forecast")
    with pytest.raises(Exception, match="unknown argument"):
        project(title="x")
    with pytest.raises(Exception, match="twice"):
        project(name="b")(flow_with(name="a"))
    assert load_flow(PROJECT_FLOW)._flowspec_project.name == PROJECT
