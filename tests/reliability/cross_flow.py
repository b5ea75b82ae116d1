"""The cross-flow campaign: the artifact view asked, by users Airflow refuses some DAGs, for runs of
DAGs that share Airflow run ids, look alike, or pretend (issue 20, findings 3 and 4).

Every DAG here is run (``dag.test()``) with the same logical dates, so all of them have the same
Airflow run ids, as every ``scheduled__<date>`` of every deployment has (flows' DAGs two, the
others one, and the second triggered through the REST API):

* flows' DAGs (built from flow files): ``VictimFlow``; a ``TrainFlow`` without ``@project``; and
  ``@project`` flows named ``TrainFlow`` of three projects on several branches, some with dots and
  dashes (``alpha.prod``, ``beta.prod``, ``alpha.test.staging``, ``beta.user.ana-maria``, and
  ``gamma.user.alpha.prod``, typed as if it were alpha's prod); each stores a marker naming its
  flow, project, branch and stored run id;
* look-alikes, ordinary DAGs named as if they were flows' (``evil..VictimFlow``,
  ``gamma.alpha.prod.TrainFlow``, ``alpha.prod.TrainFlow-copy``);
* impostors, DAGs built by hand with this provider's operator, whose start task claims a flow's
  deployment (VictimFlow's from ``impostor``, alpha's prod from ``beta.prod.TrainFlow.x``, and a
  claim consistent with its own id from ``alpha.test.evil.TrainFlow``);
* runs triggered through Airflow's REST API with ids crafted to name another deployment's stored
  run (``alpha.prod:<run id>`` on the ``TrainFlow`` without ``@project``; ``prod:<run id>`` there
  too, where a copy of alpha's prod run lies as a version before run identities stored it), and
  runs of one DAG whose id only another deployment ran.

Users: ``admin``; ``viewer`` and ``analyst``, each refused three of the flows' DAGs; ``outsider``,
refused everything. Each of them asks for every run Airflow has of every DAG (and for the shared
run ids on every DAG id, and on ids no DAG has) once, by a way in chosen at random; then, at
random (seeded), a user, a DAG id, a run id (the DAG's own, shared, another DAG's, crafted,
stored-form, unknown) and a way in (the run page, a step page, a task page, an artifact page, a
download; as JSON or HTML; and the index of DAGs). Requests go to Airflow's API server app in this
process (FastAPI's TestClient, ``DagRefusingAuthManager``). The
answer is compared with the truth: the run's marker, served only for a flow's DAG and a run it
ran, to a user Airflow lets read that DAG; a refusal (403 from Airflow, 404 from the view) for
everything else. *Let in*: an answer with another deployment's marker, any answer with data for
a DAG the user may not read, or a page for a DAG that is not a flow's; it must be 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import textwrap
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

#: The logical dates every deployment runs (the shared Airflow run ids), and one only beta runs.
SHARED_DATES = (datetime(2027, 3, 1, tzinfo=timezone.utc), datetime(2027, 3, 2, tzinfo=timezone.utc))
BETA_ONLY_DATE = datetime(2027, 3, 3, tzinfo=timezone.utc)
PASSWORDS = {"admin": "admin-pw", "viewer": "viewer-pw", "analyst": "analyst-pw", "outsider": "outsider-pw"}
#: The DAGs Airflow refuses each user (DagRefusingAuthManager).
REFUSED: dict[str, str | list[str]] = {
    "viewer": ["beta.prod.TrainFlow", "VictimFlow", "alpha.test.staging.TrainFlow"],
    "analyst": ["alpha.prod.TrainFlow", "beta.user.ana-maria.TrainFlow", "TrainFlow"],
    "outsider": "*",
}
#: Ids no DAG has, typed as people mistype or as an attacker probes.
UNKNOWN_DAGS = ("alpha.prod..TrainFlow", "TrainFlow.alpha.prod", "victimflow", "alpha.prod")
MARKER = re.compile(rb"secret-[0-9a-f]{16}")

MARKER_SOURCE = '''
import hashlib


def marker(flow, project, branch, run_id):
    """What the run stores: it names the flow, project, branch and stored run id that wrote it."""
    text = f"{flow}|{project}|{branch}|{run_id}"
    return "secret-" + hashlib.sha256(text.encode()).hexdigest()[:16]
'''

FLOW_SOURCE = """
from airflow_flowspec import FlowSpec, current, project, step
{marker}

