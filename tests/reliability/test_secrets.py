"""A ``Parameter(..., secret=True)`` never appears in clear text where people read: the task's
output, manifests, the XCom rows the UI shows, run records, the DAG's params.

Issue 10's finding: parameter values, secrets included, were written in clear text to manifests,
``run.json`` and the XCom view. What stays in clear, by design, is the value itself in its blob
(later steps need it) and, when the token is given in the trigger form, Airflow's own record of
the run's conf.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from harness import FLOWS, load_flow, raw_xcom, run_flow

pytestmark = pytest.mark.usefixtures("airflow_db")

SECRET_FLOW = FLOWS / "secret_flow.py"


def readable_records(root: Path) -> dict[str, bytes]:
    """Every file of the datastore that is not an artifact's pickled value."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and path.relative_to(root).parts[0] not in ("data", ".tmp")
    }


@pytest.fixture(scope="module")
def secret_run(tmp_path_factory):
    """One run whose token comes from the environment (the callable default), not the form."""
    token = f"tok-{uuid.uuid4().hex}"
    root = tmp_path_factory.mktemp("secret-store")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SECRET_FLOW_TOKEN", token)
        patch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", str(root))
        import io
        from contextlib import redirect_stdout

        output = io.StringIO()
        with redirect_stdout(output):
            run = run_flow(SECRET_FLOW)
        yield token, root, run, output.getvalue()


def test_a_secret_never_shows_in_output_manifests_run_records_or_xcoms(secret_run):
    """Guards the output mask (runtime/masking.py) on screen and in the stored task output,
    <secret> reprs for the parameter and for an artifact made from it, the redacted @catch
    message, and run.json's parameters."""
    token, root, run, output = secret_run
    assert run.succeeded, run.states()
    assert "calling the API in eu-west-1 with ***" in output
    assert "end sees {'Authorization': 'Bearer ***'}" in output
    assert token not in output

    records = readable_records(root)
    assert any(name.endswith("manifest.json") for name in records) and any(
        name.endswith("run.json") for name in records
    )
    assert [name for name, content in records.items() if token.encode() in content] == []
    # the step's output kept for the client (task.stdout) went through the same mask
    start_log = next(
        content for name, content in records.items() if name.endswith("start/0/attempt-1/stdout.log")
    )
    assert b"calling the API in eu-west-1 with ***" in start_log
    assert run.datastore.read_run_meta("SecretFlow", run.run_id)["parameters"] == {
        "token": "<secret>",
        "region": "eu-west-1",
    }

    start = run.manifest("start").to_json()["artifacts"]
    assert start["token"]["repr"] == "<secret>" and start["headers"]["repr"] == "<secret>"
    assert start["token_length"]["repr"] == str(len(token))  # what is not secret stays readable
    assert token not in run.manifest("call").caught.message
    for step in ("start", "call", "end"):
        assert token not in json.dumps(raw_xcom("SecretFlow", run.run_id, step))


def test_steps_still_get_the_secret_value(secret_run):
    """Masking is for readers, not for the flow: later steps and the client get the real value."""
    token, _, run, _ = secret_run
    end = run.artifacts("end")
    assert end["token"] == token and end["same"] == token
    assert end["headers"] == {"Authorization": f"Bearer {token}"}


def test_a_secrets_hash_cannot_confirm_a_guess(secret_run):
    """Guards the salt: a secret's blob name (shown in manifests) is not the hash of its pickle,
    so whoever reads a manifest cannot test guesses of the value against it."""
    from airflow_flowspec.datastore.encoding import encode

    token, _, run, _ = secret_run
    guessed = encode(token, name="guess").hash
    refs = run.manifest("end").to_json()["artifacts"]
    assert guessed not in (refs["token"]["hash"], refs["same"]["hash"])


def test_the_dag_carries_no_secret_default(monkeypatch):
    """Guards the translator: Airflow stores and shows a DAG's params, so a secret's default is
    evaluated when the run starts, never put in the DAG."""
    from airflow_flowspec.airflow.registration import dag_for

    token = f"tok-{uuid.uuid4().hex}"
    monkeypatch.setenv("SECRET_FLOW_TOKEN", token)
    dag = dag_for(load_flow(SECRET_FLOW), str(SECRET_FLOW))
    params = dag.params.dump()
    assert params["token"] is None and params["region"] == "eu-west-1"
    assert "secret" in dag.params.get_param("token").description
    assert token not in repr(params)


def test_a_foreach_item_made_from_a_secret_is_stored_as_a_secret(tmp_path):
    """Guards the mask on foreach items (step_runner's TaskExecution._foreach_children): an item
    whose repr shows a secret is salted and shown as <secret> in the split's result and its
    children's frames, like any artifact made from one; the child still gets the real value."""
    from airflow_flowspec.identity import RunIdentity
    from airflow_flowspec.runtime.step_runner import run_step
    from airflow_flowspec.runtime.task_spec import TaskSpec

    flow_file = tmp_path / "secret_foreach_flow.py"
    flow_file.write_text(
        "from airflow_flowspec import FlowSpec, Parameter, step\n\n\n"
        "class SecretForeachFlow(FlowSpec):\n"
        "    token = Parameter('token', secret=True)\n\n"
        "    @step\n"
        "    def start(self):\n"
        "        self.calls = [f'Bearer {self.token}', 'anonymous']\n"
        "        self.next(self.call, foreach='calls')\n\n"
        "    @step\n"
        "    def call(self):\n"
        "        self.header = self.input\n"
        "        self.next(self.join)\n\n"
        "    @step\n"
        "    def join(self, inputs):\n"
        "        self.next(self.end)\n\n"
        "    @step\n"
        "    def end(self):\n"
        "        pass\n"
    )
    token = f"tok-{uuid.uuid4().hex}"
    root = str(tmp_path / "store")
    spec = TaskSpec(
        str(flow_file), RunIdentity("SecretForeachFlow", "r1"), "start", root, parameters={"token": token}
    )
    result = run_step(spec)
    items = [child["stack"][-1]["item"] for child in result.foreach_children]
    assert [item["repr"] for item in items] == ["<secret>", "'anonymous'"]
    assert token not in json.dumps(result.to_json())

    from airflow_flowspec.datastore.manifest import ForeachFrame

    child = TaskSpec(
        str(flow_file),
        RunIdentity("SecretForeachFlow", "r1"),
        "call",
        root,
        map_index=0,
        input_manifests=[result.manifest],
        foreach_stack=[ForeachFrame.from_json(frame) for frame in result.foreach_children[0]["stack"]],
    )
    from airflow_flowspec.datastore import Datastore

    header = run_step(child).manifest.artifacts["header"]
    assert Datastore(root).artifacts.load(header) == f"Bearer {token}"
