"""Translate a flow class into an Airflow DAG: one task per step, edges from ``self.next``.

Pure and cheap: it reads the class and its AST graph, does no I/O, and gives the same DAG for
the same file every time (Airflow 3 stores a new DAG version whenever the serialization changes).

Foreach bodies become dynamic task mapping over the split's list of children. A foreach nested in
another foreach cannot be a mapping inside a mapping (Airflow 3.3 refuses ``expand`` inside an
expanded task group), so it is flattened instead: one extra task ``<split>__foreach`` concatenates
the inner children of every outer item, and the inner body maps over that flat list; the inner join
is mapped over the outer items and reads only its own children, a contiguous run of the flat
list's map indexes that the flatten task records. This keeps every task at most one level of
mapping deep, which Airflow supports fully (UI, clearing, retries).

A split returns its children as a chunked list (``xcom_backend.values.ChunkedList``): Airflow
resolves a mapped task's element by pulling the whole list, so each child pulls a small row and
reads the one chunk that holds its element, whatever the width.
"""

from __future__ import annotations

import functools
import json
import math
import re
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, cast

from airflow_flowspec import config
from airflow_flowspec.decorators.base import step_decorators_of
from airflow_flowspec.decorators.flow_decorators import ProjectBranch
from airflow_flowspec.errors import ParameterError, ProjectError
from airflow_flowspec.graph import FlowGraph, first_paragraph
from airflow_flowspec.identity import Deployment, RunIdentity, deployment_dag_id
from airflow_flowspec.operators.step_task import (
    DEPLOYMENT_FIELD,
    PROJECT_BRANCH_ATTRIBUTE,
    PULL_ALL_CHILDREN,
    PULL_SAME,
    PULL_SPLIT_PARENT,
    SPLIT_MANIFEST_KEY,
)
from airflow_flowspec.parameters import (
    LARGEST_FLOAT,
    RUN_TAGS_CONF_KEY,
    JSONType,
    Parameter,
    flow_parameters,
)

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator

    from airflow_flowspec.decorators.step_decorators import TimeoutDecorator

#: Fixed so that parsing is deterministic; with catchup off only the latest interval runs.
START_DATE = datetime(2024, 1, 1, tzinfo=timezone.utc)

_PARAM_SCHEMA_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}
#: What a float parameter's schema adds, so that Airflow refuses a trigger whose conf gives it a
#: number that is not finite (``parameters.FINITE_RULE``): past that point, Airflow's task API turns
#: it into null and no code of ours could tell it from "use the default". The bounds refuse -inf
#: and inf (1e400 in JSON); nan passes every comparison, so it is the one number both <= 0 and > 0.
_FINITE_NUMBER_SCHEMA = {
    "minimum": -LARGEST_FLOAT,
    "maximum": LARGEST_FLOAT,
    "not": {
        "$comment": "only nan is a number both <= 0 and > 0: a float parameter takes finite numbers only",
        "type": "number",
        "maximum": 0,
        "exclusiveMinimum": 0,
    },
}


#: What Airflow accepts as a DAG id (``airflow.sdk``'s ``validate_key``).
_DAG_ID = re.compile(r"[\w.-]{1,250}")


def build_dag(
    flow_class: type, graph: FlowGraph, flow_file: str, project: ProjectBranch | None = None
) -> Any:
    """The flow's DAG, named after the class, or for a ``@project`` flow after its branch
    (``project``), so that branches of one flow can be deployed side by side."""
    from airflow.sdk import DAG

    with DAG(
        dag_id=_dag_id(flow_class, project),
        schedule=_schedule(flow_class),
        start_date=START_DATE,
        catchup=False,
        params=_params(flow_class),
        doc_md=(flow_class.__doc__ or "").strip() or None,
        # What Airflow's DAG list and the artifact view's list of flows show under the flow's name.
        description=first_paragraph(graph.doc) or None,
        tags=["flowspec"],
        max_active_runs=16,
        on_failure_callback=functools.partial(
            record_failed_run, flow_name=flow_class.__name__, project=project
        ),
    ) as dag:
        _add_tasks(flow_class, graph, flow_file)
    # What the artifact view reads to know whose runs this DAG's runs are (never the DAG id's text).
    setattr(dag.get_task("start"), DEPLOYMENT_FIELD, Deployment.of(flow_class.__name__, project).to_text())
    dag.fileloc = flow_file
    # Where the step tasks learn the branch: it belongs to the deployment, not to a run's conf.
    setattr(dag, PROJECT_BRANCH_ATTRIBUTE, project)
    return dag