{decorator}class {flow}(FlowSpec):
    @step
    def start(self):
        project, branch = current.get("project_name"), current.get("branch_name")
        self.secret = marker(current.flow_name, project, branch, current.run_id)
        self.next(self.end)

    @step
    def end(self):
        self.echo = self.secret
"""

_MARKERS: dict[str, Any] = {}
exec(MARKER_SOURCE, _MARKERS)  # noqa: S102 - our own constant, shared with the flow files


@dataclass(frozen=True)
class Dag:
    """A DAG of the campaign: a flow's (``flow``), a look-alike or an impostor."""

    dag_id: str
    kind: str  # "flow", "look-alike", "impostor"
    flow: str = ""
    project: str | None = None
    branch: str | None = None
    claims: str = ""  # an impostor's claimed deployment (Deployment.to_text())


#: Flows' DAGs: (flow, project, branch); the project's file names the project, the branch is the
#: deployment's (``--branch``, ``[flowspec] project_branch``, or a user's branch).
FLOW_DAGS = (
    Dag("VictimFlow", "flow", "VictimFlow"),
    Dag("TrainFlow", "flow", "TrainFlow"),
    Dag("alpha.prod.TrainFlow", "flow", "TrainFlow", "alpha", "prod"),
    Dag("beta.prod.TrainFlow", "flow", "TrainFlow", "beta", "prod"),
    Dag("alpha.test.staging.TrainFlow", "flow", "TrainFlow", "alpha", "test.staging"),
    Dag("beta.user.ana-maria.TrainFlow", "flow", "TrainFlow", "beta", "user.ana-maria"),
    Dag("gamma.user.alpha.prod.TrainFlow", "flow", "TrainFlow", "gamma", "user.alpha.prod"),
)
LOOK_ALIKES = (
    Dag("evil..VictimFlow", "look-alike"),
    Dag("gamma.alpha.prod.TrainFlow", "look-alike"),
    Dag("alpha.prod.TrainFlow-copy", "look-alike"),
)


def _claim(flow: str, project: str | None = None, branch: str | None = None) -> str:
    return json.dumps({"flow": flow, "project": project, "branch": branch}, sort_keys=True)


IMPOSTORS = (
    Dag("impostor", "impostor", "VictimFlow", claims=_claim("VictimFlow")),
    Dag("beta.prod.TrainFlow.x", "impostor", "TrainFlow", claims=_claim("TrainFlow", "alpha", "prod")),
    Dag(
        "alpha.test.evil.TrainFlow", "impostor", "TrainFlow", claims=_claim("TrainFlow", "alpha", "test.evil")
    ),
)
PATHS = ("run", "step", "task", "artifact", "download", "index")
#: Random requests: in CI, and in the soak (``FLOWSPEC_SOAK=1``, soak.py).
CI_TRIES = 150
SOAK_TRIES = 3000


@dataclass
class CrossFlowReport:
    """What a campaign tried and got. Let in and wrong answers must be 0."""

    seed: int
    dags: int = 0
    dag_runs: int = 0
    flow_runs_failed: int = 0  # flows' runs that did not succeed (must be 0: their data is the truth)
    tried: int = 0
    served_correctly: int = 0
    refused_correctly: int = 0
    refused_by_airflow: int = 0  # 403: the auth manager refused the user the DAG
    refused_by_the_view: int = 0  # 404: not a flow's DAG, not a run it ran, not a name at all
    let_in: int = 0  # must be 0
    wrong_answers: int = 0  # a run the user may read not served, or an error: must be 0
    by_path: dict[str, int] = field(default_factory=dict)
    by_dag_kind: dict[str, int] = field(default_factory=dict)  # flow, look-alike, impostor, unknown
    by_user: dict[str, int] = field(default_factory=dict)
    served_by_dag: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the deployments, run on Airflow ----------------------------------------------------------------


