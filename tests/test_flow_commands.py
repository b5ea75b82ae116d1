"""``python flow.py logs|dump|tag|output-dot`` and the shell's ``get``/``runs`` on one real run of a
12-wide foreach, as a Metaflow user types them; ``dump`` and ``output-dot`` beside what Metaflow 2.19
prints for the same file."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import sys

import pytest
from harness import FLOWS, a_manifest, run_cli, run_id_of, shell

FLOW = "CommandsFlow"


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    """The flow file, its datastore and the id of its one run (``python flow.py run``)."""
    folder = tmp_path_factory.mktemp("commands")
    flow_file = folder / "commands_flow.py"
    shutil.copy(FLOWS / "commands_flow.py", flow_file)
    root = folder / "store"
    result = run_cli(flow_file, "run", env={"AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(root)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Task is starting." in result.stdout  # the banner stays on the terminal (and the task log)
    run_id = run_id_of(result.stdout)
    return flow_file, root, run_id


def flow_cli(ours, *args: str) -> subprocess.CompletedProcess:
    flow_file, root, _ = ours
    return run_cli(flow_file, *args, env={"AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(root)})


@pytest.fixture(scope="module")
def metaflow(tmp_path_factory):
    """The same file under Metaflow (its import line changed), run once: (file, env, run id)."""
    folder = tmp_path_factory.mktemp("metaflow-commands")
    flow_file = folder / "commands_flow.py"
    source = (FLOWS / "commands_flow.py").read_text()
    flow_file.write_text(source.replace("from airflow_flowspec import ", "from metaflow import "))
    env = {**os.environ, "USERNAME": "tester", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(folder / "store")}
    result = metaflow_cli(flow_file, env, "run")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    run_id = re.search(r"\[(\d+)/start/", result.stdout + result.stderr).group(1)
    return flow_file, env, run_id


def metaflow_cli(flow_file, env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(flow_file), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=flow_file.parent,
        timeout=300,
    )


# -- results in the shell ----------------------------------------------------------------------


def test_get_on_a_foreach_step_refuses_and_lists_its_tasks(ours):
    _, root, run_id = ours
    step = f"{FLOW}/{run_id}/body"
    refused = shell("get", f"{step}/square", root=root)
    assert refused.returncode == 1 and refused.stdout == ""
    (message,) = refused.stderr.splitlines()  # one paragraph
    assert message.startswith(f"airflow-flowspec get: Step {step} ran 12 tasks (a foreach), each with")
    assert "Flow/run/step/task/artifact" in message and f"e.g. {step}/0/square" in message
    listed = ", ".join(f"{step}/{index}" for index in range(10))
    assert message.endswith(f"Its tasks: {listed}, and 2 more.")

    assert shell("get", f"{step}/3/square", root=root).stdout == "9\n"
    assert shell("get", f"{FLOW}/{run_id}/join/squares", root=root).stdout.startswith("[0, 1, 4, 9,")


def test_runs_shows_duration_and_shortened_parameters(ours, tmp_path):
    _, root, run_id = ours
    result = shell("runs", FLOW, root=root)
    assert result.returncode == 0, result.stderr
    (row,) = [line.split("\t") for line in result.stdout.splitlines()]
    identifier, status, _, duration, parameters, tags = row
    assert (identifier, status) == ("1", "succeeded") and tags.startswith("user:")  # its short id
    assert re.fullmatch(r"\d+\.\ds|\d+m\d\ds", duration), duration
    assert parameters.startswith("alpha=0.5 label='a long label that")
    assert parameters.endswith("...") and len(parameters) <= 80  # the label is cut, the row stays short

    # A run still going shows how long it has run; a secret parameter shows as <secret>.
    from airflow_flowspec.datastore.store import Datastore

    store = Datastore(str(tmp_path / "store"))
    record = store.write_run_meta(
        FLOW, "going", {"created_at": "2026-11-01T00:00:00+00:00", "tags": ["user:ana"], "system_tags": []}
    )
    refs = store.artifacts.save_many({"token": "hunter2", "depth": 3}, secret_names=["token"])
    store.write_manifest(a_manifest(FLOW, "going", "start", artifacts=refs, parameters=["token", "depth"]))
    store.index_run(FLOW, "going", record)
    going = shell("-A", "runs", FLOW, root=tmp_path / "store")
    assert going.returncode == 0, going.stderr
    (row,) = [line.split("\t") for line in going.stdout.splitlines()]
    assert row[1] == "running" and re.fullmatch(r"\d+d\d\dh so far", row[3]), row
    assert row[4] == "depth=3 token=<secret>"


def test_task_stdout_is_the_steps_own_output(ours, monkeypatch):
    from airflow_flowspec.client import Task, metadata, namespace, namespaces, source

    _, root, run_id = ours
    monkeypatch.setattr(source, "_chosen_root", source._chosen_root)  # restored after the test
    monkeypatch.setattr(namespaces, "_chosen", namespaces._chosen)
    metadata(str(root))
    namespace(None)
    assert Task(f"{FLOW}/{run_id}/start/0").stdout == "starting with alpha 0.5\n"
    task = Task(f"{FLOW}/{run_id}/body/3")
    assert (task.stdout, task.stderr) == ("body 3 out\n", "body 3 err\n")


# -- logs ----------------------------------------------------------------------------------------


def test_logs_prints_a_task_or_every_task_of_a_step(ours):
    run_id = ours[2]
    one = flow_cli(ours, "logs", f"{run_id}/body/3")
    assert one.returncode == 0, one.stderr
    assert one.stdout == "body 3 out\nbody 3 err\n"  # as Metaflow: both streams' text on stdout
    # The header names the run by its short id, as Metaflow's names its run (issue 21).
    header = re.fullmatch(r"Dumping logs of run_id=(\d+) step=body task_id=3\nstdout\nstderr\n", one.stderr)
    assert header, one.stderr
    assert flow_cli(ours, "logs", f"{header.group(1)}/body/3").stdout == one.stdout

    only_out = flow_cli(ours, "logs", f"{run_id}/body", "--stdout")
    assert only_out.stdout == "".join(f"body {index} out\n" for index in range(12))
    assert only_out.stderr.count("Dumping logs of") == 12 and "stderr" not in only_out.stderr
    assert flow_cli(ours, "logs", f"{run_id}/body/5", "--stderr").stdout == "body 5 err\n"
    # The run's short id and "latest" name it as its id does (issue 21).
    assert flow_cli(ours, "logs", "latest/body/5", "--stderr").stdout == "body 5 err\n"


def test_logs_and_dump_refuse_a_bad_path_in_one_paragraph(ours):
    run_id = ours[2]
    for args, expected in (
        (("logs", "no-such-run/body"), f"{FLOW}: Flow '{FLOW}' has no run 'no-such-run'"),
        (("dump", f"{run_id}/bodies"), f"{FLOW}: Run {FLOW}/{run_id} has no step 'bodies'"),
        (("logs", f"{run_id}/body/12"), f"{FLOW}: Step {FLOW}/{run_id}/body has no task '12'"),
        (("dump", run_id), f"{FLOW}: '{run_id}' is not a path to a step or a task of flow {FLOW}"),
    ):
        result = flow_cli(ours, *args)
        assert result.returncode == 1 and "Traceback" not in result.stderr, args
        assert result.stderr.startswith(expected) and result.stderr.count("\n") == 1, result.stderr


# -- dump ----------------------------------------------------------------------------------------


def test_dump_prints_what_metaflows_dump_prints(ours, metaflow):
    """Line for line as Metaflow's (its ``name`` artifact aside, which our tasks do not store), task
    by task in foreach order (Metaflow's order is its task ids')."""
    run_id = ours[2]
    for path in ("body", "end"):
        mine = flow_cli(ours, "dump", f"{run_id}/{path}")
        assert mine.returncode == 0, mine.stderr
        theirs = metaflow_cli(metaflow[0], metaflow[1], "dump", f"{metaflow[2]}/{path}")
        assert theirs.returncode == 0, theirs.stderr
        expected = [line for line in theirs.stdout.splitlines() if not line.startswith("name [")]
        assert sorted(mine.stdout.splitlines()) == sorted(expected)
    body = flow_cli(ours, "dump", f"{run_id}/body").stdout.splitlines()
    assert body[:4] == [
        "alpha [size: 21 type: <class 'float'>] = 0.5",
        "items [size: 40 type: <class 'list'>] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]",
        "label [size: 101 type: <class 'str'>] = " + "a long label that a row of `runs` shortens " * 2,
        "square [size: 5 type: <class 'int'>] = 0",
    ]


def test_dump_options(ours, tmp_path):
    run_id = ours[2]
    names_only = flow_cli(ours, "dump", f"{run_id}/end", "--max-value-size", "0").stdout.splitlines()
    assert names_only and all(line.endswith("] = < artifact too large >") for line in names_only)
    assert not any(line.startswith("_note") for line in names_only)
    private = flow_cli(ours, "dump", f"{run_id}/end", "--private", "--include", "_note,count")
    assert private.stdout.splitlines() == [
        "_note [size: 22 type: <class 'str'>] = private",
        "count [size: 5 type: <class 'int'>] = 12",
    ]
    written = flow_cli(ours, "dump", f"{run_id}/body/2", "--file", str(tmp_path / "dump.pkl"))
    assert written.returncode == 0 and written.stdout == "", written.stderr
    assert pickle.loads((tmp_path / "dump.pkl").read_bytes())[f"{run_id}/body/2"]["square"] == 4


# -- output-dot ----------------------------------------------------------------------------------


@pytest.mark.parametrize("flow_path", [FLOWS / "commands_flow.py", FLOWS / "parity_flow.py"])
def test_output_dot_is_metaflows(flow_path, tmp_path):
    """The same dot text as Metaflow's, a switch's labelled edges included (parity_flow has one)."""
    ours_file = tmp_path / flow_path.name
    ours_file.write_text(flow_path.read_text())
    metaflow_file = tmp_path / f"metaflow_{flow_path.name}"
    metaflow_file.write_text(
        flow_path.read_text().replace("from airflow_flowspec import ", "from metaflow import ")
    )
    mine = run_cli(ours_file, "output-dot")
    theirs = metaflow_cli(metaflow_file, {**os.environ, "USERNAME": "tester"}, "output-dot")
    assert mine.returncode == 0 and theirs.returncode == 0, mine.stderr + theirs.stderr
    assert mine.stdout.startswith("digraph ") and mine.stdout == theirs.stdout
    assert "Try piping the output to 'dot -Tpng -o graph.png'" in mine.stderr


# -- tag -----------------------------------------------------------------------------------------


def test_tag_add_list_replace_and_remove(ours):
    run_id = ours[2]
    added = flow_cli(ours, "tag", "add", "--run-id", run_id, "alpha", "beta")
    assert added.returncode == 0, added.stderr
    lines = added.stdout.splitlines()
    assert lines[:5] == [
        "Operation successful. New tags:",
        "",
        "System tags and tags; only tags can be modified",
        "-" * 56,
        "",
    ]
    user = next(tag for tag in lines[5].split() if tag.startswith("user:"))
    width = max(len("alpha"), len(user))  # Metaflow's columns: each as wide as the longest tag
    assert lines[5:] == ["    ".join(tag.ljust(width) for tag in ("alpha", "beta", user)).rstrip(), ""]

    replaced = flow_cli(ours, "tag", "replace", "--run-id", run_id, "--remove", "beta", "--add", "gamma")
    assert replaced.returncode == 0, replaced.stderr
    listed = flow_cli(ours, "tag", "list", run_id, "--hide-system-tags").stdout.splitlines()
    assert listed[4].split() == ["alpha", "gamma"]
    by_tag = flow_cli(ours, "tag", "list", "--group-by-tag").stdout
    assert f"For tag gamma\n{FLOW}/{run_id}\n" in by_tag
    removed = flow_cli(ours, "tag", "remove", "--run-id", run_id, "alpha", "gamma")
    assert removed.returncode == 0 and removed.stdout.splitlines()[5] == user


def test_tag_refuses_bad_input_in_one_paragraph(ours):
    run_id = ours[2]
    for args, expected in (
        (("add", "alpha"), f"Name the run with --run-id. {FLOW}'s latest run in namespace user:"),
        (("add", "--run-id", "no-such-run", "alpha"), f"Flow '{FLOW}' has no run 'no-such-run'"),
        (("add", "--run-id", run_id, "bad\ttag"), "The tag 'bad\\ttag' of run "),
        (("add", "--run-id", run_id, "user:someone"), "user:someone cannot be added to run "),
        (("remove", "--run-id", run_id, ours_user(ours)), "is a system tag (who or what started the run)"),
        (("add", "--run-id", run_id, "--namespace", "user:nobody", "x"), "not in the namespace user:nobody"),
        (("replace", "--run-id", run_id, "--add", "x"), "tag replace: give at least one tag to remove"),
    ):
        result = flow_cli(ours, "tag", *args)
        assert result.returncode == 1 and "Traceback" not in result.stderr, args
        assert result.stderr.startswith(f"{FLOW}: ") and result.stderr.count("\n") == 1, result.stderr
        assert expected in result.stderr, (args, result.stderr)
    assert "x" not in flow_cli(ours, "tag", "list", run_id, "--hide-system-tags").stdout.split()


def ours_user(ours) -> str:
    from airflow_flowspec.datastore.store import Datastore

    record = Datastore(str(ours[1])).read_run_meta(FLOW, ours[2])
    return next(tag for tag in record["tags"] if tag.startswith("user:"))
