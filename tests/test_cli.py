"""``python flow.py run|show|check`` as a user types it, each in a fresh process."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

from harness import (
    FLOWS,
    REPO,
    console_lines,
    parse_dags_folder,
    printed_texts,
    run_cli,
    run_id_of,
    short_id_of,
)


def test_run_prints_run_id_first_then_progress_and_step_output(tmp_path):
    result = run_cli(
        FLOWS / "branch_flow.py",
        "run",
        "--alpha",
        "0.3",
        "--label",
        "cli",
        env={"AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(tmp_path / "store")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = console_lines(result.stdout)
    run_id = run_id_of(result.stdout)
    # The short id first, as Metaflow prints its run id; then Airflow's, for airflow commands.
    assert lines[:2] == [
        "Workflow starting (run-id 1):",
        f"Airflow runs it as run {run_id} of the DAG BranchFlow.",
    ] and run_id.startswith("manual__")
    for step in ("start", "left", "right", "join", "end"):
        assert f"[1/{step}/0] Task is starting." in lines
        assert f"[1/{step}/0] Task finished successfully." in lines
    assert lines.index("[1/start/0] Task is starting.") < lines.index("[1/end/0] Task is starting.")
    assert lines[-1] == "Done!"
    # The artifacts went to the configured local store, values typed from the command line.
    from airflow_flowspec.datastore import open_datastore

    store = open_datastore(str(tmp_path / "store"))
    end = store.latest_attempt_manifest("BranchFlow", run_id, "end", "0").artifacts
    assert store.artifacts.load(end["alpha"]) == 0.3
    assert store.artifacts.load(end["summary"]) == "cli:False:same everywhere"


def test_failed_run_exits_non_zero_and_shows_the_step_error(tmp_path):
    result = run_cli(
        FLOWS / "failing_flow.py", "run", env={"AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(tmp_path / "store")}
    )
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "ZeroDivisionError: the data had no rows to average" in output
    assert "failed in step(s): crunch" in result.stderr


def test_lint_error_is_one_paragraph_without_traceback():
    result = run_cli(FLOWS / "lint_error_flow.py", "run")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "lint_error_flow.py, line 7" in result.stderr
    assert "unknown step, helper" in result.stderr


def test_bad_parameter_value_is_refused_before_anything_runs():
    result = run_cli(FLOWS / "branch_flow.py", "run", "--epochs", "many")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "Parameter 'epochs' of flow BranchFlow expects a value of type int, got 'many'" in result.stderr


def test_a_float_parameter_that_is_not_finite_is_refused_before_anything_runs(tmp_path):
    """Guards the finite check of Parameter.convert on the command line: `run --alpha nan` ran with,
    and recorded, the default 0.5 (Airflow hands nan, inf and 1e400 to the run as null)."""
    from airflow_flowspec.parameters import FINITE_RULE

    store = tmp_path / "store"
    for given, shown in (
        ("nan", "'nan'"),
        ("--alpha=-inf", "'-inf'"),
        ("1e400", "'1e400' (it reads as inf)"),
    ):
        arguments = [given] if given.startswith("--") else ["--alpha", given]
        result = run_cli(
            FLOWS / "branch_flow.py", "run", *arguments, env={"AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(store)}
        )
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr == (
            f"BranchFlow: Parameter 'alpha' of flow BranchFlow was given {shown}, which is not a finite "
            f"number. The rule: {FINITE_RULE}.\n"
        )
    assert not store.exists()


def test_a_tag_with_a_control_character_is_refused_before_anything_runs(tmp_path):
    """Guards cli._dispatch's call of the shared tag rule: one tag with a newline would print a fake
    row in `airflow-flowspec runs`."""
    store = tmp_path / "store"
    result = run_cli(
        FLOWS / "branch_flow.py",
        "run",
        "--tag",
        "ok",
        "--tag",
        "exp\nfake-run\tsucceeded",
        env={"AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(store)},
    )
    assert result.returncode == 1 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.startswith(
        "BranchFlow: The tag 'exp\\nfake-run\\tsucceeded' of the run of flow BranchFlow (run --tag) is "
        "refused: it contains the control character '\\n'. The rule: a tag is a non-empty string"
    )
    assert result.stderr.count("\n") == 1  # one paragraph, on one line
    assert not store.exists()


def test_run_with_batch_is_refused_at_once_for_an_unknown_extension_or_a_local_datastore(tmp_path):
    """Guards ``--with``: only batch is known, and Batch containers need an S3 datastore; both are
    one paragraph before anything runs, not a failure inside the first job."""
    env = {"AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(tmp_path / "store")}
    unknown = run_cli(FLOWS / "branch_flow.py", "run", "--with", "kubernetes", env=env)
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert "--with kubernetes is not something flow BranchFlow can run with here" in unknown.stderr
    local = run_cli(FLOWS / "branch_flow.py", "--with", "batch", "run", env=env)
    assert local.returncode == 1 and "Traceback" not in local.stderr
    assert f"[flowspec] datastore_root is {str(tmp_path / 'store')!r}" in local.stderr
    assert "AIRFLOW__FLOWSPEC__DATASTORE_ROOT=s3://bucket/prefix" in local.stderr
    assert not (tmp_path / "store").exists()  # nothing ran, nothing was written


def test_show_prints_steps_and_edges():
    result = run_cli(FLOWS / "foreach_flow.py", "show")
    assert result.returncode == 0
    assert "start -> upper (foreach over letters)" in result.stdout
    assert "join -> end" in result.stdout


def test_check_warns_only_when_the_configured_discovery_would_skip_the_file(tmp_path):
    """`check` reads [core] might_contain_dag_callable as Airflow would (environment, then airflow.cfg)."""
    cfg = tmp_path / "airflow.cfg"
    unset = {"AIRFLOW__CORE__MIGHT_CONTAIN_DAG_CALLABLE": "", "AIRFLOW_CONFIG": str(cfg)}

    cfg.write_text("[core]\nload_examples = False\n")  # Airflow's default heuristic: no "dag" here
    result = run_cli(FLOWS / "foreach_flow.py", "check", env=unset)
    assert result.returncode == 0 and "lint passed" in result.stdout
    assert "will skip this file" in result.stderr
    assert "might_contain_dag_callable = airflow_flowspec.discovery.might_contain_dag" in result.stderr

    cfg.write_text("[core]\nmight_contain_dag_callable = airflow_flowspec.discovery.might_contain_dag\n")
    result = run_cli(FLOWS / "foreach_flow.py", "check", env=unset)
    assert result.returncode == 0 and "lint passed" in result.stdout
    assert result.stderr == ""

    cfg.write_text("[core]\ndag_discovery_safe_mode = False\n")
    assert run_cli(FLOWS / "foreach_flow.py", "check", env=unset).stderr == ""

    # Any other callable is asked, as the DAG processor would ask it.
    cfg.write_text("[core]\nmight_contain_dag_callable = os.path.isfile\n")
    assert run_cli(FLOWS / "foreach_flow.py", "check", env=unset).stderr == ""
    cfg.write_text("[core]\nmight_contain_dag_callable = no_such_module.finder\n")
    result = run_cli(FLOWS / "foreach_flow.py", "check", env=unset)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "might_contain_dag_callable is 'no_such_module.finder', which cannot be imported" in result.stderr


RETRY_FLOW = """
from airflow_flowspec import FlowSpec, current, retry, step


