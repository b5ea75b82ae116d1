"""Metaflow's client objects (``Flow``, ``Run``, ``Step``, ``Task``, ``DataArtifact``) on our datastore.

Code written for Metaflow's client works after changing the import::

    from airflow_flowspec import Flow
    run = Flow("TrainFlow").latest_successful_run
    print(run.data.best_score, run["train"].task.data.model)

Everything is read from the datastore alone (no Airflow needed): run records (``run.json``,
``status.json``), run pointers, and each task's manifest (the last attempt that wrote one, or the
attempt ``Task(pathspec, attempt=n)`` names). Listing a task's artifacts reads its manifest only;
an artifact's value is downloaded (and verified) when ``.data`` is read, through the same read path
steps use (:mod:`airflow_flowspec.datastore.views`). The objects form one tree, as Metaflow's do
(:class:`MetaflowObject`): a run's steps and a step's tasks are listed, not read one by one.

Pathspecs are Metaflow's: ``Flow/run_id/step/task_id`` (Airflow run ids such as
``manual__2026-11-25T10:00:00+00:00`` contain no ``/``). A ``@project`` run's id names its project
and branch (``alpha.prod:scheduled__...``, see :mod:`airflow_flowspec.identity`); such a run is also
found by the DAG id and run id Airflow shows (``alpha.prod.TrainFlow/scheduled__...``), and by its
Airflow run id alone (or ``<branch>:<Airflow run id>``) when only one project's run has it.

Wherever a run id is taken, a run's number (its short id: ``TrainFlow/12``, ``run.number``) and
``latest`` (the latest run in the current namespace, ``Flow.latest_run``) are taken too; the
object found keeps the stored id as its ``id`` and in its pathspec, so code that builds paths from
``run.id`` keeps working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from airflow_flowspec.client.namespaces import get_namespace, in_namespace, is_indexed_namespace
from airflow_flowspec.client.source import client_datastore
from airflow_flowspec.client.unreadable import skip_unreadable_run, unreadable_run
from airflow_flowspec.datastore import keys
from airflow_flowspec.datastore.artifacts import ArtifactRef
from airflow_flowspec.datastore.keys import SYSTEM_TAG_PREFIXES, AttemptKey
from airflow_flowspec.datastore.manifest import Manifest
from airflow_flowspec.datastore.store import record_number
from airflow_flowspec.errors import (
    ArtifactNotFoundError,
    MetaflowNamespaceMismatch,
    MetaflowNotFound,
    RunIdentityError,
    TagError,
    UnreadableRecordError,
    UnsafeKeyError,
)
from airflow_flowspec.identity import Deployment, RunIdentity, is_latest, run_number_of
from airflow_flowspec.run_tags import check_tags

#: Run ids read from the index per request while iterating a flow's runs.
_RUNS_PAGE = 50


def _nearby(wanted: str, existing: list[str], what: str) -> str:
    """'Close matches: ...' (or what exists, when it is short) for a not-found message."""
    if not existing:
        return f"There are no {what} here."
    close = difflib.get_close_matches(wanted, existing, n=3, cutoff=0.5)
    if close:
        return f"Did you mean {', '.join(repr(c) for c in close)}?"
    shown = existing[:10]
    more = f" and {len(existing) - len(shown)} more" if len(existing) > len(shown) else ""
    return f"It has: {', '.join(repr(e) for e in shown)}{more}."


def _when(value: Any) -> datetime | None:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _split(pathspec: str, parts: int, kind: str) -> list[str]:
    components = pathspec.split("/") if isinstance(pathspec, str) else []
    if len(components) != parts or not all(components):
        example = "/".join(["TrainFlow", "<run_id>", "<step>", "<task_id>", "<artifact>"][:parts])
        raise MetaflowNotFound(f"{kind}({pathspec!r}): a {kind.lower()} pathspec looks like '{example}'.")
    return components


#: Each kind of object by its ``_NAME``: how an object names its parent's and its children's class.
_CLASSES: dict[str, type[MetaflowObject]] = {}


class MetaflowObject:
    """What every client object is: a pathspec and an id, a link to its parent, children built from
    records already read, equality by pathspec, and Metaflow's repr.

    An object is made in one of two ways, as in Metaflow. Named by a pathspec (``Task("F/r/s/0")``),
    it builds its parent and asks it for its own record, keeping the parent: the run's record says
    whether the run is in the namespace and which stored run a short id names, and the parent's
    listing whether the child exists. Reached from its parent (iteration, ``run["train"]``), it is
    given what the parent has just read (``_object``) and the parent itself (``_parent``) and reads
    nothing to exist, so one object tree shares one :class:`Run` (its record, and its status read
    once) and iterating a run's steps, or a step's tasks, costs one listing however wide the foreach.
    A task reads its manifest when first asked for something in it.
    """

    _NAME = "base"
    _PARENT_CLASS: str | None = None
    _CHILD_CLASS: str | None = None
    #: How many components this kind's pathspec has.
    _DEPTH = 0
    #: The attempt a task (or an artifact of it) was asked for; None for the latest.
    _attempt: int | None = None

    def __init__(
        self,
        pathspec: str | None = None,
        *,
        _object: Any = None,
        _parent: MetaflowObject | None = None,
    ):
        self._datastore: Any = _parent._datastore if _parent is not None else client_datastore()
        if _object is None:
            pathspec, _object, _parent = self._get_object(pathspec)
        assert pathspec is not None
        self.pathspec = pathspec
        self.path_components = pathspec.split("/")
        self.id = self.path_components[-1]
        self._object = _object
        self._parent = _parent

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _CLASSES[cls._NAME] = cls

    def _get_object(self, pathspec: str | None) -> tuple[str, Any, MetaflowObject | None]:
        """(stored pathspec, record, parent) of the object ``pathspec`` names: its parent's record
        of it, or :class:`MetaflowNotFound` saying what the parent has instead."""
        components = _split(pathspec, self._DEPTH, type(self).__name__)  # type: ignore[arg-type]
        parent = self._parent_named("/".join(components[:-1]))
        child_id, record = parent._child_record(components[-1])
        return f"{parent.pathspec}/{child_id}", record, parent

    def _parent_named(self, pathspec: str) -> MetaflowObject:
        assert self._PARENT_CLASS is not None
        return _CLASSES[self._PARENT_CLASS](pathspec)

    @property
    def parent(self) -> MetaflowObject | None:
        """The object this one belongs to (a run's flow, a step's run...); None for a flow."""
        if self._PARENT_CLASS is None:
            return None
        if self._parent is None:
            self._parent = self._parent_named(self.pathspec.rsplit("/", 1)[0])
        return self._parent

    # -- children --------------------------------------------------------------------------------

    def _child_records(self) -> Iterator[tuple[str, Any]]:
        """(id, record) of each child, in the order iteration gives them."""
        raise TypeError(f"A {type(self).__name__} has no children to iterate.")

    def _child_record(self, child_id: str) -> tuple[str, Any]:
        """(stored id, record) of the child ``child_id`` names, or :class:`MetaflowNotFound`
        saying what exists nearby."""
        raise TypeError(f"A {type(self).__name__} has no children.")

    def _child(self, child_id: str, record: Any) -> MetaflowObject:
        assert self._CHILD_CLASS is not None
        return _CLASSES[self._CHILD_CLASS](f"{self.pathspec}/{child_id}", _object=record, _parent=self)

    def __iter__(self) -> Iterator[Any]:
        for child_id, record in self._child_records():
            yield self._child(child_id, record)

    def _filtered_children(self, *tags: str) -> Iterator[Any]:
        """The children that carry every one of ``tags``."""
        for child in self:
            if all(tag in child.tags for tag in tags):
                yield child

    def __getitem__(self, child_id: str) -> Any:
        return self._child(*self._child_record(child_id))

    def __contains__(self, child_id: object) -> bool:
        if not isinstance(child_id, str):
            return False
        try:
            self._child_record(child_id)
        except MetaflowNotFound:
            return False
        return True

    # -- identity --------------------------------------------------------------------------------

    def __repr__(self) -> str:
        if self._attempt is not None:
            return f"{type(self).__name__}('{self.pathspec}', attempt={self._attempt})"
        return f"{type(self).__name__}('{self.pathspec}')"

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and other.pathspec == self.pathspec  # type: ignore[attr-defined]
            and other._attempt == self._attempt  # type: ignore[attr-defined]
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.pathspec, self._attempt))


class Metaflow:
    """The entry point that lists flows: ``Metaflow().flows``."""

    @property
    def flows(self) -> list[Flow]:
        """The flows with runs (a flow whose runs gc deleted keeps only its highest run number
        taken, so that no later run of it is given that number again)."""
        flows = []
        for name in _flow_names(client_datastore()):
            try:
                flows.append(Flow(name))
            except MetaflowNotFound:
                continue
        return flows

    def __iter__(self) -> Iterator[Flow]:
        return iter(self.flows)

    def __repr__(self) -> str:
        return "Metaflow()"


def _flow_names(datastore: Any) -> list[str]:
    folders, _ = datastore.backend.list_dir("")
    names = [keys.decode_key_part(folder) for folder in folders]
    return sorted(name for name in names if name not in keys.NOT_FLOW_FOLDERS and not name.startswith("."))


class Flow(MetaflowObject):
    """A flow's runs, newest first."""

    _NAME = "flow"
    _CHILD_CLASS = "run"
    _DEPTH = 1

    def _get_object(self, pathspec: str | None) -> tuple[str, Any, MetaflowObject | None]:
        (name,) = _split(pathspec, 1, "Flow")  # type: ignore[arg-type]
        folders, _ = self._datastore.backend.list_dir(keys.flow_prefix(name))
        if keys.RUNS_FOLDER not in folders:  # one small listing: the flow's runs/, index/, numbers/
            raise MetaflowNotFound(
                f"Flow {name!r} has no runs in the datastore {self._datastore.root}. "
                + _nearby(name, _flow_names(self._datastore), "flows")
            )
        return name, name, None

    @classmethod
    def list(cls) -> list[Flow]:  # noqa: A003 - the name Metaflow users know
        return Metaflow().flows

    def runs(self, *tags: str) -> Iterator[Run]:
        """The runs in the current namespace (with all of ``tags``, if given), newest first.

        Read from the run index a page at a time as you iterate: the last ten runs of a flow
        with a thousand cost about a dozen requests. A system-tag namespace (``user:``,
        ``production:``, ``project:``...) has its own index, so other users' runs are not read.
        """
        return self._filtered_children(*tags)

    def _child_records(self) -> Iterator[tuple[str, Any]]:
        current_namespace = get_namespace()
        indexed = current_namespace if is_indexed_namespace(current_namespace) else None
        for run_id in self._datastore.indexed_runs(self.id, namespace=indexed, page_size=_RUNS_PAGE):
            try:
                record = self._datastore.read_run_meta(self.id, run_id)
            except ArtifactNotFoundError:
                continue  # deleted (gc) since the index was read
            except UnreadableRecordError as error:
                skip_unreadable_run(self.id, run_id, error)
                continue
            if in_namespace(record, current_namespace):
                yield run_id, record

    def _child_record(self, run_id: str) -> tuple[str, Any]:
        _, stored, record = _find_run(self._datastore, self.id, run_id)
        return stored, record

    def __contains__(self, run_id: object) -> bool:
        if not isinstance(run_id, str):
            return False
        number = run_number_of(run_id)
        if number is not None:
            stored = self._datastore.run_of_number(self.id, number)
            return stored is not None and stored in self
        if is_latest(run_id):
            return self.latest_run is not None
        try:
            return self._datastore.backend.exists(keys.run_meta_key(self.id, run_id))
        except UnsafeKeyError:
            return False

    @property
    def latest_run(self) -> Run | None:
        """The run in the current namespace that started last: one index lookup and one record
        read however many runs the flow has."""
        return self._latest(successful=False)

    @property
    def latest_successful_run(self) -> Run | None:
        """The newest run (by start) in the current namespace that succeeded."""
        return self._latest(successful=True)

    def _latest(self, *, successful: bool) -> Run | None:
        current_namespace = get_namespace()
        if is_indexed_namespace(current_namespace):
            find = self._datastore.latest_successful_run if successful else self._datastore.latest_run
            run_id = find(self.id, namespace=current_namespace)
            if run_id is None:
                return None
            try:
                return self[run_id]
            except (MetaflowNotFound, UnreadableRecordError):
                pass  # deleted (gc) since the index was read, or unreadable: look further
        return next((run for run in self.runs() if run.successful or not successful), None)


