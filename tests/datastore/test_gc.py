"""``airflow-flowspec gc``: old runs go, and exactly what no kept run uses; nothing a kept or running
run needs is lost, even while a flow writes.

Every test runs against a local folder and against S3 (moto's server on loopback). Flows run for
real (``dag.test()``, or the step runtime without Airflow where Airflow adds nothing). Time is made
to pass the way it looks to gc: a run's ``created_at`` is rewritten in its run.json, and objects'
last-write times are set back (``os.utime`` locally; on S3, in moto's in-process store, since S3
itself cannot backdate an object): ``tests/aging.py``, shared with the gc campaign.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from aging import DAY, age_objects, age_run
from conftest import S3_TEST_BUCKET
from harness import FLOWS, a_manifest, attempt, run_flow

from airflow_flowspec import Flow, Metaflow, Run, namespace
from airflow_flowspec.datastore import artifacts, keys, open_datastore
from airflow_flowspec.datastore import gc as gc_module
from airflow_flowspec.datastore.gc import DEFAULT_GRACE, SAFETY_RULE, collect_garbage
from airflow_flowspec.datastore.store import Datastore
from airflow_flowspec.datastore.xcoms import XComIdentity
from airflow_flowspec.errors import DatastoreError, GarbageCollectionError, MetaflowNotFound
from airflow_flowspec.identity import RunIdentity
from airflow_flowspec.runtime.step_runner import run_step
from airflow_flowspec.runtime.task_spec import RunContext, TaskSpec
from airflow_flowspec.shell import main as shell_main

pytestmark = pytest.mark.usefixtures("airflow_db")

MONTH = timedelta(days=30)

GC_FLOW = """
import os

from airflow_flowspec import FlowSpec, current, step


class GcFlow(FlowSpec):
    @step
    def start(self):
        self.stamp = current.run_id  # small, so in the start step's pack: different in every run
        self.payload = os.urandom(100 * 1024)  # a blob of its own, different in every run
        self.shared = b"s" * (100 * 1024)  # a blob of its own, the same in every run: stored once
        self.next(self.end)

    @step
    def end(self):
        self.echo = self.stamp + "!"  # the end step's pack, different in every run
