"""Who a run is: the one place its stored name, its Airflow DAG id and its XCom folder come from.

A run belongs to a flow (the ``FlowSpec`` class name, Metaflow's flow name) and, for a ``@project``
flow, to a project and one of its branches; Airflow runs it as a run of one DAG. Everything that
names a run is derived here from those few facts: the DAG id a flow is deployed as, the id the run
is stored under (and that the client's ``Flow/run_id`` paths use), and Airflow's run id, whose XCom
folder the datastore keeps. Modules that combined them on their own disagreed (the artifact view
parsed DAG ids, gc matched XCom folders by the stored id, stored ids left the project out), and
two flows could then share a stored run.

Why the stored id looks as it does:

* A flow without ``@project`` is deployed as the DAG named after its class, so its runs are stored
  under Airflow's run id as is: ``TrainFlow/manual__2026-11-25T10:00:00+00:00``, Metaflow's path.
* A ``@project`` flow is deployed once per branch, as the DAG ``<project>.<branch>.<Flow>``
  (Metaflow's project flow name), and every deployment of every project makes the same scheduled
  run ids. Its runs are stored as ``<project>.<branch>:<Airflow run id>``, still under the flow's
  class name, so that ``Flow("TrainFlow")`` lists every project's and branch's runs (namespaces
  choose among them, as in Metaflow).
* The two forms never meet: a project name is lowercase letters, digits and underscores and a
  branch holds no ``:``, so a stored id names one project, branch and Airflow run id; a flow without
  ``@project`` refuses an Airflow run id of the project form (Airflow never makes one: its ids start
  with ``manual__``, ``scheduled__``, ``backfill__`` or ``asset_triggered__``), so it cannot be
  stored where a project's run is. Within one deployment Airflow keeps run ids unique.

Why a run also has a number (its short id, ``TrainFlow/12``):

* Airflow's ids are long timestamps with ``:`` and ``+`` in them, which nobody types; Metaflow
  users type ``TrainFlow/1234``. A run's number counts the flow's runs from 1 in the order they
  started (the datastore gives it, once per run, before the start step runs:
  :meth:`~airflow_flowspec.datastore.store.Datastore.number_run`; runs recorded by a version
  without numbers have none). The stored id stays what Airflow, the datastore's keys and
  ``current.run_id`` use; the number is another way to name the run.
* ``latest`` names the latest run (in the client's namespace), as ``Flow.latest_run`` does.
* Neither is confusable with a stored id: a number is digits alone and ``latest`` a word, while a
  stored id is an Airflow run id (``manual__...``, ``scheduled__...``; a custom one of digits
  alone, or ``latest``, is refused below) or starts with ``<project>.<branch>:``.

Nothing here imports Airflow or reads the datastore.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_flowspec.errors import RunIdentityError

if TYPE_CHECKING:
    from airflow_flowspec.decorators.flow_decorators import ProjectBranch

#: Metaflow's rule for project names (``decorators.flow_decorators``), and Airflow's for DAG ids,
#: which a branch (``user.ana``, ``test.staging``, ``prod``, ``prod.staging``) must fit.
_PROJECT = re.compile(r"[a-z0-9_]{1,128}")  # MAX_NAME_LENGTH
_BRANCH = re.compile(r"[\w.-]{1,250}")
_FLOW = re.compile(r"[A-Za-z_]\w{0,254}")
#: A stored id of a ``@project`` run: ``<project>.<branch>:<Airflow run id>``.
_PROJECT_RUN = re.compile(
    r"(?P<project>[a-z0-9_]{1,128})\.(?P<branch>[\w.-]{1,250}):(?P<airflow_run_id>.+)", re.S
)
#: A run's number as typed (``TrainFlow/12``): no sign, no leading zero, at most 16 digits.
_RUN_NUMBER = re.compile(r"[1-9][0-9]{0,15}")
#: What names the latest run where a run id is taken.
LATEST = "latest"
#: The largest run number (16 digits, what the datastore's keys give room for).
MAX_RUN_NUMBER = 10**16 - 1


#: The longest project or branch name (Metaflow's).
MAX_NAME_LENGTH = 128


def is_valid_project_name(name: Any) -> bool:
    """Metaflow's rule for a project or branch name: lowercase letters, digits, underscores."""
    return isinstance(name, str) and _PROJECT.fullmatch(name) is not None


def run_number_of(text: object) -> int | None:
    """The run number ``text`` names (``"12"``), None when it is any other form of run id."""
    if isinstance(text, str) and _RUN_NUMBER.fullmatch(text):
        return int(text)
    return None