def _flow_file(folder: Path, dag: Dag) -> Path:
    decorator = f'@project(name="{dag.project}")\n' if dag.project else ""
    path = folder / f"{dag.project or 'plain'}_{dag.flow.lower()}.py"
    if not path.exists():
        source = FLOW_SOURCE.format(marker=MARKER_SOURCE, decorator=decorator, flow=dag.flow)
        path.write_text(textwrap.dedent(source))
    return path


def _flow_dag(folder: Path, dag: Dag) -> Any:
    from harness import load_flow

    from airflow_flowspec.airflow.registration import dag_for
    from airflow_flowspec.decorators.flow_decorators import ProjectBranch

    path = _flow_file(folder, dag)
    branch = None
    if dag.project is not None:
        assert dag.branch is not None
        branch = ProjectBranch(
            dag.project,
            dag.branch,
            dag.flow,
            is_production=dag.branch.startswith("prod"),
            is_user_branch=dag.branch.startswith("user."),
        )
    built = dag_for(load_flow(path), str(path), project=branch)
    assert built.dag_id == dag.dag_id, (built.dag_id, dag.dag_id)
    return built


def _other_dag(folder: Path, dag: Dag) -> Any:
    """A look-alike (an ordinary task named start) or an impostor (this provider's operator)."""
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG

    from airflow_flowspec.operators.local_step import LocalStepOperator
    from airflow_flowspec.operators.step_task import DEPLOYMENT_FIELD

    with DAG(dag.dag_id, schedule=None) as built:
        if dag.kind == "look-alike":
            EmptyOperator(task_id="start")
        else:
            victim = Dag(dag.dag_id, "flow", dag.flow)
            task = LocalStepOperator(
                task_id="start",
                flow_file=str(_flow_file(folder, victim)),
                flow_name=dag.flow,
                step_name="start",
                input_pulls=[],
            )
            setattr(task, DEPLOYMENT_FIELD, dag.claims)
    return built


def stored_run_id(dag: Dag, airflow_run_id: str) -> str:
    return airflow_run_id if dag.project is None else f"{dag.project}.{dag.branch}:{airflow_run_id}"


def marker_of(dag: Dag, airflow_run_id: str) -> str:
    return _MARKERS["marker"](dag.flow, dag.project, dag.branch, stored_run_id(dag, airflow_run_id))


