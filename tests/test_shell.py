"""``airflow-flowspec``, the shell side of the client: runs, show, get and code, as a user types them."""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
import sys
from pathlib import Path

import pytest
from harness import FLOWS, a_manifest, run_cli, shell


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("shell-store")
    flow_file = tmp_path_factory.mktemp("flows") / "foreach_flow.py"
    shutil.copy(FLOWS / "foreach_flow.py", flow_file)
    for tag in ("first", "second"):
        id_file = root / f"{tag}.run-id"
        result = run_cli(
            flow_file,
            "run",
            "--tag",
            tag,
            "--run-id-file",
            str(id_file),
            env={"AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(root)},
        )
        assert result.returncode == 0, result.stderr
    return root


def test_the_console_script_is_installed():
    assert shutil.which("airflow-flowspec", path=os.path.dirname(sys.executable))


def test_runs_lists_newest_first_with_status_and_tags(store):
    """A row: run id, status, start, duration, parameters, tags (tests/test_flow_commands.py tries
    duration and parameters)."""
    result = shell("runs", "ForeachFlow", root=store)
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(lines) == 2 and [line[1] for line in lines] == ["succeeded", "succeeded"]
    assert "second" in lines[0][5].split() and "first" in lines[1][5].split()
    tagged = shell("runs", "ForeachFlow", "--tag", "first", root=store).stdout.splitlines()
    assert [line.split("\t")[0] for line in tagged] == [lines[1][0]]
    assert (
        shell("runs", "ForeachFlow", "-n", "1", root=store).stdout.splitlines()
        == result.stdout.splitlines()[:1]
    )


def test_show_get_and_code_by_pathspec(store, tmp_path):
    run_id = shell("runs", "ForeachFlow", "-n", "1", root=store).stdout.split("\t")[0]
    assert run_id == "2"  # the short id of the second run, which every command takes
    run = shell("show", f"ForeachFlow/{run_id}", root=store).stdout
    assert "succeeded" in run and "  upper\t4 tasks" in run and "  start\t1 task" in run
    full_id = run.split("\t")[0].split("/")[1]  # show prints the run's full id (Airflow's)
    assert full_id.startswith("manual__") and "\tshort id 2\t" in run

    upper = shell("show", f"ForeachFlow/{run_id}/upper", root=store).stdout
    assert f"ForeachFlow/{full_id}/upper/3\tattempt 1\tforeach index 3" in upper
    assert shell("show", f"ForeachFlow/{full_id}/upper", root=store).stdout == upper
    assert "  result\tstr\t" in upper and "'3:D'" in upper

    printed = shell("get", f"ForeachFlow/{run_id}/end/results", root=store)
    assert printed.stdout.strip() == "['0:A', '1:B', '2:C', '3:D']"
    assert shell("get", f"ForeachFlow/{run_id}/upper/2/result", root=store).stdout.strip() == "2:C"
    pickled = shell("get", f"ForeachFlow/{run_id}/start/big", "-o", str(tmp_path / "big.pkl"), root=store)
    assert pickled.returncode == 0, pickled.stderr
    assert pickle.loads((tmp_path / "big.pkl").read_bytes()) == b"x" * (2 * 1024 * 1024)

    written = shell("code", f"ForeachFlow/{run_id}", "-o", str(tmp_path / "code"), root=store)
    assert Path(written.stdout.strip()).read_text() == (FLOWS / "foreach_flow.py").read_text()


def test_a_short_id_latest_and_the_run_id_file_name_the_same_run(store):
    """Guards short ids on the command line (issue 21): ``--run-id-file`` holds the short id (as
    Metaflow's holds the id its commands take back), and ``show``/``get`` take it, ``latest`` and
    the full id alike; a number no run has is one paragraph saying which numbers there are."""
    assert [(store / f"{tag}.run-id").read_text() for tag in ("first", "second")] == ["1", "2"]
    latest = shell("show", "ForeachFlow/latest", root=store)
    assert latest.returncode == 0, latest.stderr
    assert latest.stdout == shell("show", "ForeachFlow/2", root=store).stdout
    full_id = latest.stdout.split("\t")[0].split("/")[1]
    assert shell("show", f"ForeachFlow/{full_id}", root=store).stdout == latest.stdout
    first = shell("get", "ForeachFlow/1/upper/2/result", root=store)
    assert first.returncode == 0 and first.stdout.strip() == "2:C"
    unknown = shell("show", "ForeachFlow/3", root=store)
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert unknown.stderr.startswith("airflow-flowspec show: Flow 'ForeachFlow' has no run number 3 ")
    assert "its runs are numbered 1 to 2" in unknown.stderr


def test_a_lookup_that_fails_is_one_paragraph(store):
    result = shell("get", "ForeachFlow/no-such-run/end/results", root=store)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("airflow-flowspec get: Flow 'ForeachFlow' has no run 'no-such-run'")


# -- what others stored: printed escaped, never sent to the terminal raw --------------------------

#: What a step's value, a tag, a run id or a name may hold: a screen clear, a cursor move, a window
#: title, a bell, a line overwrite, and a fake row of `runs` output.
CLEAR = "\x1b[2J\x1b[H"
FAKE_ROW = "x\nfake-run\tsucceeded\t2026-01-01T00:00:00+00:00\tuser:root"


class HostileRepr:
    """A value whose repr is an escape sequence (a step can store one)."""

    def __repr__(self) -> str:
        return f"{CLEAR}You have been logged out\x07"


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory):
    """Runs of HostileFlow written through the datastore as the runtime writes them, holding control
    characters everywhere the shell prints from: tags, a run id, a step name, an artifact's name,
    type and repr, a string value; plus a run whose record is not JSON."""
    from airflow_flowspec.datastore.store import Datastore

    root = tmp_path_factory.mktemp("hostile-store")
    datastore = Datastore(str(root))
    runs = {
        "plain": ["user:ana", "café-実験-✓"],
        "tagged": ["user:ana", FAKE_ROW, "\x1b]0;pwned\x07"],
        f"run{CLEAR}": ["user:ana"],
    }
    for day, (run_id, tags) in enumerate(runs.items(), start=1):
        record = datastore.write_run_meta(
            "HostileFlow",
            run_id,
            {"created_at": f"2026-11-0{day}T00:00:00+00:00", "tags": tags, "system_tags": ["user:ana"]},
        )
        refs = datastore.artifacts.save_many(
            {
                "hostile": HostileRepr(),
                "text": f"line one\nline two{CLEAR}\rFAKE",
                "greeting": "café 日本語 ✓",
            }
        )
        artifacts = dict(refs)
        planted = dataclasses.replace(refs["greeting"], type=f"str{CLEAR}", repr=f"'{CLEAR}'")
        artifacts[f"name{CLEAR}"] = planted  # a manifest edited by hand
        for step in ("start", f"step{CLEAR}"):
            datastore.write_manifest(a_manifest("HostileFlow", run_id, step, artifacts=artifacts))
        datastore.index_run("HostileFlow", run_id, record)
        datastore.finish_run("HostileFlow", run_id, True, {})
    record = datastore.write_run_meta("HostileFlow", "broken", {"created_at": "2026-11-09T00:00:00+00:00"})
    datastore.index_run("HostileFlow", "broken", record)
    record_file = root / "HostileFlow" / "runs" / "broken" / "run.json"
    record_file.write_text("{not json")
    return root


