"""The XCom backend through real Airflow (dag.test() on SQLite): what tasks pull, what the table holds.

Raw rows are read from Airflow's ``xcom`` table: that is what the UI's XCom view shows.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from harness import FlowRun, a_manifest, load_flow, raw_xcom, run_flow

pytestmark = pytest.mark.usefixtures("airflow_db")

FIVE_MB = 5 * 1024 * 1024

FLOW_SOURCE = '''
"""A flow whose end step holds a list, a dict, a lambda, a flow-defined class and 5 MB of bytes."""

from airflow_flowspec import FlowSpec, step


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def norm2(self):
        return self.x * self.x + self.y * self.y

    def __repr__(self):
        return f"Point({self.x}, {self.y})"


class XComViewFlow(FlowSpec):
    @step
    def start(self):
        self.numbers = [1, 2, 3, 4]
        self.config = {"depth": 3, "tags": ["a", "b"]}
        self.point = Point(3, 4)
        self.scale = lambda v: v * 10
        self.blob = b"z" * FIVE_MB
        self.next(self.end)

    @step
    def end(self):
        self.total = sum(self.numbers)


if __name__ == "__main__":
    XComViewFlow()
'''.replace("FIVE_MB", str(FIVE_MB))


def flow_dag_with_plain_task(tmp_path: Path, plain_task: Any) -> tuple[type, Any]:
    """XComViewFlow's DAG plus ``plain_task`` (an ``@task`` function) downstream of ``end``."""
    from airflow.sdk import task

    from airflow_flowspec.airflow.local_run import sync_dag
    from airflow_flowspec.airflow.registration import dag_for

    flow_file = tmp_path / "xcom_view_flow.py"
    flow_file.write_text(FLOW_SOURCE, encoding="utf-8")
    flow_class = load_flow(flow_file)
    dag = dag_for(flow_class, str(flow_file))
    with dag:
        dag.get_task("end") >> task(task_id="plain")(plain_task)()
    sync_dag(dag)
    return flow_class, dag


def read_end_artifacts(**context: Any) -> dict[str, Any]:
    """A plain Airflow task: pulls end's XCom and uses its artifacts by attribute."""
    end = context["ti"].xcom_pull(task_ids="end")
    return {
        "view": type(end).__name__,
        "names": end.artifact_names(),
        "numbers": end.numbers,
        "config": end.config,
        "total": end.total,
        "scaled": end.scale(7),
        "point_type": f"{type(end.point).__module__}.{type(end.point).__qualname__}",
        "norm2": end.point.norm2(),
        "blob_len": len(end.blob),
    }


def test_plain_task_downstream_of_a_step_reads_its_artifacts_by_attribute(tmp_path):
    flow_class, dag = flow_dag_with_plain_task(tmp_path, read_end_artifacts)
    run = FlowRun(flow_class.__name__, dag.test())
    assert run.succeeded, run.states()
    assert run.state("plain") == "success"
    got = raw_xcom("XComViewFlow", run.run_id, "plain")
    assert got == {
        "view": "InputView",
        "names": ["blob", "config", "numbers", "point", "scale", "total"],
        "numbers": [1, 2, 3, 4],
        "config": {"depth": 3, "tags": ["a", "b"]},
        "total": 10,
        "scaled": 70,
        "point_type": "flowspec_flows.XComViewFlow.Point",
        "norm2": 25,
        "blob_len": FIVE_MB,
    }


def read_flow_class_instance_in_a_fresh_worker(**context: Any) -> dict[str, Any]:
    """As ``read_end_artifacts``, but as on a real worker: no step of this flow ran in this process.

    ``dag.test()`` runs every task in one process, where the steps already imported the flow file
    as ``flowspec_flows.XComViewFlow``; a worker's task process has not. Hide that module (and the
    loader's cache) while pulling, and put them back afterwards.
    """
    from airflow_flowspec import flow_loader

    hidden = {
        n: m for n, m in sys.modules.items() if n == "flowspec_flows" or n.startswith("flowspec_flows.")
    }
    cache = dict(flow_loader._loaded)
    for name in hidden:
        del sys.modules[name]
    flow_loader._loaded.clear()
    try:
        end = context["ti"].xcom_pull(task_ids="end")
        try:
            return {"norm2": end.point.norm2(), "numbers": end.numbers}
        except Exception as error:  # reported through the XCom, so the test can show it
            return {"error": f"{type(error).__name__}: {error}", "numbers": end.numbers}
    finally:
        sys.modules.update(hidden)
        flow_loader._loaded.update(cache)