class _World:
    """The DAGs, their runs in Airflow (and so the truth), and a test client of the API server."""

    def __init__(self, folder: Path, client: Any):
        self.folder = folder
        self.client = client
        self.dags = {dag.dag_id: dag for dag in (*FLOW_DAGS, *LOOK_ALIKES, *IMPOSTORS)}
        self.airflow_runs: set[tuple[str, str]] = set()  # (DAG id, Airflow run id) Airflow has
        self.stored: dict[tuple[str, str], str] = {}  # (flow DAG id, run id) -> its marker
        self.shared_run_ids: list[str] = []
        self.own_run_ids: list[str] = []  # runs only one deployment ran, or crafted for one
        self.tokens: dict[str, dict[str, str]] = {}
        self.failed_runs: list[str] = []  # flows' runs that did not succeed: no data to show

    def build(self) -> None:
        from airflow_flowspec.airflow.local_run import sync_dag

        for dag in self.dags.values():
            built = _flow_dag(self.folder, dag) if dag.kind == "flow" else _other_dag(self.folder, dag)
            sync_dag(built)
            dates = [*SHARED_DATES, BETA_ONLY_DATE] if dag.dag_id == "beta.prod.TrainFlow" else SHARED_DATES
            for date in dates if dag.kind == "flow" else SHARED_DATES[:1]:
                dag_run = built.test(logical_date=date, run_after=date)
                self.airflow_runs.add((dag.dag_id, dag_run.run_id))
                if date == BETA_ONLY_DATE:
                    self.own_run_ids.append(dag_run.run_id)
                elif dag_run.run_id not in self.shared_run_ids:
                    self.shared_run_ids.append(dag_run.run_id)
                if dag.kind == "flow" and str(dag_run.state) == "success":
                    self.stored[(dag.dag_id, dag_run.run_id)] = marker_of(dag, dag_run.run_id)
                elif dag.kind == "flow":
                    self.failed_runs.append(f"{dag.dag_id}/{dag_run.run_id}")
        assert len(self.shared_run_ids) == 1 + (len(SHARED_DATES) > 1)
        # Runs Airflow has but nothing ran: the second shared id for look-alikes and impostors, a
        # stored-form id on the flow without @project, and beta's own id on alpha's DAG.
        first = self.shared_run_ids[0]
        crafted = [(dag.dag_id, self.shared_run_ids[-1]) for dag in (*LOOK_ALIKES, *IMPOSTORS)]
        crafted += [("TrainFlow", f"alpha.prod:{first}"), ("TrainFlow", f"beta.prod:{first}")]
        crafted += [("alpha.prod.TrainFlow", self.own_run_ids[0]), ("VictimFlow", "manual__crafted")]
        crafted += [("TrainFlow", self._plant_an_older_versions_run(first))]
        admin = self.headers("admin")
        for dag_id, run_id in crafted:
            response = self.client.post(
                f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns",
                json={"dag_run_id": run_id, "logical_date": None},
                headers=admin,
            )
            assert response.status_code == 200, (dag_id, run_id, response.status_code, response.text)
            self.airflow_runs.add((dag_id, run_id))
            if run_id not in (*self.shared_run_ids, *self.own_run_ids):
                self.own_run_ids.append(run_id)

    def _plant_an_older_versions_run(self, airflow_run_id: str) -> str:
        """alpha's prod run as a version before run identities stored it, ``TrainFlow/prod:<run id>``
        with a record naming its project and branch only in its context (datastores keep such
        runs): the id a run of the ``TrainFlow`` without ``@project`` would be stored under if
        Airflow ran one with the run id ``prod:<run id>``. Returns that run id."""
        from airflow_flowspec import config
        from airflow_flowspec.datastore import keys, open_datastore

        datastore = open_datastore(config.datastore_root())
        source = keys.run_prefix("TrainFlow", f"alpha.prod:{airflow_run_id}")
        old_id = f"prod:{airflow_run_id}"
        target = keys.run_prefix("TrainFlow", old_id)
        for stored in datastore.backend.iter_objects(source):
            data = bytes(datastore.backend.get_bytes(stored.key))
            datastore.backend.put_bytes(target + stored.key[len(source) :], data)
        record = datastore.read_run_meta("TrainFlow", old_id)
        record.pop("identity")
        record["run_id"] = old_id
        record["context"] = {**record.get("context", {}), "project": "alpha", "project_branch": "prod"}
        datastore.backend.put_bytes(keys.run_meta_key("TrainFlow", old_id), json.dumps(record).encode())
        return old_id

    def headers(self, user: str) -> dict[str, str]:
        if user not in self.tokens:
            response = self.client.post("/auth/token", json={"username": user, "password": PASSWORDS[user]})
            assert response.status_code == 201, response.text
            self.tokens[user] = {"Authorization": f"Bearer {response.json()['access_token']}"}
        return self.tokens[user]

    def may_read(self, user: str, dag_id: str) -> bool:
        refused = REFUSED.get(user, [])
        return refused != "*" and dag_id not in refused

    def every_marker(self) -> set[bytes]:
        return {marker.encode() for marker in self.stored.values()}


