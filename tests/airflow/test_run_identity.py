"""One identity per run, on real Airflow (issue 20, findings 3 and 4): two ``@project`` flows with
one class name run side by side and never share a stored run, and the artifact view shows a run
only through the DAG that made it, only to users Airflow lets read that DAG.

Every run here gets the same Airflow run id (one logical date), as scheduled runs of different
deployments do: ``scheduled__<date>``.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from datetime import datetime, timezone
from urllib.parse import quote

import pytest
from harness import parse_dags_folder, run_flow

from airflow_flowspec import Flow, Run, namespace
from airflow_flowspec.errors import MetaflowNotFound

INTERVAL = datetime(2026, 11, 2, tzinfo=timezone.utc)

PROJECT_FLOW = """
from airflow_flowspec import FlowSpec, current, project, step


@project(name="{project}")
class TrainFlow(FlowSpec):
    @step
    def start(self):
        self.secret = "{project} secret"
        self.next(self.end)

    @step
    def end(self):
        self.project_seen = current.project_name
"""

VICTIM_FLOW = """
from airflow_flowspec import FlowSpec, step


class VictimFlow(FlowSpec):
    @step
    def start(self):
        self.secret = "victim secret"
        self.next(self.end)

    @step
    def end(self):
        pass
"""

# An ordinary DAG named like a project deployment of VictimFlow (finding 3's look-alike).
LOOK_ALIKE_DAG = """
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("evil..VictimFlow", schedule=None) as dag:
    EmptyOperator(task_id="start")
"""

# A DAG built by hand with this provider's operator, claiming to be VictimFlow's deployment.
IMPOSTOR_DAG = """
from airflow.sdk import DAG
from airflow_flowspec.operators.local_step import LocalStepOperator

with DAG("impostor", schedule=None) as dag:
    task = LocalStepOperator(
        task_id="start", flow_file="{flow_file}", flow_name="VictimFlow", step_name="start", input_pulls=[]
    )
    task.flowspec_deployment = '{{"branch": null, "flow": "VictimFlow", "project": null}}'
"""

PASSWORDS = {"admin": "admin-pw", "viewer": "viewer-pw"}


@pytest.fixture(scope="module")
def deployments(airflow_db, tmp_path_factory):
    """The runs of alpha's and beta's TrainFlow, VictimFlow, and the two DAGs that are not theirs,
    all with one Airflow run id; and a test client of Airflow's API server app."""
    from fastapi.testclient import TestClient

    from airflow_flowspec.airflow.local_run import sync_dag
    from airflow_flowspec.client import namespaces, source

    folder = tmp_path_factory.mktemp("deployments")
    store = pytest.MonkeyPatch()  # a datastore of this module's own: the runs, and the client
    store.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", str(folder / "store"))
    store.setattr(source, "_chosen_root", None)
    store.setattr(namespaces, "_chosen", namespaces._UNSET)
    runs = {}
    for project in ("alpha", "beta"):
        path = folder / f"{project}_flow.py"
        path.write_text(textwrap.dedent(PROJECT_FLOW.format(project=project)))
        runs[project] = run_flow(path, logical_date=INTERVAL, run_after=INTERVAL)
    victim = folder / "victim_flow.py"
    victim.write_text(textwrap.dedent(VICTIM_FLOW))
    runs["victim"] = run_flow(victim, logical_date=INTERVAL, run_after=INTERVAL)
    for name, dag_source in (
        ("look_alike", LOOK_ALIKE_DAG),
        ("impostor", IMPOSTOR_DAG.format(flow_file=victim)),
    ):
        path = folder / f"{name}_dag.py"
        path.write_text(textwrap.dedent(dag_source))
        dag = _module_dag(path)
        sync_dag(dag)
        runs[name] = dag.test(logical_date=INTERVAL, run_after=INTERVAL)
    assert len({run.run_id for run in runs.values()}) == 1  # the same Airflow run id everywhere

    passwords = folder / "passwords.json"
    passwords.write_text(json.dumps(PASSWORDS))
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("AIRFLOW__CORE__AUTH_MANAGER", "integration.auth_manager.DagRefusingAuthManager")
        environment.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin,viewer:viewer")
        environment.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords))
        # viewer may read alpha's DAG and the two others, never beta's or VictimFlow's
        environment.setenv(
            "FLOWSPEC_TEST_REFUSED_DAGS", json.dumps({"viewer": ["beta.prod.TrainFlow", "VictimFlow"]})
        )
        from airflow.api_fastapi.app import create_app

        yield runs, TestClient(create_app(apps="all")), folder
    store.undo()