def is_latest(text: object) -> bool:
    """Whether ``text`` names the latest run rather than one run."""
    return text == LATEST


def _names_a_run_otherwise(airflow_run_id: str) -> bool:
    """Whether a stored id ``airflow_run_id`` would be read as a run number or ``latest``."""
    return re.fullmatch(r"[0-9]+", airflow_run_id) is not None or airflow_run_id == LATEST


def _check_deployment(flow: Any, project: Any, branch: Any) -> None:
    if not isinstance(flow, str) or not _FLOW.fullmatch(flow):
        raise RunIdentityError(f"{flow!r} is not a flow name (the name of a FlowSpec class).")
    if (project is None) != (branch is None):
        raise RunIdentityError(
            f"A run of flow {flow} names a project without a branch or a branch without a project "
            f"({project!r}, {branch!r}): a @project run has both."
        )
    if project is None:
        return
    if not isinstance(project, str) or not _PROJECT.fullmatch(project):
        raise RunIdentityError(
            f"{project!r} is not a project name: lowercase letters, digits and underscores."
        )
    if not isinstance(branch, str) or not _BRANCH.fullmatch(branch):
        raise RunIdentityError(
            f"The branch {branch!r} of project {project} (flow {flow}) cannot name a deployment: a "
            f"branch is letters, digits, dots, dashes and underscores, as the DAG id it becomes part of."
        )


@dataclass(frozen=True)
class Deployment:
    """A flow as Airflow runs it: the DAG its file builds, named after the class or, for a
    ``@project`` flow, after the project and branch it is deployed on."""

    flow: str
    project: str | None = None
    branch: str | None = None

    def __post_init__(self) -> None:
        _check_deployment(self.flow, self.project, self.branch)

    @classmethod
    def of(cls, flow: str, project: ProjectBranch | None) -> Deployment:
        """The deployment of ``flow`` on ``project``'s branch (None: a flow without ``@project``)."""
        if project is None:
            return cls(flow)
        return cls(flow, project.project_name, project.branch_name)

    @property
    def dag_id(self) -> str:
        return deployment_dag_id(self.flow, self.project, self.branch)

    def run(self, airflow_run_id: str) -> RunIdentity:
        return RunIdentity(self.flow, airflow_run_id, self.project, self.branch)

    @classmethod
    def of_dag_id(cls, dag_id: str) -> Deployment:
        """The deployment a DAG id names, read from its text (see :meth:`RunIdentity.of_dag_run`)."""
        if not isinstance(dag_id, str) or "." not in dag_id:
            return cls(dag_id)
        project, _, rest = dag_id.partition(".")
        branch, _, flow = rest.rpartition(".")
        deployment = cls(flow, project, branch or None)
        if deployment.dag_id != dag_id:
            raise RunIdentityError(f"{dag_id!r} is not the DAG id of a flow or of a @project flow's branch.")
        return deployment

    def to_text(self) -> str:
        """What a DAG built for the deployment records about it (stable: same text, same DAG version)."""
        return json.dumps({"flow": self.flow, "project": self.project, "branch": self.branch}, sort_keys=True)

    @classmethod
    def from_text(cls, text: Any) -> Deployment:
        try:
            document = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            document = None
        if not isinstance(document, dict) or set(document) != {"flow", "project", "branch"}:
            raise RunIdentityError(f"{text!r:.200} does not describe a flow's deployment.")
        return cls(document["flow"], document["project"], document["branch"])