class RetryAtOnceFlow(FlowSpec):
    @retry(times=1)
    @step
    def start(self):
        if current.retry_count == 0:
            raise RuntimeError("the first attempt fails")
        print(f"attempt {current.retry_count} went through")
        self.items = [1, 2]
        self.next(self.body, foreach="items")

    @retry(times=1)
    @step
    def body(self):
        if current.retry_count == 0:
            raise RuntimeError("the first attempt of each item fails")
        self.value = self.input
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.value for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        print("total", self.total)


if __name__ == "__main__":
    RetryAtOnceFlow()
"""


def test_run_retries_a_failed_step_at_once_while_the_dags_folder_keeps_its_delay(tmp_path):
    """@retry's default 2-minute delay used to make `run` wait 2 minutes per retry, warning
    "No tasks to run" every second; Metaflow's local runtime retries at once, and so does `run`."""
    dags = tmp_path / "dags"
    dags.mkdir()
    flow_file = dags / "retry_at_once_flow.py"
    flow_file.write_text(RETRY_FLOW)

    started = time.monotonic()
    result = run_cli(flow_file, "run", env={"AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(tmp_path / "store")})
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert elapsed < 60, elapsed  # three retries of 2 minutes each before; a few seconds now
    assert "No tasks to run" not in output and "Sleeping" not in output
    run_id = short_id_of(result.stdout)
    lines = console_lines(result.stdout)
    for task in ("start/0", "body/0", "body/1"):
        assert lines.count(f"[{run_id}/{task}] Task is starting.") == 1, task
        assert lines.count(f"[{run_id}/{task}] Task is starting (retry).") == 1, task
        assert lines.count(f"[{run_id}/{task}] Task finished successfully.") == 1, task
    texts = printed_texts(result.stdout)
    assert "attempt 1 went through" in texts and "total 3" in texts
    assert lines[-1] == "Done!"

    # Airflow proper reads the file from its dags folder with the delay the flow asks for.
    parsed = parse_dags_folder(dags)["dags"]["RetryAtOnceFlow"]["dag"]
    for task in parsed["tasks"]:
        settings = task["__var"].get("partial_kwargs", task["__var"])  # a foreach step is mapped
        if task["__var"]["task_id"] in ("start", "body"):
            delay = settings["retry_delay"]
            assert settings["retries"] == 1
            assert (delay["__var"] if isinstance(delay, dict) else delay) == 120.0, task


HOME_FLOW = """
from airflow_flowspec import FlowSpec, step


class HomeFlow(FlowSpec):
    @step
    def start(self):
        from airflow.sdk.execution_time.xcom import XCom  # the class [core] xcom_backend selects

        self.xcom_backend = f"{XCom.__module__}.{XCom.__qualname__}"
        self.next(self.end)

    @step
    def end(self):
        print("HomeFlow is done.")


if __name__ == "__main__":
    HomeFlow()
"""

#: An Airflow user's own airflow.cfg: chatty logs, example DAGs, Airflow's default XCom backend.
USER_AIRFLOW_CFG = """\
[core]
load_examples = True
xcom_backend = airflow.sdk.bases.xcom.BaseXCom

[logging]
logging_level = INFO

[flowspec]
datastore_root = {datastore_root}
"""


def test_run_shows_the_same_output_whatever_the_users_airflow_home_and_leaves_it_untouched(
    tmp_path, monkeypatch
):
    """`run` runs on its private home, with our XCom backend and quiet logs, even when AIRFLOW_HOME
    names a user's Airflow; it reads their [flowspec] options and writes nothing there."""
    from airflow_flowspec import namespace
    from airflow_flowspec.airflow.local_run import airflow_environment
    from airflow_flowspec.client import Run, namespaces

    flow_file = tmp_path / "home_flow.py"
    flow_file.write_text(HOME_FLOW)
    flowspec_home = {"FLOWSPEC_HOME": str(tmp_path / "flowspec-home")}
    plain = run_cli(
        flow_file, "run", env={**flowspec_home, "AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(tmp_path / "store")}
    )
    assert plain.returncode == 0, plain.stdout + plain.stderr

    user_home = tmp_path / "user-airflow"
    user_home.mkdir()
    cfg = user_home / "airflow.cfg"
    cfg.write_text(USER_AIRFLOW_CFG.format(datastore_root=tmp_path / "user-store"))
    cfg_before = cfg.read_bytes()
    # Only the user's home speaks: none of the session's Airflow variables are set.
    session_variables = (*airflow_environment(tmp_path), "AIRFLOW__FLOWSPEC__DATASTORE_ROOT")
    users = run_cli(
        flow_file, "run", env={**flowspec_home, "AIRFLOW_HOME": str(user_home)}, unset=session_variables
    )
    assert users.returncode == 0, users.stdout + users.stderr

    def normalized(text: str, result) -> str:
        return "\n".join(console_lines(text.replace(run_id_of(result.stdout), "<run>")))

    assert normalized(users.stdout, users) == normalized(plain.stdout, plain)
    assert normalized(users.stderr, users) == normalized(plain.stderr, plain) == ""
    assert "[info" not in users.stdout and "example" not in users.stdout
    assert cfg.read_bytes() == cfg_before
    assert sorted(p.name for p in user_home.iterdir()) == ["airflow.cfg"]  # no airflow.db, no logs

    # Artifacts went where the user's [flowspec] datastore_root says, through our XCom backend.
    run_id = run_id_of(users.stdout)
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", str(tmp_path / "user-store"))
    monkeypatch.setattr(namespaces, "_chosen", namespaces._UNSET)
    namespace(None)
    start = Run(f"HomeFlow/{run_id}")["start"].task
    assert start.data.xcom_backend == "airflow_flowspec.xcom_backend._backend.FlowspecXComBackend"
    # ...and Airflow's XCom table (in run's private home) holds the step's manifest.
    with sqlite3.connect(tmp_path / "flowspec-home" / "airflow" / "airflow.db") as db:
        (row,) = db.execute(
            "SELECT value FROM xcom WHERE dag_id = 'HomeFlow' AND run_id = ? AND task_id = 'start'"
            " AND key = 'return_value'",
            (run_id,),
        ).fetchall()
    manifest = json.loads(row[0])
    assert manifest["flowspec_manifest"] == 1 and manifest["pathspec"] == f"HomeFlow/{run_id}/start/0"
    assert sorted(manifest["artifacts"]) == ["xcom_backend"]


WARNING_FLOW = '''
import warnings

from airflow_flowspec import FlowSpec, step


class ConvergenceWarning(UserWarning):
    """As scikit-learn's: raised by a model that stopped before converging."""


class WarningFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.fit)

    @step
    def fit(self):
        for _ in range(2):
            warnings.warn(
                "lbfgs failed to converge (status=1):\\nSTOP: TOTAL NO. OF ITERATIONS REACHED LIMIT.\\n\\n"
                "Increase the number of iterations (max_iter).",
                ConvergenceWarning,
            )
        print("fitted")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    WarningFlow()
'''


def test_a_library_warning_shows_once_as_one_line_naming_the_step(tmp_path, monkeypatch):
    from airflow_flowspec import namespace
    from airflow_flowspec.client import Run, namespaces

    flow_file = tmp_path / "warning_flow.py"
    flow_file.write_text(WARNING_FLOW)
    result = run_cli(flow_file, "run", env={"AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(tmp_path / "store")})
    assert result.returncode == 0, result.stdout + result.stderr
    run_id, short_id = run_id_of(result.stdout), short_id_of(result.stdout)
    line = (
        f"[{short_id}/fit/0] ConvergenceWarning: lbfgs failed to converge (status=1): STOP: TOTAL NO. OF "
        f"ITERATIONS REACHED LIMIT. Increase the number of iterations (max_iter)."
    )
    output = result.stdout + result.stderr
    lines = console_lines(result.stdout) + console_lines(result.stderr)
    assert [text for text in lines if "ConvergenceWarning" in text or "converge" in text] == [line]
    assert console_lines(result.stderr) == [line]
    assert "py.warnings" not in output and "Traceback" not in output and "warning_flow.py" not in output
    # The line is kept with the task's output, as everything the step writes is (the terminal's
    # prefix is the run's, not the task's).
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", str(tmp_path / "store"))
    monkeypatch.setattr(namespaces, "_chosen", namespaces._UNSET)
    namespace(None)
    assert Run(f"WarningFlow/{run_id}")["fit"].task.stderr == line.removeprefix(f"[{short_id}/fit/0] ") + "\n"


def test_runs_started_at_once_in_a_new_home_take_turns_creating_what_they_share(tmp_path):
    """Guards the private home's lock (local_run.home_lock): three runs of a flow, started at
    once where no run has been, all succeed; without the lock the database migration and the
    flow's first DAG row race (a 'table already exists' or a UNIQUE constraint failure)."""
    flow_file = tmp_path / "hello_flow.py"
    flow_file.write_text((REPO / "benchmarks" / "flows" / "hello_flow.py").read_text())
    env = {
        **os.environ,
        "FLOWSPEC_HOME": str(tmp_path / "new-home"),
        "AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(tmp_path / "store"),
    }
    env.pop("AIRFLOW_HOME", None)
    processes = [
        subprocess.Popen([sys.executable, str(flow_file), "run"], env=env, cwd=tmp_path, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(3)
    ]  # fmt: skip
    outputs = [process.communicate(timeout=240)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    assert all(console_lines(output)[-1] == "Done!" for output in outputs)


def test_a_json_string_parameter_arrives_as_the_string_and_a_failed_run_with_a_required_parameter_is_recorded(
    tmp_path,
):
    """A JSON value that is a string (``--payload '"hello"'``) was parsed twice and refused; a run of
    a flow with a required parameter that failed crashed in Airflow's in-process DAG callback
    (``ParamValidationError``) instead of recording the failed run."""
    store = tmp_path / "store"
    result = run_cli(
        FLOWS / "required_json_flow.py",
        "run",
        "--payload",
        '"hello"',
        "--outcome",
        "fail",
        env={"AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(store)},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "payload is 'hello'" in printed_texts(result.stdout)
    assert "ParamValidationError" not in result.stdout + result.stderr
    assert "Workflow failed." in printed_texts(result.stderr)
    from airflow_flowspec.datastore import open_datastore

    status = open_datastore(str(store)).run_status("RequiredJsonFlow", run_id_of(result.stdout))
    assert status is not None and status["status"] == "failed"


def test_run_namespace_changes_what_the_steps_client_sees_not_the_runs_own_namespace(tmp_path):
    """Metaflow's ``run --namespace``: the client inside the steps looks in that namespace (an empty
    one: every run); the run keeps its own tags and ``current.namespace``, and is not production."""
    import getpass

    env = {"AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(tmp_path / "store")}
    elsewhere = run_cli(FLOWS / "namespace_flow.py", "run", "--namespace", "user:nobody", env=env)
    assert elsewhere.returncode == 0, elsewhere.stdout + elsewhere.stderr
    texts = printed_texts(elsewhere.stdout)
    assert "client namespace: 'user:nobody'" in texts
    assert f"current.namespace: user:{getpass.getuser()}" in texts
    assert "is_production: False" in texts  # a local run is never production (Metaflow's rule)
    everywhere = run_cli(FLOWS / "namespace_flow.py", "run", "--namespace=", env=env)
    assert everywhere.returncode == 0, everywhere.stdout + everywhere.stderr
    texts = printed_texts(everywhere.stdout)
    assert "client namespace: None" in texts and "sees a run: True" in texts