class Run(MetaflowObject):
    """One run: its steps, its end step's artifacts (``run.data``), its outcome and times."""

    _NAME = "run"
    _PARENT_CLASS = "flow"
    _CHILD_CLASS = "step"
    _DEPTH = 2

    def __init__(
        self, pathspec: str | None = None, *, _object: Any = None, _parent: MetaflowObject | None = None
    ):
        super().__init__(pathspec, _object=_object, _parent=_parent)
        self.flow_name = self.path_components[0]
        self._record: dict[str, Any] = self._object
        self._run = self
        current_namespace = get_namespace()
        if not in_namespace(self._record, current_namespace):
            raise MetaflowNamespaceMismatch(
                f"Run {self.pathspec} is not in the namespace {current_namespace!r} (its tags: "
                f"{', '.join(sorted(self._record.get('tags', []))) or 'none'}). Call namespace(None) to see "
                f"every run, or namespace('<one of its tags>')."
            )
        self._status_read = False
        self._status: dict[str, Any] | None = None

    def _get_object(self, pathspec: str | None) -> tuple[str, Any, MetaflowObject | None]:
        flow, run_id = _split(pathspec, 2, "Run")  # type: ignore[arg-type]
        flow, stored, record = _find_run(self._datastore, flow, run_id)
        return f"{flow}/{stored}", record, None  # the flow is found when asked for (run.parent)

    @property
    def number(self) -> int | None:
        """The run's number, its short id: ``Run(f"TrainFlow/{run.number}")`` is this run. Runs are
        numbered per flow in the order they started; None only where the record states none
        (written by hand, not by a start step)."""
        return record_number(self._record)

    @property
    def identity(self) -> RunIdentity:
        """Which run this is: its flow, ``@project`` deployment (the DAG that ran it) and Airflow's
        run id, as its record states them."""
        return RunIdentity.of_record(self.flow_name, self.id, self._record)

    # -- outcome and times -----------------------------------------------------------------------

    def _status_record(self) -> dict[str, Any] | None:
        """The run's ``status.json``, read once per :class:`Run` (every object reached from it
        shares the answer): None while the run is in progress."""
        if not self._status_read:
            self._status = self._datastore.run_status(self.flow_name, self.id)
            self._status_read = True
        return self._status

    @property
    def status(self) -> str:
        """``"running"``, ``"succeeded"`` or ``"failed"``: how the run ended, or that it has not."""
        status = self._status_record()
        if status is None:
            return "running"
        return "succeeded" if status.get("status") == "succeeded" else "failed"

    @property
    def finished(self) -> bool:
        """Whether the run ended (either way); False while it is in progress."""
        return self.status != "running"

    @property
    def successful(self) -> bool:
        return self.status == "succeeded"

    @property
    def finished_at(self) -> datetime | None:
        status = self._status_record()
        return None if status is None else _when(status.get("finished_at"))

    @property
    def created_at(self) -> datetime | None:
        return _when(self._record.get("created_at"))

    @property
    def tags(self) -> frozenset[str]:
        """Every tag: the system's (``user:``, ``production:``) and the user's."""
        return frozenset(self._record.get("tags", ()))

    @property
    def system_tags(self) -> frozenset[str]:
        return frozenset(self._record.get("system_tags", ()))

    @property
    def user_tags(self) -> frozenset[str]:
        return self.tags - self.system_tags

    def add_tag(self, tag: str) -> None:
        self.replace_tags([], [tag])

    def add_tags(self, tags: list[str]) -> None:
        self.replace_tags([], tags)

    def remove_tag(self, tag: str) -> None:
        self.replace_tags([tag], [])

    def remove_tags(self, tags: list[str]) -> None:
        self.replace_tags(tags, [])

    def replace_tag(self, tag_to_remove: str, tag_to_add: str) -> None:
        self.replace_tags([tag_to_remove], [tag_to_add])

    def replace_tags(self, tags_to_remove: list[str], tags_to_add: list[str]) -> None:
        """Remove some user tags and add others, in one rewrite of the run's record (system tags,
        which say who started the run, cannot be removed)."""
        # A tag stored before the rule (a newline in it) can still be removed.
        check_tags(tags_to_add, whose=f"run {self.pathspec}")
        if not all(isinstance(tag, str) for tag in tags_to_remove):
            raise TagError(
                f"The tags to remove from run {self.pathspec} are strings, not {tags_to_remove!r:.200}."
            )
        taken = keys.system_tags_among(tags_to_add)
        if taken:
            raise TagError(
                f"{', '.join(taken)} cannot be added to run {self.pathspec}: tags starting with "
                f"{', '.join(SYSTEM_TAG_PREFIXES)} are the system's (who started the run, its project "
                f"and branch)."
            )
        protected = sorted(set(tags_to_remove) & self.system_tags)
        if protected:
            raise TagError(
                f"{', '.join(protected)} of run {self.pathspec} is a system tag (who or what started "
                f"the run) and cannot be removed."
            )
        # on the latest record, not our copy
        self._record = self._object = self._datastore.replace_run_tags(
            self.flow_name, self.id, tags_to_remove, tags_to_add
        )

    @property
    def code(self) -> Any:
        """The flow file this run started with (``.flowspec``, ``.path``, ``.tarball``,
        ``.extract(folder)``); None, as Metaflow's, when the run's record names no code package."""
        from airflow_flowspec.datastore.artifacts import ArtifactRef
        from airflow_flowspec.datastore.code_package import RunCode

        code = self._record.get("code")
        if not code:
            return None
        source = self._datastore.artifacts.load(
            ArtifactRef.from_json(code["source"]), what=f"flow source of run {self.pathspec}"
        )
        return RunCode(self.flow_name, self.id, code["path"], source)

    @property
    def versions(self) -> dict[str, Any]:
        """Package, Airflow and Python versions the run started on."""
        return dict(self._record.get("versions", {}))

    @property
    def graph(self) -> list[dict[str, Any]]:
        """The flow's steps as the run started with them, in order: each a dict with ``name``,
        ``type``, ``next`` (step names), ``foreach`` and ``doc``."""
        graph = self._record.get("graph")
        if not isinstance(graph, list):
            return []
        return [dict(step) for step in graph if isinstance(step, dict) and isinstance(step.get("name"), str)]

    # -- steps -----------------------------------------------------------------------------------

    def steps(self) -> Iterator[Step]:
        """The steps that ran, latest first (as Metaflow orders them)."""
        return iter(self)

    def _child_records(self) -> Iterator[tuple[str, Any]]:
        """The steps that ran, in the reverse of the recorded graph's order (the graph is
        topological, so a step comes before every step it led to): one listing, whatever the
        width of a foreach. A run recorded without its graph lists its steps by name, last first."""
        ran = set(self._datastore.list_steps(self.flow_name, self.id))
        in_graph = [node["name"] for node in self.graph if node["name"] in ran]
        rest = sorted(ran - set(in_graph))
        for name in [*reversed(in_graph), *reversed(rest)]:
            yield name, name

    def _child_record(self, step: str) -> tuple[str, Any]:
        steps = self._datastore.list_steps(self.flow_name, self.id)
        if step not in steps:
            raise MetaflowNotFound(
                f"Run {self.pathspec} has no step {step!r} (it did not run, or not yet). "
                + _nearby(step, steps, "steps in this run")
            )
        return step, step

    def __getitem__(self, step: str) -> Step:
        return super().__getitem__(step)  # type: ignore[no-any-return]

    @property
    def end_task(self) -> Task | None:
        """The end step's task, once the run got that far."""
        task = self._only_task("end")
        return task if task is not None and task.finished else None

    @property
    def data(self) -> MetaflowData | None:
        """The end step's artifacts (None until the end step has finished), as in Metaflow."""
        end = self.end_task
        return None if end is None else end.data

    @property
    def parameters(self) -> dict[str, Any]:
        """The run's parameter values, as the start step saw them (secrets included: they are yours)."""
        start = self._only_task("start")
        manifest = None if start is None else start._manifest
        if start is None or manifest is None:
            return {}
        return {name: getattr(start.data, name) for name in manifest.parameters}

    @property
    def parameter_reprs(self) -> dict[str, str]:
        """The run's parameters as the one-line reprs its start step recorded (secrets as
        ``<secret>``): read from the start step's manifest alone, no value downloaded or
        unpickled, so a listing of many runs stays cheap and safe."""
        start = self._only_task("start")
        manifest = None if start is None else start._manifest
        if manifest is None:
            return {}
        return {
            name: manifest.artifacts[name].repr for name in manifest.parameters if name in manifest.artifacts
        }

    @property
    def recorded_parameters(self) -> dict[str, Any]:
        """The run's parameters as its record keeps them: strings, numbers, booleans and None as
        they are, other values as a one-line repr, secrets as ``<secret>``. No request beyond the
        run's record (what the artifact view shows at the top of a run)."""
        parameters = self._record.get("parameters")
        return dict(parameters) if isinstance(parameters, dict) else {}

    def _only_task(self, step: str) -> Task | None:
        """The (first) task of ``step``, None if the step has not run."""
        try:
            return self[step].task
        except MetaflowNotFound:
            return None


