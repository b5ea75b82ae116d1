"""The flow's DAG as Airflow receives it: a float parameter's trigger form refuses numbers that are
not finite, because past the trigger Airflow's task API turns them into null, which the start step
cannot tell from "use the default" (``run --ratio nan`` ran with, and recorded, 0.5)."""

from __future__ import annotations

import json
import math
import textwrap

import pytest
from harness import load_flow, run_flow

from airflow_flowspec.errors import ParameterError
from airflow_flowspec.parameters import FINITE_RULE

RATIO_FLOW = textwrap.dedent("""
    from airflow_flowspec import FlowSpec, Parameter, step


    class RatioFlow(FlowSpec):
        ratio = Parameter("ratio", default=0.5, type=float)

        @step
        def start(self):
            self.used = self.ratio
            self.next(self.end)

        @step
        def end(self):
            pass
""")

NOT_FINITE = [math.nan, math.inf, -math.inf, json.loads("1e400")]  # what a JSON conf can give


@pytest.fixture
def ratio_flow(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", str(tmp_path / "store"))
    path = tmp_path / "ratio_flow.py"
    path.write_text(RATIO_FLOW)
    return path


@pytest.mark.usefixtures("airflow_db")
@pytest.mark.parametrize("ratio", [math.nan, json.loads("1e400")], ids=["nan", "1e400"])
def test_a_trigger_conf_with_a_non_finite_float_is_refused_and_nothing_runs(ratio_flow, tmp_path, ratio):
    """Guards the float parameter's schema (translator._FINITE_NUMBER_SCHEMA) on the path the bug took:
    a conf handed to dag.test() (as `run` and `airflow dags test` do). Without it the run went ahead
    and its start step recorded the default, 0.5."""
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="Invalid input for param ratio: (nan|inf) "):
        run_flow(ratio_flow, {"ratio": ratio})
    assert not (tmp_path / "store" / "RatioFlow").exists()  # no run, no record of 0.5


def test_the_api_server_refuses_non_finite_floats_from_the_serialized_dag(ratio_flow):
    """Guards the same schema where a REST trigger or `airflow dags trigger --conf` meets it: the
    DAG as the API server deserializes it, validating the conf merged into the params."""
    from airflow.exceptions import ParamValidationError
    from airflow.serialization.serialized_objects import DagSerialization

    from airflow_flowspec.airflow.registration import dag_for

    dag = DagSerialization.deserialize_dag(
        DagSerialization.serialize_dag(dag_for(load_flow(ratio_flow), str(ratio_flow)))
    )
    for ratio in NOT_FINITE:
        with pytest.raises(ParamValidationError, match="Invalid input for param ratio"):
            dag.params.deep_merge({"ratio": ratio}).validate()
    for ratio in (0.25, -3, 1e308, None):  # None: the form's field left empty, the default applies
        assert dag.params.deep_merge({"ratio": ratio}).validate()["ratio"] == ratio


@pytest.mark.parametrize("default", ["float('nan')", "lambda: float('inf')"])
def test_a_non_finite_default_is_refused_when_the_dag_is_built(tmp_path, default):
    """Guards the default check in translator._params: the flow is refused where Airflow parses it
    (and by `run`), naming the flow, the parameter, the default and the rule."""
    path = tmp_path / "ratio_flow.py"
    path.write_text(RATIO_FLOW.replace("default=0.5", f"default={default}"))
    from airflow_flowspec.airflow.registration import dag_for

    with pytest.raises(ParameterError) as refused:
        dag_for(load_flow(path), str(path))
    value = "nan" if "nan" in default else "inf"
    assert str(refused.value) == (
        f"Parameter 'ratio' of flow RatioFlow has the default {value}, which is not a finite number. "
        f"The rule: {FINITE_RULE}."
    )


def test_the_failure_callback_records_when_the_run_failed_not_when_it_is_called(tmp_path, monkeypatch):
    """Guards a cleared run's success against the failure callback that Airflow's DAG processor
    calls late: the callback records the run's end date from its context, so the success of the
    rerun that came in between stays (a callback with no end date records the time of the call)."""
    from datetime import datetime, timedelta, timezone
    from types import SimpleNamespace

    from airflow_flowspec.airflow.translator import record_failed_run
    from airflow_flowspec.datastore import open_datastore

    monkeypatch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", str(tmp_path / "store"))
    datastore = open_datastore(str(tmp_path / "store"))
    failed_at = datetime.now(timezone.utc) - timedelta(minutes=1)
    datastore.finish_run("GateFlow", "manual__1", True, {})

    failed = SimpleNamespace(run_id="manual__1", end_date=failed_at)
    record_failed_run({"dag_run": failed, "reason": "task_failure"}, "GateFlow")
    assert datastore.run_status("GateFlow", "manual__1")["status"] == "succeeded"

    record_failed_run({"run_id": "manual__1", "reason": "task_failure"}, "GateFlow")
    assert datastore.run_status("GateFlow", "manual__1")["status"] == "failed"
