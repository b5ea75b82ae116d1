"""Run flows on real Airflow (``dag.test()`` on SQLite) from tests, and read what they stored.

Airflow reads its configuration at first import, so ``configure_airflow`` runs from conftest.py
before any test module imports Airflow.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FLOWS = Path(__file__).resolve().parent / "flows"


def configure_airflow() -> Path:
    """A private Airflow home and datastore for this test session."""
    root = Path(tempfile.mkdtemp(prefix="flowspec-tests-"))
    home = root / "airflow"
    (home / "dags").mkdir(parents=True)
    from airflow_flowspec.airflow.local_run import airflow_environment  # imports no Airflow

    env = {
        **airflow_environment(home),
        "AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(root / "datastore"),
        "FLOWSPEC_HOME": str(root / "flowspec-home"),
        # `python flow.py run` in tests starts Airflow itself; tests/airflow/test_preloader.py
        # turns the preloader on where it is the subject.
        "FLOWSPEC_PRELOAD": "0",
    }
    os.environ.update(env)
    return root


def load_flow(path: Path) -> type:
    """Import a flow file the way a user's module would be imported (not as __main__)."""
    name = f"test_flow_{path.stem}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    flow_classes = [
        v
        for v in vars(module).values()
        if isinstance(v, type)
        and getattr(v, "__module__", "") == name
        and hasattr(v, "next")
        and any(getattr(f, "is_step", False) for f in vars(v).values())
    ]
    assert len(flow_classes) == 1, f"{path} should define exactly one flow"
    return flow_classes[0]


class FlowRun:
    """One finished run: Airflow's view (task states) and the datastore's (artifacts)."""

    def __init__(self, flow_name: str, dag_run: Any):
        from airflow_flowspec import config
        from airflow_flowspec.datastore import open_datastore

        self.flow_name = flow_name
        self.dag_run = dag_run
        self.run_id = dag_run.run_id
        self.datastore = open_datastore(config.datastore_root())

    @property
    def succeeded(self) -> bool:
        return str(self.dag_run.state) == "success"

    def states(self) -> dict[tuple[str, int], str]:
        return {(ti.task_id, ti.map_index): str(ti.state) for ti in self.dag_run.get_task_instances()}

    def state(self, step: str, map_index: int = -1) -> str:
        return self.states()[(step, map_index)]

    def manifest(self, step: str, task_id: str = "0") -> Any:
        """The task's latest :class:`~airflow_flowspec.datastore.manifest.Manifest`."""
        manifest = self.datastore.latest_attempt_manifest(self.flow_name, self.run_id, step, task_id)
        assert manifest is not None, f"no manifest for {step}/{task_id}"
        return manifest

    def artifacts(self, step: str, task_id: str = "0") -> dict[str, Any]:
        from airflow_flowspec.datastore.views import import_flow_of_run

        refs = self.manifest(step, task_id).artifacts
        # Classes from the flow file unpickle once the run's code is imported (by a step that ran
        # in this process, or here: every step of a Batch run ran in a container).
        import_flow_of_run(self.datastore, self.flow_name, self.run_id)
        return {name: self.datastore.artifacts.load(ref) for name, ref in refs.items()}


def a_manifest(
    flow: str,
    run_id: str,
    step: str,
    task_id: str | int = "0",
    attempt: int = 1,
    artifacts: Any = None,
    **sections: Any,
) -> Any:
    """A :class:`~airflow_flowspec.datastore.manifest.Manifest` for a task attempt, as tests store
    one directly (no step runs): the given artifact references, no foreach, no parameters."""
    from airflow_flowspec.datastore.keys import AttemptKey
    from airflow_flowspec.datastore.manifest import new_manifest

    return new_manifest(
        AttemptKey(flow, run_id, step, str(task_id), attempt),
        artifacts=artifacts or {},
        parameters=sections.pop("parameters", []),
        foreach_stack=sections.pop("foreach_stack", []),
        **sections,
    )


def attempt(flow: str, run_id: str, step: str, task_id: str | int = "0", number: int = 1) -> Any:
    """The :class:`~airflow_flowspec.datastore.keys.AttemptKey` of a task attempt."""
    from airflow_flowspec.datastore.keys import AttemptKey

    return AttemptKey(flow, run_id, step, str(task_id), number)