def _find_run(datastore: Any, flow: str, run_id: str) -> tuple[str, str, dict[str, Any]]:
    """(flow, stored run id, record) of the run a path names: ``Flow/<stored id>``, ``Flow/<number>``,
    ``Flow/latest``, the DAG id and Airflow run id (or number, or ``latest``) of a ``@project`` run
    (``alpha.prod.TrainFlow/scheduled__...``), or a ``@project`` run's Airflow run id (or
    ``<branch>:<Airflow run id>``) where one run has it."""
    if run_number_of(run_id) is not None or is_latest(run_id):
        return _find_run_by_short_id(datastore, flow, run_id)
    if "." in flow:
        try:
            identity = RunIdentity.of_dag_run(flow, run_id)
        except RunIdentityError as error:
            raise MetaflowNotFound(f"Run({flow}/{run_id}): {error}") from None
        flow, run_id = identity.flow, identity.run_id
    try:
        return flow, run_id, datastore.read_run_meta(flow, run_id)
    except ArtifactNotFoundError:
        pass
    except UnreadableRecordError as error:
        raise unreadable_run(f"{flow}/{run_id}", error) from None
    runs = datastore.list_runs(flow)
    matches = []
    for stored in runs:
        try:
            identity = RunIdentity.parse(flow, stored)
        except RunIdentityError:
            continue
        if identity.project is not None and run_id in (
            identity.airflow_run_id,
            f"{identity.branch}:{identity.airflow_run_id}",
        ):
            matches.append(stored)
    if len(matches) > 1:
        raise MetaflowNotFound(
            f"Flow {flow!r} has several runs {run_id!r}, of different @project deployments: "
            f"{', '.join(repr(m) for m in matches[:10])}. Name one with its project and branch, "
            f"e.g. Run('{flow}/{matches[0]}')."
        )
    if matches:
        try:
            return flow, matches[0], datastore.read_run_meta(flow, matches[0])
        except ArtifactNotFoundError:
            pass
        except UnreadableRecordError as error:
            raise unreadable_run(f"{flow}/{matches[0]}", error) from None
    raise MetaflowNotFound(
        f"Flow {flow!r} has no run {run_id!r} in the datastore {datastore.root}. "
        + _nearby(run_id, runs, f"runs of {flow}")
    ) from None