def _module_dag(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"dag_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def _headers(client, user: str) -> dict[str, str]:
    response = client.post("/auth/token", json={"username": user, "password": PASSWORDS[user]})
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def test_project_flows_of_two_projects_with_one_class_name_are_stored_apart(deployments):
    """Guards finding 4: alpha's and beta's TrainFlow, same Airflow run id, get a stored run each,
    found by the stored id, by the DAG id and Airflow run id, and never by a name both have."""
    runs, _, _ = deployments
    airflow_run = runs["alpha"].run_id
    assert runs["alpha"].succeeded and runs["beta"].succeeded
    namespace(None)
    stored = {run.id: run for run in Flow("TrainFlow")}
    assert set(stored) == {f"alpha.prod:{airflow_run}", f"beta.prod:{airflow_run}"}
    for project in ("alpha", "beta"):
        run = stored[f"{project}.prod:{airflow_run}"]
        assert run["start"].task.data.secret == f"{project} secret"
        assert run.data.project_seen == project
        assert (run.identity.dag_id, run.identity.airflow_run_id) == (
            f"{project}.prod.TrainFlow",
            airflow_run,
        )
        assert Run(f"{project}.prod.TrainFlow/{airflow_run}") == run  # as Airflow shows the run
    with pytest.raises(MetaflowNotFound, match="several runs .* of different @project deployments"):
        Run(f"TrainFlow/{airflow_run}")


def test_two_projects_flows_with_one_class_name_deploy_side_by_side(deployments):
    _, _, folder = deployments
    dags_folder = folder / "dags"
    dags_folder.mkdir(exist_ok=True)
    for project in ("alpha", "beta"):
        shutil.copy(folder / f"{project}_flow.py", dags_folder / f"{project}_flow.py")
    parsed = parse_dags_folder(dags_folder)
    assert not parsed["errors"] and set(parsed["dags"]) == {"alpha.prod.TrainFlow", "beta.prod.TrainFlow"}


def test_the_view_shows_a_run_only_through_the_dag_that_made_it(deployments):
    """Guards finding 3 and the record check: a DAG's page is Airflow's access check on that DAG,
    then the flow deployment its serialized DAG records (never the DAG id's text), then the stored
    run whose record names that very DAG run. Look-alike and impostor DAGs are not flows' DAGs."""
    runs, client, _ = deployments
    viewer = _headers(client, "viewer")
    run_id = quote(runs["alpha"].run_id, safe="")

    def get(dag_id: str, tail: str = "") -> object:
        return client.get(f"/flowspec/api/dags/{quote(dag_id, safe='')}/runs/{run_id}{tail}", headers=viewer)

    alpha = get("alpha.prod.TrainFlow")
    assert alpha.status_code == 200 and alpha.json()["run_id"] == f"alpha.prod:{runs['alpha'].run_id}"
    page = json.dumps(alpha.json())
    assert "alpha secret" in page and "beta secret" not in page
    download = get("alpha.prod.TrainFlow", "/tasks/start/artifacts/secret/download")
    assert download.status_code == 200 and b"alpha secret" in download.content

    assert get("beta.prod.TrainFlow").status_code == 403  # Airflow refuses viewer beta's DAG
    assert get("VictimFlow").status_code == 403
    for dag_id in ("evil..VictimFlow", "impostor"):  # viewer may read them: they are not flows' DAGs
        for tail in ("", "/tasks/start", "/tasks/start/artifacts/secret/download"):
            response = get(dag_id, tail)
            assert response.status_code == 404, (dag_id, tail, response.status_code, response.text)
            assert "victim secret" not in response.text
    admin = _headers(client, "admin")
    assert (
        "victim secret"
        in client.get(f"/flowspec/api/dags/VictimFlow/runs/{run_id}/tasks/start", headers=admin).text
    )


def test_a_stored_run_is_not_shown_for_another_dag_run_its_record_does_not_name(deployments):
    """Guards the record check (``overview.run_of``): the view derives where a run is stored, and
    shows it only if the run's record names the same DAG and Airflow run."""
    from airflow_flowspec.client.overview import run_of, run_overview
    from airflow_flowspec.identity import RunIdentity

    runs, _, _ = deployments
    namespace(None)
    alpha = RunIdentity("TrainFlow", runs["alpha"].run_id, "alpha", "prod")
    assert run_overview(alpha)["run_id"] == alpha.run_id
    datastore = runs["alpha"].datastore
    record = datastore.read_run_meta("TrainFlow", alpha.run_id)
    forged = {**record, "identity": {**record["identity"], "airflow_run_id": "manual__other"}}
    forged["identity"].pop("run_id")
    datastore.write_run_meta("TrainFlow", alpha.run_id, forged)
    try:
        with pytest.raises(MetaflowNotFound, match="is not a run of the DAG alpha.prod.TrainFlow"):
            run_of(alpha)
    finally:
        datastore.write_run_meta("TrainFlow", alpha.run_id, record)


def test_a_run_is_never_recorded_where_another_deployments_run_is(deployments):
    """Guards the start step's check (``Datastore.check_run_identity``): a start whose stored run
    is recorded for another identity (a record of an older version, a forged one) writes nothing."""
    from airflow_flowspec.errors import RunIdentityError
    from airflow_flowspec.identity import RunIdentity
    from airflow_flowspec.runtime.step_runner import run_step
    from airflow_flowspec.runtime.task_spec import RunContext, TaskSpec

    runs, _, folder = deployments
    datastore = runs["alpha"].datastore
    stored_id = f"alpha.prod:{runs['alpha'].run_id}"
    record = datastore.read_run_meta("TrainFlow", stored_id)
    forged = {key: value for key, value in record.items() if key != "identity"}  # as an older version wrote
    forged["context"] = {
        "project": "gamma",
        "project_branch": "alpha.prod",
        "dag_id": "gamma.alpha.prod.TrainFlow",
    }
    datastore.write_run_meta("TrainFlow", stored_id, forged)
    before = {obj.key: obj.modified for obj in datastore.backend.iter_objects("TrainFlow/runs/")}
    spec = TaskSpec(
        str(folder / "alpha_flow.py"),
        RunIdentity("TrainFlow", runs["alpha"].run_id, "alpha", "prod"),
        "start",
        datastore.root,
        run_context=RunContext(username="ana"),
    )
    try:
        with pytest.raises(RunIdentityError, match="where a run of the DAG gamma.alpha.prod.TrainFlow"):
            run_step(spec)
        after = {obj.key: obj.modified for obj in datastore.backend.iter_objects("TrainFlow/runs/")}
        assert after == before
    finally:
        datastore.write_run_meta("TrainFlow", stored_id, record)
