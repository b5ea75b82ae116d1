"""A run, a task or an artifact as plain JSON-able dicts: what the artifact view in the Airflow UI
(and its HTTP API) shows, read with the client's objects and nothing else.

Nothing here unpickles: listings come from manifests (name, type, size and the one-line repr
recorded at save time), a value's page from the preview the saving step recorded
(:mod:`airflow_flowspec.datastore.previews`). Names arrive from URLs, so each is checked before
it reaches the datastore: a pathspec component that could leave its folder is refused here, and
the datastore's keys refuse it again.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from airflow_flowspec.client.objects import Run, Step, Task, find_run_by_short_id
from airflow_flowspec.client.source import client_datastore
from airflow_flowspec.errors import MetaflowNotFound
from airflow_flowspec.identity import Deployment, RunIdentity

#: Tasks of one step listed on a run's page (a 10,000-wide foreach is paged on its step).
TASKS_PER_STEP = 100
#: Characters of a preview's repr per page.
REPR_PAGE_CHARS = 4096
#: Rows of a data frame's preview per page.
TABLE_PAGE_ROWS = 25

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
# Airflow's run ids (RUN_ID_REGEX) plus the ':' a @project branch puts in front; never '.' or '..'.
_RUN_ID = re.compile(r"[A-Za-z0-9_.~:+-]{1,250}")
_TASK_ID = re.compile(r"[0-9]{1,9}")


def check_part(kind: str, value: str) -> str:
    """``value`` if it can name a ``kind`` (flow, run, step, task, artifact); else MetaflowNotFound."""
    pattern = {"run": _RUN_ID, "task": _TASK_ID}.get(kind, _NAME)
    if not isinstance(value, str) or not pattern.fullmatch(value) or value in (".", ".."):
        raise MetaflowNotFound(f"{value!r} is not a {kind} name.")
    return value


def identity_of_short_id(deployment: Deployment, short_id: str) -> RunIdentity:
    """The run of ``deployment`` (one DAG) that a short id (its number, or ``latest``) names, as its
    record states it: a number given to another deployment's run of the same flow is not found."""
    flow, stored, record = find_run_by_short_id(client_datastore(), deployment.flow, short_id, deployment)
    return RunIdentity.of_record(flow, stored, record)


def run_of(identity: RunIdentity) -> Run:
    """The stored run of ``identity``, only if its record says it is that run: a stored run is
    shown for the DAG run that made it, never for another DAG's run that names the same place."""
    run = Run(f"{check_part('flow', identity.flow)}/{check_part('run', identity.run_id)}")
    recorded = run.identity
    if recorded != identity:
        raise MetaflowNotFound(
            f"Run {identity.pathspec} is not a run of the DAG {identity.dag_id} (Airflow run "
            f"{identity.airflow_run_id}): its record says {recorded.dag_id}/{recorded.airflow_run_id}."
        )
    return run


def run_overview(identity: RunIdentity) -> dict[str, Any]:
    """The run's graph and, per step, its first tasks (:data:`TASKS_PER_STEP`) with their
    artifacts' summaries."""
    run = run_of(identity)
    status = run.status
    ran = {step.id: step for step in run}
    steps = [_step_summary(ran.get(node["name"]), node, 1) for node in run.graph]
    mark_unchanged(steps)
    return {
        "flow": run.flow_name,
        "run_id": run.id,
        "number": run.number,
        "status": status,
        "finished": run.finished,
        "successful": run.successful,
        "created_at": _iso(run.created_at),
        "finished_at": _iso(run.finished_at),
        "parameters": run.recorded_parameters,
        "steps": steps,
    }