def _dag_id(flow_class: type, project: ProjectBranch | None) -> str:
    if project is None:
        return flow_class.__name__
    dag_id = deployment_dag_id(flow_class.__name__, project.project_name, project.branch_name)
    if not _DAG_ID.fullmatch(dag_id):
        raise ProjectError(
            f"Flow {flow_class.__name__} of @project {project.project_name} would be the DAG "
            f"{dag_id!r} on branch {project.branch_name}, which Airflow refuses: a DAG id is at most "
            f"250 letters, digits, dots, dashes and underscores. Choose a branch that fits (--branch "
            f"NAME, or [flowspec] project_branch in the dags folder), or a shorter project name."
        )
    return dag_id


def record_failed_run(context: Any, flow_name: str, project: ProjectBranch | None = None) -> None:
    """Mark the run failed in the datastore, so the client's run listing says so too.

    The scheduler asks for this callback when the run fails, and the DAG processor calls it some
    time later; the run's end date says when it failed, so a rerun of cleared tasks that succeeded
    in between keeps its success.
    """
    from airflow_flowspec.datastore import open_datastore

    dag_run = context.get("dag_run")
    run_id = dag_run.run_id if dag_run is not None else context["run_id"]
    ended_at = getattr(dag_run, "end_date", None)
    run = RunIdentity.of_deployment(flow_name, run_id, project)
    open_datastore(config.datastore_root()).finish_run(
        run.flow,
        run.run_id,
        False,
        {"reason": str(context.get("reason") or "a step failed")},
        ended_at=ended_at if isinstance(ended_at, datetime) else None,
    )


def _schedule(flow_class: type) -> Any:
    """A ``@schedule`` flow's timetable: one run per period, named by the period's start."""
    schedule = getattr(flow_class, "_flowspec_schedule", None)
    if schedule is None:
        return None
    from airflow_flowspec.plugins.timetable import FlowScheduleTimetable

    return FlowScheduleTimetable(schedule.cron, timezone=schedule.timezone)


def _params(flow_class: type) -> dict[str, Any]:
    from airflow.sdk import Param

    params = {}
    for parameter in flow_parameters(flow_class):
        # A secret with a default may be left empty in the form: the start step fills it in.
        must_give = parameter.required and not (parameter.secret and parameter.default is not None)
        schema: dict[str, Any] = {}
        if parameter.type is not JSONType:
            schema_type = _PARAM_SCHEMA_TYPES[parameter.type]
            schema["type"] = schema_type if must_give else [schema_type, "null"]
            if parameter.type is float:
                schema.update(_FINITE_NUMBER_SCHEMA)
        description = parameter.help or None
        if parameter.type is JSONType:
            description = (description + " " if description else "") + "(JSON)"
        if parameter.is_include_file:
            description = (
                description + " " if description else ""
            ) + "(path of a file read when the run starts)"
        if parameter.secret:
            description = (description + " " if description else "") + "(secret: never shown by the flow)"
        # A secret's default stays out of the DAG (Airflow stores and shows params): the start step
        # evaluates it when the run starts.
        default = None if parameter.secret else parameter.default_value(flow_class.__name__)
        if parameter.type is JSONType:
            default = _json_text(parameter, default, flow_class.__name__)
        if parameter.type is float and isinstance(default, float) and not math.isfinite(default):
            parameter.refuse_non_finite(default, flow_class.__name__, given_as="has the default")
        if default is None and must_give:
            params[parameter.name] = Param(description=description, **schema)
        else:
            params[parameter.name] = Param(default, description=description, **schema)
    if RUN_TAGS_CONF_KEY in params:
        raise ParameterError(
            f"Flow {flow_class.__name__} has a parameter named '{RUN_TAGS_CONF_KEY}', the name of the "
            f"trigger form's \"Run tags\" field (a run's tags come from it). Rename the parameter, "
            f"e.g. Parameter('tags_list', ...)."
        )
    # An array without an item schema is the form's one-string-per-line field. The start step
    # checks each tag; a schema here would be checked again for every task whenever Airflow
    # serializes the DAG (an item schema doubles that cost). "null" in the type is what makes the
    # form show the field as optional (Airflow's UI marks every field whose type excludes null as
    # required), and is what the field sends when it is left empty: a run with no tags of yours.
    params[RUN_TAGS_CONF_KEY] = Param(
        [],
        type=["array", "null"],
        title="Run tags",
        description="Your tags for this run (as `run --tag` gives them): the client finds runs by them, "
        "e.g. Flow(...).runs('experiment_7').",
    )
    return params


