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

from harness import FLOWS, run_cli

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
    from airflow_flowspec.datastore.artifacts import ArtifactRef
    from airflow_flowspec.flow_loader import load_flow_class
    flow_name, flow_file, root = sys.argv[1:4]
    load_flow_class(flow_file, flow_name)
    store = open_datastore(root)
    run_id = store.latest_run(flow_name)
    steps = {}
    for step in store.list_steps(flow_name, run_id):
        for task in store.list_tasks(flow_name, run_id, step):
            manifest = store.latest_attempt_manifest(flow_name, run_id, step, task)
            position = "/".join(str(f["index"]) for f in manifest["foreach_stack"]) or "-"
            steps.setdefault(step, {})[position] = {
                name: repr(store.artifacts.load(ArtifactRef.from_json(ref)))
                for name, ref in manifest["artifacts"].items() if not name.startswith("_") and name != "name"}
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