def _find_run_by_short_id(datastore: Any, flow: str, short_id: str) -> tuple[str, str, dict[str, Any]]:
    """(flow, stored run id, record) of the run ``Flow/<number>`` or ``Flow/latest`` names (``Flow``
    may be a ``@project`` deployment's DAG id: the run must then be of that deployment)."""
    deployment: Deployment | None = None
    if "." in flow:
        try:
            deployment = Deployment.of_dag_id(flow)
        except RunIdentityError as error:
            raise MetaflowNotFound(f"Run({flow}/{short_id}): {error}") from None
        flow = deployment.flow
    return find_run_by_short_id(datastore, flow, short_id, deployment)


def find_run_by_short_id(
    datastore: Any, flow: str, short_id: str, deployment: Deployment | None = None
) -> tuple[str, str, dict[str, Any]]:
    """(flow, stored run id, record) of run ``short_id`` (a number, or ``latest`` in the current
    namespace) of ``flow``; with ``deployment``, only a run of that deployment (the DAG it ran as)
    is found. :class:`MetaflowNotFound` says what there is instead."""
    number = run_number_of(short_id)
    if number is None:  # latest
        current_namespace = get_namespace()
        if deployment is None:
            latest = Flow(flow).latest_run
        else:
            latest = next((run for run in Flow(flow).runs() if _deployment_of(run) == deployment), None)
        if latest is None:
            where = f"the namespace {current_namespace!r}" if current_namespace else "the datastore"
            of = f" of the DAG {deployment.dag_id}" if deployment is not None else ""
            every = " Call namespace(None) to see every run." if current_namespace else ""
            raise MetaflowNotFound(
                f"Flow {flow!r} has no run{of} in {where}, so no run is the latest.{every}"
            )
        return flow, latest.id, latest._record
    stored = datastore.run_of_number(flow, number)
    record = None
    if stored is not None:
        try:
            record = datastore.read_run_meta(flow, stored)
        except ArtifactNotFoundError:
            record = None
        except UnreadableRecordError as error:
            raise unreadable_run(f"{flow}/{stored}", error) from None
    if (
        record is not None
        and deployment is not None
        and _deployment_of_record(flow, stored, record) != deployment
    ):
        record = None
    if record is None or stored is None:
        highest = datastore.highest_run_number(flow)
        numbered = (
            f"its runs are numbered 1 to {highest} (a deleted run's number is not given again; a run "
            f"still in its start step is shown once the step has finished)"
            if highest
            else "no run of it has been numbered"
        )
        of = f" of the DAG {deployment.dag_id}" if deployment is not None else ""
        raise MetaflowNotFound(
            f"Flow {flow!r} has no run number {number}{of} in the datastore {datastore.root}: {numbered}."
        )
    return flow, stored, record