def _json_text(parameter: Parameter, value: Any, flow_name: str) -> Any:
    """A JSON parameter's default as the trigger form is given it: its JSON text.

    The form runs in a browser, where ``0.0`` and ``0`` are one number: a list default given as a
    value would come back in the run's conf as ``[0, 0.1, 1, 10]`` for ``[0.0, 0.1, 1.0, 10.0]``,
    and whatever the user types would lose its floats the same way. Given text (and no schema
    type, which leaves any JSON value valid, as a JSON parameter takes), the form shows a text
    field and sends the text as typed; the start step parses it (``Parameter.convert``), as it
    parses ``run --name '[0.0, 1.0]'``. A string default already is JSON text by that rule.
    """
    if value is None or isinstance(value, str):
        return value
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ParameterError(
            f"JSON parameter '{parameter.name}' of flow {flow_name} has the default {value!r:.200}, "
            f"which is not JSON ({err}). Give a default made of dicts, lists, strings, finite numbers, "
            f"booleans and None."
        ) from None


def _foreach_domain(graph: FlowGraph, name: str) -> str | None:
    """The innermost foreach split whose items this step is mapped over, if any.

    A join's split_parents end with the split it closes (Metaflow's convention); the join itself
    runs once per item of the enclosing foreach, not per item of the one it joins.
    """
    node = graph[name]
    enclosing = node.split_parents[:-1] if node.type == "join" else node.split_parents
    foreach_parents = [p for p in enclosing if graph[p].type == "foreach"]
    return foreach_parents[-1] if foreach_parents else None


def step_operator(
    flow_class: type, step_name: str, execution: str, batch_options: dict[str, Any] | None = None
) -> tuple[type[BaseOperator], dict[str, Any]]:
    """The operator that runs a step, and its own arguments: one place decides (cosmos does the
    same). A step runs on AWS Batch with ``[flowspec] execution = batch`` or its own ``@batch``;
    its job's settings are resolved here, so a missing queue or image fails the DAG at once.
    ``batch_options`` is :func:`config.batch_options`, which a caller building many steps reads
    once (and fills here, when the first Batch step needs it)."""
    step_func = getattr(flow_class, step_name)
    decorators = step_decorators_of(step_func)
    if execution != "batch" and "batch" not in decorators:
        from airflow_flowspec.operators.local_step import LocalStepOperator

        return LocalStepOperator, {}
    from airflow_flowspec.aws_batch.jobs import step_job_settings
    from airflow_flowspec.operators.batch_step import StepBatchOperator

    options = batch_options if batch_options is not None else {}
    if not options:  # the first Batch step of the DAG reads them for all
        options.update(config.batch_options())
    settings = step_job_settings(
        step_func,
        flow_name=flow_class.__name__,
        step_name=step_name,
        queue=options["queue"],
        job_definition=options["job_definition"],
        image=options["image"],
        iam_role=options["iam_role"],
    )
    arguments: dict[str, Any] = {
        "batch_settings": settings.to_arguments(),
        "catches": "catch" in decorators,
        "aws_conn_id": options["aws_conn_id"],
        "region_name": options["region_name"],
        "deferrable": options["deferrable"],
    }
    if step_name == "start":  # never mapped: its IncludeFiles and callable defaults are read on the worker
        arguments["start_parameters"] = flow_parameters(flow_class)
    # Plain values (but the start step's): a mapped task's arguments are serialized with the DAG.
    return StepBatchOperator, arguments


