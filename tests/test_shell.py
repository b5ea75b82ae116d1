"""``airflow-flowspec``, the shell side of the client: runs, show, get and code, as a user types them."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness import FLOWS, run_cli


def shell(*args: str, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "airflow_flowspec.shell", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("shell-store")
    flow_file = tmp_path_factory.mktemp("flows") / "foreach_flow.py"
    shutil.copy(FLOWS / "foreach_flow.py", flow_file)
    for tag in ("first", "second"):
        result = run_cli(flow_file, "run", "--tag", tag, env={"AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(root)})
        assert result.returncode == 0, result.stderr
    return root


def test_the_console_script_is_installed():
    assert shutil.which("airflow-flowspec", path=os.path.dirname(sys.executable))


def test_runs_lists_newest_first_with_status_and_tags(store):
    result = shell("runs", "ForeachFlow", root=store)
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(lines) == 2 and [line[1] for line in lines] == ["succeeded", "succeeded"]
    assert "second" in lines[0][3].split() and "first" in lines[1][3].split()
    tagged = shell("runs", "ForeachFlow", "--tag", "first", root=store).stdout.splitlines()
    assert [line.split("\t")[0] for line in tagged] == [lines[1][0]]
    assert (
        shell("runs", "ForeachFlow", "-n", "1", root=store).stdout.splitlines()
        == result.stdout.splitlines()[:1]
    )


def test_show_get_and_code_by_pathspec(store, tmp_path):
    run_id = shell("runs", "ForeachFlow", "-n", "1", root=store).stdout.split("\t")[0]
    run = shell("show", f"ForeachFlow/{run_id}", root=store).stdout
    assert "succeeded" in run and "  upper\t4 tasks" in run and "  start\t1 task" in run

    upper = shell("show", f"ForeachFlow/{run_id}/upper", root=store).stdout
    assert f"ForeachFlow/{run_id}/upper/3\tattempt 1\tforeach index 3" in upper
    assert "  result\tstr\t" in upper and "'3:D'" in upper

    printed = shell("get", f"ForeachFlow/{run_id}/end/results", root=store)
    assert printed.stdout.strip() == "['0:A', '1:B', '2:C', '3:D']"
    assert shell("get", f"ForeachFlow/{run_id}/upper/2/result", root=store).stdout.strip() == "2:C"
    pickled = shell("get", f"ForeachFlow/{run_id}/start/big", "-o", str(tmp_path / "big.pkl"), root=store)
    assert pickled.returncode == 0, pickled.stderr
    assert pickle.loads((tmp_path / "big.pkl").read_bytes()) == b"x" * (2 * 1024 * 1024)

    written = shell("code", f"ForeachFlow/{run_id}", "-o", str(tmp_path / "code"), root=store)
    assert Path(written.stdout.strip()).read_text() == (FLOWS / "foreach_flow.py").read_text()


def test_a_lookup_that_fails_is_one_paragraph(store):
    result = shell("get", "ForeachFlow/no-such-run/end/results", root=store)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("airflow-flowspec get: Flow 'ForeachFlow' has no run 'no-such-run'")