def _deployment_of(run: Run) -> Deployment | None:
    return _deployment_of_record(run.flow_name, run.id, run._record)


def _deployment_of_record(flow: str, stored: str | None, record: dict[str, Any]) -> Deployment | None:
    try:
        return RunIdentity.of_record(flow, stored or "", record).deployment
    except RunIdentityError:
        return None


class Step(MetaflowObject):
    """A step of a run: ``.task`` for a single task, iteration over foreach tasks in index order."""

    _NAME = "step"
    _PARENT_CLASS = "run"
    _CHILD_CLASS = "task"
    _DEPTH = 3

    def __init__(
        self, pathspec: str | None = None, *, _object: Any = None, _parent: MetaflowObject | None = None
    ):
        super().__init__(pathspec, _object=_object, _parent=_parent)
        self.flow_name, self.run_id = self.path_components[:2]
        self._run: Run = self._parent._run  # type: ignore[union-attr]

    def _task_ids(self) -> list[str]:
        ids = self._datastore.list_tasks(self.flow_name, self.run_id, self.id)
        return sorted(ids, key=lambda task_id: (len(task_id), task_id))  # numeric ids in numeric order

    def _child_records(self) -> Iterator[tuple[str, Any]]:
        """The step's task ids, in foreach index order: one listing; each task reads its manifest
        when first asked for something in it."""
        for task_id in self._task_ids():
            yield task_id, task_id

    def _child_record(self, task_id: str) -> tuple[str, Any]:
        tasks = self._task_ids()
        if task_id not in tasks:
            raise MetaflowNotFound(
                f"Step {self.pathspec} has no task {task_id!r}. "
                + _nearby(task_id, tasks, "tasks in this step")
            )
        return task_id, task_id

    def tasks(self) -> Iterator[Task]:
        """The step's tasks in foreach index order (one task for a step that is not a foreach body)."""
        return iter(self)

    def __getitem__(self, task_id: str | int) -> Task:
        return super().__getitem__(str(task_id))  # type: ignore[no-any-return]

    def __contains__(self, task_id: object) -> bool:
        return super().__contains__(str(task_id) if isinstance(task_id, int) else task_id)

    @property
    def task(self) -> Task | None:
        """The step's (first) task."""
        return next(iter(self), None)

    @property
    def finished_at(self) -> datetime | None:
        times = [task.finished_at for task in self]
        return max((t for t in times if t is not None), default=None)


