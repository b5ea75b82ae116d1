"""Damaged blobs are detected on every read path, never returned as a wrong value, and repaired.

Issue 10, finding 1: a flipped byte in an artifact stored as its own blob came back as a different
value through the datastore, the XCom view and a downstream step; a truncation surfaced as an
unpickling error that named no artifact; and a new run did not repair the blob (an existence check
skipped the rewrite), so every later run failed too.

Each corruption (flip, truncate, swap: see corruption.py) is tried on a blob of its own (2 MB and
20 MB pickled) and on a pack (small artifacts), on a local root and on S3 (moto's server; also with
large objects downloaded to a scratch file), and read through (a) ``ArtifactStore.load``, (b) the
XCom view a plain Airflow task gets, (c) a downstream step of a real run (``dag.test()``). Every
value carries a tripwire that writes a file if it is unpickled; a swapped-in blob is a hostile
pickle that writes a marker: neither file may appear.
"""

from __future__ import annotations

import json
import random
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import S3_TEST_BUCKET
from corruption import (
    KINDS,
    RawStore,
    Tripwire,
    corrupt,
    corruption_campaign,
    first_read_damaged,
    fresh,
    hostile_pickle,
    soak_tries,
    tripped_value,
)
from harness import clear_and_rerun
from reruns import forget_open_datastores, task_states

from airflow_flowspec.datastore import encoding
from airflow_flowspec.datastore.keys import DAMAGED_PREFIX, blob_key
from airflow_flowspec.datastore.store import Datastore
from airflow_flowspec.errors import CorruptArtifactError

MB = 1024 * 1024
#: Target -> pickled size of its value: blobs of their own, and a small one that goes in a pack.
SIZES = {"blob-2MB": 2 * MB, "blob-20MB": 20 * MB, "pack": 2000}


@pytest.fixture
def make_root(tmp_path, request):
    """A fresh datastore root of the asked kind: ``local``, ``s3`` or ``s3-streamed`` (S3, with
    every blob over 1 MB downloaded in ranges to a scratch file rather than read into memory)."""

    def make(kind: str) -> str:
        if kind == "local":
            return str(tmp_path / f"store-{uuid.uuid4().hex[:8]}")
        request.getfixturevalue("s3_endpoint")
        if kind == "s3-streamed":
            request.getfixturevalue("monkeypatch").setattr(encoding, "REMOTE_IN_MEMORY_LOAD_LIMIT", MB)
        return f"s3://{S3_TEST_BUCKET}/corruption-{uuid.uuid4().hex[:12]}"

    return make


def store_victim(root: str, target: str, trip_dir: Path) -> tuple[Datastore, Any, Any, Tripwire]:
    """Store a tripwired value of the target's size, with a pack-mate: (datastore, ref, value, tripwire)."""
    datastore = Datastore(root)
    tripwire = Tripwire(trip_dir, f"victim-{uuid.uuid4().hex[:8]}")
    value = tripped_value(tripwire, SIZES[target], seed=len(target))
    ref = fresh(datastore).artifacts.save_many({"victim": value, "mate": [1, 2, 3]})["victim"]
    assert (ref.pack is not None) == (target == "pack"), ref
    return datastore, ref, value, tripwire


def damage(root: str, ref: Any, kind: str, hostile_marker: Path, seed: int = 7) -> str:
    key = blob_key(ref.pack or ref.hash)
    corrupt(root, key, kind, rng=random.Random(seed), decoy=hostile_pickle(hostile_marker))
    return key


def assert_refused(error: CorruptArtifactError, ref: Any, key: str) -> None:
    """A mismatch error: names the blob's hash and where it was, says nothing was unpickled, and does
    not blame a missing module (what a failed unpickling used to say)."""
    message = str(error)
    assert (ref.pack or ref.hash) in message and key.split("/")[-1] in message
    assert "Nothing was unpickled" in message
    assert "module" not in message


# -- (a) the datastore, and the next save repairing ----------------------------------------------------