def printed_safely(text: str) -> bool:
    """Nothing raw but the line ends and the column tabs the shell itself prints."""
    return all(character.isprintable() or character in "\n\t" for character in text)


def test_runs_prints_stored_tags_and_run_ids_escaped_one_row_per_run(hostile_store):
    """Guards terminal_safe in `runs`: a tag with a newline prints no fake row, an escape sequence
    in a tag or run id never reaches the terminal; printable Unicode stays as it is. Guards too the
    skip of an unreadable record: one line on stderr names it, the other runs are listed."""
    result = shell("-A", "runs", "HostileFlow", root=hostile_store)
    assert result.returncode == 0, result.stderr
    assert printed_safely(result.stdout) and printed_safely(result.stderr)
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [row[0] for row in rows] == ["run\\x1b[2J\\x1b[H", "tagged", "plain"]  # one row per run
    assert all(len(row) == 6 for row in rows)
    assert rows[1][5].split(" ") == [
        "\\x1b]0;pwned\\x07",
        "user:ana",
        "x\\nfake-run\\tsucceeded\\t2026-01-01T00:00:00+00:00\\tuser:root",
    ]
    assert rows[2][5] == "café-実験-✓ user:ana"
    (warning,) = result.stderr.splitlines()
    assert warning.startswith(
        "airflow-flowspec runs: warning: Run HostileFlow/broken is skipped: its record "
    )
    assert "broken/run.json is not valid JSON" in warning