"""


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path, monkeypatch):
    """A fresh datastore root that flows write to and the client reads, every namespace shown."""
    from airflow_flowspec.client import namespaces, source

    if request.param == "s3":
        request.getfixturevalue("s3_endpoint")
        root = f"s3://{S3_TEST_BUCKET}/gc-{uuid.uuid4().hex[:8]}"
    else:
        root = str(tmp_path / "store")
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", root)
    monkeypatch.setattr(source, "_chosen_root", None)
    monkeypatch.setattr(namespaces, "_chosen", namespaces._UNSET)
    namespace(None)
    return root


@pytest.fixture
def gc_flow(tmp_path) -> Path:
    path = tmp_path / "gc_flow.py"
    path.write_text(GC_FLOW)
    return path


def stored(root: str, prefix: str = "") -> dict[str, int]:
    """Every object under ``prefix``: key -> size."""
    return {obj.key: obj.size for obj in open_datastore(root).backend.iter_objects(prefix)}


def run_steps(
    flow_file: Path,
    root: str,
    run_id: str,
    *,
    user: str = "ana",
    steps=("start", "end"),
    flow="GcFlow",
    project: tuple[str, str] | None = None,
) -> str:
    """Run a flow's steps in this process with the step runtime (no Airflow): a real run, fast.
    ``run_id`` is Airflow's; ``project`` (project, branch) makes it a ``@project`` deployment's run.
    Returns the id the run is stored under."""
    context = RunContext(username=user, run_type="manual")
    identity = RunIdentity(flow, run_id, *(project or (None, None)))
    manifests: list = []
    for step in steps:
        spec = TaskSpec(
            str(flow_file),
            identity,
            step,
            root,
            input_manifests=manifests,
            run_context=context,
        )
        manifests = [run_step(spec).manifest]
    return identity.run_id


def load_everything(flow: str) -> int:
    """Read every artifact of every run of the flow through the client; the number read."""
    count = 0
    for run in Flow(flow):
        assert run.code is None or run.code.flowspec
        for step in run:
            for task in step:
                for artifact in task:
                    artifact.data  # noqa: B018 - downloads and verifies it
                    count += 1
    return count


# -- what goes ---------------------------------------------------------------------------------------


def test_old_runs_go_with_exactly_the_blobs_only_they_used(root, gc_flow):
    """Guards marking by reference: a blob goes only when no kept run's manifest or record names it
    (the code blob and the blob every run shares stay with the kept run), and the counts are exact.
    Guards the two-step delete: a gc moves those blobs to its trash, the next deletes them."""
    first = run_flow(gc_flow)
    after_first = stored(root, "data/")
    second = run_flow(gc_flow)
    after_second = stored(root, "data/")
    kept = run_flow(gc_flow)  # started last, as a run that is not old did
    everything = stored(root, "data/")
    assert len(set(after_second) - set(after_first)) == len(set(everything) - set(after_second)) == 3
    age_run(root, "GcFlow", first.run_id, started_days_ago=61)
    age_run(root, "GcFlow", second.run_id, started_days_ago=60)
    age_objects(root, "data/", 3 * DAY)  # every blob, the kept run's too, is old
    gone = (first.run_id, second.run_id)
    their_files = {
        **stored(root, keys.run_prefix("GcFlow", gone[0])),
        **stored(root, keys.run_prefix("GcFlow", gone[1])),
    }
    their_index = {
        k: size for k, size in stored(root, "GcFlow/index/").items() if k.rpartition("/")[2] in gone
    }

    result = collect_garbage(open_datastore(root), older_than=MONTH)

    # What stays is what the kept run uses: its own three blobs, and the code and the shared blob
    # the first run stored; the other three of the first run's and the second run's three go.
    before_first = {k: s for k, s in everything.items() if k in stored(root, "data/")}
    only_theirs = {k: s for k, s in everything.items() if k not in before_first}
    assert len(only_theirs) == 6 and set(everything) - set(after_second) <= set(before_first)
    assert len(set(after_first) - set(before_first)) == 3 and not set(after_second) - set(after_first) & set(
        before_first
    )
    assert result.runs_deleted == {"GcFlow": [second.run_id, first.run_id]}  # newest first
    assert result.runs_kept == {"GcFlow": 1}
    assert (result.blobs_trashed, result.blob_bytes_trashed) == (6, sum(only_theirs.values()))
    assert (result.blobs_deleted, result.blob_bytes_freed) == (0, 0)  # the next gc's, from the trash
    assert result.bytes_freed == sum([*their_files.values(), *their_index.values()])
    assert sorted(key.rpartition("/")[2] for key in stored(root, keys.TRASH_PREFIX)) == sorted(
        [*(key.rpartition("/")[2] for key in only_theirs), keys.TRASH_ROUND_COMPLETE_FILE]
    )
    assert len(their_index) == 2 * 4  # started and succeeded, each for every run and for the user
    assert result.blobs_kept == len(before_first)
    assert stored(root, "data/") == before_first
    assert not stored(root, keys.run_prefix("GcFlow", first.run_id))
    assert [run.id for run in Flow("GcFlow")] == [kept.run_id]
    assert Flow("GcFlow").latest_run.id == kept.run_id  # the index no longer offers the deleted runs
    assert load_everything("GcFlow") == 3 + 4  # start's three, end's echo and the three it carries
    with pytest.raises(MetaflowNotFound):
        Run(f"GcFlow/{first.run_id}")
    if not root.startswith("s3://"):  # no empty run or index folder left behind, as none is on S3
        empty = [path for path, folders, files in os.walk(root) if not folders and not files]
        assert all(Path(path).parent.name == "data" or Path(path).name == ".tmp" for path in empty), empty

    again = collect_garbage(open_datastore(root), older_than=MONTH)
    assert (again.runs_deleted, again.blobs_trashed, again.blobs_deleted) == ({}, 0, 6)
    assert again.blob_bytes_freed == again.bytes_freed == sum(only_theirs.values())
    assert not stored(root, keys.GC_PREFIX) and load_everything("GcFlow") == 7
    third = collect_garbage(open_datastore(root), older_than=MONTH)
    assert (third.runs_deleted, third.blobs_trashed, third.blobs_deleted, third.bytes_freed) == ({}, 0, 0, 0)


def test_latest_successful_and_running_runs_are_kept_however_old(root, gc_flow):
    """Guards the run protections: each namespace's latest successful run (other flows read it), a
    run still running (wrote recently, no status.json), and a run without run.json judged by its
    folder's last write; a failed, a dead and an abandoned run go."""
    datastore = open_datastore(root)
    run_steps(gc_flow, root, "ana-old-success", user="ana")
    run_steps(gc_flow, root, "ana-success", user="ana")
    run_steps(gc_flow, root, "bob-success", user="bob")
    run_steps(gc_flow, root, "ana-failed", user="ana", steps=["start"])
    datastore.finish_run("GcFlow", "ana-failed", False, {"reason": "a step failed"})
    run_steps(gc_flow, root, "running", user="ana", steps=["start"])
    run_steps(gc_flow, root, "dead", user="ana", steps=["start"])
    for number, run_id in enumerate(["ana-old-success", "ana-success", "bob-success", "ana-failed"]):
        age_run(root, "GcFlow", run_id, started_days_ago=70 - number)
    age_run(root, "GcFlow", "dead", started_days_ago=66, written_days_ago=40)  # killed, never recorded
    age_run(root, "GcFlow", "running", started_days_ago=65, written_days_ago=0)
    # Runs whose start step never wrote run.json: one abandoned long ago, one being written now.
    for run_id in ("abandoned", "starting"):
        datastore.write_manifest(a_manifest("GcFlow", run_id, "start"))
    age_objects(root, keys.run_prefix("GcFlow", "abandoned"), 40 * DAY)
    # A flow that never succeeded: nothing protects its old run, and the flow goes with it.
    run_steps(FLOWS / "failing_flow.py", root, "failed", flow="FailingFlow", steps=["start"])
    datastore.finish_run("FailingFlow", "failed", False, {"reason": "crunch failed"})
    age_run(root, "FailingFlow", "failed", started_days_ago=50)

    result = collect_garbage(datastore, older_than=MONTH)

    assert result.runs_deleted == {
        "GcFlow": ["abandoned", "dead", "ana-failed", "ana-old-success"],
        "FailingFlow": ["failed"],
    }
    assert {flow.id for flow in Metaflow().flows} == {"GcFlow"}
    assert sorted(datastore.list_runs("GcFlow")) == ["ana-success", "bob-success", "running", "starting"]
    assert Flow("GcFlow").latest_successful_run.id == "bob-success"
    namespace("user:ana")
    assert Flow("GcFlow").latest_successful_run.id == "ana-success"
    namespace(None)
    assert load_everything("GcFlow") == 7 + 7 + 3  # both successful runs, and what "running" has so far