def _add_tasks(flow_class: type, graph: FlowGraph, flow_file: str) -> None:
    from airflow_flowspec.operators.local_step import FlattenForeachOperator

    execution = config.execution()
    batch_options: dict[str, Any] = {}  # read by the first Batch step, shared by the others
    order = graph.sorted_nodes()
    domain = {name: _foreach_domain(graph, name) for name in order}
    tasks: dict[str, Any] = {}
    domain_source: dict[str, Any] = {}  # foreach split -> the XComArg its body maps over

    for name in order:
        node = graph[name]
        operator_class, operator_kwargs = step_operator(flow_class, name, execution, batch_options)
        kwargs = dict(
            task_id=name,
            flow_file=flow_file,
            flow_name=flow_class.__name__,
            step_name=name,
            input_pulls=_input_pulls(graph, name, domain),
            doc_md=node.doc.strip() or None if node.doc else None,
            trigger_rule=_trigger_rule(graph, name),
            **_decorator_settings(getattr(flow_class, name)),
            **operator_kwargs,
        )
        mapped_over = domain[name]
        task: Any
        if mapped_over is None:
            task = operator_class(**kwargs)
        else:
            task = operator_class.partial(**kwargs).expand(foreach_frame=domain_source[mapped_over])
        tasks[name] = task
        if node.type == "foreach":
            if domain[name] is None:
                domain_source[name] = task.output
            else:
                flatten = FlattenForeachOperator(task_id=_flatten_task_id(name), split_task_id=name)
                task >> flatten
                domain_source[name] = flatten.output

    for name in order:
        for child in graph[name].out_funcs:
            if child not in tasks[name].downstream_task_ids:
                tasks[name] >> tasks[child]


def _input_pulls(graph: FlowGraph, name: str, domain: dict[str, str | None]) -> list[dict[str, Any]]:
    pulls = []
    for parent in graph[name].in_funcs:
        key = SPLIT_MANIFEST_KEY if graph[parent].type == "foreach" else "return_value"
        if graph[parent].type == "foreach" and domain[name] == parent:
            mode = PULL_SPLIT_PARENT
        elif domain[parent] != domain[name] and domain[parent] is not None:
            mode = PULL_ALL_CHILDREN  # this step joins the foreach its parent is mapped over
        else:
            mode = PULL_SAME
        pull = {"task_id": parent, "key": key, "mode": mode}
        if mode == PULL_ALL_CHILDREN and domain[name] is not None:
            # It joins a nested foreach once per outer item: the flatten task says where its own are.
            pull["offsets"] = _flatten_task_id(str(domain[parent]))
        pulls.append(pull)
    return pulls


def _flatten_task_id(split: str) -> str:
    """The task that flattens the children of a foreach nested in another one."""
    return f"{split}__foreach"


def _trigger_rule(graph: FlowGraph, name: str) -> str:
    """Where switch arms meet, one arm ran and the others were skipped: run if none failed."""
    node = graph[name]
    if node.type != "join" and len(node.in_funcs) > 1:
        return "none_failed_min_one_success"
    return "all_success"


def _decorator_settings(step_func: Any) -> dict[str, Any]:
    """Step decorators that Airflow implements, as task settings.

    ``@catch`` and ``@environment`` act inside the task (the runtime applies them); ``@resources``
    and ``@batch`` are for the AWS Batch operator, which reads them from the step.
    """
    decorators = step_decorators_of(step_func)
    settings: dict[str, Any] = {}
    if "retry" in decorators:
        settings["retries"] = decorators["retry"]["times"]
        settings["retry_delay"] = timedelta(minutes=decorators["retry"]["minutes_between_retries"])
    if "timeout" in decorators:
        timeout = cast("TimeoutDecorator", decorators["timeout"])
        settings["execution_timeout"] = timedelta(seconds=timeout.total_seconds)
    return settings