def _checked_attempt(attempt: Any, pathspec: Any) -> int | None:
    """``attempt`` as Metaflow takes it (0 is a task's first attempt), or MetaflowNotFound."""
    if attempt is None:
        return None
    if isinstance(attempt, bool) or not isinstance(attempt, (int, str)) or not str(attempt).strip().isdigit():
        raise MetaflowNotFound(
            f"Task({pathspec!r}, attempt={attempt!r}): an attempt is a whole number, 0 for a task's "
            f"first attempt, 1 for its first retry, and so on."
        )
    return int(attempt)


class Task(MetaflowObject):
    """One task: its artifacts (``task.data.x``, ``task["x"]``), outcome, foreach index and attempt.

    ``Task(pathspec)`` is the task's latest attempt that stored its results (or, for a task that
    failed, its last attempt); ``Task(pathspec, attempt=n)`` is attempt ``n``, counted from 0 as in
    Metaflow, with that attempt's artifacts, output and outcome.
    """

    _NAME = "task"
    _PARENT_CLASS = "step"
    _CHILD_CLASS = "artifact"
    _DEPTH = 4

    def __init__(
        self,
        pathspec: str | None = None,
        attempt: int | None = None,
        *,
        _object: Any = None,
        _parent: MetaflowObject | None = None,
    ):
        self._attempt = _checked_attempt(attempt, pathspec)
        super().__init__(pathspec, _object=_object, _parent=_parent)
        self.flow_name, self.run_id, self.step_name = self.path_components[:3]
        self._run: Run = self._parent._run  # type: ignore[union-attr]
        self._manifest_read = False
        self._manifest_found: Manifest | None = None
        self._view: Any = None
        self._attempts: list[int] | None = None
        if self._attempt is not None:
            recorded = self._recorded_attempts()
            if self._attempt + 1 not in recorded:
                counted = [number - 1 for number in recorded]
                has = (
                    f"its attempts are {', '.join(map(str, counted))}"
                    if counted
                    else "no attempt of it has started yet"
                )
                raise MetaflowNotFound(
                    f"Task {self.pathspec} has no attempt {self._attempt}: {has} (attempt=0 is the "
                    f"first, as in Metaflow)."
                )

    def _recorded_attempts(self) -> list[int]:
        """The attempts that left a folder, numbered as stored (Airflow's try numbers, from 1)."""
        if self._attempts is None:
            where = (self.flow_name, self.run_id, self.step_name, self.id)
            self._attempts = self._datastore.list_attempts(*where)
        return self._attempts

    @property
    def _manifest(self) -> Manifest | None:
        """The manifest of this task's attempt (the latest that stored one, unless an attempt was
        asked for), read once, when first needed; None if it stored none."""
        if not self._manifest_read:
            where = (self.flow_name, self.run_id, self.step_name, self.id)
            if self._attempt is None:
                self._manifest_found = self._datastore.latest_attempt_manifest(*where)
            else:
                try:
                    self._manifest_found = self._datastore.read_manifest(
                        AttemptKey(*where, self._attempt + 1)
                    )
                except ArtifactNotFoundError:
                    self._manifest_found = None
            self._manifest_read = True
        return self._manifest_found

    @property
    def finished(self) -> bool:
        """Whether the task ended: it stored its results, or its run ended without them (it failed);
        an attempt that was retried ended too."""
        if self._manifest is not None:
            return True
        if self._attempt is not None and max(self._recorded_attempts()) > self._attempt + 1:
            return True
        return self._run.finished

    @property
    def successful(self) -> bool:
        """Whether the task stored its results (a failure ``@catch`` took counts as success)."""
        return self._manifest is not None

    @property
    def finished_at(self) -> datetime | None:
        manifest = self._manifest
        return None if manifest is None else manifest.finished_at()

    created_at = finished_at

    @property
    def index(self) -> int | None:
        """The foreach index of this task (the innermost foreach), None outside a foreach."""
        manifest = self._manifest
        return None if manifest is None else manifest.index

    @property
    def retry_count(self) -> int:
        if self._attempt is not None:
            return self._attempt
        manifest = self._manifest
        return 0 if manifest is None else manifest.attempt.attempt - 1

    @property
    def current_attempt(self) -> int:
        """The attempt this object shows, counted from 0: the one asked for, else the latest that
        stored results, else (a failed task) the last that started."""
        if self._attempt is not None:
            return self._attempt
        attempt = self._stored_attempt()
        return 0 if attempt is None else attempt - 1

    def _stored_attempt(self) -> int | None:
        """The stored number (from 1) of the attempt this object shows, None if none started."""
        if self._attempt is not None:
            return self._attempt + 1
        if self._manifest is not None:
            return self._manifest.attempt.attempt
        recorded = self._recorded_attempts()  # a failed task: its last attempt
        return recorded[-1] if recorded else None

    @property
    def exception(self) -> Any:
        """The exception ``@catch`` took on the attempt (its variable's value, or a summary); for
        an attempt that failed, the last line of its traceback (``ValueError: ...``)."""
        if self._manifest is None:
            lines = [line for line in self.stderr.splitlines() if line.strip()]
            return lines[-1] if lines and self.finished else None
        caught = self._manifest.caught
        if caught is None:
            return None
        for artifact in self:
            if artifact.type.endswith("CaughtException"):
                return artifact.data
        return f"{caught.type}: {caught.message}"

    @property
    def stdout(self) -> str:
        """What the step printed on this attempt ("" if nothing).

        Kept by the step runtime with the attempt's results, wherever the step ran; output that
        bypasses Python's ``sys.stdout`` (a child process, a C library writing to the file
        descriptor) is only in the Airflow task log or the terminal."""
        return self._log(keys.STDOUT_FILE)

    @property
    def stderr(self) -> str:
        """What the step wrote to stderr on this attempt, with the traceback if it failed."""
        return self._log(keys.STDERR_FILE)

    def _log(self, name: str) -> str:
        attempt = self._stored_attempt()
        if attempt is None:
            return ""
        try:
            data = self._datastore.read_attempt_file(
                AttemptKey(self.flow_name, self.run_id, self.step_name, self.id, attempt), name
            )
        except ArtifactNotFoundError:
            return ""
        return bytes(data).decode("utf-8", "replace")

    @property
    def metadata_dict(self) -> dict[str, Any]:
        manifest = self._manifest
        if manifest is None:
            return {
                "pathspec": self.pathspec,
                "attempt": None,
                "finished_at": None,
                "foreach_stack": [],
                "caught": None,
            }
        caught = manifest.caught
        return {
            "pathspec": self.pathspec,
            "attempt": manifest.attempt.attempt,
            "finished_at": manifest.created_at,
            "foreach_stack": [
                {"step": frame.step, "var": frame.var, "index": frame.index, "num_splits": frame.num_splits}
                for frame in manifest.foreach_stack
            ],
            "caught": None if caught is None else {"type": caught.type, "message": caught.message},
        }

    # -- artifacts -------------------------------------------------------------------------------

    def _artifact_view(self) -> Any:
        manifest = self._manifest
        if manifest is None:
            raise MetaflowNotFound(
                f"Task {self.pathspec} has no artifacts: it has not finished, or it failed before "
                f"storing them."
            )
        if self._view is None:
            from airflow_flowspec.datastore.views import task_view

            self._view = task_view(manifest, self._datastore)
        return self._view

    def _refs(self) -> Mapping[str, ArtifactRef]:
        manifest = self._manifest
        return {} if manifest is None else manifest.artifacts

    @property
    def data(self) -> MetaflowData:
        return MetaflowData(self)

    def artifacts(self) -> Iterator[DataArtifact]:
        return iter(self)

    def _child_records(self) -> Iterator[tuple[str, Any]]:
        refs = self._refs()
        for name in sorted(refs):
            yield name, refs[name]

    def _child_record(self, name: str) -> tuple[str, Any]:
        refs = self._refs()
        if name not in refs:
            self._artifact_view()  # an unfinished task is reported as such
            raise MetaflowNotFound(
                f"Task {self.pathspec} has no artifact {name!r}. " + _nearby(name, sorted(refs), "artifacts")
            )
        return name, refs[name]

    def _child(self, child_id: str, record: Any) -> DataArtifact:
        return DataArtifact(f"{self.pathspec}/{child_id}", self._attempt, _object=record, _parent=self)

    def __getitem__(self, name: str) -> DataArtifact:
        return super().__getitem__(name)  # type: ignore[no-any-return]

    def __contains__(self, name: object) -> bool:
        return name in self._refs()