def test_keep_last_flow_and_dry_run(root, gc_flow):
    """Guards --keep-last (the N newest runs stay, however old), --flow (other flows' runs are not
    touched, yet what they reference is kept) and --dry-run (it deletes nothing and reports exactly
    what the real run then deletes)."""
    for number in range(4):
        run_steps(gc_flow, root, f"r{number}")
        age_run(root, "GcFlow", f"r{number}", started_days_ago=60 - number)
    foreach = [run_flow(FLOWS / "foreach_flow.py").run_id for _ in range(2)]
    for number, run_id in enumerate(foreach):
        age_run(root, "ForeachFlow", run_id, started_days_ago=50 - number)
    age_objects(root, "data/", 3 * DAY)
    everything = stored(root)

    dry = collect_garbage(open_datastore(root), older_than=MONTH, keep_last=2, flow="GcFlow", dry_run=True)
    assert stored(root) == everything
    assert dry.runs_deleted == {"GcFlow": ["r1", "r0"]} and dry.runs_kept == {"GcFlow": 2}
    assert dry.blobs_trashed == 2 * 3  # each deleted run's payload and two packs

    real = collect_garbage(open_datastore(root), older_than=MONTH, keep_last=2, flow="GcFlow")
    assert real == gc_module.GcResult(**{**vars(dry), "dry_run": False})
    assert sorted(open_datastore(root).list_runs("GcFlow")) == ["r2", "r3"]
    assert sorted(open_datastore(root).list_runs("ForeachFlow")) == sorted(foreach)
    assert load_everything("ForeachFlow") == 2 * 19

    every_flow = collect_garbage(open_datastore(root), older_than=MONTH)
    assert every_flow.runs_deleted == {"GcFlow": ["r2"], "ForeachFlow": [foreach[0]]}
    assert load_everything("ForeachFlow") == 19 and load_everything("GcFlow") == 7


# -- what must survive -------------------------------------------------------------------------------


def test_gc_during_a_run_keeps_every_kept_artifact_loadable(root, gc_flow):
    """Guards the grace period and freshening under concurrency: gc runs again and again while a
    flow writes. The new run's fresh blobs are spared by age until its manifests reference them; the
    old blobs it saves again (left unreferenced by a dead run that gc deletes meanwhile) are
    freshened by the save and spared too; the kept old runs stay whole."""
    branch = run_flow(FLOWS / "branch_flow.py")
    age_run(root, "BranchFlow", branch.run_id, started_days_ago=90)
    run_steps(gc_flow, root, "dead", steps=["start"])  # its blobs are what the next run saves again
    age_run(root, "GcFlow", "dead", started_days_ago=60, written_days_ago=40)
    age_objects(root, "data/", 3 * DAY)

    results, failures, stop = [], [], threading.Event()
    collector_store = Datastore(root)  # as if in another process

    def collect_until_stopped() -> None:
        while not stop.is_set():
            try:
                results.append(collect_garbage(collector_store, older_than=MONTH))
            except Exception as error:  # noqa: BLE001 - reported by the test below
                failures.append(error)
                return

    collector = threading.Thread(target=collect_until_stopped)
    collector.start()
    try:
        running = run_flow(gc_flow)  # Airflow's dag.test() needs the main thread: gc runs beside it
        running_foreach = run_flow(FLOWS / "foreach_flow.py")
    finally:
        stop.set()
        collector.join()
    assert not failures, failures
    assert running.succeeded and running_foreach.succeeded and len(results) >= 2
    assert any(result.runs_deleted.get("GcFlow") == ["dead"] for result in results)

    final = collect_garbage(open_datastore(root), older_than=MONTH)
    assert final.runs_deleted == {}
    assert [run.id for run in Flow("GcFlow")] == [running.run_id]
    assert load_everything("GcFlow") == 7 and load_everything("ForeachFlow") == 19
    assert load_everything("BranchFlow") > 20
    assert {flow.id for flow in Metaflow().flows} == {"GcFlow", "ForeachFlow", "BranchFlow"}


def test_an_old_unreferenced_blob_saved_again_is_freshened_and_survives(root):
    """Guards freshening: a save that finds an old blob already stored renews its last write (on S3
    keeping its recorded hash), and a process stops trusting its memory of stored blobs after the
    freshen interval, so a blob about to be referenced again is not collected."""
    worker = Datastore(root)  # a long-lived worker process
    clock = SteppedClock()
    worker.artifacts.clock = clock
    values = {"again": os.urandom(200 * 1024), "small": "packed", "control": os.urandom(300 * 1024)}
    refs = worker.artifacts.save_many(values)
    age_objects(root, "data/", 3 * DAY)  # a worker of another host wrote them long ago...

    def ages() -> dict[str, float]:
        now = time.time()
        return {obj.key: now - obj.modified for obj in worker.backend.iter_objects("data/")}

    again, pack = keys.blob_key(refs["again"].hash), keys.blob_key(refs["small"].pack)
    counters = worker.backend.counters
    writes, requests = counters.bytes_written, counters.requests
    worker.artifacts.save_many({"again": values["again"], "small": "packed"})  # ...this one just did
    assert (counters.bytes_written, counters.requests) == (writes, requests)  # remembered: no request
    assert ages()[again] > 2 * DAY
    requests = counters.requests  # listing the ages took some
    clock.now += worker.artifacts.freshen_after - 1  # still relied on, however old the blob is
    worker.artifacts.save_many({"again": values["again"], "small": "packed"})
    assert (counters.bytes_written, counters.requests) == (writes, requests)

    clock.now += 2  # past half the freshen interval: no longer relied on
    assert worker.artifacts.save_many({"again": values["again"], "small": "packed"}) == {
        "again": refs["again"],
        "small": refs["small"],
    }
    assert counters.requests > requests and counters.bytes_written == writes  # checked, freshened
    assert (
        ages()[again] < 600 and ages()[pack] < 600 and ages()[keys.blob_key(refs["control"].hash)] > 2 * DAY
    )

    result = collect_garbage(open_datastore(root), older_than=MONTH)
    assert (result.blobs_trashed, result.blob_bytes_trashed) == (1, refs["control"].size)
    reader = Datastore(root)
    assert reader.artifacts.load(refs["again"]) == values["again"]
    assert reader.artifacts.load(refs["small"]) == "packed"
    assert reader.backend.blob_is_stored(again, refs["again"].size, refs["again"].hash)  # hash kept on S3

    # Another process saving it freshens it just the same.
    age_objects(root, "data/", 3 * DAY)
    Datastore(root).artifacts.save("again", values["again"])
    assert ages()[again] < 600 and ages()[pack] > 2 * DAY


