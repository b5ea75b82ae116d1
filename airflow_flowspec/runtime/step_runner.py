"""Run one task of a flow: restore inputs, call the step, save artifacts, write the manifest last.

This is the only place a step executes, whether on an Airflow worker (local mode) or in a Batch
container. Retries belong to Airflow: a failing step raises, except on its last attempt under
``@catch``, where the exception becomes an artifact and the flow goes on. A flow mistake (see
:mod:`airflow_flowspec.errors`) is never caught: it fails the task with its message.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from airflow_flowspec.current import TaskContext, current
from airflow_flowspec.datastore import code_package, keys, open_datastore
from airflow_flowspec.datastore.artifacts import SECRET_REPR, ArtifactRef, short_repr
from airflow_flowspec.datastore.chunks import CHUNK_ITEMS
from airflow_flowspec.datastore.keys import SYSTEM_TAG_PREFIXES
from airflow_flowspec.datastore.leases import Lease
from airflow_flowspec.datastore.manifest import (
    Caught,
    ForeachFrame,
    ForeachSplit,
    Manifest,
    SwitchTaken,
    new_manifest,
)
from airflow_flowspec.datastore.views import ArtifactLoader, Inputs, InputView
from airflow_flowspec.decorators.base import step_decorators_of
from airflow_flowspec.errors import (
    ArtifactSaveError,
    FlowLoadError,
    ParameterError,
    StepInputError,
    TransitionError,
    is_flow_mistake,
)
from airflow_flowspec.flow_loader import load_flow_class, load_recorded_flow_class
from airflow_flowspec.graph import FlowGraph, StepNode, graph_of, graph_record
from airflow_flowspec.parameters import flow_parameters
from airflow_flowspec.run_tags import check_tags
from airflow_flowspec.runtime import parameter_values
from airflow_flowspec.runtime.caught import CaughtException
from airflow_flowspec.runtime.failures import remember_where
from airflow_flowspec.runtime.masking import SecretMask, masked_output
from airflow_flowspec.runtime.step_warnings import one_line_warnings
from airflow_flowspec.runtime.task_log import TaskLog, labelled, lines_prefixed
from airflow_flowspec.runtime.task_spec import (
    StepResult,
    TaskSpec,
    run_namespace,
    system_tags,
)
from airflow_flowspec.runtime.task_state import TaskState

# Values of these types cannot change in place, so an artifact of such a type that a step read but
# did not reassign can keep its stored reference instead of being pickled and hashed again.
IMMUTABLE_TYPES = (bytes, str, int, float, bool, complex, type(None), range, frozenset)


def run_step(
    spec: TaskSpec,
    datastore: Any = None,
    *,
    store_result: bool = False,
    mask_secret: Callable[[Any], None] | None = None,
    lease: Lease | None = None,
) -> StepResult:
    """Run the task described by ``spec`` and return what Airflow should publish.

    The step's output is kept with the attempt (:mod:`.task_log`), on success before the manifest,
    on failure with the traceback; a failure to keep it never hides the step's own error.

    ``lease`` is the run's lease the caller holds for the task (an operator); without one, the
    step takes its own (a step process in a container) once its names are known to be storable.
    """
    log = TaskLog()
    with log.capture():
        try:
            return _run_step(
                spec, datastore, log, store_result=store_result, mask_secret=mask_secret, lease=lease
            )
        except BaseException as error:
            if log.mask is not None:  # refused before the step began: nothing is written
                log.add_failure(error, log.mask)
                try:
                    log.store(datastore or open_datastore(spec.datastore_root), spec.attempt_key)
                except Exception:  # noqa: BLE001 - the step's error is the one to report
                    pass
            raise


def _run_step(
    spec: TaskSpec,
    datastore: Any,
    log: TaskLog,
    *,
    store_result: bool,
    mask_secret: Callable[[Any], None] | None,
    lease: Lease | None,
) -> StepResult:
    """Check that everything the task will write can be stored, then run it under ``lease`` (or
    a lease of its own: the worker that started this process checked that the run is there)."""
    # Every name this task will write under must be storable before anything is written.
    keys.manifest_key(spec.attempt_key)
    run_tags = _run_tags(spec) if spec.step == "start" else []  # refused before anything runs
    datastore = datastore or open_datastore(spec.datastore_root)
    with contextlib.nullcontext(lease) if lease else Lease(datastore, spec.run, holder="step") as held:
        task = TaskExecution(
            spec, datastore, log, held, run_tags=run_tags, store_result=store_result, mask_secret=mask_secret
        )
        task.prepare()
        task.execute()
        return task.persist()


class TaskExecution:
    """One attempt of a step: :meth:`prepare` the flow instance, :meth:`execute` the step,
    :meth:`persist` what it produced; each phase reads what the one before it set.

    With ``store_result`` the result is also left in the datastore (before the manifest, which
    stays the last thing written), for a process other than this one to publish. ``mask_secret``
    is told the value of every secret parameter before the step runs (Airflow's log masker, on a
    worker), so that a step printing one does not put it in the task log.
    """

    def __init__(
        self,
        spec: TaskSpec,
        datastore: Any,
        log: TaskLog,
        lease: Lease,
        *,
        run_tags: list[str],
        store_result: bool,
        mask_secret: Callable[[Any], None] | None,
    ):
        self.spec = spec
        self.datastore = datastore
        self.log = log
        self.lease = lease
        self.run_tags = run_tags
        self.store_result = store_result
        self.mask_secret = mask_secret
        self.label = f"{spec.run_id}/{spec.step}/{spec.task_id}"
        # Set by prepare():
        self.run_number: int | None = None
        self.moved_before: dict[str, int] = {}
        self.code: dict[str, Any] | None = None
        self.graph: FlowGraph
        self.node: StepNode
        self.decorators: dict[str, Any] = {}
        self.flow: Any = None
        self.state: TaskState
        self.parameter_names: list[str] = []
        self.secret_names: set[str] = set()
        self.secrets: SecretMask
        # Set by execute():
        self.caught: BaseException | None = None
        self.foreach_children: list[dict[str, Any]] | None = None
        self.switch_step: str | None = None

    # -- prepare: code, graph, inputs, secrets --------------------------------------------------

    def prepare(self) -> None:
        """Build the flow instance the step runs on, from the code the run started with, holding
        the step's inputs; mask its secrets. A start step first numbers the run (numbers follow
        starts) after checking that the run is this deployment's."""
        spec, datastore = self.spec, self.datastore
        if spec.step == "start":
            datastore.check_run_identity(spec.run)  # never write into another deployment's run
            self.run_number = datastore.number_run(spec.run)  # before the step: numbers follow starts
        self.moved_before = _moved(datastore)
        flow_class, self.code = _load_flow(spec, datastore)
        self.graph = graph_of(flow_class)
        if spec.step not in self.graph:
            raise FlowLoadError(
                f"Flow {spec.flow_name} in {spec.flow_file} has no step '{spec.step}' in the code run "
                f"{spec.run_id} started with (its steps: {', '.join(self.graph.sorted_nodes())}). The flow "
                f"file gained the step after the run started (a run keeps its code), or the task names a "
                f"step that never existed: start a new run of the current flow."
            )
        self.node = self.graph[spec.step]
        self.decorators = step_decorators_of(getattr(flow_class, spec.step))

        self.flow = flow_class.__new__(flow_class)
        is_join = self.node.type == "join"
        artifacts, self.parameter_names = _restore_inputs(
            self.flow, flow_class, spec, datastore, is_join=is_join
        )
        self.state = TaskState(spec, datastore, is_join=is_join, artifacts=artifacts)
        self.flow._flowspec_attach(self.state)
        self.secret_names = {p.attr_name for p in flow_parameters(flow_class) if p.secret}
        secret_values = [
            getattr(self.flow, name) for name in sorted(self.secret_names & set(self.parameter_names))
        ]
        self.secrets = self.log.mask = SecretMask(secret_values)
        if self.mask_secret is not None:
            for value in secret_values:
                if value is not None:
                    self.mask_secret(value)

    # -- execute: the step under @catch, the transition ----------------------------------------

    def execute(self) -> None:
        """Run the step: a failure raises, except one ``@catch`` takes on the last attempt; then
        check that the step went where its source says (a foreach stores its items here)."""
        spec = self.spec
        if not lines_prefixed():  # else the run prints it, with the task's process id
            self.log.print_unkept(f"[{self.label}] Task is starting.")
        with (
            _task_context(spec),
            _environment(self.decorators.get("environment")),
            masked_output(self.secrets),
            one_line_warnings(self.label),
        ):
            self.caught = self._call_step()
        if self.caught is None:
            self.foreach_children, self.switch_step = self._transition()

    def _call_step(self) -> BaseException | None:
        """Call the step; what ``@catch`` caught (the flow goes on), None if the step succeeded."""
        spec, flow, catch = self.spec, self.flow, self.decorators.get("catch")
        step_func = getattr(type(flow), spec.step)
        try:
            if self.state.is_join:
                inputs = [InputView(m, self.datastore, self.state.foreach_value) for m in _ordered(spec)]
                step_func(flow, Inputs(inputs))
            else:
                step_func(flow)
        except Exception as exc:  # noqa: BLE001 - @catch decides; otherwise re-raised below
            if (
                catch is None
                or is_flow_mistake(exc)
                or spec.attempt < spec.max_attempts
                or self.node.type in ("foreach", "split-switch")
            ):
                remember_where(exc, self.state)
                raise
            print(
                f"@catch caught an exception from step {spec.step} on its last attempt "
                f"({type(exc).__name__}: {exc}); the flow goes on"
                + (f" with self.{catch['var']} holding it." if catch["var"] else "."),
                file=sys.stderr,
                flush=True,
            )
            if catch["print_exception"]:
                print(CaughtException(exc).stacktrace, file=sys.stderr, flush=True)
            if catch["var"]:
                flow.__dict__[catch["var"]] = CaughtException(exc)
            return exc
        if catch is not None and catch["var"]:
            flow.__dict__[catch["var"]] = None  # as in Metaflow: falsy when nothing was caught
        return None

    def _transition(self) -> tuple[list[dict[str, Any]] | None, str | None]:
        """(foreach children, switch step taken): the ``self.next`` the step called, checked
        against the graph."""
        spec, node = self.spec, self.node
        where = f"Step '{spec.step}' of flow {spec.flow_name}"
        if node.type == "end":
            return None, None
        transition = self.state.transition
        if transition is None:
            raise TransitionError(
                f"{where} finished without calling self.next(). Every step but end must end with "
                f"self.next(...) on every code path (a return before it skips it)."
            )
        if list(transition.targets) != list(node.out_funcs):
            raise TransitionError(
                f"{where} called self.next({', '.join(transition.targets)}) but its source says "
                f"self.next({', '.join(node.out_funcs)}); transitions must be static."
            )
        if node.type == "foreach":
            return self._foreach_children(where), None
        if node.type == "split-switch":
            value = getattr(self.flow, str(node.condition))  # lint: a switch names its condition
            cases = node.switch_cases or {}
            key = value if isinstance(value, str) else str(value)
            if key not in cases:
                raise TransitionError(
                    f"{where}: switch condition self.{node.condition} is {value!r}, which is not one of "
                    f"the cases {', '.join(repr(k) for k in cases)}. Set it to one of them."
                )
            return None, cases[key]
        return None, None

    def _foreach_children(self, where: str) -> list[dict[str, Any]]:
        spec, var = self.spec, str(self.node.foreach_param)  # lint: a foreach names its list
        try:
            values = getattr(self.flow, var)
        except AttributeError:
            raise TransitionError(
                f"{where} does a foreach over self.{var}, but self.{var} was never set."
            ) from None
        try:
            items = list(values)
        except TypeError:
            raise TransitionError(
                f"{where} does a foreach over self.{var}, a {type(values).__name__}, which cannot be "
                f"iterated. Use a list."
            ) from None
        if not items:
            raise TransitionError(
                f"{where}: the foreach over self.{var} produced zero splits (it is empty). A foreach needs "
                f"at least one item; check the value or branch around the foreach."
            )
        named = {f"{var}[{i}]": item for i, item in enumerate(items)}
        # An item made from a secret is stored as artifacts made from one are: salted, shown as <secret>.
        secrets = self.secrets
        salted = [name for name, item in named.items() if secrets and secrets.reveals(short_repr(item))]
        # Each child loads only its own item: in packs of a chunk's worth of items, it reads a few
        # siblings' pickles with it, not a pack of up to 4 MB of them, however wide the foreach.
        refs = self.datastore.artifacts.save_many(named, secret_names=salted, pack_items=CHUNK_ITEMS)
        children = []
        for i in range(len(items)):
            frame = ForeachFrame(
                step=spec.step, var=var, index=i, num_splits=len(items), item=refs[f"{var}[{i}]"]
            )
            stack = [*spec.foreach_stack, frame]
            children.append({"stack": [f.to_json() for f in stack], "parent_map_index": spec.map_index})
        return children

    # -- persist: the write order --------------------------------------------------------------

    def persist(self) -> StepResult:
        """Write what the task produced, in the order that leaves nothing wrong after a kill at
        any point, and return what Airflow should publish:

        1. the artifacts (nothing references them until the manifest does);
        2. (start step) the run record;
        3. the result (for another process to publish, or a foreach's items to stay referenced)
           and the output logs;
        4. the lease check: gc must have seen this task running all along, or what the manifest
           references may be gone;
        5. the manifest, the last of the attempt's own records: it makes the task done;
        6. (start step) the run index entry; (end step) the run's outcome.
        """
        spec, datastore = self.spec, self.datastore
        refs, saved_report = self._save_artifacts()
        run_record = self._write_run_record() if spec.step == "start" else None
        result = self._result(refs, saved_report)
        if self.store_result or self.foreach_children is not None:
            # A split's item references otherwise live only in Airflow's XCom, which gc cannot read:
            # the result beside the manifest keeps the children's inputs referenced while they queue.
            datastore.write_step_result(spec.attempt_key, result.to_json())
        self.log.store(datastore, spec.attempt_key)
        self.lease.check()
        datastore.write_manifest(result.manifest)
        if run_record is not None:
            datastore.index_run(spec.flow_name, spec.run_id, run_record)
        if self.node.type == "end":
            datastore.finish_run(spec.flow_name, spec.run_id, True, {"end_task": spec.pathspec})
        if self.foreach_children is not None:
            print(
                labelled(self.label, f"Foreach yields {len(self.foreach_children)} child steps."), flush=True
            )
        if not lines_prefixed():
            print(f"[{self.label}] Task finished successfully.", flush=True)
        return result

    def _save_artifacts(self) -> tuple[dict[str, ArtifactRef], list[list[Any]]]:
        """The manifest's artifact references, and ``[name, size, "new" or "reused"]`` for each
        artifact this step saved (not those it carried unread)."""
        flow, loader = self.flow, self.state.artifacts
        refs: dict[str, ArtifactRef] = {}
        to_save: dict[str, Any] = {}
        for name in loader.refs:
            if name in flow.__dict__:
                continue
            if name not in loader.loaded:
                refs[name] = loader.refs[name]  # untouched: carry the reference, move no bytes
            elif type(loader.loaded[name]) in IMMUTABLE_TYPES:
                refs[name] = loader.refs[name]  # read, unchanged by construction
            else:
                to_save[name] = loader.loaded[name]  # may have been mutated in place: hash decides
        for name, value in flow.__dict__.items():
            if name.startswith("_flowspec_") or name.startswith("__"):  # the task state
                continue
            to_save[name] = value
        # An artifact made from a secret (its repr shows it) is stored as a secret too: salted, so its
        # hash in the manifest cannot confirm a guess, and shown as <secret>.
        salted = set(self.secret_names)
        if self.secrets:
            salted.update(name for name, value in to_save.items() if self.secrets.reveals(short_repr(value)))
        written: set[str] = set()
        try:
            saved = self.datastore.artifacts.save_many(to_save, secret_names=salted, written=written)
        except ArtifactSaveError as err:
            raise ArtifactSaveError(
                err.artifact_name, err.reason, flow=self.spec.flow_name, step=self.spec.step
            ) from None
        saved_report = []
        for name, ref in saved.items():
            refs[name] = ref
            saved_report.append([name, ref.size, "new" if ref.hash in written else "reused"])
        return {name: refs[name] for name in sorted(refs)}, saved_report

    def _write_run_record(self) -> dict[str, Any]:
        """Record the run (start step): where its flow, parameters, code and graph came from."""
        spec, flow = self.spec, self.flow
        return self.datastore.write_run_meta(  # type: ignore[no-any-return]
            spec.flow_name,
            spec.run_id,
            {
                "flow_file": os.path.abspath(spec.flow_file),
                "parameters": {
                    p: SECRET_REPR if p in self.secret_names else _describe(flow.__dict__.get(p))
                    for p in self.parameter_names
                },
                "context": spec.run_context.to_json(),
                "tags": self.run_tags,
                "code": self.code,
                "graph": graph_record(self.graph),
                "versions": _versions(),
                "started_by": {"user": spec.run_context.username, "run_type": spec.run_context.run_type},
                "system_tags": system_tags(spec.run, spec.run_context),
                "number": self.run_number,
            },
            identity=spec.run,
        )

    def _result(self, refs: dict[str, ArtifactRef], saved_report: list[list[Any]]) -> StepResult:
        """The manifest and what Airflow publishes besides it, with what the task moved."""
        node, caught, children, switch_step = self.node, self.caught, self.foreach_children, self.switch_step
        manifest = new_manifest(
            self.spec.attempt_key,
            artifacts=refs,
            parameters=self.parameter_names,
            foreach_stack=self.spec.foreach_stack,
            foreach=None if children is None else ForeachSplit(str(node.foreach_param), len(children)),
            switch=None if switch_step is None else SwitchTaken(str(node.condition), switch_step),
            caught=None
            if caught is None
            else Caught(type(caught).__name__, self.secrets.redact(str(caught))),
            code=ArtifactRef.from_json(self.code["package"]) if self.code else None,
        )
        moved = _moved(self.datastore)
        storage = {
            "saved": saved_report,
            "carried": len(refs) - len(saved_report),
            "bytes_written": moved["bytes_written"] - self.moved_before["bytes_written"],
            "bytes_read": moved["bytes_read"] - self.moved_before["bytes_read"],
        }
        return StepResult(
            manifest=manifest, foreach_children=children, switch_step=switch_step, storage=storage
        )


