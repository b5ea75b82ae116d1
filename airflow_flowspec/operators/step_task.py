"""What every step operator does around the step itself, wherever the step runs.

``StepTaskMixin`` gathers the parents' manifests from XCom into a ``TaskSpec`` and publishes the
``StepResult``: the manifest as the task's XCom, the children of a foreach as the list Airflow maps
over (stored in chunks, so that each child reads only its own), the switch arm to follow. The
local operator runs the spec in-process; the AWS Batch operator runs the same spec in a container
and reuses this mixin unchanged.

Both fail a task at once on a flow mistake (``AirflowFailException``: no retry can fix it), and
let the step's own exceptions go to Airflow's retries.
"""

from __future__ import annotations

import contextlib
import getpass
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import (
    AirflowFailException,
    AirflowRescheduleException,
    AirflowSkipException,
    DownstreamTasksSkipped,
    TaskDeferred,
)

from airflow_flowspec import config
from airflow_flowspec.airflow._internals import is_dag_test_run, lazy_xcom_sequence
from airflow_flowspec.errors import (
    ForeachTooWideError,
    RunIdentityError,
    StepInputError,
    is_flow_mistake,
    not_retried_label,
)
from airflow_flowspec.identity import RunIdentity
from airflow_flowspec.parameters import RUN_TAGS_CONF_KEY

if TYPE_CHECKING:
    from airflow_flowspec.datastore.leases import Lease
    from airflow_flowspec.runtime.task_spec import StepResult, TaskSpec

# The task spec and the manifest check (which imports the datastore) are imported when a task
# runs: the DAG processor imports this module for every parse of a flow file.

#: XCom key of a foreach split's manifest (its return_value is the list Airflow maps over).
SPLIT_MANIFEST_KEY = "flowspec_split_manifest"
#: XCom key of where each outer item's children start in a flattened nested foreach, and how many
#: there are: ``[start, count]`` per outer item (pushed by ``FlattenForeachOperator``).
FOREACH_OFFSETS_KEY = "flowspec_foreach_offsets"
#: The DAG attribute holding a ``@project`` flow's ``ProjectBranch`` (None for other flows). The
#: translator sets it on every DAG it builds, including the one each worker builds from the file.
PROJECT_BRANCH_ATTRIBUTE = "flowspec_project_branch"
#: The start step's task attribute, kept in the serialized DAG, that says which flow and ``@project``
#: deployment the DAG was built for (``identity.Deployment.to_text``): what the artifact view reads
#: to know whose runs a DAG's runs are, instead of parsing the DAG id.
DEPLOYMENT_FIELD = "flowspec_deployment"

#: How a step reads a parent's manifest.
PULL_SAME = "same"  # the parent task at this task's own map index (or the unmapped parent)
PULL_SPLIT_PARENT = "split_parent"  # the foreach split that created this task's item
PULL_ALL_CHILDREN = "all_children"  # every task of a foreach body (this step joins them)
# A pull in PULL_ALL_CHILDREN mode by a join inside an outer foreach also names, under "offsets",
# the task that flattened the nested foreach it joins: where its own children are.


#: Exceptions that are not failures: how a task defers, skips or asks to be rescheduled.
_HOW_AIRFLOW_GOES_ON = (
    TaskDeferred,
    AirflowSkipException,
    DownstreamTasksSkipped,
    AirflowRescheduleException,
)


@contextlib.contextmanager
def flow_mistakes_fail_at_once() -> Iterator[None]:
    """Turn a flow mistake (or another failure no retry can change, such as a missing artifact)
    into ``AirflowFailException``: the task fails without using up its retries (``@retry`` is for
    the step's own failures). Its message is the error's paragraph, then what kind of failure it is.
    Under ``python flow.py run`` every failure is also shown on the terminal as the user reads it
    (:func:`~airflow_flowspec.runtime.failures.show_on_terminal`)."""
    from airflow_flowspec.runtime.failures import show_on_terminal

    try:
        yield
    except _HOW_AIRFLOW_GOES_ON:
        raise
    except BaseException as error:
        show_on_terminal(error)
        if not isinstance(error, Exception) or not is_flow_mistake(error):
            raise
        raise AirflowFailException(f"{error} {not_retried_label(error)}") from error