def step_overview(identity: RunIdentity, step: str, page: int = 1) -> dict[str, Any]:
    """One page of a step's tasks (a 10,000-wide foreach has 100 pages)."""
    run = run_of(identity)
    check_part("step", step)
    ran = {ran_step.id: ran_step for ran_step in run}
    graph = run.graph
    position = next((i for i, node in enumerate(graph) if node["name"] == step), None)
    if position is None:
        raise MetaflowNotFound(f"Run {run.pathspec} has no step {step!r}.")
    # The steps before it, as the run's page lists them, tell which of its artifacts are carried.
    steps = [_step_summary(ran.get(node["name"]), node, 1) for node in graph[:position]]
    steps.append(_step_summary(ran.get(step), graph[position], page))
    mark_unchanged(steps)
    return {"flow": run.flow_name, "run_id": run.id, **steps[-1]}


def _step_summary(step: Step | None, node: dict[str, Any], page: int) -> dict[str, Any]:
    """A graph node with one page of its step's tasks (none for a step that has not run)."""
    per_page = TASKS_PER_STEP
    tasks = [] if step is None else list(step)  # one listing: each task reads its manifest when asked
    pages = max(1, -(-len(tasks) // per_page))
    page = min(max(page, 1), pages)
    shown = tasks[(page - 1) * per_page : page * per_page]
    with ThreadPoolExecutor(max_workers=8) as pool:
        summaries = list(pool.map(_summary_of, shown))
    return {**node, "task_count": len(tasks), "page": page, "pages": pages, "tasks": summaries}


def mark_unchanged(steps: list[dict[str, Any]]) -> None:
    """Mark, in step summaries listed in the run's graph order, the artifacts carried unchanged.

    The rule: an artifact of a task is *unchanged from* step O when the step before it in the
    graph (any of them, for a join or a switch's target) recorded the same content hash under the
    same name, and O is where that value was last set: the step before it, or that step's own
    origin of it. A manifest records each artifact by the content hash of its pickle, and a task
    carries what it does not set by copying its input's reference, so an equal hash is exactly
    "the same bytes as before", whether carried or set again to an equal value. Only the tasks the
    summaries list are compared (a step's first page), so a value seen only in a later page of a
    wide step before is shown as set, never wrongly as carried.

    Each artifact summary gets ``unchanged_from`` (the origin step, or None where this step set
    it); each step gets ``unchanged``: the artifacts that every listed task of it carries with one
    and the same value, each once, with the task of its origin (``from``, ``from_task``), which the
    run's page shows once instead of in every task of a foreach.
    """
    parents: dict[str, list[str]] = {}
    for step in steps:
        for child in step.get("next") or []:
            parents.setdefault(child, []).append(step["name"])
    #: step -> artifact name -> content hash -> (origin step, origin task id), for what it listed
    origins: dict[str, dict[str, dict[str, tuple[str, str]]]] = {}
    for step in steps:
        before = [origins[parent] for parent in parents.get(step["name"], []) if parent in origins]
        recorded: dict[str, dict[str, tuple[str, str]]] = {}
        for task in step["tasks"]:
            for artifact in task["artifacts"]:
                name, sha = artifact["name"], artifact["sha"]
                origin = next((known[name][sha] for known in before if sha in known.get(name, {})), None)
                artifact["unchanged_from"] = origin[0] if origin else None
                recorded.setdefault(name, {}).setdefault(sha, origin or (step["name"], task["id"]))
        origins[step["name"]] = recorded
        order = {name: position for position, name in enumerate(origins)}
        carried = _carried_by_every_task(step["tasks"], recorded)
        step["unchanged"] = sorted(carried, key=lambda artifact: (order[artifact["from"]], artifact["name"]))


def _carried_by_every_task(
    tasks: list[dict[str, Any]], recorded: dict[str, dict[str, tuple[str, str]]]
) -> list[dict[str, Any]]:
    """The artifacts every task of ``tasks`` carries unchanged, with one value: each once."""
    listed = [task for task in tasks if task["successful"]]
    if not listed:
        return []
    carried = []
    for artifact in listed[0]["artifacts"]:
        name, sha = artifact["name"], artifact["sha"]
        if artifact["unchanged_from"] is None or len(recorded.get(name, {})) != 1:
            continue  # set here, or a different value in some task
        if all(any(other["name"] == name for other in task["artifacts"]) for task in listed):
            origin_step, origin_task = recorded[name][sha]
            carried.append(
                {
                    **{key: artifact[key] for key in ("name", "type", "size", "repr", "sha")},
                    "from": origin_step,
                    "from_task": origin_task,
                }
            )
    return carried


def task_overview(identity: RunIdentity, step: str, task_id: str) -> dict[str, Any]:
    """One task's artifacts, foreach position, attempt and output."""
    task = _task(identity, step, task_id)
    summary = _summary_of(task)
    summary.update(
        {
            "flow": identity.flow,
            "run_id": identity.run_id,
            "step": step,
            "stdout": task.stdout[-20000:] if task.finished else "",
            "stderr": task.stderr[-20000:] if task.finished else "",
        }
    )
    return summary


def artifact_page(identity: RunIdentity, step: str, task_id: str, name: str, page: int = 1) -> dict[str, Any]:
    """One artifact: its summary and one page of its recorded preview (repr text or table rows)."""
    artifact = artifact_for_download(identity, step, task_id, name)
    preview = artifact.preview
    result: dict[str, Any] = {
        "flow": identity.flow,
        "run_id": identity.run_id,
        "step": step,
        "task_id": task_id,
        "name": name,
        "type": artifact.type,
        "size": artifact.size,
        "sha": artifact.sha,
        "repr": artifact.short_repr,
        "page": 1,
        "pages": 1,
    }
    if preview is None:
        result["text"] = artifact.short_repr
        return result
    table = preview.get("table")
    if isinstance(table, dict) and isinstance(table.get("rows"), list):
        rows = table["rows"]
        pages = max(1, -(-len(rows) // TABLE_PAGE_ROWS))
        page = min(max(page, 1), pages)
        start = (page - 1) * TABLE_PAGE_ROWS
        result["table"] = {
            "columns": [str(c) for c in table.get("columns", [])],
            "index": [str(i) for i in table.get("index", [])][start : start + TABLE_PAGE_ROWS],
            "rows": [[str(cell) for cell in row] for row in rows[start : start + TABLE_PAGE_ROWS]],
            "total_rows": table.get("total_rows"),
            "total_columns": table.get("total_columns"),
            "kept_rows": len(rows),
        }
        result["text"] = preview["repr"]
    else:
        text = preview["repr"]
        pages = max(1, -(-len(text) // REPR_PAGE_CHARS))
        page = min(max(page, 1), pages)
        result["text"] = text[(page - 1) * REPR_PAGE_CHARS : page * REPR_PAGE_CHARS]
        result["truncated"] = bool(preview.get("repr_truncated"))
    result["page"], result["pages"] = page, pages
    return result


def artifact_for_download(identity: RunIdentity, step: str, task_id: str, name: str) -> Any:
    """The :class:`DataArtifact` named by a URL's parts (served as a pickle through its
    ``verified_pickle()``, or shown by :func:`artifact_page`)."""
    task = _task(identity, step, task_id)
    check_part("artifact", name)
    if name not in task:
        raise MetaflowNotFound(f"Task {task.pathspec} has no artifact {name!r}.")
    return task[name]


def _task(identity: RunIdentity, step: str, task_id: str) -> Task:
    run = run_of(identity)
    check_part("step", step)
    check_part("task", task_id)
    return run[step][task_id]


def _summary_of(task: Task) -> dict[str, Any]:
    metadata = task.metadata_dict
    return {
        "id": task.id,
        "foreach_path": [frame["index"] for frame in metadata["foreach_stack"]],
        "attempt": metadata["attempt"],
        "successful": task.successful,
        "finished_at": _iso(task.finished_at),
        "caught": metadata["caught"],
        "artifacts": [
            {
                "name": artifact.id,
                "type": artifact.type,
                "size": artifact.size,
                "repr": artifact.short_repr,
                "sha": artifact.sha,
                "has_preview": artifact.has_preview,
            }
            for artifact in task.artifacts()
        ]
        if task.successful
        else [],
    }


def _iso(moment: Any) -> str | None:
    return None if moment is None else moment.isoformat()
