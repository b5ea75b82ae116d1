"""The promise: a Metaflow flow with only its import line changed gives the same artifacts.

The same file runs under Metaflow 2.19 (its local runtime) and under ours (``python flow.py run``);
every task of every step, keyed by its foreach position, must hold the same artifacts with the same
values. The flow uses every ``self.next`` form, nested foreach, merge_artifacts with include and
exclude, a switch, JSON and inferred-type parameters and a class defined in the flow file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from harness import FLOWS, run_cli, stamped

# Both dumps: {step: {"<outer index>/<inner index>" or "-": {artifact: repr(value)}}}, leaving out
# private artifacts and Metaflow's "name".
_DUMP_METAFLOW = textwrap.dedent("""
    import importlib.util, json, sys, __main__
    from metaflow import Flow, namespace
    flow_name, flow_file = sys.argv[1:3]
    spec = importlib.util.spec_from_file_location("flow_module", flow_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, value in vars(module).items():  # Metaflow pickled the flow's classes from __main__
        if isinstance(value, type) and value.__module__ == "flow_module":
            setattr(__main__, name, value)
    namespace(None)
    run = Flow(flow_name).latest_run
    steps = {}
    for step in run:
        for task in step:
            stack = task["_foreach_stack"].data if "_foreach_stack" in task else []
            position = "/".join(str(frame.index) for frame in stack) or "-"
            steps.setdefault(step.id, {})[position] = {
                a.id: repr(a.data) for a in task if not a.id.startswith("_") and a.id != "name"}
    print(json.dumps({"successful": run.successful, "steps": steps}))
""")

_DUMP_OURS = textwrap.dedent("""
    import json, sys
    from airflow_flowspec.datastore import open_datastore
    from airflow_flowspec.flow_loader import load_flow_class
    flow_name, flow_file, root = sys.argv[1:4]
    load_flow_class(flow_file, flow_name)
    store = open_datastore(root)
    run_id = store.latest_run(flow_name)
    steps = {}
    for step in store.list_steps(flow_name, run_id):
        for task in store.list_tasks(flow_name, run_id, step):
            manifest = store.latest_attempt_manifest(flow_name, run_id, step, task)
            position = "/".join(str(index) for index in manifest.foreach_indices) or "-"
            steps.setdefault(step, {})[position] = {
                name: repr(store.artifacts.load(ref))
                for name, ref in manifest.artifacts.items() if not name.startswith("_") and name != "name"}
    print(json.dumps({"successful": store.run_status(flow_name, run_id)["status"] == "succeeded",
                      "steps": steps}))
""")


def _dump(script, *args, env):
    result = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_same_file_same_artifacts_as_metaflow(tmp_path):
    ours_file = tmp_path / "parity_flow.py"
    ours_file.write_text((FLOWS / "parity_flow.py").read_text())
    metaflow_file = tmp_path / "metaflow_parity_flow.py"
    source = ours_file.read_text()
    assert "from airflow_flowspec import " in source
    metaflow_file.write_text(source.replace("from airflow_flowspec import ", "from metaflow import "))

    metaflow_env = {
        **os.environ,
        "USERNAME": "tester",
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path / "metaflow-store"),
    }
    metaflow_run = subprocess.run(
        [sys.executable, str(metaflow_file), "run", "--mode", "slow"],
        capture_output=True,
        text=True,
        env=metaflow_env,
        cwd=tmp_path,
        timeout=300,
    )
    assert metaflow_run.returncode == 0, metaflow_run.stdout[-2000:] + metaflow_run.stderr[-2000:]
    store = str(tmp_path / "our-store")
    our_run = run_cli(ours_file, "run", "--mode", "slow", env={"AIRFLOW__FLOWSPEC__DATASTORE_ROOT": store})
    assert our_run.returncode == 0, our_run.stdout[-2000:] + our_run.stderr[-2000:]

    expected = _dump(_DUMP_METAFLOW, "ParityFlow", str(metaflow_file), env=metaflow_env)
    actual = _dump(_DUMP_OURS, "ParityFlow", str(ours_file), store, env=os.environ)
    assert expected["successful"] and actual["successful"]
    # The switch took "slow"; "fast" never ran, under either.
    assert "fast" not in expected["steps"] and expected["steps"]["end"]["-"]["path"] == "'slow'"
    assert len(expected["steps"]["cell"]) == 6
    assert actual["steps"] == expected["steps"]


def _terminal(output: str, flow_file: str) -> tuple[list[str], dict[str, list[list[str]]]]:
    """A run's terminal as (its own lines, {step: [each task's lines]}), texts stripped, with only
    the traceback frames of the flow's file (Metaflow also shows its own; we leave ours out) and
    the flow file's folder as ``<dir>``."""
    run_lines: list[str] = []
    tasks: dict[tuple[str, str], list[str]] = {}
    skip_next = False
    # stdout and stderr, each in order, merged by their times (a stable sort keeps same-time lines
    # in the order given)
    for line in sorted(output.splitlines(), key=lambda line: line[:23]):
        parsed = stamped(line)
        if parsed is None:
            continue
        label, text = parsed[0], parsed[1].strip()
        if label is None:
            run_lines.append(text)
            continue
        _, step, task = label.split("/")
        if skip_next:  # the source line under a frame of the machinery
            skip_next = False
            continue
        if text.startswith("File ") and flow_file not in text:
            skip_next = True
            continue
        if not text or set(text) <= set("^~ ") or text == "Internal error":
            continue  # carets under a source line; Metaflow's label for any exception of the step
        tasks.setdefault((step, task), []).append(text.replace(os.path.dirname(flow_file), "<dir>"))
    by_step: dict[str, list[list[str]]] = {}
    for (step, _), lines in tasks.items():
        by_step.setdefault(step, []).append(_failed_line_before_its_traceback(lines))
    return run_lines, {step: sorted(lines) for step, lines in by_step.items()}