@contextlib.contextmanager
def _artifact_view(root: str, folder: Path) -> Iterator[Any]:
    """Airflow's API server app with the artifact view, users refused some DAGs, and ``root`` as the
    datastore (of the flows' tasks and of the view)."""
    from fastapi.testclient import TestClient

    from airflow_flowspec.client import namespaces, source

    passwords = folder / "passwords.json"
    passwords.write_text(json.dumps(PASSWORDS))
    settings = {
        "AIRFLOW__FLOWSPEC__DATASTORE_ROOT": root,
        "AIRFLOW__CORE__AUTH_MANAGER": "integration.auth_manager.DagRefusingAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
            f"{user}:{'admin' if user == 'admin' else 'viewer'}" for user in PASSWORDS
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "FLOWSPEC_TEST_REFUSED_DAGS": json.dumps(REFUSED),
    }
    saved = {name: os.environ.get(name) for name in settings}
    saved_choices = source._chosen_root, namespaces._chosen
    os.environ.update(settings)
    source._chosen_root, namespaces._chosen = None, namespaces._UNSET
    try:
        from airflow.api_fastapi.app import create_app

        yield TestClient(create_app(apps="all"))
    finally:
        source._chosen_root, namespaces._chosen = saved_choices
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# -- the tries ----------------------------------------------------------------------------------------


def _path(dag_id: str, run_id: str, way: str, rng: random.Random) -> str:
    api = "api/" if way == "download" or rng.random() < 0.5 else ""
    run = f"/flowspec/{api}dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"
    step, name = rng.choice((("start", "secret"), ("end", "echo")))
    return {
        "run": run,
        "step": f"{run}/steps/{step}",
        "task": f"{run}/tasks/{step}" + rng.choice(("", "?map_index=-1", "?map_index=%7BMAP_INDEX%7D")),
        "artifact": f"{run}/tasks/{step}/artifacts/{name}",
        "download": f"{run}/tasks/{step}/artifacts/{name}/download",
    }[way]


def _one_try(world: _World, rng: random.Random, report: CrossFlowReport) -> None:
    """A user, a DAG id, a run id and a way in, at random."""
    user = rng.choice(list(PASSWORDS))
    way = rng.choice(PATHS)
    if way == "index":
        _count_try(report, user, way, None)
        _try_index(world, user, report)
        return
    pick = rng.random()
    if pick < 0.6:
        dag_id = rng.choice([dag.dag_id for dag in FLOW_DAGS])
    elif pick < 0.9:
        dag_id = rng.choice([dag.dag_id for dag in (*LOOK_ALIKES, *IMPOSTORS)])
    else:
        dag_id = rng.choice(UNKNOWN_DAGS)
    pick = rng.random()
    its_own = sorted(run_id for dag, run_id in world.airflow_runs if dag == dag_id)
    if pick < 0.5 and its_own:
        run_id = rng.choice(its_own)  # a run of the DAG, as the UI links to it
    elif pick < 0.75:
        run_id = rng.choice(world.shared_run_ids)
    elif pick < 0.9:
        run_id = rng.choice(world.own_run_ids)  # a run only another DAG has
    else:
        typed = f"alpha.prod:{world.shared_run_ids[0]}"  # alpha's stored run id, typed as a run id
        run_id = rng.choice([typed, "manual__2000-01-01T00:00:00+00:00", "../VictimFlow", "a/b"])
    _try(world, user, dag_id, run_id, way, rng, report)


def _every_run_once(world: _World, rng: random.Random, report: CrossFlowReport) -> None:
    """Every user, every run Airflow has of every DAG (and the shared ids on every DAG id), one
    way in each: no crafted case is left to chance."""
    dag_ids = [*world.dags, *UNKNOWN_DAGS]
    pairs = set(world.airflow_runs) | {
        (dag_id, run_id) for dag_id in dag_ids for run_id in world.shared_run_ids
    }
    for user in PASSWORDS:
        for dag_id, run_id in sorted(pairs):
            _try(world, user, dag_id, run_id, rng.choice(PATHS[:-1]), rng, report)


def _count_try(report: CrossFlowReport, user: str, way: str, kind: str | None) -> None:
    report.tried += 1
    report.by_path[way] = report.by_path.get(way, 0) + 1
    report.by_user[user] = report.by_user.get(user, 0) + 1
    if kind is not None:
        report.by_dag_kind[kind] = report.by_dag_kind.get(kind, 0) + 1