def _load_flow(spec: TaskSpec, datastore: Any) -> tuple[type, dict[str, Any] | None]:
    """The flow class from the code the run started with, and (start step) the run record's
    ``code``. The operator records it before the start step; a spec without it (run by hand) is
    recorded here, from the flow file, before anything of the flow runs."""
    package_ref = spec.code
    if package_ref is None and spec.step == "start":
        package_ref = code_package.record(datastore, spec.flow_file)
    if package_ref is None:  # a run started before code was recorded: the file as it is now
        return load_flow_class(spec.flow_file, spec.flow_name), None
    folder, index = code_package.materialize(datastore, package_ref)
    flow_class = load_recorded_flow_class(folder, index, spec.flow_name, spec.flow_file)
    if spec.step != "start":
        return flow_class, {"package": package_ref}
    recorded_flow_file = os.path.join(folder, index["flow"])
    return flow_class, code_package.run_record_code(datastore, package_ref, recorded_flow_file)


def _moved(datastore: Any) -> dict[str, int]:
    """Bytes the datastore's backend has written and read so far in this process."""
    counters = getattr(getattr(datastore, "backend", None), "counters", None)
    return counters.snapshot() if counters is not None else {"bytes_written": 0, "bytes_read": 0}


def _describe(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else short_repr(value)


def _ordered(spec: TaskSpec) -> list[Manifest]:
    """Join inputs in a stable order: by foreach index, then as the operator listed them."""
    return sorted(spec.input_manifests, key=lambda manifest: manifest.foreach_indices)


def _restore_inputs(
    flow: Any, flow_class: type, spec: TaskSpec, datastore: Any, *, is_join: bool
) -> tuple[ArtifactLoader, list[str]]:
    """The artifacts the step starts with (a start step: its parameters, set on ``flow``), and
    the names of the flow's parameters."""
    parameters = flow_parameters(flow_class)
    if spec.step == "start":
        _set_parameters(flow, parameters, spec, datastore)
        return ArtifactLoader(datastore, {}, origin=spec.pathspec), [p.attr_name for p in parameters]
    if not spec.input_manifests:
        raise StepInputError(
            f"Step '{spec.step}' of flow {spec.flow_name} got no input manifest from its parents."
        )
    first = spec.input_manifests[0]
    parameter_names = list(first.parameters)
    refs: Mapping[str, ArtifactRef] = first.artifacts
    if is_join:
        # A join starts with only the parameters; everything else comes through inputs/merge_artifacts.
        refs = {name: refs[name] for name in parameter_names if name in refs}
    return ArtifactLoader(datastore, refs, origin=first.pathspec), parameter_names


def _set_parameters(flow: Any, parameters: list[Any], spec: TaskSpec, datastore: Any) -> None:
    for parameter in parameters:
        raw = spec.parameters.get(parameter.name)
        stored = parameter_values.stored_value(raw, datastore, parameter.name)
        if stored is not None:  # resolved where the run started (a start step on Batch)
            kind, raw = stored
            if kind == parameter_values.CONTENT:
                flow.__dict__[parameter.attr_name] = raw
                continue
        if raw is None:
            raw = parameter.default_value(spec.flow_name)
        if raw is None and parameter.required:
            raise ParameterError(
                f"Flow {spec.flow_name} needs a value for parameter '{parameter.name}': "
                f"run with --{parameter.name} VALUE or fill it in the Airflow trigger form."
            )
        value = parameter.convert(raw, spec.flow_name)
        if parameter.is_include_file and value is not None:
            value = parameter.read(value, spec.flow_name)
        flow.__dict__[parameter.attr_name] = parameter.as_artifact(value)


def _versions() -> dict[str, str | None]:
    """What the run ran on, for the record. Airflow's version only where it is already imported
    (a worker): a Batch container has none, and looking a distribution up costs tens of ms."""
    import platform

    # The package is imported before any of its modules; importing it here would close a cycle.
    ours = getattr(sys.modules.get("airflow_flowspec"), "__version__", None)
    airflow_version = getattr(sys.modules.get("airflow"), "__version__", None)
    return {"airflow_flowspec": ours, "airflow": airflow_version, "python": platform.python_version()}


def _run_tags(spec: TaskSpec) -> list[str]:
    """The run's tags: who started it (and production, when the schedule did), then the user's own."""
    tags = check_tags(spec.run_context.tags, whose=f"run {spec.run_id} of flow {spec.flow_name}")
    taken = keys.system_tags_among(tags)
    if taken:
        raise ParameterError(
            f"Run {spec.run_id} of flow {spec.flow_name} cannot be given the tag(s) {', '.join(taken)}: "
            f"tags starting with {', '.join(SYSTEM_TAG_PREFIXES)} are the system's (who started the run, "
            f"its project and branch) and are set by it. Choose another name for your tag."
        )
    system = system_tags(spec.run, spec.run_context)
    return system + sorted(set(tags) - set(system))


@contextlib.contextmanager
def _task_context(spec: TaskSpec) -> Iterator[None]:
    run = spec.run_context
    current._set(
        TaskContext(
            flow_name=spec.flow_name,
            run_id=spec.run_id,
            step_name=spec.step,
            task_id=spec.task_id,
            retry_count=spec.attempt - 1,
            origin_run_id=run.origin_run_id,
            is_production=run.is_production,
            username=run.username,
            logical_date=run.logical_date,
            data_interval_start=run.data_interval_start,
            data_interval_end=run.data_interval_end,
            map_index=spec.map_index,
            datastore_root=spec.datastore_root,
            namespace=run_namespace(spec.run, run),
            project_name=spec.run.project,
            branch_name=spec.run.branch,
        )
    )
    try:
        yield
    finally:
        current._set(None)


@contextlib.contextmanager
def _environment(decorator: Any) -> Iterator[None]:
    """Apply @environment for the step only: the worker process runs other tasks afterwards."""
    if decorator is None:
        yield
        return
    saved = {name: os.environ.get(name) for name in decorator["vars"]}
    os.environ.update(decorator["vars"])
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
