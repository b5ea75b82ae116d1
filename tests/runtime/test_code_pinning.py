"""A run executes the code it started with: the flow file and the modules beside it are recorded
once per distinct content when the run starts, and every task loads them from that record, whatever
the dags folder holds by then (Airflow builds each task from the current file).

Guards: code recorded before the start step runs, the package reference handed from manifest to
manifest, recorded modules served ahead of the (edited) dags folder, and one upload per content.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from harness import attempt, run_flow, write_pinned_flow

from airflow_flowspec import config
from airflow_flowspec.datastore import code_package, keys, open_datastore
from airflow_flowspec.datastore.artifacts import ArtifactRef
from airflow_flowspec.errors import CodePackageError
from airflow_flowspec.identity import RunIdentity
from airflow_flowspec.runtime.process import write_task_spec
from airflow_flowspec.runtime.task_spec import RunContext, TaskSpec


@pytest.fixture
def flow_dir(tmp_path: Path, monkeypatch) -> Path:
    yield write_pinned_flow(tmp_path / "dags", monkeypatch)
    sys.modules.pop("pinned_helpers", None)


@pytest.mark.usefixtures("airflow_db")
def test_a_flow_and_its_helper_edited_mid_run_do_not_change_the_runs_remaining_tasks(flow_dir, monkeypatch):
    run = run_flow(flow_dir / "pinned_flow.py", {"edit_dir": str(flow_dir)})
    assert run.succeeded
    assert 'VERSION = "EDITED"' in (flow_dir / "pinned_flow.py").read_text()  # the edit happened
    assert run.artifacts("end")["flow_version"] == run.artifacts("end")["helper_version"] == "ORIGINAL"

    # A worker runs each task in a fresh process that first parses the (edited) dags file, which
    # imports the edited helper: the task must still run the recorded code.
    start = run.manifest("start")
    spec = TaskSpec(
        flow_file=str(flow_dir / "pinned_flow.py"),
        run=RunIdentity("PinnedFlow", run.run_id),
        step="end",
        datastore_root=config.datastore_root(),
        attempt=2,
        input_manifests=[start],
        run_context=RunContext(username="ada"),
        code=start.code.to_json(),
    )
    key = write_task_spec(spec)
    worker = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(flow_dir)!r})
        import pinned_helpers                      # what parsing the edited dags file imports
        assert pinned_helpers.VERSION == "EDITED"
        from airflow_flowspec.runtime.process import main
        sys.exit(main(["--root", {config.datastore_root()!r}, "--spec-key", {key!r}]))
    """)
    result = subprocess.run([sys.executable, "-c", worker], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    manifest = run.datastore.read_manifest(attempt("PinnedFlow", run.run_id, "end", "0", 2))
    assert manifest.code == start.code
    values = {n: run.datastore.artifacts.load(r) for n, r in manifest.artifacts.items()}
    assert values["flow_version"] == values["helper_version"] == "ORIGINAL"

    # The next run starts with the edited code.
    edited = run_flow(flow_dir / "pinned_flow.py").artifacts("end")
    assert edited["flow_version"] == edited["helper_version"] == "EDITED"


@pytest.mark.usefixtures("airflow_db")
def test_two_runs_of_the_same_code_store_it_once_and_an_edit_stores_a_new_package(flow_dir):
    first = run_flow(flow_dir / "pinned_flow.py")
    record = first.datastore.read_run_meta("PinnedFlow", first.run_id)["code"]
    blob = Path(config.datastore_root()) / keys.blob_key(record["package"]["hash"])
    written = blob.stat().st_mtime_ns
    second = run_flow(flow_dir / "pinned_flow.py")
    assert second.datastore.read_run_meta("PinnedFlow", second.run_id)["code"] == record
    assert blob.stat().st_mtime_ns == written  # the second run found it stored: no upload
    assert (
        second.manifest("start").code
        == second.manifest("end").code
        == ArtifactRef.from_json(record["package"])
    )
    assert record["path"] == "pinned_flow.py"

    (flow_dir / "pinned_helpers.py").write_text('VERSION = "NEW"\n')
    sys.modules.pop("pinned_helpers", None)
    third = run_flow(flow_dir / "pinned_flow.py")
    assert third.manifest("end").code != ArtifactRef.from_json(record["package"])
    assert third.artifacts("end")["helper_version"] == "NEW"
    # The run's flow source (run.code) stays one object per distinct flow file.
    assert third.datastore.read_run_meta("PinnedFlow", third.run_id)["code"]["source"] == record["source"]


def test_the_package_holds_the_flows_own_modules_only(tmp_path, monkeypatch):
    """Not a virtual environment inside the flow's folder, not the installed packages, not other
    folders: in a shared dags folder another flow's edit must not make this flow's package new."""
    folder = tmp_path / "project"
    (folder / "lib").mkdir(parents=True)
    (folder / ".venv" / "site").mkdir(parents=True)
    (folder / "flow.py").write_text("import lib.features\n")
    (folder / "lib" / "__init__.py").write_text("")
    (folder / "lib" / "features.py").write_text("X = 1\n")
    (folder / ".venv" / "site" / "vendored.py").write_text("Y = 2\n")
    (folder / "notes.sql").write_text("select 1\n")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.syspath_prepend(str(folder / ".venv" / "site"))
    import lib.features  # noqa: F401
    import vendored  # noqa: F401

    try:
        package = code_package.build_package(str(folder / "flow.py"))
        assert sorted(package["files"]) == ["flow.py", "lib/__init__.py", "lib/features.py"]
        assert package["modules"] == {"lib": "lib/__init__.py", "lib.features": "lib/features.py"}

        monkeypatch.setenv("AIRFLOW__FLOWSPEC__CODE_INCLUDE", "*.sql")
        assert "notes.sql" in code_package.build_package(str(folder / "flow.py"))["files"]
        monkeypatch.setenv("AIRFLOW__FLOWSPEC__CODE_INCLUDE", "data/*.csv")
        with pytest.raises(CodePackageError, match=r"code_include pattern 'data/\*\.csv' matches no file"):
            code_package.build_package(str(folder / "flow.py"))
    finally:
        for name in ("lib", "lib.features", "vendored"):
            sys.modules.pop(name, None)


def test_a_package_naming_a_file_outside_its_folder_is_refused(tmp_path, monkeypatch):
    """Guards materialize: a package is written only inside its own folder (a crafted relative path
    cannot place a file elsewhere on the worker)."""
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__SCRATCH_DIR", str(tmp_path / "scratch"))
    datastore = open_datastore(str(tmp_path / "store"))
    crafted = {"format": 1, "flow": "flow.py", "files": {"../../escaped.py": b"x"}, "modules": {}}
    ref = datastore.artifacts.save("code package", crafted).to_json()
    from airflow_flowspec.errors import FlowLoadError

    with pytest.raises(FlowLoadError, match="names a file outside its folder"):
        code_package.materialize(datastore, ref)
    assert not list(tmp_path.rglob("escaped.py"))