#: Every kind on every target locally; on S3 the in-memory path (2 MB, pack) and the streamed one
#: (20 MB, downloaded in ranges to a scratch file), which share nothing else worth repeating.
MATRIX = [
    (store, target, kind)
    for store, targets in (
        ("local", ("blob-2MB", "blob-20MB", "pack")),
        ("s3", ("blob-2MB", "pack")),
        ("s3-streamed", ("blob-20MB",)),
    )
    for target in targets
    for kind in KINDS
]


@pytest.mark.parametrize(("store", "target", "kind"), MATRIX)
def test_datastore_load_refuses_a_damaged_blob_and_the_next_save_repairs_it(
    make_root, tmp_path, store, target, kind
):
    """Protections: every read is verified against the BLAKE3 name before unpickling
    (``encoding.decode``/``verified_source`` for blobs, ``ArtifactStore._pack`` for packs); a blob
    failing twice is moved to ``damaged/``, so the next save of the same value stores it anew
    (``ArtifactStore._damaged`` + ``blob_is_stored``)."""
    root = make_root(store)
    datastore, ref, value, tripwire = store_victim(root, target, tmp_path)
    hostile = tmp_path / "hostile-unpickled"
    key = damage(root, ref, kind, hostile)
    tripwire.reset()

    with pytest.raises(CorruptArtifactError) as caught:
        fresh(datastore).artifacts.load(ref)
    assert_refused(caught.value, ref, key)
    assert not tripwire.fired and not hostile.exists(), "bytes of a damaged blob reached the unpickler"
    raw = RawStore(root)
    assert not raw.exists(key) and len(raw.keys(DAMAGED_PREFIX)) == 1  # set aside, name free

    fresh(datastore).artifacts.save_many({"victim": value, "mate": [1, 2, 3]})  # the next run
    assert fresh(datastore).artifacts.load(ref) == value
    assert fresh(datastore).artifacts.load(ref) == value  # and it stays good


# -- (b) the XCom view of a plain Airflow task ---------------------------------------------------------


@pytest.mark.parametrize(
    ("store", "target", "kind"),
    [(s, t, k) for s in ("local", "s3") for t in ("blob-2MB", "pack") for k in KINDS],
)
def test_xcom_view_refuses_a_damaged_artifact_naming_it(
    make_root, tmp_path, monkeypatch, store, target, kind
):
    """Protection: what ``ti.xcom_pull(task_ids="start").victim`` reads (``values.manifest_view``, the
    view over the step's manifest row) is verified too, and the error names flow, run, step, task and
    artifact (``views.ArtifactLoader`` passes them to ``ArtifactStore.load``)."""
    from airflow_flowspec.datastore.keys import AttemptKey
    from airflow_flowspec.datastore.manifest import new_manifest
    from airflow_flowspec.xcom_backend import values

    root = make_root(store)
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", root)
    _, ref, _, tripwire = store_victim(root, target, tmp_path)
    manifest = new_manifest(
        AttemptKey("ViewFlow", "manual__2026-11-25T10:00:00+00:00", "start", "0", 1),
        artifacts={"victim": ref},
        parameters=[],
        foreach_stack=[],
    ).to_json()
    hostile = tmp_path / "hostile-unpickled"
    damage(root, ref, kind, hostile)
    tripwire.reset()

    view = values.manifest_view(json.loads(json.dumps(manifest)))  # the row, as the table holds it
    with pytest.raises(CorruptArtifactError) as caught:
        _ = view.victim
    message = str(caught.value)
    assert "artifact 'victim' of ViewFlow/manual__2026-11-25T10:00:00+00:00/start/0" in message
    assert "damaged" in message and "Nothing was unpickled" in message
    assert not tripwire.fired and not hostile.exists()


# -- transient faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("store", "target"),
    [
        ("local", "blob-2MB"),
        ("local", "pack"),
        ("s3", "blob-2MB"),
        ("s3", "pack"),
        ("s3-streamed", "blob-2MB"),
    ],
)
def test_a_transient_fault_is_not_reported_as_damage(make_root, tmp_path, store, target):
    """Protection: a read that fails the hash check is read once more before the blob is called
    damaged (``ArtifactStore._decode_verified`` / ``_pack``): a fault on the way is not damage, the
    value comes back right and nothing is moved aside."""
    root = make_root(store)
    datastore, ref, value, _ = store_victim(root, target, tmp_path)
    key = blob_key(ref.pack or ref.hash)
    with first_read_damaged(datastore.backend, key) as reads:
        assert fresh(datastore).artifacts.load(ref) == value
    assert reads == {"reads": 2, "damaged": 1}
    raw = RawStore(root)
    assert raw.exists(key) and raw.keys(DAMAGED_PREFIX) == []