def test_show_prints_step_and_artifact_names_types_and_reprs_escaped(hostile_store):
    """Guards terminal_safe in `show`: a run's steps and tags, a task's artifact names, types and
    reprs (a repr with an escape sequence, a name or type planted in a manifest)."""
    run = shell("-A", "show", "HostileFlow/tagged", root=hostile_store)
    assert run.returncode == 0, run.stderr
    assert printed_safely(run.stdout)
    assert run.stdout.splitlines()[0] == (
        "HostileFlow/tagged\tsucceeded\ttags: \\x1b]0;pwned\\x07 user:ana "
        "x\\nfake-run\\tsucceeded\\t2026-01-01T00:00:00+00:00\\tuser:root"
    )
    assert "  step\\x1b[2J\\x1b[H\t1 task" in run.stdout.splitlines()

    task = shell("-A", "show", "HostileFlow/tagged/start/0", root=hostile_store)
    assert task.returncode == 0, task.stderr
    assert printed_safely(task.stdout)
    lines = task.stdout.splitlines()
    assert "'café 日本語 ✓'" in task.stdout  # printable Unicode stays readable
    assert any(line.endswith("\t\\x1b[2J\\x1b[HYou have been logged out\\x07") for line in lines)
    assert any(line.startswith("  name\\x1b[2J\\x1b[H\tstr\\x1b[2J\\x1b[H\t") for line in lines)

    escaped_run_id = shell("-A", "show", f"HostileFlow/run{CLEAR}", root=hostile_store)
    assert escaped_run_id.returncode == 0 and printed_safely(escaped_run_id.stdout)
    assert escaped_run_id.stdout.startswith("HostileFlow/run\\x1b[2J\\x1b[H\tsucceeded")


def test_get_prints_a_value_escaped_and_get_o_writes_it_untouched(hostile_store, tmp_path):
    """Guards terminal_safe in `get`: a string keeps its lines, but an escape sequence or a carriage
    return in it is shown escaped; the pickle written with -o is the value as the step stored it."""
    printed = shell("-A", "get", "HostileFlow/plain/start/text", root=hostile_store)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == "line one\nline two\\x1b[2J\\x1b[H\\rFAKE\n"

    written = shell(
        "-A", "get", "HostileFlow/plain/start/text", "-o", str(tmp_path / "t.pkl"), root=hostile_store
    )
    assert written.returncode == 0, written.stderr
    assert pickle.loads((tmp_path / "t.pkl").read_bytes()) == f"line one\nline two{CLEAR}\rFAKE"


def test_an_error_naming_stored_tags_and_an_unreadable_run_is_printed_escaped(hostile_store):
    """Guards terminal_safe on the shell's error line: the namespace error lists the run's stored
    tags; a run asked for by name whose record is unreadable is refused in one line naming it."""
    outside = shell("show", "HostileFlow/tagged", root=hostile_store)  # user:ana's run, not ours
    assert outside.returncode == 1 and printed_safely(outside.stderr)
    assert outside.stderr.count("\n") == 1 and "x\\nfake-run\\tsucceeded" in outside.stderr

    broken = shell("-A", "show", "HostileFlow/broken", root=hostile_store)
    assert broken.returncode == 1 and broken.stderr.count("\n") == 1
    assert broken.stderr.startswith("airflow-flowspec show: Run HostileFlow/broken cannot be read: ")
    assert "is not valid JSON" in broken.stderr and "Restore or delete that file" in broken.stderr