class SteppedClock:
    """A clock that moves only when the test moves it (an ``ArtifactStore`` clock)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ordinary_xcoms_damaged_blobs_and_scratch_files_are_swept(root, gc_flow, tmp_path, monkeypatch):
    """Guards the XCom rule (a deleted run's folder, under the DAG and Airflow run id its identity
    names; other DAGs' folders only when asked, all older than asked and no kept run's DAG run),
    the horizon for damaged blobs, and the scratch sweep."""
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__SCRATCH_DIR", str(tmp_path / "scratch"))
    datastore = open_datastore(root)
    # A @project deployment's runs: stored as "proj.prod:<Airflow run id>", their XComs under the DAG
    # proj.prod.GcFlow and Airflow's own run id (gc matched them by the stored id, issue 20 #5).
    gone = run_steps(gc_flow, root, "gone", steps=["start"], project=("proj", "prod"))
    age_run(root, "GcFlow", gone, started_days_ago=60, written_days_ago=0)
    datastore.finish_run("GcFlow", gone, False, {})
    kept = run_steps(gc_flow, root, "kept", project=("proj", "prod"))
    age_run(root, "GcFlow", kept, started_days_ago=60)
    folders = [
        ("proj.prod.GcFlow", "gone"),
        ("proj.prod.GcFlow", "kept"),  # old, and its run is kept: never deleted by age
        ("GcFlow", gone),  # not the gone run's: no DAG names its runs by their stored id
        ("report", "old"),
        ("report", "new"),
        ("report", "kept"),
    ]
    for dag_id, run_id in folders:
        datastore.xcoms.save_value(XComIdentity(dag_id, run_id, "t", -1, "k"), [dag_id, run_id])
    for dag_id, run_id in folders[1:]:
        if run_id != "new":
            age_objects(root, keys.xcom_folder(dag_id, run_id, "t", -1).rsplit("/", 3)[0] + "/", 40 * DAY)
    damaged = {
        "old": f"damaged/{'a' * 64}.20000101T000000Z.0123abcd",
        "new": f"damaged/{'b' * 64}.29990101T000000Z.0",
    }
    for key in damaged.values():
        datastore.backend.put_bytes(key, b"bad")
    age_objects(root, damaged["old"].rsplit("/", 1)[0] + "/", 40 * DAY)  # both look old on disk...
    scratch = Path(datastore.backend.scratch_dir())
    scratch.mkdir(exist_ok=True)
    leftover = scratch / "flowspec-otherhost-1-0123abcd.tmp"  # a killed task's, on another host
    leftover.write_bytes(b"half a pickle")
    os.utime(leftover, (time.time() - 40 * DAY,) * 2)

    only_flow = collect_garbage(datastore, older_than=MONTH, flow="GcFlow")
    assert only_flow.runs_deleted == {"GcFlow": [gone]}
    assert only_flow.xcom_runs_deleted == [("proj.prod.GcFlow", "gone")]
    assert only_flow.damaged_deleted == 1 and not leftover.exists()
    assert collect_garbage(datastore, older_than=MONTH).xcom_runs_deleted == []  # not by age, unasked
    result = collect_garbage(datastore, older_than=MONTH, xcom_older_than=MONTH)
    # ("report", "kept") is another DAG's run that merely shares a kept flow run's Airflow run id.
    assert sorted(result.xcom_runs_deleted) == [("GcFlow", gone), ("report", "kept"), ("report", "old")]
    assert sorted(stored(root, "_xcom/")) == sorted(
        keys.xcom_value_key(dag_id, run_id, "t", -1, "k")
        for dag_id, run_id in [("proj.prod.GcFlow", "kept"), ("report", "new")]
    )
    assert list(stored(root, "damaged/")) == [damaged["new"]]  # ...but its name says it moved later


def test_a_gc_stopped_half_way_is_finished_by_the_next(root, gc_flow, monkeypatch):
    """Guards the deletion order (the deletion mark, index entries, then the run's files, run.json
    and status.json last, the mark after them) and reading
    before deleting: a gc that fails leaves a run still recognisably a run, which the next one
    deletes; a kept run's manifest that cannot be read stops gc before it deleted anything."""
    run_steps(gc_flow, root, "old")
    run_steps(gc_flow, root, "new")
    age_run(root, "GcFlow", "old", started_days_ago=60)
    age_objects(root, "data/", 3 * DAY)

    newest = open_datastore(root)
    manifest = keys.manifest_key(attempt("GcFlow", "new", "end"))
    good = newest.backend.get_bytes(manifest)
    newest.backend.put_bytes(manifest, b"{not json")
    everything = stored(root)
    with pytest.raises(GarbageCollectionError, match="not valid JSON.*stopped before deleting anything"):
        collect_garbage(newest, older_than=MONTH)
    assert stored(root) == everything
    newest.backend.put_bytes(manifest, good)

    failing = Datastore(root)
    delete_many = failing.backend.delete_many

    def fail_on_the_run_record(batch):
        if any(key.endswith("/" + keys.RUN_META_FILE) for key in batch):
            raise DatastoreError("the network went away")
        delete_many(batch)

    monkeypatch.setattr(failing.backend, "delete_many", fail_on_the_run_record)
    with pytest.raises(DatastoreError):
        collect_garbage(failing, older_than=MONTH)
    left = sorted(stored(root, keys.run_prefix("GcFlow", "old")))
    assert left == [
        keys.run_deletion_key("GcFlow", "old"),  # a task of the run would stop: its run is going
        keys.run_meta_key("GcFlow", "old"),
        keys.run_status_key("GcFlow", "old"),
    ]
    assert Run("GcFlow/old").finished and "old" in open_datastore(root).list_runs("GcFlow")
    assert not any("old" in key for key in stored(root, "GcFlow/index/"))  # no longer offered
    assert [run.id for run in Flow("GcFlow")] == ["new"]

    finished = collect_garbage(open_datastore(root), older_than=MONTH)
    assert finished.runs_deleted == {"GcFlow": ["old"]} and finished.blobs_trashed == 3
    assert not stored(root, keys.run_prefix("GcFlow", "old"))