def run_flow(path: Path, params: dict[str, Any] | None = None, **test_arguments: Any) -> FlowRun:
    """Translate the flow, register its DAG, and run it once with dag.test() (``test_arguments``,
    e.g. ``logical_date``, go to dag.test())."""
    from airflow_flowspec.airflow.local_run import sync_dag
    from airflow_flowspec.airflow.registration import dag_for

    flow_class = load_flow(path)
    dag = dag_for(flow_class, str(path))
    sync_dag(dag)
    return FlowRun(flow_class.__name__, dag.test(run_conf=params or {}, **test_arguments))


def run_cli(
    flow_file: Path,
    *args: str,
    env: dict[str, str] | None = None,
    unset: tuple[str, ...] = (),
    timeout: float = 240,
) -> subprocess.CompletedProcess:
    """``python flow.py ARGS`` in a fresh process, as a user types it (with ``env`` added to this
    process's environment and the ``unset`` variables removed from it)."""
    environment = {name: value for name, value in os.environ.items() if name not in unset}
    return subprocess.run(
        [sys.executable, str(flow_file), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=flow_file.parent,
        env={**environment, **(env or {})},
    )


def shell(*args: str, root: Path) -> subprocess.CompletedProcess:
    """``airflow-flowspec --root ROOT ARGS`` in a fresh process, as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "airflow_flowspec.shell", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def raw_xcom(dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
    """The value exactly as Airflow's ``xcom`` table holds it (and the UI shows it)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(XComModel.value).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.task_id == task_id,
                XComModel.key == key,
                XComModel.map_index == map_index,
            )
        ).all()
    assert len(rows) == 1, f"expected one XCom row for {dag_id}/{run_id}/{task_id}/{key}, got {rows!r}"
    return rows[0]


def clear_and_rerun(dag: Any, run_id: str, task_ids: list[str] | None = None, only_failed: bool = False):
    """Clear task instances of an existing run as the UI does, then run it to the end in process.

    The loop is ``DAG.test()``'s (Airflow 3.3.2), minus the part that recreates the run: the
    scheduler would move the cleared run from queued to running and schedule the cleared tasks.
    """
    from airflow import settings
    from airflow.models.dagrun import DagRun
    from airflow.sdk.definitions.dag import _run_task
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy import select

    scheduler_dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    scheduler_dag.on_success_callback = dag.on_success_callback
    scheduler_dag.on_failure_callback = dag.on_failure_callback
    cleared = scheduler_dag.clear(run_id=run_id, task_ids=task_ids, only_failed=only_failed)
    assert cleared, "nothing was cleared"

    session = settings.Session()
    dag_run = session.scalar(select(DagRun).where(DagRun.dag_id == dag.dag_id, DagRun.run_id == run_id))
    assert dag_run.state == DagRunState.QUEUED  # what clearing a finished run does
    dag_run.dag = scheduler_dag
    dag_run.state = DagRunState.RUNNING  # the scheduler's next move
    session.commit()
    while dag_run.state == DagRunState.RUNNING:
        session.expire_all()
        schedulable, _ = dag_run.update_state(session=session)
        for ti in schedulable:
            if ti.state != TaskInstanceState.UP_FOR_RESCHEDULE:
                ti.try_number += 1
            ti.state = TaskInstanceState.SCHEDULED
        session.commit()
        for ti in dag_run.get_task_instances(session=session):
            if ti.state == TaskInstanceState.SCHEDULED:
                _run_task(ti=ti, task=dag.task_dict[ti.task_id])
    return dag_run


_PARSE = textwrap.dedent("""
    import json, sys
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization
    bag = DagBag(dag_folder=sys.argv[1], safe_mode=True)
    print(json.dumps({
        "errors": {k: v for k, v in bag.import_errors.items()},
        "dags": {d: DagSerialization.to_dict(dag) for d, dag in sorted(bag.dags.items())},
    }, sort_keys=True, default=str))
""")