class StepTaskMixin:
    flow_file: str
    flow_name: str
    step_name: str
    input_pulls: list[dict[str, Any]]
    foreach_frame: dict[str, Any] | None

    @classmethod
    def get_serialized_fields(cls) -> frozenset[str]:
        """Airflow's serialized fields, and :data:`DEPLOYMENT_FIELD` (set on the start step only)."""
        return super().get_serialized_fields() | {DEPLOYMENT_FIELD}  # type: ignore[misc]

    def build_task_spec(self, context: Any) -> TaskSpec:
        ti = context["ti"]
        frame = self.foreach_frame or {}
        stack = frame.get("stack", [])
        manifests = []
        for pull in self.input_pulls:
            manifests.extend(self._pull_manifests(ti, pull, frame, stack))
        parameters = dict(context.get("params") or {}) if self.step_name == "start" else {}
        dag_run = context.get("dag_run")
        triggering_user = getattr(dag_run, "triggering_user_name", None)
        # A dag.test() run (python flow.py run, airflow dags test) is not production, and its user
        # is who ran it.
        by_dag_test = is_dag_test_run(dag_run)
        # As in Metaflow, a @project flow's runs are production runs when its branch is.
        project = getattr(context.get("dag"), PROJECT_BRANCH_ATTRIBUTE, None)
        from airflow_flowspec.datastore.manifest import ForeachFrame, Manifest
        from airflow_flowspec.runtime.task_spec import RunContext, TaskSpec

        run = self.run_identity(context)
        return TaskSpec(
            code=self._run_code(manifests, run, ti.try_number or 1),
            flow_file=self.flow_file,
            run=run,
            step=self.step_name,
            datastore_root=config.datastore_root(),
            map_index=ti.map_index if ti.map_index is not None else -1,
            attempt=ti.try_number or 1,
            max_attempts=(getattr(self, "retries", 0) or 0) + 1,
            input_manifests=[
                Manifest.from_json(m, where=f"Step '{self.step_name}' of flow {self.flow_name}")
                for m in manifests
            ],
            foreach_stack=[ForeachFrame.from_json(f) for f in stack],
            parameters=parameters,
            run_context=RunContext(
                logical_date=context.get("logical_date"),
                data_interval_start=context.get("data_interval_start"),
                data_interval_end=context.get("data_interval_end"),
                is_production=project.is_production if project else not by_dag_test,
                username=(None if by_dag_test else triggering_user) or getpass.getuser(),
                origin_run_id=(getattr(dag_run, "conf", None) or {}).get("origin_run_id"),
                run_type=_run_type(dag_run),
                tags=_run_tags(context, dag_run),
            ),
        )

    @contextlib.contextmanager
    def task_lease(self, context: Any) -> Iterator[Lease]:
        """Hold the run's lease while this task works (:mod:`airflow_flowspec.datastore.leases`):
        ``airflow-flowspec gc`` keeps a run with a live lease, and a task whose run gc has taken
        stops here, before it reads or writes anything of it."""
        from airflow_flowspec.datastore import open_datastore
        from airflow_flowspec.datastore.leases import Lease

        run = self.run_identity(context)
        datastore = open_datastore(config.datastore_root())
        with Lease(datastore, run, holder="task", needs_record=self.step_name != "start") as lease:
            yield lease

    def run_identity(self, context: Any) -> RunIdentity:
        """Which run this task belongs to: the flow, the ``@project`` deployment its DAG was built
        for, and Airflow's run id. A step task runs only in the DAG its flow is deployed as: in
        another DAG its run could be stored where that deployment's runs are."""
        ti = context["ti"]
        deployment = getattr(context.get("dag"), PROJECT_BRANCH_ATTRIBUTE, None)
        identity = RunIdentity.of_deployment(self.flow_name, ti.run_id, deployment)
        if ti.dag_id != identity.dag_id:
            raise RunIdentityError(
                f"Step '{self.step_name}' of flow {self.flow_name} runs in the DAG {ti.dag_id}, but the "
                f"flow is deployed as the DAG {identity.dag_id}: its runs would be stored with that "
                f"DAG's. Build the DAG from the flow file (drop the file into the dags folder) instead "
                f"of adding the flow's operators to another DAG."
            )
        return identity

    def _run_code(
        self, manifests: list[dict[str, Any]], run: RunIdentity, try_number: int
    ) -> dict[str, Any] | None:
        """The code the run started with: recorded here, on the worker, for the start step (a Batch
        container has no dags folder), and handed on from the parents' manifests to every other.

        A retried or cleared task, or one whose parents ran different code, runs the code the run's
        record names: ``airflow-flowspec repin`` changes it there after a fix (one read, only then).
        """
        from airflow_flowspec.datastore import open_datastore

        if self.step_name == "start":
            from airflow_flowspec.datastore import code_package

            return code_package.record(open_datastore(config.datastore_root()), self.flow_file)
        codes = [m["code"] for m in manifests if m.get("code")]
        if codes and (try_number > 1 or any(code != codes[0] for code in codes)):
            from airflow_flowspec.errors import ArtifactNotFoundError

            try:
                record = open_datastore(config.datastore_root()).read_run_meta(run.flow, run.run_id)
            except ArtifactNotFoundError:
                record = {}
            return (record.get("code") or {}).get("package") or codes[0]
        return codes[0] if codes else None

    def _pull_manifests(
        self, ti: Any, pull: dict[str, Any], frame: dict[str, Any], stack: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        task_id, key, mode = pull["task_id"], pull["key"], pull["mode"]
        if mode == PULL_SAME:
            if ti.map_index is None or ti.map_index < 0:
                # Through the sequence API: an absent XCom (a switch arm not taken) is just None.
                value = ti.xcom_pull(task_ids=task_id, key=key)
            else:
                value = ti.xcom_pull(task_ids=task_id, key=key, map_indexes=ti.map_index)
            return [] if value is None else [self._manifest_of(value, task_id)]
        if mode == PULL_SPLIT_PARENT:
            value = ti.xcom_pull(task_ids=task_id, key=key, map_indexes=frame.get("parent_map_index", -1))
            split = self._manifest_of(value, task_id)
            self._check_frame(ti, frame, stack, split)
            return [split]
        if pull.get("offsets"):  # a join inside an outer foreach joins only its own item's children
            return self._pull_own_children(ti, pull, stack)
        values = ti.xcom_pull(task_ids=task_id, key=key) or []
        if not isinstance(values, list):
            values = [values]
        return [self._manifest_of(v, task_id) for v in values if v is not None]

    def _check_frame(
        self, ti: Any, frame: dict[str, Any], stack: list[dict[str, Any]], split: dict[str, Any]
    ) -> None:
        """Refuse a foreach item that is not one of the split's, before anything of it is used.

        Airflow resolved ``frame`` from the split's list of children, each chunk of which was
        proven against the root in the split's XCom row; this checks it against the split's
        manifest too: the same foreach, an index in range, the split's own place in any outer
        foreach, and, for a foreach that is not nested, the index Airflow mapped this task to.
        """
        item = stack[-1] if stack and isinstance(stack[-1], dict) else {}
        foreach = split.get("foreach") or {}
        num_splits = foreach.get("num_splits")
        index = item.get("index")
        fits = (
            item.get("step") == split.get("step")
            and item.get("var") == foreach.get("var")
            and item.get("num_splits") == num_splits
            and type(index) is int
            and type(num_splits) is int
            and 0 <= index < num_splits
            and stack[:-1] == split.get("foreach_stack")
            and (frame.get("parent_map_index", -1) != -1 or index == ti.map_index)
        )
        if not fits:
            raise StepInputError(
                f"Step '{self.step_name}' of flow {self.flow_name} (map index {ti.map_index}) was handed "
                f"item {index!r} of the foreach over self.{item.get('var')} in step '{item.get('step')}' "
                f"as its input, which is not an item of the foreach of step '{split.get('step')}' it runs "
                f"in (its manifest says {num_splits!r} items of self.{foreach.get('var')}). The split's "
                f"list of children was edited or mixed up; nothing of the item was used. Clear task "
                f"{split.get('step')} to run the foreach again."
            )

    def _pull_own_children(
        self, ti: Any, pull: dict[str, Any], stack: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """The manifests of this join's own children, and no one else's.

        This join runs once per item of an outer foreach and closes the inner foreach of that item.
        The inner body is mapped over the flattened children of every outer item, so this item's
        children are one contiguous run of its map indexes: the flatten task recorded where each
        run starts and how long it is. One request reads that entry, one reads the run's manifests.
        """
        task_id, key = pull["task_id"], pull["key"]
        offsets = ti.xcom_pull(task_ids=pull["offsets"], key=FOREACH_OFFSETS_KEY, map_indexes=-1)
        entry = offsets[ti.map_index] if offsets is not None and 0 <= ti.map_index < len(offsets) else None
        if not (
            isinstance(entry, list)
            and len(entry) == 2
            and all(type(number) is int and number >= 0 for number in entry)
        ):
            raise StepInputError(
                f"Step '{self.step_name}' of flow {self.flow_name} (map index {ti.map_index}) found no "
                f"record of where its children of step '{task_id}' are in {pull['offsets']}'s XCom "
                f"'{FOREACH_OFFSETS_KEY}' (got {entry!r:.100}). Clear task {pull['offsets']} and what "
                f"follows it to run the nested foreach again."
            )
        start, count = entry
        values = _xcom_slice(self, ti, task_id, key, start, start + count)
        manifests = [self._manifest_of(v, task_id) for v in values]
        own = [f["index"] for f in stack]
        found = [[f.get("index") for f in m.get("foreach_stack") or []] for m in manifests]
        if found != [[*own, position] for position in range(count)]:
            raise StepInputError(
                f"Step '{self.step_name}' of flow {self.flow_name} joins the {count} children of item "
                f"{own} of its foreach, at map indexes {start} to {start + count - 1} of {task_id}, but "
                f"those map indexes hold the children {found!r:.300}. A child's XCom is missing or the "
                f"record was edited; clear task {pull['offsets']} and what follows it to run the nested "
                f"foreach again."
            )
        return manifests

    def publish_result(self, context: Any, result: StepResult) -> Any:
        """Push the manifest (as the step's manifest, which only this may do) and return what
        Airflow should push itself: a foreach's children, which it maps over, else nothing."""
        from airflow_flowspec.xcom_backend.values import ChunkedList, publishing_step_manifest

        self._log_storage(result.storage)
        ti = context["ti"]
        if result.foreach_children is not None:
            self._check_width(len(result.foreach_children))
            with publishing_step_manifest():
                ti.xcom_push(key=SPLIT_MANIFEST_KEY, value=result.manifest.to_json())
            what = f"the children of the foreach in step '{self.step_name}' of flow {self.flow_name}"
            return ChunkedList(result.foreach_children, description=what)
        with publishing_step_manifest():
            ti.xcom_push(key="return_value", value=result.manifest.to_json())
        if result.switch_step is not None:
            self.skip_all_except(ti, result.switch_step)  # type: ignore[attr-defined]
        return None

    def _log_storage(self, storage: dict[str, Any] | None) -> None:
        """What the step stored, at the end of the task's log: a line per artifact saved, then
        the bytes the task moved (``python flow.py run`` shows only warnings: it stays quiet)."""
        if not storage:
            return
        from airflow_flowspec.datastore.gc import format_size

        log = self.log  # type: ignore[attr-defined]
        for name, size, state in storage.get("saved", []):
            log.info("Artifact %s: %s, %s", name, format_size(size), state)
        log.info(
            "Stored %d artifact(s) (%d carried unchanged): %s written and %s read for the step's "
            "code, inputs and artifacts.",
            len(storage.get("saved", [])),
            storage.get("carried", 0),
            format_size(storage.get("bytes_written", 0)),
            format_size(storage.get("bytes_read", 0)),
        )

    def _check_width(self, width: int) -> None:
        check_foreach_width(width, f"The foreach in step '{self.step_name}' of flow {self.flow_name}")

    def _manifest_of(self, value: Any, parent_task_id: str) -> dict[str, Any]:
        from airflow_flowspec.datastore.manifest import checked_manifest

        return checked_manifest(
            value,
            where=f"Step '{self.step_name}' of flow {self.flow_name}, reading the XCom of {parent_task_id},",
        )


def check_foreach_width(width: int, what: str) -> None:
    """Fail before Airflow does when a foreach's list is longer than ``[core] max_map_length``.

    Lint already refuses widths the source states; this catches the ones known only at run time.
    """
    from airflow.sdk import conf

    splits = config.max_num_splits()
    if splits is not None and width > splits:  # python flow.py run, as Metaflow's runtime says it
        raise ForeachTooWideError(
            f"{what} yielded {width} child steps, more than the current maximum of {splits} children. "
            f"You can raise the maximum with the --max-num-splits option of run."
        )
    limit = conf.getint("core", "max_map_length")
    if width > limit:
        raise ForeachTooWideError(
            f"{what} has {width} items, more than Airflow's [core] max_map_length ({limit}). Raise it "
            f"in airflow.cfg or with AIRFLOW__CORE__MAX_MAP_LENGTH={width} (on the scheduler and "
            f"workers), or split the foreach into batches. The step's artifacts are saved; clear "
            f"this task to run it again."
        )


def _xcom_slice(task: Any, ti: Any, task_id: str, key: str, start: int, stop: int) -> list[Any]:
    """The XComs ``key`` of map indexes ``start`` up to ``stop`` of the mapped task ``task_id``, in
    one request: the sequence Airflow hands a task downstream of a mapped one, sliced."""
    from airflow.sdk import XComArg

    if stop <= start:
        return []
    sequence: Any = lazy_xcom_sequence(XComArg(task.dag.get_task(task_id), key), ti)
    return list(sequence[start:stop])


def _run_type(dag_run: Any) -> str | None:
    run_type = getattr(dag_run, "run_type", None)
    return None if run_type is None else str(getattr(run_type, "value", run_type))


def _run_tags(context: Any, dag_run: Any) -> tuple[str, ...]:
    """The user's tags: the trigger form's "Run tags" field (a DAG param), which a trigger's conf
    overrides as it does any param; the conf alone where the param is missing (a DAG serialized
    before it existed)."""
    params = context.get("params") or {}
    tags = params[RUN_TAGS_CONF_KEY] if RUN_TAGS_CONF_KEY in params else None
    if tags is None:
        tags = (getattr(dag_run, "conf", None) or {}).get(RUN_TAGS_CONF_KEY)
    if isinstance(tags, str):
        return (tags,)  # refused with its message by the start step, as any malformed value
    return tuple(tags or ())
