"""Resume: clearing a failed task re-runs it on the same DAG run, with upstream artifacts already stored.

``dag.test()`` cannot continue an existing run: it clears every task instance of its logical date
(``SerializedDAG.clear_dags`` in ``airflow/sdk/definitions/dag.py``, ``DAG.test``) and then
``get_or_create_dagrun`` (``airflow/models/dagrun.py``) *deletes* any run with that logical date
and creates a new one, so every task, ``start`` included, would run again. What the scheduler does
after "Clear" in the UI is therefore reproduced here with the same pieces ``dag.test()`` uses:
``SerializedDAG.clear(run_id=..., only_failed=True)`` (the UI's "clear failed tasks"), then
``dag.test()``'s own scheduling loop (``DagRun.update_state`` + ``_run_task``, in process) on the
existing run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from harness import FLOWS, FlowRun, clear_and_rerun, load_flow, raw_xcom

from airflow_flowspec.datastore.keys import xcom_value_key

pytestmark = pytest.mark.usefixtures("airflow_db")


def build_flow_dag(path) -> tuple[type, Any]:
    from airflow_flowspec.airflow.local_run import sync_dag
    from airflow_flowspec.airflow.registration import dag_for

    flow_class = load_flow(path)
    dag = dag_for(flow_class, str(path))
    sync_dag(dag)
    return flow_class, dag


def test_clearing_the_failed_step_resumes_the_run_without_rerunning_start(tmp_path):
    ledger, marker = tmp_path / "ledger.txt", tmp_path / "marker"
    flow_class, dag = build_flow_dag(FLOWS / "resume_flow.py")

    first = FlowRun(flow_class.__name__, dag.test(run_conf={"ledger": str(ledger), "marker": str(marker)}))
    assert not first.succeeded
    assert first.state("start") == "success"
    assert first.state("middle") == "failed"
    assert first.state("end") == "upstream_failed"
    tokens = ledger.read_text().split()
    assert len(tokens) == 1
    assert first.datastore.run_status("ResumeFlow", first.run_id)["status"] == "failed"

    marker.touch()  # fix what made middle fail
    dag_run = clear_and_rerun(dag, first.run_id, only_failed=True)
    resumed = FlowRun(flow_class.__name__, dag_run)

    assert resumed.run_id == first.run_id
    assert resumed.succeeded, resumed.states()
    assert resumed.states() == {("start", -1): "success", ("middle", -1): "success", ("end", -1): "success"}
    # start did not run again: one line in its ledger, and end saw the token of that one execution.
    assert ledger.read_text().split() == tokens
    end = resumed.artifacts("end")
    assert end["summary"] == f"{tokens[0]}:12"
    assert end["token"] == tokens[0] and end["numbers"] == [3, 4, 5]
    # middle's failed first attempt left no manifest (only its output); the re-run is its second.
    assert resumed.datastore.list_attempts("ResumeFlow", first.run_id, "middle", "0") == [1, 2]
    assert (
        resumed.datastore.latest_attempt_manifest("ResumeFlow", first.run_id, "middle", "0").attempt.attempt
        == 2
    )
    assert resumed.datastore.list_attempts("ResumeFlow", first.run_id, "start", "0") == [1]
    assert resumed.datastore.run_status("ResumeFlow", first.run_id)["status"] == "succeeded"


@pytest.mark.parametrize("rerun_value", ["inline", "pickled"])
def test_clearing_an_ordinary_task_purges_the_pickled_xcom_its_rerun_replaces(tmp_path, rerun_value):
    """Clearing re-runs the task; Airflow then deletes its old XComs and calls the backend's purge."""
    from airflow.sdk import dag, task

    from airflow_flowspec import config
    from airflow_flowspec.airflow.local_run import sync_dag

    dag_id = f"resume_purge_{rerun_value}"
    executions = tmp_path / "executions"

    @dag(dag_id=dag_id, schedule=None, catchup=False)
    def purge_on_clear():
        @task
        def produce():
            count = len(executions.read_text()) + 1 if executions.exists() else 1
            executions.write_text("x" * count)
            if count == 1:
                return b"first run " * 10  # bytes: always pickled to the store
            return {"run": count} if rerun_value == "inline" else b"second run " * 20

        @task
        def consume(value):
            return repr(value)

        consume(produce())

    the_dag = purge_on_clear()
    sync_dag(the_dag)
    first = the_dag.test()
    assert str(first.state) == "success"
    old = raw_xcom(dag_id, first.run_id, "produce")
    old_pickle = Path(config.datastore_root()) / xcom_value_key(
        dag_id, first.run_id, "produce", -1, "return_value"
    )
    assert old["type"] == "bytes" and old_pickle.read_bytes().count(b"first run") == 10

    rerun = clear_and_rerun(the_dag, first.run_id, task_ids=["produce", "consume"])
    assert str(rerun.state) == "success"
    assert executions.read_text() == "xx"
    new = raw_xcom(dag_id, first.run_id, "produce")
    if rerun_value == "inline":
        assert new == {"run": 2}
        assert raw_xcom(dag_id, first.run_id, "consume") == "{'run': 2}"
        assert not old_pickle.exists()  # nothing rewrote it: purge deleted it
    else:
        # Same XCom, same key: purge deleted the old pickle and the re-run wrote the new one there.
        assert new["hash"] != old["hash"] and new["size"] != old["size"]
        assert old_pickle.read_bytes().count(b"second run") == 20
        assert raw_xcom(dag_id, first.run_id, "consume") == repr(b"second run " * 20)