def _failed_line_before_its_traceback(lines: list[str]) -> list[str]:
    """Metaflow's task writes ``<flow ...> failed:`` to stderr and the step's output to stdout, and
    its runtime relays the two pipes in whichever order it reads them: the line lands before or
    after the step's last output. Placed right before the traceback it introduces, as ours is."""
    failed = [line for line in lines if line.endswith("> failed:")]
    rest = [line for line in lines if not line.endswith("> failed:")]
    for line in failed:
        rest.insert(
            next(
                i
                for i, text in enumerate(rest)
                if text == "Traceback (most recent call last):"
                and (i == 0 or not rest[i - 1].endswith("> failed:"))
            ),
            line,
        )
    return rest


def test_a_failing_flow_prints_what_metaflow_prints_task_by_task(tmp_path):
    """The terminal of a run whose foreach task fails on both attempts, beside Metaflow's for the same
    file: each task's lines agree (start, output, the ``... failed:`` line, the traceback's frames in
    the flow file, retry, failure) and so do the run's first line and its ``Workflow failed.``."""
    ours_dir, metaflow_dir = tmp_path / "ours", tmp_path / "metaflow"
    ours_dir.mkdir()
    metaflow_dir.mkdir()
    source = (FLOWS / "failing_retry_flow.py").read_text()
    ours_file, metaflow_file = ours_dir / "failing_retry_flow.py", metaflow_dir / "failing_retry_flow.py"
    ours_file.write_text(source)
    metaflow_file.write_text(source.replace("from airflow_flowspec import ", "from metaflow import "))
    metaflow_run = subprocess.run(
        [sys.executable, str(metaflow_file), "--no-pylint", "run"],
        capture_output=True,
        text=True,
        env={**os.environ, "USERNAME": "tester", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path / "mf")},
        cwd=metaflow_dir,
        timeout=300,
    )
    our_run = run_cli(ours_file, "run", env={"AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(tmp_path / "store")})
    assert metaflow_run.returncode == our_run.returncode == 1, our_run.stdout + our_run.stderr
    metaflow_lines, metaflow_tasks = _terminal(metaflow_run.stdout + metaflow_run.stderr, str(metaflow_file))
    our_lines, our_tasks = _terminal(our_run.stdout + our_run.stderr, str(ours_file))

    assert our_tasks == metaflow_tasks
    (failed,) = [lines for lines in metaflow_tasks["body"] if "Task failed." in lines]
    assert failed.count("Task is starting (retry).") == 1 and failed.count("Task failed.") == 2
    assert "<flow FailingRetryFlow step body[1] (input: 2)> failed:" in failed
    assert 'File "<dir>/failing_retry_flow.py", line 17, in body' in failed
    assert our_lines[0].startswith("Workflow starting (run-id ") and metaflow_lines[0].startswith(
        "Workflow starting (run-id "
    )
    # Ours names Airflow's run id for `airflow` commands next; Metaflow goes on with "Terminating 0
    # active tasks..." and "Flushing logs...": no tasks of ours are left running and no logs wait.
    assert our_lines[1].startswith("Airflow runs it as run manual__")
    assert our_lines[2:] == ["Workflow failed."] == metaflow_lines[1:2]