def _try(
    world: _World, user: str, dag_id: str, run_id: str, way: str, rng: random.Random, report: CrossFlowReport
) -> None:
    """One request, judged against the truth."""
    _count_try(report, user, way, world.dags[dag_id].kind if dag_id in world.dags else "unknown")
    path = _path(dag_id, run_id, way, rng)
    response = world.client.get(path, headers=world.headers(user))
    truth = world.stored.get((dag_id, run_id)) if world.may_read(user, dag_id) else None
    found = set(MARKER.findall(response.content))
    case = {
        "user": user,
        "path": path,
        "status": response.status_code,
        "markers": sorted(map(bytes.decode, found)),
    }
    if truth is None:
        if response.status_code == 200 or found:
            report.let_in += 1
            _example(report, {**case, "truth": "refused"})
        elif response.status_code == 403 and world.may_read(user, dag_id):
            report.wrong_answers += 1  # Airflow refused a DAG it lets the user read
            _example(report, {**case, "truth": "404"})
        elif response.status_code in (403, 404):
            report.refused_correctly += 1
            report.refused_by_airflow += response.status_code == 403
            report.refused_by_the_view += response.status_code == 404
        else:
            report.wrong_answers += 1
            _example(report, {**case, "truth": "refused", "text": response.text[:300]})
    elif found - {truth.encode()}:
        report.let_in += 1
        _example(report, {**case, "truth": truth})
    elif response.status_code == 200 and found == {truth.encode()}:
        report.served_correctly += 1
        report.served_by_dag[dag_id] = report.served_by_dag.get(dag_id, 0) + 1
    else:
        report.wrong_answers += 1
        _example(report, {**case, "truth": truth, "text": response.text[:300]})


def _try_index(world: _World, user: str, report: CrossFlowReport) -> None:
    """The index of flows' DAGs: never a DAG the user may not read, never one that is not a flow's."""
    response = world.client.get("/flowspec/api/dags", headers=world.headers(user))
    if response.status_code != 200:
        report.wrong_answers += 1
        _example(report, {"user": user, "path": "index", "status": response.status_code})
        return
    listed = {dag["dag_id"] for dag in response.json()}
    ours = {dag.dag_id for dag in FLOW_DAGS if world.may_read(user, dag.dag_id)}
    wrong = {dag_id for dag_id in listed if dag_id in world.dags or dag_id in UNKNOWN_DAGS} - ours
    if wrong:
        report.let_in += 1
        _example(report, {"user": user, "path": "index", "listed": sorted(wrong)})
    elif not ours <= listed:
        report.wrong_answers += 1
        _example(report, {"user": user, "path": "index", "missing": sorted(ours - listed)})
    else:
        report.served_correctly += 1


def _example(report: CrossFlowReport, case: dict[str, Any]) -> None:
    if len(report.examples) < 20:
        report.examples.append(case)


def cross_flow_campaign(*, root: str, tries: int, seed: int, workdir: Path) -> CrossFlowReport:
    """Build and run the DAGs (see the module docstring); ask for every run of every DAG once per
    user, then ``tries`` requests at random.

    Needs Airflow's database (the ``airflow_db`` fixture). ``root`` is the datastore of the flows'
    runs and of the view: a local folder (the view's reads are the same on S3)."""
    import time

    started = time.monotonic()
    report = CrossFlowReport(seed=seed)
    workdir.mkdir(parents=True, exist_ok=True)
    with _artifact_view(root, workdir) as client:
        world = _World(workdir, client)
        world.build()
        report.dags = len(world.dags)
        report.dag_runs = len(world.airflow_runs)
        report.flow_runs_failed = len(world.failed_runs)
        rng = random.Random(seed)
        _every_run_once(world, rng, report)
        for _ in range(tries):
            _one_try(world, rng, report)
    report.seconds = round(time.monotonic() - started, 1)
    return report