# -- a save before anyone read the damage --------------------------------------------------------------


@pytest.mark.parametrize(
    ("store", "target", "kind"),
    [("local", t, k) for t in ("blob-2MB", "pack") for k in KINDS]
    + [("s3", t, k) for t in ("blob-2MB", "pack") for k in ("truncate", "swap")],
)
def test_a_save_repairs_a_damaged_blob_nobody_has_read_yet(make_root, tmp_path, store, target, kind):
    """Protection: a save whose blob exists but is damaged rewrites it (``blob_is_stored``), so one
    bad blob cannot fail the run that stores its value again.

    On S3 the check is one HEAD (size and the ``x-amz-meta-blake3`` the blob was written with): a
    same-size rewrite that also keeps that metadata is beyond it, and is caught by the next read
    instead (the test above). On a local root nothing but the bytes can say a same-size blob is bad.
    """
    root = make_root(store)
    datastore, ref, value, _ = store_victim(root, target, tmp_path)
    damage(root, ref, kind, tmp_path / "hostile-unpickled")

    fresh(datastore).artifacts.save_many({"victim": value, "mate": [1, 2, 3]})
    assert fresh(datastore).artifacts.load(ref) == value


# -- (c) a downstream step and a plain task of a real run ----------------------------------------------

FLOW_SOURCE = '''
"""Stores two blobs of their own and a small artifact (in a pack); end and a plain task read them."""

import json
import os

from corruption import Tripwire, tripped_value

from airflow_flowspec import FlowSpec, current, step

TRIP_DIR = {trip_dir!r}
REPORTS = {reports!r}
SIZES = {sizes!r}


def expected(name):
    return tripped_value(Tripwire(TRIP_DIR, name), SIZES[name], seed=len(name))


def read_all(source, who, run_id):
    """Read every artifact; append what happened to the report; raise the first error."""
    report, first = {{}}, None
    for name in SIZES:
        try:
            value = getattr(source, name)
        except Exception as error:
            report[name] = {{"error": type(error).__name__, "message": str(error)}}
            first = first or error
        else:
            report[name] = {{"right": value == expected(name)}}
    with open(REPORTS, "a", encoding="utf-8") as stream:
        stream.write(json.dumps({{"who": who, "run_id": run_id, **report}}) + "\\n")
    if first is not None:
        raise first


class {flow_name}(FlowSpec):
    @step
    def start(self):
        for name in SIZES:
            setattr(self, name, expected(name))
        self.next(self.end)

    @step
    def end(self):
        read_all(self, "end", current.run_id)
'''


FLOW_SIZES = {"big2": 2 * MB, "big20": 20 * MB, "small": 2000}
#: Which corruption each artifact gets, per root: every kind on every root, blobs and packs.
FLOW_DAMAGE = {
    "local": {"big2": "flip", "big20": "truncate", "small": "swap"},
    "s3": {"big2": "swap", "big20": "flip", "small": "truncate"},
}


def _reports(path: Path, run_id: str, who: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line["run_id"] == run_id and line["who"] == who]


