"""The step contract: what one task needs to run (:class:`TaskSpec`) and what it gives back
(:class:`StepResult`), as typed values that travel as plain JSON.

The same spec drives the step on an Airflow worker (built in memory by the operator) and in another
process, e.g. an AWS Batch container (stored in the datastore, its key passed on the command line),
so it holds no Airflow objects. Which run it is, is a :class:`~airflow_flowspec.identity.RunIdentity`;
what Airflow knows about the run (its dates, who started it, whether it is a production run) is a
:class:`RunContext`; both are filled once at the Airflow edge.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any

from airflow_flowspec.datastore.keys import AttemptKey
from airflow_flowspec.datastore.manifest import ForeachFrame, Manifest
from airflow_flowspec.errors import DatastoreError, RunIdentityError, StepInputError
from airflow_flowspec.identity import RunIdentity


@dataclass(frozen=True)
class RunContext:
    """What Airflow knows about the run a task belongs to, as ``current`` shows it to a step."""

    logical_date: datetime | None = None
    data_interval_start: datetime | None = None
    data_interval_end: datetime | None = None
    username: str | None = None
    origin_run_id: str | None = None
    # A @project flow's: whether its branch is a production one; any other flow's: not run by dag.test().
    is_production: bool = False
    run_type: str | None = None  # Airflow's: manual, scheduled, backfill, asset_triggered
    tags: tuple[str, ...] = ()  # the user's tags for the run (run --tag, or the trigger's conf)

    def __post_init__(self) -> None:
        # Airflow hands out pendulum dates; a step must see the standard type wherever it runs (an
        # artifact holding a pendulum date would not unpickle where pendulum is not installed).
        for name in ("logical_date", "data_interval_start", "data_interval_end"):
            value = getattr(self, name)
            if isinstance(value, datetime) and type(value) is not datetime:
                object.__setattr__(self, name, datetime.fromisoformat(value.isoformat()))

    def to_json(self) -> dict[str, Any]:
        return {
            name: value.isoformat() if isinstance(value, datetime) else value
            for name, value in asdict(self).items()
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> RunContext:
        known = {f.name for f in fields(cls)}
        document = {name: value[name] for name in known if name in value}
        if "tags" in document:
            document["tags"] = tuple(document["tags"] or ())
        for name in ("logical_date", "data_interval_start", "data_interval_end"):
            if isinstance(document.get(name), str):
                try:
                    document[name] = datetime.fromisoformat(document[name])
                except ValueError:
                    raise StepInputError(
                        f"The task spec's {name} {document[name]!r} is not an ISO 8601 date."
                    ) from None
        return cls(**document)


#: Airflow run types whose runs belong to the production namespace (the deployed schedule).
PRODUCTION_RUN_TYPES = frozenset({"scheduled", "backfill"})


def _production_tag(identity: RunIdentity) -> str:
    """``production:<flow>``; for a ``@project`` flow ``production:<project>.<branch>``, shared by
    the project's flows on that branch (as Metaflow's production token is), so a scheduled flow
    reads its project's other flows on its own branch, never another branch's."""
    if identity.project:
        return f"production:{identity.project}.{identity.branch}"
    return f"production:{identity.flow}"


def run_namespace(identity: RunIdentity, run: RunContext) -> str:
    """Metaflow's namespace of a run: its production tag for scheduled and backfilled runs (the
    deployed schedule), else ``user:<who started it>``."""
    if run.run_type in PRODUCTION_RUN_TYPES:
        return _production_tag(identity)
    return f"user:{run.username or 'unknown'}"


def system_tags(identity: RunIdentity, run: RunContext) -> list[str]:
    """The tags every run carries: its user, production for scheduled and backfilled runs, and a
    ``@project`` flow's project and branch (Metaflow's tag names), so the client finds a project's
    or a branch's runs with ``namespace("project:<name>")`` or ``runs("project_branch:<branch>")``."""
    tags = [f"user:{run.username or 'unknown'}"]
    if run.run_type in PRODUCTION_RUN_TYPES:
        tags.append(_production_tag(identity))
    if identity.project:
        tags += [f"project:{identity.project}", f"project_branch:{identity.branch}"]
    return tags