def parse_dags_folder(folder, extra_env=None):
    """Parse a dags folder the way the DAG processor does, in a fresh process."""
    env = {**os.environ, "PYTHONHASHSEED": "random", **(extra_env or {})}
    result = subprocess.run(
        [sys.executable, "-c", _PARSE, str(folder)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


#: A flow whose start step edits its own file and its helper module (in the folder --edit_dir names),
#: as a user does while a long run is in progress; its end step reports which code it ran.
PINNED_FLOW = textwrap.dedent("""
    from pathlib import Path

    import pinned_helpers
    from airflow_flowspec import FlowSpec, Parameter, step

    VERSION = "ORIGINAL"


    class PinnedFlow(FlowSpec):
        edit_dir = Parameter("edit_dir", default="")

        @step
        def start(self):
            if self.edit_dir:
                folder = Path(self.edit_dir)
                for name in ("pinned_flow.py", "pinned_helpers.py"):
                    path = folder / name
                    path.write_text(path.read_text().replace("ORIGINAL", "EDITED"))
            self.next(self.end)

        @step
        def end(self):
            self.flow_version = VERSION
            self.helper_version = pinned_helpers.VERSION
""")


def write_pinned_flow(folder: Path, monkeypatch: Any) -> Path:
    """``PINNED_FLOW`` and its helper in ``folder``, which goes on sys.path as a dags folder does."""
    folder.mkdir(parents=True)
    (folder / "pinned_flow.py").write_text(PINNED_FLOW)
    (folder / "pinned_helpers.py").write_text('VERSION = "ORIGINAL"\n')
    monkeypatch.syspath_prepend(str(folder))
    return folder


#: ``python flow.py run``'s first line (Metaflow's): ``<time> Workflow starting (run-id <number>):``.
_WORKFLOW_STARTING = re.compile(r"^\S+ \S+ Workflow starting \(run-id (\S+)\):$", re.MULTILINE)
#: Its next line: ``<time> Airflow runs it as run <Airflow run id> of the DAG <dag id>.``
_AIRFLOW_RUN = re.compile(r"^\S+ \S+ Airflow runs it as run (\S+) of the DAG (\S+)\.$", re.MULTILINE)
#: A run's line as printed: ``2026-12-07 14:11:40.626 [run/step/task (pid N)] text``.
_STAMPED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (?:\[([^\]]*?)(?: \(pid \d+\))?\] )?(.*)$")


def run_id_of(output: str) -> str:
    """The stored id (``run.id``) of the run ``python flow.py run`` started, from the DAG and
    Airflow run id it printed."""
    from airflow_flowspec.identity import RunIdentity

    match = _AIRFLOW_RUN.search(output)
    assert match, output[:2000]
    return RunIdentity.of_dag_run(match.group(2), match.group(1)).run_id


def short_id_of(output: str) -> str:
    """The run's short id (its number), which ``python flow.py run`` printed first and which names
    it in the prefixes of the run's lines."""
    match = _WORKFLOW_STARTING.search(output)
    assert match, output[:2000]
    return match.group(1)


def stamped(line: str) -> tuple[str | None, str] | None:
    """A line ``run`` (or Metaflow's runtime) printed with its time, as (the task's ``run/step/task``,
    or None for the run's own line; the text), or None for a line printed without a time."""
    match = _STAMPED.match(line)
    return None if match is None else (match.group(1), match.group(2))


def console_lines(output: str) -> list[str]:
    """``run``'s lines without their time and process id: ``[run/step/task] text`` or ``text``;
    lines that are not the run's (a final summary) as they are."""
    lines = []
    for line in output.splitlines():
        parsed = stamped(line)
        if parsed is None:
            lines.append(line)
        elif parsed[0] is None:
            lines.append(parsed[1])
        else:
            lines.append(f"[{parsed[0]}] {parsed[1]}")
    return [line for line in lines if line.strip()]


def printed_texts(output: str) -> list[str]:
    """What the run's tasks and the run printed, without the time, task and process id before it."""
    return [
        line.split("] ", 1)[1] if line.startswith("[") and "] " in line else line
        for line in console_lines(output)
    ]