@pytest.fixture(scope="module", params=["local", "s3"])
def flow_story(request, tmp_path_factory, airflow_db):
    """One flow, run for real, its blobs damaged, its readers re-run, then run again.

    1. run 1: start stores big2 (2 MB), big20 (20 MB) and small (in a pack); end and a plain task
       downstream of start read them: all good;
    2. each is damaged (FLOW_DAMAGE), and end and the plain task of run 1 are cleared and re-run in
       a fresh "process" (no in-memory pack);
    3. run 2: start stores the same values again (the repair), end and the plain task read them;
    4. end and the plain task of run 1 are re-run once more: its blobs are good again.
    """
    from airflow.sdk import task
    from harness import FlowRun, load_flow

    from airflow_flowspec.airflow.local_run import sync_dag
    from airflow_flowspec.airflow.registration import dag_for

    kind = request.param
    folder = tmp_path_factory.mktemp(f"flow-{kind}")
    trip_dir, reports = folder / "trips", folder / "reports.jsonl"
    trip_dir.mkdir()
    hostile = folder / "hostile-unpickled"
    flow_name = f"Corruption{kind.capitalize()}Flow"
    flow_file = folder / "corruption_flow.py"
    flow_file.write_text(
        FLOW_SOURCE.format(
            trip_dir=str(trip_dir), reports=str(reports), sizes=FLOW_SIZES, flow_name=flow_name
        ),
        encoding="utf-8",
    )
    if kind == "s3":
        request.getfixturevalue("s3_endpoint")
        root = f"s3://{S3_TEST_BUCKET}/corruption-flow-{uuid.uuid4().hex[:12]}"
    else:
        root = str(folder / "datastore")

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", root)
        flow_class = load_flow(flow_file)
        read_all = sys.modules[flow_class.__module__].read_all

        def plain(**context: Any) -> None:
            """A plain Airflow task downstream of start: reads its artifacts by attribute."""
            read_all(context["ti"].xcom_pull(task_ids="start"), "plain", context["run_id"])

        dag = dag_for(flow_class, str(flow_file))
        with dag:
            dag.get_task("start") >> task(task_id="plain")(plain)()
        sync_dag(dag)

        story: dict[str, Any] = {"kind": kind, "root": root, "flow": flow_name, "reports": reports}
        first = FlowRun(flow_name, dag.test())
        story["run1"] = first
        story["run1_states"] = task_states(first.dag_run)
        manifest = first.manifest("start")
        story["manifest1"] = manifest
        refs = manifest.to_json()["artifacts"]
        rng = random.Random(10)
        damaged = {}
        for name, how in FLOW_DAMAGE[kind].items():
            key = blob_key(refs[name].get("pack") or refs[name]["hash"])
            damaged[name] = corrupt(root, key, how, rng=rng, decoy=hostile_pickle(hostile))
        story["damaged"] = damaged
        for name in FLOW_SIZES:
            Tripwire(trip_dir, name).reset()

        # The step first; then the damage is put back (the first reader set it aside) for the plain task.
        forget_open_datastores(monkeypatch)
        story["rerun_states"] = task_states(clear_and_rerun(dag, first.run_id, ["end"]))
        raw = RawStore(root)
        aside = {key.split("/")[1].split(".")[0]: key for key in raw.keys(DAMAGED_PREFIX)}
        story["damaged_aside"] = sorted(aside)
        for digest, key in aside.items():
            raw.write(blob_key(digest), *raw.read(key))
        forget_open_datastores(monkeypatch)
        story["rerun_states"].update(
            {"plain": task_states(clear_and_rerun(dag, first.run_id, ["plain"]))["plain"]}
        )
        story["fired"] = sorted(p.name for p in trip_dir.iterdir()) + (
            [hostile.name] if hostile.exists() else []
        )

        forget_open_datastores(monkeypatch)
        second = FlowRun(flow_name, dag.test())
        story["run2"] = second
        story["run2_states"] = task_states(second.dag_run)
        story["manifest2"] = second.manifest("start")

        forget_open_datastores(monkeypatch)
        story["later_states"] = task_states(clear_and_rerun(dag, first.run_id, ["end", "plain"]))
        yield story


def test_a_downstream_step_refuses_damaged_artifacts_naming_flow_run_step_task_and_artifact(flow_story):
    """Protection: a step's reads of inherited artifacts go through the verified read path
    (``ArtifactLoader.load`` -> ``ArtifactStore.load``), and the error names the artifact and the
    pathspec (flow/run/step/task) of the task that stored it; the task fails at once (not retried)."""
    run_id = flow_story["run1"].run_id
    assert flow_story["run1_states"] == {"start": "success", "end": "success", "plain": "success"}
    assert flow_story["rerun_states"]["end"] == "failed"
    first_read, after_damage = _reports(flow_story["reports"], run_id, "end")[:2]
    assert flow_story["rerun_states"]["start"] == "success"  # not re-run: the damage is not redone
    assert all(entry == {"right": True} for name, entry in first_read.items() if name in FLOW_SIZES)
    pathspec = f"{flow_story['flow']}/{run_id}/start/0"
    for name in FLOW_SIZES:
        got = after_damage[name]
        assert got.get("error") == "CorruptArtifactError", (name, got)
        assert f"artifact '{name}' of {pathspec}" in got["message"], got["message"]
        assert "Nothing was unpickled" in got["message"] and "module" not in got["message"]