def test_plain_task_on_a_fresh_worker_reads_an_instance_of_a_flow_defined_class(tmp_path):
    flow_class, dag = flow_dag_with_plain_task(tmp_path, read_flow_class_instance_in_a_fresh_worker)
    run = FlowRun(flow_class.__name__, dag.test())
    assert run.succeeded, run.states()
    got = raw_xcom("XComViewFlow", run.run_id, "plain")
    # The view imported the flow file the run recorded, so the flow's own class unpickles too.
    assert got == {"norm2": 25, "numbers": [1, 2, 3, 4]}


def test_a_steps_xcom_is_a_small_readable_json_manifest(tmp_path):
    flow_class, dag = flow_dag_with_plain_task(tmp_path, read_end_artifacts)
    run = FlowRun(flow_class.__name__, dag.test())
    assert run.succeeded, run.states()

    for step in ("start", "end"):
        raw = raw_xcom("XComViewFlow", run.run_id, step)
        assert isinstance(raw, dict)  # stored as JSON, not a string holding a pickle or serde blob
        text = json.dumps(raw)
        assert len(text) < 4096, text  # a 5 MB artifact is a reference of a few dozen bytes
        assert raw["flowspec_manifest"] == 1
        assert (raw["flow"], raw["step"], raw["run_id"]) == ("XComViewFlow", step, run.run_id)
        assert raw == run.manifest(step).to_json()  # the same document as the datastore's manifest.json
        # Nothing in it is a long opaque string (pickled or base64 bytes).
        strings = [s for s in _strings(raw)]
        assert max(len(s) for s in strings) <= 100, max(strings, key=len)

    artifacts = raw_xcom("XComViewFlow", run.run_id, "end")["artifacts"]
    assert sorted(artifacts) == ["blob", "config", "numbers", "point", "scale", "total"]
    assert set(artifacts["blob"]) == {"hash", "type", "size", "repr"}
    assert artifacts["blob"]["type"] == "bytes" and artifacts["blob"]["size"] > FIVE_MB
    assert artifacts["blob"]["repr"].startswith("b'zzzz")
    assert artifacts["numbers"]["type"] == "list" and artifacts["numbers"]["repr"] == "[1, 2, 3, 4]"
    assert artifacts["config"]["repr"] == "{'depth': 3, 'tags': ['a', 'b']}"
    assert artifacts["total"] == {**artifacts["total"], "type": "int", "repr": "10"}
    assert artifacts["point"]["type"] == "flowspec_flows.XComViewFlow.Point"
    assert artifacts["point"]["repr"] == "Point(3, 4)"
    assert artifacts["scale"]["type"] == "function"
    # Unchanged artifacts are carried by reference: end lists start's blob, not a copy.
    assert artifacts["blob"] == raw_xcom("XComViewFlow", run.run_id, "start")["artifacts"]["blob"]


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, child in value.items():
            yield key
            yield from _strings(child)
    elif isinstance(value, list):
        for child in value:
            yield from _strings(child)


