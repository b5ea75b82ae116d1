"""The artifact view: a FastAPI app the API server mounts at ``/flowspec``.

Pages (HTML, :mod:`.pages`) and the same data as JSON under ``/flowspec/api/``:

- ``/`` the flow DAGs the user may read; ``/dags/{dag_id}`` its recent runs;
- ``/dags/{dag_id}/runs/{run_id}`` a run: its graph, each step's first tasks and their artifacts
  (``run_id`` is Airflow's, or the run's short id: its number or ``latest``, whose pages then link
  by Airflow's);
- ``.../steps/{step}?page=P`` all of a step's tasks, a page at a time;
- ``.../tasks/{step}?map_index=N`` one task; ``.../artifacts/{name}?page=P`` one value;
- ``.../artifacts/{name}/download`` the value's pickle, verified against its hash.

Who may see what is Airflow's decision, not ours: a plugin's routes are not protected by Airflow
on their own, so every route resolves the user from the same bearer token or session cookie the UI
uses and asks the configured auth manager whether that user may read the DAG's XComs (artifacts
are a task's outputs), exactly as Airflow's own XCom endpoints do. A DAG run is shown only if
Airflow has it, and only the datastore run of that DAG's flow (``[flowspec] datastore_root``):
names from the URL are checked before they reach the datastore, whose keys check them again.
Nothing is unpickled: listings come from manifests, values from the preview recorded when the
step saved them (:mod:`airflow_flowspec.datastore.previews`), downloads are bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import urlencode

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from airflow_flowspec.errors import RunIdentityError
from airflow_flowspec.identity import Deployment, RunIdentity, is_latest, run_number_of
from airflow_flowspec.plugins import pages

_CHUNK = 1024 * 1024


def create_app() -> FastAPI:
    from airflow_flowspec.client import namespace

    # Airflow decides who sees a run; the client's namespaces (a notebook's default filter) do not.
    namespace(None)

    app = FastAPI(title="Flow artifacts", docs_url=None, redoc_url=None, openapi_url=None)
    can_read = [Depends(requires_access_dag("GET", DagAccessEntity.XCOM))]

    @app.exception_handler(HTTPException)
    async def explain(request: Request, error: HTTPException) -> Response:
        if _wants_json(request):
            return JSONResponse({"detail": error.detail}, status_code=error.status_code)
        root = _root(request)
        if error.status_code == 401:
            login = f"{_airflow_root(request)}/auth/login/?{urlencode({'next': str(request.url)})}"
            page = pages.message_page(
                root, "Log in to Airflow", "Log in to see flow artifacts.", ("Log in", login)
            )
        else:
            page = pages.message_page(root, f"Error {error.status_code}", str(error.detail))
        return HTMLResponse(page, status_code=error.status_code)

    @app.get("/", response_class=HTMLResponse)
    @app.get("/api/dags")
    def index(request: Request, user: GetUserDep) -> Any:
        dags = _readable_flow_dags(user)
        return dags if _wants_json(request) else HTMLResponse(pages.index_page(_root(request), dags))

    @app.get("/dags/{dag_id}", dependencies=can_read)
    @app.get("/api/dags/{dag_id}", dependencies=can_read)
    def dag_runs(request: Request, dag_id: str) -> Any:
        runs = _recent_runs(dag_id)
        if _wants_json(request):
            return runs
        return HTMLResponse(pages.dag_page(_root(request), dag_id, runs))

    @app.get("/dags/{dag_id}/runs/{run_id}", dependencies=can_read)
    @app.get("/api/dags/{dag_id}/runs/{run_id}", dependencies=can_read)
    def run(request: Request, dag_id: str, run_id: str) -> Any:
        from airflow_flowspec.client.overview import run_overview

        identity = _run_identity(dag_id, run_id)
        overview = _reading(lambda: run_overview(identity))
        return _answer(request, dag_id, identity.airflow_run_id, overview, pages.run_page)

    @app.get("/dags/{dag_id}/runs/{run_id}/steps/{step}", dependencies=can_read)
    @app.get("/api/dags/{dag_id}/runs/{run_id}/steps/{step}", dependencies=can_read)
    def step(request: Request, dag_id: str, run_id: str, step: str, page: _Page = 1) -> Any:
        from airflow_flowspec.client.overview import step_overview

        identity = _run_identity(dag_id, run_id)
        summary = _reading(lambda: step_overview(identity, step, page))
        return _answer(request, dag_id, identity.airflow_run_id, summary, pages.step_page)

    @app.get("/dags/{dag_id}/runs/{run_id}/tasks/{step}", dependencies=can_read)
    @app.get("/api/dags/{dag_id}/runs/{run_id}/tasks/{step}", dependencies=can_read)
    def task(request: Request, dag_id: str, run_id: str, step: str, map_index: _MapIndex = "-1") -> Any:
        from airflow_flowspec.client.overview import task_overview

        identity = _run_identity(dag_id, run_id)
        summary = _reading(lambda: task_overview(identity, step, _task_id(map_index)))
        return _answer(request, dag_id, identity.airflow_run_id, summary, pages.task_page)

    @app.get("/dags/{dag_id}/runs/{run_id}/tasks/{step}/artifacts/{name}", dependencies=can_read)
    @app.get("/api/dags/{dag_id}/runs/{run_id}/tasks/{step}/artifacts/{name}", dependencies=can_read)
    def artifact(
        request: Request,
        dag_id: str,
        run_id: str,
        step: str,
        name: str,
        map_index: _MapIndex = "-1",
        page: _Page = 1,
    ) -> Any:
        from airflow_flowspec.client.overview import artifact_page

        identity = _run_identity(dag_id, run_id)
        shown = _reading(lambda: artifact_page(identity, step, _task_id(map_index), name, page))
        return _answer(request, dag_id, identity.airflow_run_id, shown, pages.artifact_page)

    @app.get("/dags/{dag_id}/runs/{run_id}/tasks/{step}/artifacts/{name}/download", dependencies=can_read)
    @app.get("/api/dags/{dag_id}/runs/{run_id}/tasks/{step}/artifacts/{name}/download", dependencies=can_read)
    def download(dag_id: str, run_id: str, step: str, name: str, map_index: _MapIndex = "-1") -> Any:
        from airflow_flowspec.client.overview import artifact_for_download

        identity = _run_identity(dag_id, run_id)
        artifact = _reading(lambda: artifact_for_download(identity, step, _task_id(map_index), name))
        opened = artifact.verified_pickle()
        source = _reading(opened.__enter__)  # verified in full before the first byte is sent

        def chunks() -> Iterator[bytes]:
            try:
                if isinstance(source, (bytes, bytearray, memoryview)):
                    for start in range(0, len(source), _CHUNK):
                        yield bytes(source[start : start + _CHUNK])
                else:
                    while block := source.read(_CHUNK):
                        yield block
            finally:
                opened.__exit__(None, None, None)

        filename = f"{step}-{_task_id(map_index)}-{name}.pkl"
        return StreamingResponse(
            chunks(),
            media_type="application/octet-stream",
            headers={
                "Content-Disposition": f'attachment; filename="{filename}"',
                "Content-Length": str(artifact.size),
                "X-Content-Sha": artifact.sha,
            },
        )

    return app


_Page = Annotated[int, Query(ge=1, le=100_000)]
#: A task instance's map index, as the UI's tab links pass it: ``{MAP_INDEX}`` stays unreplaced
#: for a task that is not mapped, which means -1.
_MapIndex = Annotated[str, Query(max_length=20)]


def _task_id(map_index: str) -> str:
    """The datastore's task id of a step's task instance (a foreach's is its map index)."""
    text = map_index.strip()
    if text.lstrip("-").isdigit() and -1 <= int(text) <= 10_000_000:
        return str(max(int(text), 0))
    if text in ("", "{MAP_INDEX}"):
        return "0"
    raise HTTPException(404, f"{map_index!r} is not a map index.")


def _answer(request: Request, dag_id: str, run_id: str, data: dict[str, Any], render: Any) -> Any:
    """``data`` as JSON under ``/api/``, else as the page ``render`` makes of it. JSON keeps the
    datastore's run id (a ``@project`` run's starts with its branch); pages link by Airflow's."""
    data["dag_id"], data["dag_run_id"] = dag_id, run_id
    if _wants_json(request):
        return data
    return HTMLResponse(render(_root(request), dag_id, {**data, "run_id": run_id}))


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith(f"{request.scope.get('root_path', '')}/api/")


def _root(request: Request) -> str:
    """Where this app is mounted, as the browser sees it (links must survive a base path)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _airflow_root(request: Request) -> str:
    root = _root(request)
    return root[: -len("/flowspec")] if root.endswith("/flowspec") else ""


def _reading(read: Any) -> Any:
    """``read()``, with what the datastore says turned into an HTTP answer a person can act on."""
    from airflow_flowspec.errors import DatastoreError, MetaflowNotFound, UnsafeKeyError

    try:
        return read()
    except (MetaflowNotFound, UnsafeKeyError) as error:
        raise HTTPException(404, str(error)) from None
    except DatastoreError as error:
        raise HTTPException(502, f"The datastore could not answer: {error}") from None


def _run_identity(dag_id: str, run_id: str) -> RunIdentity:
    """The datastore run of an Airflow DAG run, which must exist in Airflow, of a DAG this provider
    built for a flow: which flow and deployment is read from the DAG the run was created with (the
    start step records it), never from the DAG id's text. The view then shows the stored run only
    if its record names this very DAG run (:func:`~airflow_flowspec.client.overview.run_of`)."""
    from airflow.models.dagrun import DagRun
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from airflow_flowspec.client.overview import check_part
    from airflow_flowspec.errors import MetaflowNotFound

    try:
        check_part("run", run_id)
    except MetaflowNotFound as error:
        raise HTTPException(404, str(error)) from None
    if run_number_of(run_id) is not None or is_latest(run_id):
        run_id = _airflow_run_id_of(dag_id, run_id)
    with create_session() as session:
        dag_run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        if dag_run is None:
            raise HTTPException(404, f"DAG {dag_id} has no run {run_id!r}.")
        version = dag_run.created_dag_version
        serialized = version.serialized_dag if version is not None else None
        if serialized is None:
            serialized = SerializedDagModel.get(dag_id, session=session)
        data = serialized.data if serialized is not None else None
    deployment = deployment_of_serialized_dag(data)
    if deployment is None or deployment.dag_id != dag_id:
        raise HTTPException(404, f"DAG {dag_id} is not a flow's DAG: it has no artifacts to show.")
    try:
        return deployment.run(run_id)
    except RunIdentityError as error:
        raise HTTPException(404, str(error)) from None


def _airflow_run_id_of(dag_id: str, short_id: str) -> str:
    """Airflow's run id of the run of DAG ``dag_id`` that a short id (a run number, or ``latest``)
    names. The flow and deployment are the DAG's (read from its serialized form, as for any run),
    and the run found must be of that very deployment; the DAG run is then checked as any other."""
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils.session import create_session

    from airflow_flowspec.client.overview import identity_of_short_id

    with create_session() as session:
        serialized = SerializedDagModel.get(dag_id, session=session)
        data = serialized.data if serialized is not None else None
    deployment = deployment_of_serialized_dag(data)
    if deployment is None or deployment.dag_id != dag_id:
        raise HTTPException(404, f"DAG {dag_id} is not a flow's DAG: it has no artifacts to show.")
    return _reading(lambda: identity_of_short_id(deployment, short_id)).airflow_run_id


def deployment_of_serialized_dag(data: Any) -> Deployment | None:
    """The flow deployment a serialized DAG was built for, or None for any other DAG: its start
    task, of one of this provider's step operators, records it (``DEPLOYMENT_FIELD``)."""
    from airflow_flowspec.operators.step_task import DEPLOYMENT_FIELD

    tasks = (data or {}).get("dag", {}).get("tasks") if isinstance(data, dict) else None
    for task in tasks if isinstance(tasks, list) else []:
        fields = task.get("__var", task) if isinstance(task, dict) else {}
        if not isinstance(fields, dict) or fields.get("task_id") != "start":
            continue
        if not str(fields.get("_task_module", "")).startswith("airflow_flowspec.operators."):
            return None
        try:
            return Deployment.from_text(fields.get(DEPLOYMENT_FIELD))
        except RunIdentityError:
            return None
    return None


def _readable_flow_dags(user: Any) -> list[dict[str, Any]]:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.models.dag import DagModel, DagTag
    from airflow.utils.session import create_session
    from sqlalchemy import select

    readable = get_auth_manager().get_authorized_dag_ids(user=user, method="GET")
    with create_session() as session:
        rows = session.execute(
            select(DagModel.dag_id, DagModel.description)
            .join(DagTag, DagTag.dag_id == DagModel.dag_id)
            .where(DagTag.name == "flowspec", DagModel.is_stale.is_(False))
            .order_by(DagModel.dag_id)
        ).all()
    return [
        {"dag_id": dag_id, "description": description} for dag_id, description in rows if dag_id in readable
    ]


def _recent_runs(dag_id: str, limit: int = 50) -> list[dict[str, Any]]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(DagRun.run_id, DagRun.state, DagRun.logical_date, DagRun.run_type)
            .where(DagRun.dag_id == dag_id)
            .order_by(DagRun.id.desc())
            .limit(limit)
        ).all()
    return [
        {
            "run_id": run_id,
            "state": str(state) if state else None,
            "logical_date": logical_date.isoformat() if logical_date else None,
            "run_type": str(run_type) if run_type else None,
        }
        for run_id, state, logical_date, run_type in rows
    ]
