"""Airflow's trigger form as it meets a flow's parameters: which fields it marks required, and the
conf it sends for each kind of parameter, taken from the DAG the API server reads (serialized,
then deserialized) and carried through the browser's JSON, arriving in the run as declared.

The browser is where ``0.0`` became ``0``: JavaScript has one number type, so a JSON default
``[0.0, 0.1, 1.0, 10.0]`` came back in the conf as ``[0, 0.1, 1, 10]``. ``as_the_browser_sends``
does what the form's ``JSON.parse``/``JSON.stringify`` do to numbers; the test in
``tests/integration/test_artifact_view_live.py`` types into the real form in Chromium.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from harness import FLOWS, load_flow, run_flow

KINDS_FLOW = (FLOWS / "parameter_kinds_flow.py").read_text()
KINDS = ("label", "count", "ratio", "verbose", "grid", "config", "seed")


def as_the_browser_sends(value: Any) -> Any:
    """``value`` after the form's round trip through JavaScript: a whole float is an integer."""

    def javascript_number(text: str) -> float | int:
        number = float(text)
        return int(number) if number.is_integer() else number

    return json.loads(json.dumps(value), parse_float=javascript_number)


def required_in_the_form(schema: dict[str, Any]) -> bool:
    """Airflow 3.3's UI rule (``FlexibleForm``'s ``isRequired``): a field is marked required when
    its schema has a type and that type does not include "null"."""
    kind = schema.get("type")
    return bool(kind) and not (isinstance(kind, list) and "null" in kind)


def served_dag(path: Path, flow_text: str) -> Any:
    """The flow's DAG as the API server has it (serialized, then deserialized)."""
    from airflow.serialization.serialized_objects import DagSerialization

    from airflow_flowspec.airflow.registration import dag_for

    path.write_text(flow_text)
    dag = dag_for(load_flow(path), str(path))
    return DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))


@pytest.fixture(scope="module")
def kinds_flow(tmp_path_factory):
    """(flow file, its DAG as the API server has it)."""
    path = tmp_path_factory.mktemp("trigger-form") / "parameter_kinds_flow.py"
    return path, served_dag(path, KINDS_FLOW)


@pytest.fixture
def datastore(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", str(tmp_path / "store"))


def form_conf(dag: Any, typed: dict[str, Any]) -> dict[str, Any]:
    """The conf the form sends: each field's value (its default unless ``typed``), as the browser
    has it, checked by the DAG's params as the API server checks a trigger's conf."""
    shown = {name: dag.params.get_param(name).value for name in dag.params}
    conf = as_the_browser_sends({**shown, **typed})
    dag.params.deep_merge(conf).validate()
    return conf


def test_only_a_parameter_without_which_no_run_starts_is_marked_required(tmp_path):
    required = KINDS_FLOW.replace("default=1)", "type=int, required=True)")
    dag = served_dag(tmp_path / "required_flow.py", required)
    marked = {name for name in dag.params if required_in_the_form(dag.params.get_param(name).schema)}
    assert marked == {"seed"}  # "Run tags" (flowspec_tags) was marked required too


@pytest.mark.usefixtures("airflow_db", "datastore")
def test_each_parameter_kind_from_the_form_arrives_as_the_flow_declared_it(kinds_flow):
    """The form's defaults left as they are (and the tags field emptied, which sends null), then
    values typed in each field: every value arrives with its declared type, a JSON list's floats
    included."""
    path, dag = kinds_flow
    untouched = run_flow(path, form_conf(dag, {"seed": 7, "flowspec_tags": None}))
    assert untouched.succeeded, untouched.states()
    got = untouched.artifacts("start")
    assert {name: got[name] for name in KINDS} == {
        "label": "base",
        "count": 3,
        "ratio": 0.5,
        "verbose": False,
        "grid": [0.0, 0.1, 1.0, 10.0],
        "config": {"depth": 2.0, "names": ["a"]},
        "seed": 7,
    }
    assert [type(rate) for rate in got["grid"]] == [float] * 4 and type(got["config"]["depth"]) is float

    typed = {
        "label": "tuned",
        "count": 5,
        "ratio": 2.0,  # typed "2.0"; the browser sends 2
        "verbose": True,
        "grid": "[1.0, 2.5]",  # a JSON field is text, kept as typed
        "config": '{"depth": 4.0}',
        "seed": 11,
        "flowspec_tags": ["exp7", "baseline"],
    }
    conf = form_conf(dag, typed)
    assert conf["ratio"] == 2 and type(conf["ratio"]) is int
    given = run_flow(path, conf)
    assert given.succeeded, given.states()
    got = given.artifacts("start")
    scalars = ("label", "count", "ratio", "verbose", "seed")
    assert {name: (got[name], type(got[name])) for name in scalars} == {
        "label": ("tuned", str),
        "count": (5, int),
        "ratio": (2.0, float),
        "verbose": (True, bool),
        "seed": (11, int),
    }
    assert (got["grid"], type(got["grid"][0])) == ([1.0, 2.5], float)
    assert (got["config"], type(got["config"]["depth"])) == ({"depth": 4.0}, float)
    run_record = given.datastore.read_run_meta("ParameterKindsFlow", given.run_id)
    assert {"exp7", "baseline"} <= set(run_record["tags"])


@pytest.mark.usefixtures("airflow_db", "datastore")
def test_a_trigger_the_form_refuses_and_one_the_start_step_refuses(kinds_flow, capfd):
    """A typed field of the wrong type is refused by the DAG's params (Airflow refuses the
    trigger); a JSON field is text that the start step parses, refusing what is not JSON by name."""
    from airflow.exceptions import ParamValidationError

    path, dag = kinds_flow
    for field, value in (("count", "three"), ("ratio", math.inf), ("verbose", "yes"), ("flowspec_tags", "a")):
        with pytest.raises(ParamValidationError, match=f"param {field}"):
            form_conf(dag, {"seed": 7, field: value})

    refused = run_flow(path, form_conf(dag, {"seed": 7, "grid": "[0.1, 0.2"}))
    assert refused.state("start") == "failed"
    output = capfd.readouterr()
    assert "Parameter 'grid' of flow ParameterKindsFlow expects a value of type JSON, got '[0.1, 0.2'" in (
        output.out + output.err
    )