def test_ordinary_xcoms_inline_when_small_json_otherwise_pickled_to_the_store(monkeypatch):
    from airflow.sdk import dag, task

    from airflow_flowspec import config
    from airflow_flowspec.airflow.local_run import sync_dag

    # Read when each value is serialized (in process under dag.test), so the env var applies.
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__XCOM_INLINE_MAX_BYTES", "2048")

    class Local:  # defined in a function: cloudpickle pickles it by value
        def __init__(self, label):
            self.label = label

        def shout(self):
            return self.label.upper() + "!"

    @dag(dag_id="xcom_plain_values", schedule=None, catchup=False)
    def plain_values():
        @task
        def small():
            return {"name": "small", "values": [1, 2.5, None, True], "nested": {"k": "v"}}

        @task
        def over_limit():
            return {"rows": ["r" * 50 for _ in range(60)]}  # about 3 KB of JSON

        @task
        def a_lambda():
            offset = 5
            return lambda v: v + offset

        @task
        def a_set():
            return {3, 1, 2}

        @task
        def an_instance():
            return Local("hello")

        @task
        def some_bytes():
            return b"\x00\x01\xfe\xff" * 8

        @task
        def two_megabytes():
            return bytes(range(256)) * (8 * 1024)  # pickled to a scratch file first, then adopted

        @task
        def check(small, over_limit, fn, numbers, obj, data, large):
            return {
                "small": small,
                "rows": [len(over_limit["rows"]), over_limit["rows"][0]],
                "fn": fn(10),
                "set": sorted(numbers) if isinstance(numbers, set) else f"not a set: {numbers!r}",
                "obj": obj.shout(),
                "bytes": data.hex(),
                "large": [len(large), large == bytes(range(256)) * (8 * 1024)],
            }

        check(small(), over_limit(), a_lambda(), a_set(), an_instance(), some_bytes(), two_megabytes())

    the_dag = plain_values()
    sync_dag(the_dag)
    dag_run = the_dag.test()
    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    assert str(dag_run.state) == "success", states

    def raw(task_id: str) -> Any:
        return raw_xcom("xcom_plain_values", dag_run.run_id, task_id)

    # Downstream got every value back as it was returned.
    assert raw("check") == {
        "small": {"name": "small", "values": [1, 2.5, None, True], "nested": {"k": "v"}},
        "rows": [60, "r" * 50],
        "fn": 15,
        "set": [1, 2, 3],
        "obj": "HELLO!",
        "bytes": "0001feff" * 8,
        "large": [2 * 1024 * 1024, True],
    }
    # Small plain JSON is the row itself.
    assert raw("small") == {"name": "small", "values": [1, 2.5, None, True], "nested": {"k": "v"}}
    # A set is not JSON, but Airflow's serde carries it as small readable JSON: it stays inline.
    assert raw("a_set")["__classname__"] == "builtins.set"

    from airflow_flowspec.datastore.keys import safe_key_part

    root = Path(config.datastore_root())
    expected_types = {
        "over_limit": "dict",
        "a_lambda": "function",
        "an_instance": "test_xcom_backend.test_ordinary_xcoms_inline_when_small_json_otherwise_pickled_"
        "to_the_store.<locals>.Local",
        "some_bytes": "bytes",
        "two_megabytes": "bytes",
    }
    for task_id, type_name in expected_types.items():
        reference = raw(task_id)
        assert len(json.dumps(reference)) < 1024, reference
        assert reference["flowspec_xcom"] == 2
        assert reference["type"] == type_name
        # The row names the XCom, never a path: the key is derived from the root and that identity.
        assert "root" not in reference and reference["dag_id"] == "xcom_plain_values"
        assert (reference["task_id"], reference["map_index"], reference["key"]) == (
            task_id,
            -1,
            "return_value",
        )
        object_key = "/".join(
            ["_xcom", "xcom_plain_values", safe_key_part(dag_run.run_id), task_id, "-1", "return_value.pkl"]
        )
        stored = root / object_key
        assert stored.is_file() and stored.stat().st_size == reference["size"]
        assert len(reference["repr"]) <= 80
    assert raw("some_bytes")["repr"].startswith("b'\\x00\\x01\\xfe\\xff")
    assert raw("over_limit")["repr"].startswith("{'rows': ['rrrr")


WIDE_FOREACH_SOURCE = """
from airflow_flowspec import FlowSpec, step


class WideForeachFlow(FlowSpec):
    @step
    def start(self):
        self.items = list(range(12))
        self.next(self.body, foreach="items")

    @step
    def body(self):
        self.square = self.input * self.input
        self.next(self.join)

    @step
    def join(self, inputs):
        self.squares = [i.square for i in inputs]
        self.next(self.end)

    @step
    def end(self):
        pass
"""


def test_foreach_children_are_a_small_chunked_row_whatever_the_inline_limit(tmp_path, monkeypatch):
    """The list a foreach split returns is stored in chunks, its row a small readable reference
    (see test_chunked_lists.py), yet Airflow still expands the body over it (the length travels
    apart from the value)."""
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__XCOM_INLINE_MAX_BYTES", "1024")
    flow_file = tmp_path / "wide_foreach_flow.py"
    flow_file.write_text(WIDE_FOREACH_SOURCE, encoding="utf-8")
    run = run_flow(flow_file)
    assert run.succeeded, run.states()
    children = raw_xcom("WideForeachFlow", run.run_id, "start")
    assert children["flowspec_xcom_chunks"] == 1 and children["length"] == 12
    assert children["description"] == "the children of the foreach in step 'start' of flow WideForeachFlow"
    assert [run.state("body", i) for i in range(12)] == ["success"] * 12
    assert run.artifacts("end")["squares"] == [i * i for i in range(12)]
    # The split's manifest, under its own key, stays inline whatever the limit.
    assert raw_xcom("WideForeachFlow", run.run_id, "start", key="flowspec_split_manifest")["step"] == "start"


