"""Airflow stays at the edges: the parts a Batch container runs import and work without it.

A Batch container has Python, boto3, cloudpickle and this package, not Airflow. The test runs in a
fresh interpreter where importing ``airflow`` fails, imports the authoring API, graph, lint,
config, datastore and runtime, and runs a foreach flow's steps through the runtime's command-line
entry point as a container would: each task's spec stored in the datastore, the process started
with its key, its result read back from the datastore, manifests passed from step to step by hand.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from harness import REPO

FLOW = textwrap.dedent("""
    from airflow_flowspec import FlowSpec, step


    class Point:
        def __init__(self, x):
            self.x = x


    class NoAirflowFlow(FlowSpec):
        @step
        def start(self):
            self.points = [Point(1), Point(2), Point(3)]
            self.next(self.square, foreach="points")

        @step
        def square(self):
            self.value = self.input.x ** 2
            self.next(self.join)

        @step
        def join(self, inputs):
            self.total = sum(i.value for i in inputs)
            self.next(self.end)

        @step
        def end(self):
            self.message = f"total={self.total}"
""")

DRIVER = textwrap.dedent("""
    import importlib.abc, json, runpy, sys

    class BlockAirflow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "airflow" or name.startswith("airflow."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked: no Airflow here)")
            return None

    sys.meta_path.insert(0, BlockAirflow())
    flow_file, store, workdir = sys.argv[1:4]

    import airflow_flowspec
    import airflow_flowspec.config
    import airflow_flowspec.datastore
    import airflow_flowspec.graph
    import airflow_flowspec.lint
    import airflow_flowspec.runtime.step_runner
    from airflow_flowspec.flow_loader import load_flow_class
    from airflow_flowspec.graph import FlowGraph
    from airflow_flowspec.lint import lint_flow, airflow_target
    from airflow_flowspec.runtime.process import read_step_result, write_task_spec
    from airflow_flowspec.identity import RunIdentity
    from airflow_flowspec.runtime.task_spec import TaskSpec
    from airflow_flowspec.datastore.manifest import ForeachFrame

    flow_class = load_flow_class(flow_file, "NoAirflowFlow")
    graph = FlowGraph(flow_class)
    lint_flow(graph, airflow_target())

    def run(step, inputs, map_index=-1, stack=()):
        spec = TaskSpec(flow_file=flow_file, run=RunIdentity("NoAirflowFlow", "no-airflow-1"), step=step,
                        datastore_root=store, map_index=map_index, input_manifests=list(inputs),
                        foreach_stack=[ForeachFrame.from_json(frame) for frame in stack])
        sys.argv = ["airflow_flowspec.runtime", "--root", store, "--spec-key", write_task_spec(spec)]
        try:
            runpy.run_module("airflow_flowspec.runtime", run_name="__main__")
        except SystemExit as exit:
            assert exit.code == 0, f"{step} exited {exit.code}"
        return read_step_result(spec)

    start = run("start", [])
    children = [run("square", [start.manifest], i, frame["stack"])
                for i, frame in enumerate(start.foreach_children)]
    join = run("join", [c.manifest for c in children])
    end = run("end", [join.manifest])
    print(json.dumps({
        "order": graph.sorted_nodes(),
        "children": len(start.foreach_children),
        "end_artifacts": sorted(end.manifest.artifacts),
        "airflow_loaded": sorted(m for m in sys.modules if m == "airflow" or m.startswith("airflow.")),
    }))
""")


def test_authoring_graph_runtime_and_datastore_run_without_airflow(tmp_path):
    flow_file = tmp_path / "no_airflow_flow.py"
    flow_file.write_text(FLOW)
    store = tmp_path / "store"
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, str(flow_file), str(store), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["airflow_loaded"] == []
    assert report["order"] == ["start", "square", "join", "end"]
    assert report["children"] == 3
    assert report["end_artifacts"] == ["message", "total"]  # a join keeps only what it merges or sets

    # What the container wrote is what Airflow-side code reads back: the same store, the same run.
    from airflow_flowspec.datastore import open_datastore

    datastore = open_datastore(str(store))
    end = datastore.latest_attempt_manifest("NoAirflowFlow", "no-airflow-1", "end", "0").artifacts
    assert datastore.artifacts.load(end["message"]) == "total=14"
    assert datastore.run_status("NoAirflowFlow", "no-airflow-1")["status"] == "succeeded"