# -- the command -------------------------------------------------------------------------------------


def test_the_gc_command(root, gc_flow, capsys, monkeypatch):
    """The shell command as a user types it: --help states the safety rule, --dry-run reports, a
    real run deletes, a grace too short is refused and --grace 0 warns, and progress goes to stderr."""
    with pytest.raises(SystemExit):
        shell_main(["gc", "--help"])
    assert " ".join(SAFETY_RULE.split()) in " ".join(capsys.readouterr().out.split())

    run_steps(gc_flow, root, "old")
    run_steps(gc_flow, root, "new")
    age_run(root, "GcFlow", "old", started_days_ago=45)
    age_objects(root, "data/", 3 * DAY)
    everything = stored(root)

    assert shell_main(["--root", root, "gc", "--older-than", "30d", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "GcFlow: would delete 1 run (old), kept 1 run." in out and "Nothing was deleted (--dry-run)" in out
    assert "Would move 3 artifact blobs" in out and stored(root) == everything

    assert shell_main(["gc", "--older-than", "30d", "--root", root, "--grace", "1h"]) == 1
    assert "grace period of 1h is too short" in capsys.readouterr().err and stored(root) == everything
    assert shell_main(["gc", "--older-than", "30d", "--root", root, "--flow", "NoSuchFlow"]) == 1
    assert "Flow 'NoSuchFlow' has no runs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        shell_main(["gc", "--older-than", "a month", "--root", root])
    assert "is not an age" in capsys.readouterr().err

    monkeypatch.setattr(gc_module, "PROGRESS_EVERY", 5)
    assert shell_main(["gc", "--older-than", "30d", "--root", root, "--keep-last", "0"]) == 0
    captured = capsys.readouterr()
    assert "GcFlow: deleted 1 run (old), kept 1 run." in captured.out
    assert "Moved 3 artifact blobs" in captured.out and "deleted 0 blobs (0 bytes) trashed by" in captured.out
    assert "objects examined so far" in captured.err
    assert [run.id for run in Flow("GcFlow")] == ["new"]

    assert shell_main(["gc", "--older-than", "0", "--grace", "0", "--root", root]) == 0
    captured = capsys.readouterr()
    assert "--grace 0 deletes unreferenced artifacts" in captured.err
    assert "kept 1 run" in captured.out and load_everything("GcFlow") == 7  # the latest successful run


def test_a_failed_run_being_resumed_is_kept_with_its_artifacts(root, gc_flow):
    """Guards "still running" for a run that has an outcome: clearing a failed task re-runs it while
    the failure's status.json stays, so a run written to after its outcome was recorded is being
    resumed and is kept, however long ago it started (gc deleted it, and the artifacts the resumed
    task was about to read, when only runs without status.json counted as running)."""
    run_steps(gc_flow, root, "resumed", steps=["start"])
    datastore = open_datastore(root)
    datastore.finish_run("GcFlow", "resumed", False, {"reason": "end failed"})
    age_run(root, "GcFlow", "resumed", started_days_ago=3, written_days_ago=3)
    age_objects(root, "data/", 3 * DAY)
    # the cleared end task starts its second attempt now
    datastore.write_attempt_file(attempt("GcFlow", "resumed", "end", "0", 2), "stdout.log", b"resuming\n")

    result = collect_garbage(open_datastore(root), older_than=timedelta(days=1))
    assert result.runs_deleted == {} and result.blobs_deleted == 0
    start = Run("GcFlow/resumed")["start"].task
    assert len(start.data.payload) == 100 * 1024 and start.data.shared == b"s" * (100 * 1024)


# -- running runs keep what they use (issue 20, findings 1 and 2) --------------------------------------

LONG_FLOW = """
import os
import time

from airflow_flowspec import FlowSpec, step


class LongFlow(FlowSpec):
    @step
    def start(self):
        self.payload = os.urandom(100 * 1024)
        self.next(self.train)

    @step
    def train(self):
        deadline = time.time() + 60
        while not os.path.exists(os.environ["LONG_FLOW_GO"]) and time.time() < deadline:
            time.sleep(0.02)
        self.size = len(self.payload)  # the start step's blob, read after gc ran
        self.next(self.end)

    @step
    def end(self):
        pass
"""


def _step_after(flow_file: Path, root: str, run: RunIdentity, step: str, parent: str) -> TaskSpec:
    manifest = open_datastore(root).latest_attempt_manifest(run.flow, run.run_id, parent, "0")
    return TaskSpec(
        str(flow_file), run, step, root, input_manifests=[manifest], run_context=RunContext("ana")
    )


def _wait_for(condition, seconds: float = 30.0) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def test_a_run_whose_step_computes_longer_than_the_grace_period_is_kept(root, tmp_path, monkeypatch):
    """Guards finding 1 (leases, renewed while the step computes): a run that started long ago and
    has written nothing since, because one of its steps is still computing, is kept with what it
    references; the step then reads its input and finishes. Leases here go stale after two seconds
    and are renewed every 0.25 s: the run is judged three seconds into the step."""
    from airflow_flowspec.datastore import leases

    monkeypatch.setattr(leases, "LEASE_SECONDS", 2.0)
    monkeypatch.setattr(leases, "RENEW_SECONDS", 0.25)
    go = tmp_path / "go"
    monkeypatch.setenv("LONG_FLOW_GO", str(go))
    flow_file = tmp_path / "long_flow.py"
    flow_file.write_text(LONG_FLOW)
    run = RunIdentity("LongFlow", "long")
    run_steps(flow_file, root, "long", flow="LongFlow", steps=["start"])
    # Nothing written for longer than --older-than and --grace: the step has been computing since.
    age_run(root, "LongFlow", "long", started_days_ago=60, written_days_ago=40)
    age_objects(root, "data/", 3 * DAY)

    outcome: list = []
    step = threading.Thread(
        target=lambda: outcome.append(run_step(_step_after(flow_file, root, run, "train", "start"))),
        daemon=True,
    )
    step.start()
    _wait_for(lambda: stored(root, keys.run_leases_prefix("LongFlow", "long")))
    time.sleep(3.0)  # longer than a lease lives without renewal
    result = collect_garbage(Datastore(root), older_than=MONTH)
    assert result.runs_deleted.get("LongFlow", []) == [] and result.blobs_trashed == 0
    assert result.runs_spared == {}  # kept from the start, not only at the last look
    go.touch()
    step.join(60)
    assert outcome and outcome[0].manifest.attempt.step == "train"
    assert Datastore(root).artifacts.load(outcome[0].manifest.artifacts["size"]) == 100 * 1024
    assert not stored(root, keys.run_leases_prefix("LongFlow", "long"))  # released with the step


def test_a_task_whose_run_gc_is_deleting_stops_before_touching_it(root, gc_flow, monkeypatch):
    """Guards the task's side of the deletion mark: a task writes its lease, then finds gc's mark
    on its run (a gc deleting it, or one stopped half-way) and stops with RunDeletedError, a
    failure that is not a flow mistake, having written nothing of its own into the run."""
    from airflow_flowspec.datastore import leases
    from airflow_flowspec.errors import RunDeletedError, is_flow_mistake, not_retried_label

    monkeypatch.setattr(leases, "WAIT_FOR_GC_SECONDS", 0.3)
    run_steps(gc_flow, root, "doomed", steps=["start"])
    datastore = open_datastore(root)
    datastore.backend.put_bytes(keys.run_deletion_key("GcFlow", "doomed"), b"{}")
    before = stored(root, keys.run_prefix("GcFlow", "doomed"))
    with pytest.raises(RunDeletedError, match="is being deleted by airflow-flowspec gc") as caught:
        run_step(_step_after(gc_flow, root, RunIdentity("GcFlow", "doomed"), "end", "start"))
    assert stored(root, keys.run_prefix("GcFlow", "doomed")) == before
    assert is_flow_mistake(caught.value)  # not retried...
    assert not_retried_label(caught.value) == (
        "(a run deleted by airflow-flowspec gc, not a mistake in the flow: not retried)"
    )  # ...and not called the flow's mistake


def test_a_run_whose_task_takes_a_lease_as_gc_comes_to_delete_it_is_spared(root, gc_flow, monkeypatch):
    """Guards gc's side of the deletion mark: gc writes the mark, then looks at the run's leases
    once more; a task that took its lease after gc decided (but before the mark) keeps the run,
    and what the run references stays in data/."""
    from airflow_flowspec.datastore.leases import Lease

    run_steps(gc_flow, root, "late")
    age_run(root, "GcFlow", "late", started_days_ago=60)
    run_steps(gc_flow, root, "newer")
    age_objects(root, "data/", 3 * DAY)
    collector = Datastore(root)
    task = Datastore(root)  # the task's process
    real_put = collector.backend.put_bytes
    lease = Lease(task, RunIdentity("GcFlow", "late"), holder="task")

    def mark_after_the_task_started(key, data, **kwargs):
        if key == keys.run_deletion_key("GcFlow", "late") and lease.key == "":
            lease.__enter__()  # the cleared task starts just before gc writes its mark
        real_put(key, data, **kwargs)

    monkeypatch.setattr(collector.backend, "put_bytes", mark_after_the_task_started)
    try:
        result = collect_garbage(collector, older_than=MONTH)
    finally:
        lease.__exit__(None, None, None)
    assert result.runs_spared == {"GcFlow": ["late"]} and result.runs_deleted == {"GcFlow": []}
    assert "running as gc came to them: late" in result.summary()
    assert result.blobs_trashed == 0  # the spared run's blobs were marked as it was kept
    assert not open_datastore(root).backend.exists(keys.run_deletion_key("GcFlow", "late"))
    assert load_everything("GcFlow") == 2 * 7


@pytest.mark.parametrize("grace", [DEFAULT_GRACE, timedelta(0)], ids=["grace", "no-grace"])
def test_a_task_that_ran_after_gc_decided_keeps_its_run(root, gc_flow, monkeypatch, grace):
    """Guards gc's last look at the run's files (found by the gc campaign): gc decided to delete an
    old failed run; its cleared task then ran from start to end (lease taken and released) before gc
    wrote the deletion mark, so no lease was left to see. What the task wrote keeps the run; before,
    gc deleted it with the task's results, and the run's next task failed with RunDeletedError.
    Without a grace period, the blobs only the late task's manifest names stay in data/: the spared
    run is marked as its last look found it, not as gc first listed it."""
    run_steps(gc_flow, root, "late", steps=["start"])
    open_datastore(root).finish_run("GcFlow", "late", False, {"reason": "end failed"})
    age_run(root, "GcFlow", "late", started_days_ago=60, written_days_ago=40)
    age_objects(root, "data/", 3 * DAY)
    collector = Datastore(root)
    real_put = collector.backend.put_bytes
    ran: list = []

    def mark_after_the_task_ran(key, data, **kwargs):
        if key == keys.run_deletion_key("GcFlow", "late") and not ran:
            run = RunIdentity("GcFlow", "late")
            ran.append(run_step(_step_after(gc_flow, root, run, "end", "start")))  # the whole task
        real_put(key, data, **kwargs)

    monkeypatch.setattr(collector.backend, "put_bytes", mark_after_the_task_ran)
    result = collect_garbage(collector, older_than=MONTH, grace=grace)
    assert ran and not stored(root, keys.run_leases_prefix("GcFlow", "late"))  # it ended before the mark
    assert result.runs_spared == {"GcFlow": ["late"]} and result.runs_deleted == {"GcFlow": []}
    assert result.blobs_trashed == 0  # the spared run's blobs were marked as it was kept
    assert load_everything("GcFlow") == 7


def test_a_blob_a_save_relies_on_as_gc_takes_it_is_never_lost(root, monkeypatch):
    """Guards finding 2 (the two-step delete): gc decides on a listing and moves later. A task that
    finds the blob stored in between (its save freshens it and returns a reference) writes its
    manifest; the blob, already in the trash, is read from there, and the next gc moves it back
    instead of deleting it: for as long as the task runs, no gc empties that trash round."""
    from airflow_flowspec.datastore.leases import Lease

    value = os.urandom(200 * 1024)
    ref = Datastore(root).artifacts.save("payload", value)  # by a run gc deleted long ago
    age_objects(root, "data/", 3 * DAY)
    worker, collector = Datastore(root), Datastore(root)  # two processes
    writer = RunIdentity("GcFlow", "writer")
    lease = Lease(worker, writer, holder="task", needs_record=False).__enter__()
    saved: list = []
    real_move = collector.backend.move

    def save_just_before_the_move(key, new_key):
        if key == keys.blob_key(ref.hash) and not saved:
            saved.append(worker.artifacts.save("payload", value))  # found stored, freshened: relied on
        real_move(key, new_key)

    monkeypatch.setattr(collector.backend, "move", save_just_before_the_move)
    first = collect_garbage(collector, older_than=MONTH)
    monkeypatch.undo()
    assert first.blobs_trashed == 1 and saved == [ref]
    worker.write_manifest(a_manifest("GcFlow", "writer", "start", artifacts={"payload": ref}))
    assert not Datastore(root).backend.exists(keys.blob_key(ref.hash))
    assert Datastore(root).artifacts.load(ref) == value  # found in the trash

    waiting = collect_garbage(Datastore(root), older_than=MONTH)  # the task still runs
    assert (waiting.trash_rounds_waiting, waiting.blobs_deleted, waiting.blobs_restored) == (1, 0, 0)
    lease.__exit__(None, None, None)
    done = collect_garbage(Datastore(root), older_than=MONTH)  # it ended: its manifest is read
    assert (done.blobs_restored, done.blobs_deleted, done.trash_rounds_waiting) == (1, 0, 0)
    assert Datastore(root).backend.exists(keys.blob_key(ref.hash)) and not stored(root, keys.GC_PREFIX)
    assert Datastore(root).artifacts.load(ref) == value


@pytest.mark.parametrize("moved_back", ["before the trash is looked in", "after it was found there"])
def test_a_blob_read_as_gc_moves_it_back_is_read(root, moved_back):
    """Guards the readers' side of the move back (found by the gc campaign, which reads a racing
    run's blob as gc moves it back): gc moves a trashed blob a kept run came to reference back into
    data/; a reader that missed it in data/ just before, and then misses it in the trash too (or
    finds it there and then not), reads it from data/ instead of failing the task with "missing"."""
    value = os.urandom(200 * 1024)
    ref = Datastore(root).artifacts.save("payload", value)
    age_objects(root, "data/", 3 * DAY)
    assert collect_garbage(Datastore(root), older_than=MONTH).blobs_trashed == 1
    trashed = Datastore(root).artifacts.trashed_key(ref.hash)
    assert trashed is not None and not Datastore(root).backend.exists(keys.blob_key(ref.hash))
    reader = Datastore(root)
    look_in_the_trash = reader.artifacts.trashed_key

    def moved_back_meanwhile(blob_hash: str) -> str | None:
        found = look_in_the_trash(blob_hash) if moved_back == "after it was found there" else None
        Datastore(root).backend.move(trashed, keys.blob_key(blob_hash))  # gc's move back
        return found if moved_back == "after it was found there" else look_in_the_trash(blob_hash)

    reader.artifacts.trashed_key = moved_back_meanwhile
    assert reader.artifacts.load(ref) == value


def test_a_task_that_could_not_renew_its_lease_writes_no_manifest(root, gc_flow, monkeypatch):
    """Guards the lease check before the manifest: a task that could not renew its lease for as
    long as gc waits may have been counted gone; it stops, retryably, before writing results."""
    from airflow_flowspec.datastore import leases
    from airflow_flowspec.errors import LeaseLostError

    monkeypatch.setattr(leases, "LEASE_SECONDS", 0.2)
    monkeypatch.setattr(leases, "RENEW_SECONDS", 0.05)
    real_write = leases.Lease._write

    def renew_once_then_fail(self):
        if self._renewed_at:
            time.sleep(0.3)  # the datastore does not answer
            raise DatastoreError("the network went away")
        real_write(self)

    monkeypatch.setattr(leases.Lease, "_write", renew_once_then_fail)
    spec = TaskSpec(
        str(gc_flow), RunIdentity("GcFlow", "stalled"), "start", root, run_context=RunContext("ana")
    )
    real_save = artifacts.ArtifactStore.save_many

    def slow_save(self, *args, **kwargs):
        time.sleep(0.5)  # the step and its saves outlast the lease
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(artifacts.ArtifactStore, "save_many", slow_save)
    with pytest.raises(LeaseLostError, match="could not renew its lease") as caught:
        run_step(spec)
    assert caught.value.retryable
    assert open_datastore(root).latest_attempt_manifest("GcFlow", "stalled", "start", "0") is None


CLEARED_FLOW = """
import os

from airflow_flowspec import FlowSpec, step


class ClearedFlow(FlowSpec):
    @step
    def start(self):
        self.payload = os.urandom(100 * 1024)
        self.next(self.end)

    @step
    def end(self):
        if not os.path.exists(os.environ["CLEARED_FLOW_FIXED"]):
            raise ValueError("not fixed yet")
        self.size = len(self.payload)
"""


def test_a_cleared_run_waiting_for_a_worker_is_kept_where_airflow_can_be_asked(
    root, tmp_path, monkeypatch, capsys
):
    """Guards the gap between clearing a failed task in Airflow and that task's first write: the DAG
    run is queued again at once, and gc, asking Airflow's metadata database, keeps the run however
    long ago it wrote (without Airflow it could not tell it from an abandoned run: see the dry run).
    Then the cleared task runs and reads what the run stored."""
    from harness import clear_and_rerun, load_flow

    from airflow_flowspec.airflow.registration import dag_for
    from airflow_flowspec.airflow.run_states import metadata_database_run_states

    fixed = tmp_path / "fixed"
    monkeypatch.setenv("CLEARED_FLOW_FIXED", str(fixed))
    flow_file = tmp_path / "cleared_flow.py"
    flow_file.write_text(CLEARED_FLOW)
    failed = run_flow(flow_file)
    assert failed.state("end") == "failed"
    age_run(root, "ClearedFlow", failed.run_id, started_days_ago=60, written_days_ago=40)
    age_objects(root, "data/", 40 * DAY)
    dag = dag_for(load_flow(flow_file), str(flow_file))
    from airflow.serialization.serialized_objects import DagSerialization

    DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag)).clear(
        run_id=failed.run_id, task_ids=["end"]
    )  # as the UI's Clear does: the DAG run is queued until a worker takes the task

    blind = collect_garbage(Datastore(root), older_than=MONTH, dry_run=True)
    assert blind.runs_deleted == {"ClearedFlow": [failed.run_id]}  # time alone cannot tell
    run_active, where = metadata_database_run_states()
    asked = collect_garbage(Datastore(root), older_than=MONTH, airflow_run_active=run_active)
    assert asked.runs_deleted.get("ClearedFlow", []) == [] and asked.runs_kept["ClearedFlow"] == 1
    assert asked.runs_spared == {} and asked.blobs_trashed == 0  # kept as gc decided
    assert "sqlite" in where
    assert shell_main(["gc", "--older-than", "30d", "--root", root, "--airflow", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "ClearedFlow: would delete 0 runs, kept 1 run." in out and "Asked Airflow (sqlite:" in out

    fixed.touch()
    rerun = clear_and_rerun(dag, failed.run_id, task_ids=["end"])
    assert str(rerun.state) == "success"
    assert Run(f"ClearedFlow/{failed.run_id}").data.size == 100 * 1024


def test_a_missing_artifact_is_a_storage_problem_not_a_flow_mistake(root, gc_flow, capfd):
    """Guards the label of a failure no retry changes: an artifact gone from the datastore (and its
    trash) fails the task at once, named a problem with the datastore, not a mistake in the flow."""
    from harness import clear_and_rerun, load_flow

    from airflow_flowspec.airflow.registration import dag_for

    run = run_flow(gc_flow)
    assert run.succeeded
    payload = run.manifest("start").artifacts["stamp"].to_json()
    datastore = open_datastore(root)
    datastore.backend.delete_many([keys.blob_key(payload["pack"])])  # gone, as if collected
    datastore.artifacts._packs.clear()
    capfd.readouterr()
    rerun = clear_and_rerun(dag_for(load_flow(gc_flow), str(gc_flow)), run.run_id, task_ids=["end"])
    assert str(rerun.state) == "failed"
    output = capfd.readouterr().out
    assert "is missing from the datastore" in output
    assert "(a problem with the datastore, not a mistake in the flow: not retried)" in output
    assert "a mistake in the flow: not retried" not in output.replace("not a mistake in the flow: not", "")


def test_the_summary_names_deleted_runs_escaped_one_line_per_flow():
    """Guards terminal_safe in GcResult.summary: run ids come from folder names, and one with a
    newline or an escape sequence would print a line that is not there or reach the terminal."""
    result = gc_module.GcResult(
        dry_run=True,
        runs_deleted={"TrainFlow": ["ok", "evil\nFakeFlow: deleted 0 runs\x1b[2J"]},
        runs_kept={},
    )
    first, *_ = result.summary().splitlines()
    assert (
        first == "TrainFlow: would delete 2 runs (ok, evil\\nFakeFlow: deleted 0 runs\\x1b[2J), kept 0 runs."
    )
    assert all(line.isprintable() for line in result.summary().splitlines())