def test_purge_deletes_the_pickled_xcom_a_retry_replaces(tmp_path):
    """Airflow clears a task instance's XComs when it runs again (a retry here) and calls ``purge``.

    The first attempt pushes a pickled value, records which pickles exist for the DAG, then fails.
    The retry pushes a small inline value under the same key: nothing overwrites the first pickle,
    so if it is gone, purge deleted it.
    """
    from airflow.sdk import dag, task

    from airflow_flowspec import config
    from airflow_flowspec.airflow.local_run import sync_dag
    from airflow_flowspec.datastore.keys import safe_key_part

    journal = tmp_path / "journal.json"
    xcom_folder = Path(config.datastore_root()) / "_xcom" / "xcom_purge_on_retry"

    def pickles() -> list[str]:
        return sorted(str(p.relative_to(xcom_folder)) for p in xcom_folder.rglob("*.pkl"))

    @dag(dag_id="xcom_purge_on_retry", schedule=None, catchup=False)
    def purge_on_retry():
        @task(retries=1, retry_delay=timedelta(seconds=0))
        def flaky(**context):
            ti = context["ti"]
            if ti.try_number == 1:
                ti.xcom_push(key="payload", value=b"first attempt " * 100)
                journal.write_text(json.dumps({"after_first_push": pickles()}))
                raise RuntimeError("the first attempt fails after pushing")
            seen = json.loads(journal.read_text())
            seen["when_retry_starts"] = pickles()
            journal.write_text(json.dumps(seen))
            ti.xcom_push(key="payload", value={"attempt": ti.try_number})

        @task
        def read(**context):
            return context["ti"].xcom_pull(task_ids="flaky", key="payload")

        flaky() >> read()

    the_dag = purge_on_retry()
    sync_dag(the_dag)
    dag_run = the_dag.test()
    states = {ti.task_id: (str(ti.state), ti.try_number) for ti in dag_run.get_task_instances()}
    assert states == {"flaky": ("success", 2), "read": ("success", 1)}

    seen = json.loads(journal.read_text())
    assert seen["after_first_push"] == [f"{safe_key_part(dag_run.run_id)}/flaky/-1/payload.pkl"]
    assert seen["when_retry_starts"] == []  # purged before the retry's code ran
    assert pickles() == []
    assert raw_xcom("xcom_purge_on_retry", dag_run.run_id, "flaky", key="payload") == {"attempt": 2}
    assert raw_xcom("xcom_purge_on_retry", dag_run.run_id, "read") == {"attempt": 2}


def test_an_instance_of_a_flow_class_of_a_run_without_code_gets_a_clear_error(tmp_path):
    """A run whose record names no code package: the error says which run, and that its classes
    cannot be imported (the flow file as it is now is never taken for the run's code)."""
    import types

    from airflow_flowspec.datastore import open_datastore
    from airflow_flowspec.datastore.views import InputView
    from airflow_flowspec.errors import FlowspecError
    from airflow_flowspec.flow_loader import _ensure_package

    _ensure_package()
    module = types.ModuleType("flowspec_flows.GoneFlow")
    exec("class Model:\n    pass\n", module.__dict__)
    module.Model.__module__ = module.__name__
    sys.modules[module.__name__] = module
    datastore = open_datastore(str(tmp_path / "store"))
    try:
        ref = datastore.artifacts.save("model", module.Model())
    finally:
        del sys.modules[module.__name__]
    (tmp_path / "gone_flow.py").write_text("class Model:\n    pass\n")
    datastore.write_run_meta("GoneFlow", "run-1", {"flow_file": str(tmp_path / "gone_flow.py")})
    view = InputView(a_manifest("GoneFlow", "run-1", "end", artifacts={"model": ref}), datastore, None)
    with pytest.raises(FlowspecError) as caught:
        _ = view.model
    message = str(caught.value)
    assert "run run-1 of flow GoneFlow" in message and "the run records no code package" in message


@pytest.mark.parametrize(
    "first_import",
    [
        "import airflow_flowspec.xcom_backend as backend",
        "import airflow; import airflow_flowspec.xcom_backend as backend",
    ],
    ids=["ours first", "airflow first"],
)
def test_the_configured_backend_resolves_quietly_whichever_is_imported_first(first_import):
    """Importing Airflow resolves [core] xcom_backend, which imports this package back; the class
    must be there when Airflow asks (it used to log a dozen "does not define" warnings)."""
    import subprocess

    code = (
        f"{first_import}\n"
        "from airflow.sdk.execution_time.xcom import XCom\n"
        "assert XCom is backend.FlowspecXComBackend, XCom\n"
        "print('resolved', XCom.__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "resolved FlowspecXComBackend"
    assert "does not define" not in result.stderr and "warning" not in result.stderr.lower()