@dataclass(frozen=True)
class RunIdentity:
    """One run: its flow, its ``@project`` deployment (if any) and Airflow's id for it."""

    flow: str
    airflow_run_id: str
    project: str | None = None
    branch: str | None = None

    def __post_init__(self) -> None:
        _check_deployment(self.flow, self.project, self.branch)
        if not isinstance(self.airflow_run_id, str) or not self.airflow_run_id:
            raise RunIdentityError(f"Run {self.airflow_run_id!r} of flow {self.flow} has no run id.")
        if self.project is None and _PROJECT_RUN.fullmatch(self.airflow_run_id):
            raise RunIdentityError(
                f"The run id {self.airflow_run_id!r} of flow {self.flow} has the form "
                f"<project>.<branch>:<run id>, which names the runs of @project flows; {self.flow} has no "
                f"@project, so the run would be stored where a project's run of a flow named {self.flow} "
                f"is. Trigger the run with another run id (Airflow's own, such as manual__<date>, never "
                f"has that form)."
            )
        if _names_a_run_otherwise(self.airflow_run_id):
            raise RunIdentityError(
                f"The run id {self.airflow_run_id!r} of flow {self.flow} would be read as "
                + ("the latest run" if is_latest(self.airflow_run_id) else "a run's number (its short id)")
                + f" wherever a run is named ({self.flow}/{self.airflow_run_id}), so no run is stored under "
                f"it. Trigger the run with another run id (Airflow's own, such as manual__<date>, or one "
                f"with a letter in it)."
            )

    @property
    def deployment(self) -> Deployment:
        return Deployment(self.flow, self.project, self.branch)

    # -- what is derived ---------------------------------------------------------------------------

    @property
    def dag_id(self) -> str:
        """The Airflow DAG that runs the flow: its class name, or Metaflow's project flow name."""
        return deployment_dag_id(self.flow, self.project, self.branch)

    @property
    def run_id(self) -> str:
        """The id the run is stored under, which ``current.run_id`` and the client's paths use."""
        if self.project is None:
            return self.airflow_run_id
        return f"{self.project}.{self.branch}:{self.airflow_run_id}"

    @property
    def pathspec(self) -> str:
        return f"{self.flow}/{self.run_id}"

    # -- where an identity comes from --------------------------------------------------------------

    @classmethod
    def of_deployment(cls, flow: str, airflow_run_id: str, deployment: ProjectBranch | None) -> RunIdentity:
        """A run Airflow started of the flow, deployed on ``deployment`` (None without ``@project``)."""
        if deployment is None:
            return cls(flow, airflow_run_id)
        return cls(flow, airflow_run_id, deployment.project_name, deployment.branch_name)

    @classmethod
    def parse(cls, flow: str, run_id: str) -> RunIdentity:
        """The run stored as ``run_id`` under ``flow`` (a client path: ``Flow/run_id``)."""
        match = _PROJECT_RUN.fullmatch(run_id) if isinstance(run_id, str) else None
        if match is None:
            return cls(flow, run_id)
        return cls(flow, match["airflow_run_id"], match["project"], match["branch"])

    @classmethod
    def of_dag_run(cls, dag_id: str, airflow_run_id: str) -> RunIdentity:
        """The run Airflow shows as ``dag_id``/``airflow_run_id``, read from the DAG id's text.

        For paths a person types (``alpha.prod.TrainFlow/scheduled__...``), never to decide what
        someone may see: the artifact view reads the deployment from the serialized DAG instead.
        """
        return Deployment.of_dag_id(dag_id).run(airflow_run_id)

    # -- as records keep it ------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The run record's ``identity`` (what is derived is written too, for people and other tools)."""
        return {
            "flow": self.flow,
            "project": self.project,
            "branch": self.branch,
            "airflow_run_id": self.airflow_run_id,
            "dag_id": self.dag_id,
            "run_id": self.run_id,
        }

    @classmethod
    def from_json(cls, document: Any) -> RunIdentity:
        if not isinstance(document, Mapping):
            raise RunIdentityError(f"A run identity is a JSON object, not {type(document).__name__}.")
        try:
            identity = cls(
                document["flow"], document["airflow_run_id"], document.get("project"), document.get("branch")
            )
        except KeyError as missing:
            raise RunIdentityError(f"A run identity needs {missing}; got {dict(document)!r:.200}.") from None
        for name in ("dag_id", "run_id"):
            if name in document and document[name] != getattr(identity, name):
                raise RunIdentityError(
                    f"The run identity {dict(document)!r:.300} says {name} {document[name]!r}, but its flow, "
                    f"project, branch and Airflow run id make it {getattr(identity, name)!r}."
                )
        return identity

    @classmethod
    def of_record(cls, flow: str, stored_run_id: str, record: Mapping[str, Any]) -> RunIdentity:
        """The identity of the run stored as ``stored_run_id``, as its record (``run.json``) states it.

        A record written before records held their identity names its project and branch in its
        ``context``; such a project run was stored as ``<branch>:<Airflow run id>``.
        """
        if "identity" in record:
            return cls.from_json(record["identity"])
        context = record.get("context") if isinstance(record.get("context"), Mapping) else {}
        project, branch = context.get("project"), context.get("project_branch")
        if isinstance(project, str) and isinstance(branch, str) and stored_run_id.startswith(f"{branch}:"):
            return cls(flow, stored_run_id[len(branch) + 1 :], project, branch)
        return cls(flow, stored_run_id)

    def __str__(self) -> str:
        return self.pathspec


def deployment_dag_id(flow: str, project: str | None, branch: str | None) -> str:
    """The DAG id of a flow's deployment (see the module docstring)."""
    return flow if project is None else f"{project}.{branch}.{flow}"