FIX_ME_FLOW = """
from airflow_flowspec import FlowSpec, step

DIVISOR = 0  # the bug


class FixMeFlow(FlowSpec):
    @step
    def start(self):
        self.total = 12
        self.next(self.middle)

    @step
    def middle(self):
        self.share = self.total / DIVISOR
        self.next(self.end)

    @step
    def end(self):
        self.result = self.share
"""


def test_a_fix_needs_repin_before_clear_since_a_run_keeps_the_code_it_started_with(tmp_path):
    """Guards code pinning on clear: a cleared task runs the run's recorded code (the fix alone
    changes nothing), and ``airflow-flowspec repin`` makes the cleared task and those after it run
    the fixed file, keeping the code the run started with in the record's history."""
    import subprocess
    import sys

    from airflow_flowspec import config

    path = tmp_path / "fix_me_flow.py"
    path.write_text(FIX_ME_FLOW)
    flow_class, dag = build_flow_dag(path)
    first = FlowRun("FixMeFlow", dag.test())
    assert first.state("middle") == "failed"
    started_with = first.datastore.read_run_meta("FixMeFlow", first.run_id)["code"]

    path.write_text(FIX_ME_FLOW.replace("DIVISOR = 0", "DIVISOR = 4"))
    again = clear_and_rerun(dag, first.run_id, only_failed=True)
    assert str(again.state) == "failed"  # the cleared task ran the code the run started with

    repin = subprocess.run(
        [
            sys.executable,
            "-m",
            "airflow_flowspec.shell",
            "--root",
            config.datastore_root(),
            "repin",
            f"FixMeFlow/{first.run_id}",
        ],
        capture_output=True,
        text=True,
    )
    assert repin.returncode == 0, repin.stderr
    assert "Clear the failed task" in repin.stdout
    fixed = FlowRun("FixMeFlow", clear_and_rerun(dag, first.run_id, only_failed=True))
    assert fixed.succeeded, fixed.states()
    assert fixed.artifacts("end")["result"] == 3.0
    record = fixed.datastore.read_run_meta("FixMeFlow", first.run_id)
    assert record["code_history"] == [started_with]
    assert fixed.manifest("end").to_json()["code"] == record["code"]["package"] != started_with["package"]
    assert fixed.manifest("start").to_json()["code"] == started_with["package"]  # start did not run again