@dataclass
class TaskSpec:
    flow_file: str
    run: RunIdentity  # which run: the flow, its @project deployment, Airflow's run id
    step: str
    datastore_root: str
    map_index: int = -1
    attempt: int = 1  # Airflow's try_number, 1-based
    max_attempts: int = 1  # retries + 1: @catch acts only on the last one
    input_manifests: list[Manifest] = field(default_factory=list)
    foreach_stack: list[ForeachFrame] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)  # start step only: raw values by name
    run_context: RunContext = field(default_factory=RunContext)
    # The run's recorded code package (an artifact reference): what the step runs. None only for a
    # run started before code was recorded, which runs the flow file as it is now.
    code: dict[str, Any] | None = None

    @property
    def flow_name(self) -> str:
        return self.run.flow

    @property
    def run_id(self) -> str:
        """The id the run is stored under (``current.run_id``)."""
        return self.run.run_id

    @property
    def task_id(self) -> str:
        return str(max(self.map_index, 0))

    @property
    def pathspec(self) -> str:
        return self.attempt_key.task_pathspec

    @property
    def attempt_key(self) -> AttemptKey:
        """Where this attempt's records are stored."""
        return AttemptKey(self.flow_name, self.run_id, self.step, self.task_id, self.attempt)

    def to_json(self) -> dict[str, Any]:
        document = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("run", "run_context", "input_manifests", "foreach_stack")
        }
        document["run"] = self.run.to_json()
        document["run_context"] = self.run_context.to_json()
        document["input_manifests"] = [manifest.to_json() for manifest in self.input_manifests]
        document["foreach_stack"] = [frame.to_json() for frame in self.foreach_stack]
        return document

    @classmethod
    def from_json(cls, document: Any) -> TaskSpec:
        """A spec from its JSON form; anything else is a :class:`StepInputError` saying what is wrong."""
        if not isinstance(document, dict):
            raise StepInputError(f"A task spec must be a JSON object, got {type(document).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(document) - known)
        if unknown:
            raise StepInputError(
                f"The task spec has unknown field(s) {', '.join(unknown)}: it was written by another "
                f"airflow-flowspec version. Install the same version on the workers and in the image."
            )
        values = dict(document)
        values["run_context"] = RunContext.from_json(values.get("run_context") or {})
        values["input_manifests"] = [
            Manifest.from_json(manifest, where="The task spec")
            for manifest in values.get("input_manifests") or []
        ]
        try:
            values["foreach_stack"] = [
                ForeachFrame.from_json(frame) for frame in values.get("foreach_stack") or []
            ]
            values["run"] = RunIdentity.from_json(values.get("run"))
            return cls(**values)
        except (KeyError, ValueError, DatastoreError) as error:
            raise StepInputError(f"The task spec's foreach stack is damaged: {error}.") from None
        except TypeError as error:
            raise StepInputError(f"The task spec is incomplete: {error}.") from None
        except RunIdentityError as error:
            raise StepInputError(f"The task spec names no run it can be stored under: {error}") from None

    @classmethod
    def from_text(cls, text: str) -> TaskSpec:
        try:
            document = json.loads(text)
        except ValueError as error:
            raise StepInputError(f"The task spec is not valid JSON: {error}.") from None
        return cls.from_json(document)


@dataclass
class StepResult:
    """What the operator publishes: the manifest, and for a split what Airflow maps or follows."""

    manifest: Manifest
    foreach_children: list[dict[str, Any]] | None = None  # one element per mapped child task
    switch_step: str | None = None  # the switch arm taken
    # What the step stored: [name, size, "new" or "reused"] per artifact saved, the number carried
    # unread, and the bytes the task wrote and read (the operator logs it at the end of the task).
    storage: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest.to_json(),
            "foreach_children": self.foreach_children,
            "switch_step": self.switch_step,
            "storage": self.storage,
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> StepResult:
        return cls(
            manifest=Manifest.from_json(document["manifest"], where="The step's result"),
            foreach_children=document.get("foreach_children"),
            switch_step=document.get("switch_step"),
            storage=document.get("storage"),
        )