class MetaflowData:
    """A task's artifacts by attribute: ``task.data.model`` loads (once) and returns the value."""

    def __init__(self, task: Task):
        self._task = task

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._task[name].data

    def __contains__(self, name: object) -> bool:
        return name in self._task

    def __iter__(self) -> Iterator[DataArtifact]:
        return iter(self._task)

    def __repr__(self) -> str:
        return f"<MetaflowData: {', '.join(sorted(self._task._refs()))}>"


class DataArtifact(MetaflowObject):
    """One artifact of a task: ``.data`` (loaded when read), ``.sha``, ``.size``, ``.type``."""

    _NAME = "artifact"
    _PARENT_CLASS = "task"
    _DEPTH = 5

    def __init__(
        self,
        pathspec: str | None = None,
        attempt: int | None = None,
        *,
        _object: Any = None,
        _parent: MetaflowObject | None = None,
    ):
        self._attempt = _checked_attempt(attempt, pathspec)
        super().__init__(pathspec, _object=_object, _parent=_parent)
        self._task: Task = self._parent  # type: ignore[assignment]
        self._run: Run = self._task._run
        self._ref: ArtifactRef = self._object

    def _parent_named(self, pathspec: str) -> MetaflowObject:
        return Task(pathspec, self._attempt)

    @property
    def data(self) -> Any:
        return getattr(self._task._artifact_view(), self.id)

    @property
    def sha(self) -> str:
        """The BLAKE3 hash of the pickled value: equal values share it, across tasks and runs."""
        return self._ref.hash

    @property
    def size(self) -> int:
        """Bytes of the pickled value."""
        return self._ref.size

    @property
    def type(self) -> str:  # noqa: A003 - Metaflow's name
        return self._ref.type

    @property
    def short_repr(self) -> str:
        return self._ref.repr

    @property
    def has_preview(self) -> bool:
        """Whether the saving step recorded a :attr:`preview` (known without reading it)."""
        return self._ref.preview is not None

    @property
    def created_at(self) -> datetime | None:
        return self._task.finished_at

    def _artifact_ref(self) -> ArtifactRef:
        return self._ref

    @property
    def preview(self) -> dict[str, Any] | None:
        """What the value looks like, recorded by the step that saved it, without unpickling it:
        ``{"repr": text, "repr_truncated": bool, "table": {"columns", "index", "rows",
        "total_rows", "total_columns"}}`` (``table`` for data frames only). None when
        :attr:`short_repr` already shows the whole value, and for secrets."""
        return self._datastore.artifacts.load_preview(self._artifact_ref(), what=f"artifact {self.pathspec}")

    def verified_pickle(self) -> Any:
        """A context manager giving the artifact's pickle (bytes, or a file at its start), checked
        against its hash and never unpickled: what a download serves."""
        return self._datastore.artifacts.verified_pickle(
            self._artifact_ref(), what=f"artifact {self.pathspec}"
        )

    @property
    def finished_at(self) -> datetime | None:
        return self._task.finished_at