def test_a_plain_airflow_task_pulling_the_step_refuses_damaged_artifacts(flow_story):
    """Protection: ``ti.xcom_pull(task_ids="start").<name>`` (the XCom backend's manifest view) reads
    through the verified path and names the artifact and the step's pathspec; never a wrong value."""
    run_id = flow_story["run1"].run_id
    assert flow_story["rerun_states"]["plain"] == "failed"
    after_damage = _reports(flow_story["reports"], run_id, "plain")[1]
    pathspec = f"{flow_story['flow']}/{run_id}/start/0"
    for name in FLOW_SIZES:
        got = after_damage[name]
        assert got.get("error") == "CorruptArtifactError", (name, got)
        assert f"artifact '{name}' of {pathspec}" in got["message"], got["message"]


def test_no_byte_of_a_damaged_blob_reaches_the_unpickler_in_a_run(flow_story):
    """Protection: verification happens before ``pickle`` sees a byte (``encoding.verified_source``,
    ``ArtifactStore._pack``): no tripwire in the damaged values fired, and the hostile pickle swapped
    in for one of them never ran."""
    assert flow_story["fired"] == []
    refs = flow_story["manifest1"].to_json()["artifacts"]
    # each damaged blob was set aside after two reads
    assert flow_story["damaged_aside"] == sorted(ref.get("pack") or ref["hash"] for ref in refs.values())


def test_a_new_run_repairs_the_blobs_and_later_reads_are_good(flow_story):
    """Protection: a damaged blob is set aside and the next save of its value rewrites it
    (``ArtifactStore._damaged``, ``blob_is_stored``): the finding was that an existence check skipped
    the rewrite, so every later run failed."""
    assert flow_story["run2_states"] == {"start": "success", "end": "success", "plain": "success"}
    # the same values, so the same blobs and the same pack: run 1's manifest points at them too
    assert flow_story["manifest2"].artifacts == flow_story["manifest1"].artifacts
    run2 = flow_story["run2"].run_id
    for who in ("end", "plain"):
        (report,) = _reports(flow_story["reports"], run2, who)
        assert all(report[name] == {"right": True} for name in FLOW_SIZES), report
    # Run 1 read again: good.
    assert flow_story["later_states"] == {"start": "success", "end": "success", "plain": "success"}
    run1 = flow_story["run1"].run_id
    for who in ("end", "plain"):
        last = _reports(flow_story["reports"], run1, who)[-1]
        assert all(last[name] == {"right": True} for name in FLOW_SIZES), last


# -- the campaign ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("store", "ci", "soak"), [("local", 24, 2000), ("s3", 6, 300)])
def test_corruption_campaign(make_root, store, ci, soak):
    """Protections: all of the above, at random (kinds in turn, blob or pack, sizes 65 KB to 3 MB):
    every corruption detected and named, no wrong value, nothing unpickled, every blob repaired by
    the next save, no transient fault taken for damage. ``FLOWSPEC_SOAK=1`` runs the soak count."""
    tries = soak_tries(ci, soak)
    figures = corruption_campaign(root=make_root(store), tries=tries, seed=20261125)
    print(json.dumps({key: value for key, value in figures.items() if key != "examples"}))
    failures = [example for example in figures["examples"] if "message" not in example]
    assert figures["detected"] == tries, failures
    assert figures["named"] == tries
    assert figures["wrong_values"] == 0 and figures["unpickled"] == 0 and figures["other_errors"] == 0
    assert figures["repaired"] == tries, failures
    assert figures["transient_reported_as_damage"] == 0 and figures["transient_wrong_values"] == 0
