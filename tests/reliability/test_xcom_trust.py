"""Whoever can write an XCom row cannot make a reader open, unpickle or delete anything outside the
datastore root (issue 10, finding 2), and names either round-trip or are refused (finding 5).

Every way in has its own test, and each docstring names the protection it guards. Most go through
real Airflow: a DAG of ordinary tasks runs once (``dag.test()``), then rows of Airflow's ``xcom``
table are rewritten with SQLAlchemy (or the file under a row's derived key is replaced by a
symlink), a reader task is cleared and re-run, and finally the edited tasks are cleared and re-run,
which makes Airflow call the backend's ``purge`` on the edited rows. An audit hook
(:class:`hostile.OutsideWatch`) sees every file opened or deleted outside the root; hostile pickles
write marker files if they are ever unpickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import unicodedata
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import S3_TEST_BUCKET
from corruption import RawStore, hostile_pickle, soak_tries
from harness import a_manifest, clear_and_rerun
from hostile import (
    IDENTITY_FIELDS,
    OutsideWatch,
    S3Watch,
    fired_markers,
    hostile_campaign,
    outside_intact,
    plant_outside,
)
from reruns import task_states

from airflow_flowspec.datastore.encoding import content_hash
from airflow_flowspec.datastore.keys import FORMAT_MARKER_KEY, xcom_value_key
from airflow_flowspec.datastore.store import Datastore
from airflow_flowspec.errors import DatastoreError, UnsafeKeyError, XComReferenceError

DAG_ID = "xcom_trust"


def value_of(task_id: str) -> bytes:
    """What an ordinary producer returns: bytes, so it is pickled to the datastore (a format-2 row)."""
    return f"the value of {task_id} ".encode() * 20


#: Producers whose rows (or derived files) the story edits, by way in.
EDITED = (
    "edited_outside_file",
    "edited_other_bucket",
    "edited_traversal",
    "edited_absolute",
    "edited_symlink",
    "edited_symlink_inside",
    "edited_copied",
    "edited_format1",
)


#: Edited producers whose re-run must succeed: only their row was touched.
RECOVERABLE = tuple(name for name in EDITED if not name.startswith("edited_symlink"))


def planted_values(outside: Path) -> dict[str, Any]:
    """Dicts an ordinary task returns that look like our rows: they must come back as plain data."""
    return {
        "planted_format1": {
            "flowspec_xcom": 1,
            "root": str(outside),
            "key": "evil.pkl",
            "type": "bytes",
            "size": 10,
            "repr": "b''",
        },
        "planted_format2": {
            "flowspec_xcom": 2,
            "dag_id": DAG_ID,
            "run_id": "whatever",
            "task_id": "victim",
            "map_index": -1,
            "key": "return_value",
            "hash": "0" * 64,
            "size": 1,
            "type": "bytes",
            "repr": "b''",
        },
        "planted_manifest": {
            "flowspec_manifest": 1,
            "pathspec": "F/r/start/0",
            "flow": "F",
            "run_id": "r",
            "step": "start",
            "task_id": "0",
            "attempt": 1,
            "artifacts": {"victim": {"hash": "f" * 64, "type": "bytes", "size": 1, "repr": "b''"}},
            "parameters": [],
            "foreach_stack": [],
        },
    }


def edit_row(run_id: str, task_id: str, value: Any) -> None:
    """Rewrite the value of a ``return_value`` row of Airflow's ``xcom`` table, as an attacker would."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        result = session.execute(
            update(XComModel)
            .where(
                XComModel.dag_id == DAG_ID,
                XComModel.run_id == run_id,
                XComModel.task_id == task_id,
                XComModel.key == "return_value",
                XComModel.map_index == -1,
            )
            .values(value=value)
        )
        assert result.rowcount == 1


def derived_path(root: str, run_id: str, task_id: str) -> Path:
    return Path(root, *xcom_value_key(DAG_ID, run_id, task_id, -1, "return_value").split("/"))


@pytest.fixture(scope="module")
def story(tmp_path_factory, airflow_db, s3_endpoint):
    """The DAG, run once; rows edited; the reader re-run; the edited tasks re-run (purge)."""
    from airflow.sdk import dag, task
    from harness import raw_xcom

    from airflow_flowspec.airflow.local_run import sync_dag

    folder = tmp_path_factory.mktemp("xcom-trust")
    root = str(folder / "datastore")
    reports = folder / "reports.jsonl"
    # Outside the root: hostile pickles (local file, and an object in another bucket).
    outside = folder / "outside"
    planted = plant_outside(f"s3://{S3_TEST_BUCKET}/xcom-trust-{uuid.uuid4().hex[:8]}", outside)
    evil_file = Path(planted["file"])
    evil_hash, evil_size = content_hash(evil_file.read_bytes()), evil_file.stat().st_size
    planted_dicts = planted_values(outside)
    producers = ["victim", *EDITED, *planted_dicts]
    expected = {name: planted_dicts.get(name, value_of(name)) for name in producers}

    def produce(name: str):
        def producer() -> Any:
            return expected[name]

        return producer

    def read(**context: Any) -> None:
        """Pull every producer's XCom both ways Airflow does (one map index, all map indexes)."""
        ti = context["ti"]
        report: dict[str, Any] = {"run": ti.try_number}
        for name in producers:
            for how, extra in (("one", {"map_indexes": -1}), ("all", {})):
                try:
                    got = ti.xcom_pull(task_ids=name, **extra)
                except Exception as error:  # noqa: BLE001 - recorded for the tests
                    report[f"{name}/{how}"] = {"error": type(error).__name__, "message": str(error)}
                else:
                    report[f"{name}/{how}"] = {"equal": got == expected[name], "type": type(got).__name__}
        with open(reports, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(report) + "\n")

    @dag(dag_id=DAG_ID, schedule=None, catchup=False)
    def trust():
        reader = task(task_id="reader", trigger_rule="all_done")(read)()
        for name in producers:
            task(task_id=name)(produce(name))() >> reader

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", root)
        the_dag = trust()
        sync_dag(the_dag)
        first = the_dag.test()
        run_id = first.run_id
        out: dict[str, Any] = {
            "root": root,
            "run_id": run_id,
            "outside": outside,
            "planted": planted,
            "planted_dicts": planted_dicts,
            "first_states": task_states(first),
            "rows": {name: raw_xcom(DAG_ID, run_id, name) for name in producers},
        }

        # -- the edits --------------------------------------------------------------------------
        rows = out["rows"]
        victim_path = derived_path(root, run_id, "victim")
        victim_bytes = victim_path.read_bytes()
        out["victim_path"] = victim_path
        bucket, key = planted["objects"]["other_bucket"]
        format1 = {"type": "bytes", "size": evil_size, "repr": "b''"}
        edit_row(
            run_id,
            "edited_outside_file",
            {"flowspec_xcom": 1, "root": str(outside), "key": evil_file.name, **format1},
        )
        edit_row(
            run_id,
            "edited_other_bucket",
            {"flowspec_xcom": 1, "root": f"s3://{bucket}", "key": key, **format1},
        )
        traversal = os.path.relpath(evil_file, derived_path(root, run_id, "edited_traversal").parent)
        edit_row(
            run_id,
            "edited_traversal",
            {
                **rows["edited_traversal"],
                "task_id": traversal,
                "key": traversal,
                "hash": evil_hash,
                "size": evil_size,
            },
        )
        edit_row(
            run_id,
            "edited_absolute",
            {**rows["edited_absolute"], "dag_id": str(evil_file), "hash": evil_hash, "size": evil_size},
        )
        edit_row(run_id, "edited_symlink", {**rows["edited_symlink"], "hash": evil_hash, "size": evil_size})
        link = derived_path(root, run_id, "edited_symlink")
        link.unlink()
        link.symlink_to(evil_file)
        link_inside = derived_path(root, run_id, "edited_symlink_inside")
        link_inside.unlink()
        link_inside.symlink_to(victim_path)
        edit_row(run_id, "edited_copied", rows["victim"])
        old_key = xcom_value_key(DAG_ID, run_id, "edited_format1", -1, "return_value")
        edit_row(run_id, "edited_format1", {"flowspec_xcom": 1, "root": root, "key": old_key, **format1})

        with OutsideWatch(outside) as watch, S3Watch(root) as s3_watch:
            out["reader_states"] = task_states(clear_and_rerun(the_dag, run_id, ["reader"]))
            out["read_events"] = list(watch.events) + list(s3_watch.events)
            out["read_fired"] = fired_markers(planted)
            seen_files, seen_requests = len(watch.events), len(s3_watch.events)
            # -- purge: the edited and planted tasks (and the reader) cleared and re-run ---------
            rerun = [*EDITED, *planted_dicts, "reader"]
            out["purge_states"] = task_states(clear_and_rerun(the_dag, run_id, rerun))
            out["purge_events"] = watch.events[seen_files:] + s3_watch.events[seen_requests:]
        out["purge_fired"] = fired_markers(planted)
        out["outside_intact"] = outside_intact(planted)
        out["victim_intact"] = victim_path.is_file() and victim_path.read_bytes() == victim_bytes
        out["rows_after"] = {name: raw_xcom(DAG_ID, run_id, name) for name in producers}
        lines = [json.loads(line) for line in reports.read_text(encoding="utf-8").splitlines()]
        out["first_read"], out["edited_read"], out["after_purge_read"] = lines[0], lines[1], lines[-1]
        yield out


def refused(story: dict[str, Any], name: str, *errors: str) -> list[dict[str, Any]]:
    """The reader's outcome for ``name`` after the edits, both ways; asserts it was refused."""
    outcomes = [story["edited_read"][f"{name}/{how}"] for how in ("one", "all")]
    for outcome in outcomes:
        assert outcome.get("error") in (errors or ("XComReferenceError",)), (name, outcome)
    assert story["read_events"] == [], "a file or S3 object outside the root was opened"
    assert story["read_fired"] == [], "a hostile pickle was unpickled"
    return outcomes


def test_the_story_ran(story):
    """Sanity: every task succeeded the first time, every pull was right, rows are format 2."""
    assert set(story["first_states"].values()) == {"success"}, story["first_states"]
    assert all(outcome.get("equal") for key, outcome in story["first_read"].items() if "/" in key)
    assert story["rows"]["victim"]["flowspec_xcom"] == 2 and "root" not in story["rows"]["victim"]
    assert story["reader_states"]["reader"] == "success"  # it records refusals, it does not fail


def test_an_edited_row_cannot_make_a_reader_unpickle_a_file_outside_the_root(story):
    """Protection: a row naming a path (``root``/``key``, format 1) is refused
    (``values.row_identity``); what is read is derived from the configured root and the XCom's
    identity, never from the row. The file it named is a pickle that would write a marker."""
    for outcome in refused(story, "edited_outside_file"):
        assert "format 1" in outcome["message"] and "Nothing was read" in outcome["message"]


def test_an_edited_row_cannot_point_at_another_bucket(story):
    """Protection: as above, for ``root: s3://<another bucket>``: the object (a hostile pickle in
    moto's other bucket) is neither read nor unpickled."""
    refused(story, "edited_other_bucket")


def test_dotdot_in_an_edited_rows_key_parts_is_refused(story):
    """Protection: a row whose identity differs from the XCom Airflow asked for is refused
    (``values.expecting`` set by ``get_one``/``get_all``, checked in ``_check_expected``); here its
    task id and key climb (``../``) to a hostile pickle outside the root, with that pickle's hash."""
    for outcome in refused(story, "edited_traversal"):
        assert "edited or copied" in outcome["message"]


def test_an_absolute_path_in_an_edited_row_is_refused(story):
    """Protection: as above, for a dag id that is an absolute path to a hostile pickle."""
    refused(story, "edited_absolute")


def test_a_symlink_under_the_derived_key_to_a_pickle_outside_the_root_is_not_followed(story):
    """Protection: the local backend resolves every key and refuses one that lands outside the root
    (``LocalBackend._path``). The derived file is a symlink to a hostile pickle outside, and the row
    was edited to carry that pickle's hash, so only the containment check stands in the way."""
    for outcome in refused(story, "edited_symlink", "UnsafeKeyError"):
        assert "outside the datastore root" in outcome["message"] or "symlink" in outcome["message"]


def test_a_symlink_under_the_derived_key_to_another_object_in_the_root_is_not_trusted(story):
    """Protection: the bytes read are verified against the row's hash (``datastore.xcoms.load_value``):
    a symlink to another XCom's pickle inside the root gives a mismatch (or the link is refused),
    never that XCom's value."""
    refused(story, "edited_symlink_inside", "CorruptArtifactError", "UnsafeKeyError")


def test_a_row_copied_from_another_task_is_refused(story):
    """Protection: the identity check (``values.expecting``): a row copied from task ``victim`` to
    task ``edited_copied`` does not make a pull of ``edited_copied`` read ``victim``'s value."""
    for outcome in refused(story, "edited_copied"):
        assert "victim" in outcome["message"]


def test_an_old_format1_row_is_refused_with_a_clear_error(story):
    """Protection: format-1 rows (which held a ``root`` and ``key`` path) are not read, even one
    pointing exactly where the old backend wrote; the message says why and what to do."""
    for outcome in refused(story, "edited_format1"):
        assert "format 1" in outcome["message"] and "Run the task that pushed it again" in outcome["message"]


def test_values_planted_by_an_ordinary_task_round_trip_as_plain_data(story):
    """Protection: a value that looks like our row or a manifest, pushed by an ordinary task, is
    pickled like any other (``values._looks_like_ours``), so it comes back equal, as a dict, and
    never as a reference (``publishing_step_manifest`` is the only way to store a manifest inline)."""
    for name, value in story["planted_dicts"].items():
        for how in ("one", "all"):
            assert story["first_read"][f"{name}/{how}"] == {"equal": True, "type": "dict"}, name
            assert story["after_purge_read"][f"{name}/{how}"] == {"equal": True, "type": "dict"}, name
        row = story["rows"][name]
        assert row["flowspec_xcom"] == 2 and row["task_id"] == name and row["type"] == "dict", row
        assert row != value


def test_purge_deletes_nothing_outside_the_root(story):
    """Protection: ``purge`` deletes only the key derived from the XCom's identity under the
    configured root (``values.purge_stored``), whatever the row names: clearing and re-running the
    tasks whose rows point outside (a file, another bucket, a symlink, ``../``, an absolute path)
    and the planted ones removes nothing there and opens nothing there."""
    assert story["outside_intact"], "a planted file or object outside the root was deleted"
    assert story["purge_events"] == [], story["purge_events"]
    assert story["purge_fired"] == []


def test_purge_deletes_nothing_in_the_root_but_the_derived_key(story):
    """Protection: ``purge`` of a row copied from task ``victim`` (identity check) and of a derived
    key that is a symlink to ``victim``'s pickle (the key itself, not what it points at, is
    deleted, and the re-run's write replaces the link, not its target) leaves ``victim``'s pickle
    alone: it is still there, unchanged, and still reads as ``victim``'s value."""
    assert story["victim_intact"], f"{story['victim_path']} (another task's XCom) was deleted or overwritten"
    for how in ("one", "all"):
        assert story["after_purge_read"][f"victim/{how}"] == {"equal": True, "type": "bytes"}


def test_a_task_whose_row_is_refused_can_still_be_cleared_and_run_again(story):
    """Protection: refusing a row never blocks recovery: Airflow deletes a task's old XComs when it
    runs again (``XCom.delete`` -> ``purge``); a refused row must be left alone, not make the re-run
    fail, or "run the task that pushed it again" (the advice of the refusal) would be impossible.
    (A symlink planted in the root is tampering with the root itself: refusing the re-run until the
    link is removed, as the message says, is fine, so the symlink cases need not recover.)"""
    states = story["purge_states"]
    assert {name: states[name] for name in RECOVERABLE} == dict.fromkeys(RECOVERABLE, "success")
    for name in RECOVERABLE:
        assert story["rows_after"][name]["task_id"] == name  # a fresh, good row
        for how in ("one", "all"):
            assert story["after_purge_read"][f"{name}/{how}"] == {"equal": True, "type": "bytes"}


# -- the same ways in, without Airflow, on a local and an S3 root ----------------------------------------


@pytest.fixture(params=["local", "s3"])
def xcom_root(request, tmp_path, monkeypatch):
    """A fresh root configured for the XCom backend, and hostile pickles planted outside it."""
    if request.param == "s3":
        request.getfixturevalue("s3_endpoint")
        root = f"s3://{S3_TEST_BUCKET}/trust-{uuid.uuid4().hex[:12]}"
    else:
        root = str(tmp_path / "store")
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", root)
    return root, plant_outside(root, tmp_path / "outside")


IDENTITY = {"dag_id": "d", "run_id": "manual__1", "task_id": "t", "map_index": -1, "key": "return_value"}


@pytest.mark.parametrize(
    ("field", "hostile"),
    [
        ("task_id", "../../../../outside"),  # a naive join leads to <tmp>/outside/-1/return_value.pkl
        ("key", "../../../../../../outside/evil"),  # ... to <tmp>/outside/evil.pkl
        ("run_id", ".."),  # ... to another XCom's file inside the root
        ("dag_id", "/absolute/outside"),
        ("key", "C:\\evil"),
        ("task_id", "a/../../b"),
    ],
)
def test_traversal_and_absolute_paths_in_an_xcoms_own_identity_stay_inside_the_root(
    xcom_root, tmp_path, field, hostile
):
    """Protection: every identity part is one encoded path segment (``keys.safe_key_part``: ``/``,
    ``\\`` and a leading ``.`` are percent-encoded), so even an XCom whose own key or task id is a
    path writes, reads and purges inside the root and only under its own key. Where a naive join
    would lead waits a hostile pickle (outside the root: reads carry its hash) or another XCom's
    file (inside: purge must leave it)."""
    import posixpath

    from airflow_flowspec.xcom_backend import values

    root, planted = xcom_root
    identity = {**IDENTITY, field: hostile}
    parts = ["_xcom", *(str(identity[f]) for f in IDENTITY_FIELDS[:-1]), identity["key"] + ".pkl"]
    marker = Path(planted["folder"], "naive-unpickled")
    evil, bystander = hostile_pickle(marker), b"another XCom's pickle"
    raw, planted_at = RawStore(root), None
    if raw.is_s3:
        naive = posixpath.normpath("/" + raw.prefix + "/".join(parts)).lstrip("/")
        inside = naive.startswith(raw.prefix)
        planted_at = naive
        raw.client.put_object(Bucket=raw.bucket, Key=naive, Body=bystander if inside else evil)
    else:
        naive = os.path.normpath(os.path.join(root, *parts))
        inside = naive.startswith(root + os.sep)
        if inside or naive.startswith(str(tmp_path) + os.sep):
            planted_at = naive
            Path(naive).parent.mkdir(parents=True, exist_ok=True)
            Path(naive).write_bytes(bystander if inside else evil)

    planted_key = None
    if planted_at is not None and inside:
        planted_key = planted_at[len(raw.prefix) :] if raw.is_s3 else os.path.relpath(planted_at, root)
    with OutsideWatch(tmp_path, exclude=root) as watch, values.expecting(**identity):
        row = values.store_value(b"a value", **identity)
        (written,) = [key for key in raw.keys("_xcom/") if key != planted_key]
        segments = written.split("/")  # _xcom, dag, run, task, map index, key: one segment each
        assert len(segments) == 6 and not {"", ".", ".."} & set(segments), written
        assert values.deserialize(row) == (True, b"a value")
        with pytest.raises(DatastoreError):
            values.deserialize({**row, "hash": content_hash(evil), "size": len(evil)})
        values.purge_stored(row)
    assert watch.events == [], "a file outside the root was opened or deleted"
    assert not marker.exists() and fired_markers(planted) == [] and outside_intact(planted)
    if planted_at is not None:  # what waited where a naive join leads is untouched
        if raw.is_s3:
            got = raw.client.get_object(Bucket=raw.bucket, Key=planted_at)["Body"].read()
        else:
            got = Path(planted_at).read_bytes()
        assert got == (bystander if inside else evil)
    assert raw.keys("_xcom/") == ([planted_key] if planted_key else [])  # its own key, only it, purged


def test_a_row_copied_from_another_run_is_refused(xcom_root):
    """Protection: the identity check (``values.expecting``) covers the run: run 2's pull of a row
    copied from run 1 neither reads run 1's value nor, on purge, deletes it."""
    from airflow_flowspec.xcom_backend import values

    root, _ = xcom_root
    run1 = {**IDENTITY, "run_id": "manual__run-1"}
    row = values.store_value(b"run one", **run1)
    with values.expecting(**{**run1, "run_id": "manual__run-2"}):
        with pytest.raises(XComReferenceError, match="edited or copied"):
            values.deserialize(row)
        with contextlib.suppress(XComReferenceError):  # refusing or skipping: either is fine
            values.purge_stored(row)
    with values.expecting(**run1):
        assert values.deserialize(row) == (True, b"run one")


@pytest.mark.parametrize("where", ["other_bucket", "other_prefix"])
def test_format1_rows_naming_another_bucket_or_prefix_are_refused_on_an_s3_root(
    s3_endpoint, tmp_path, monkeypatch, where
):
    """Protection: format-1 rows are refused (``values.row_identity``) and purge of them deletes
    nothing: on an S3 root, neither another bucket nor another prefix of the same bucket is read,
    unpickled or deleted."""
    from airflow_flowspec.xcom_backend import values

    root = f"s3://{S3_TEST_BUCKET}/trust-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", root)
    planted = plant_outside(root, tmp_path / "outside")
    bucket, key = planted["objects"][where]
    for row_root, row_key in ((f"s3://{bucket}", key), (root, "../" * 4 + key), (f"s3://{bucket}/{key}", "")):
        row = {
            "flowspec_xcom": 1,
            "root": row_root,
            "key": row_key,
            "type": "bytes",
            "size": 1,
            "repr": "b''",
        }
        with values.expecting(**IDENTITY), S3Watch(root) as watch:
            with pytest.raises(XComReferenceError, match="format 1"):
                values.deserialize(row)
            with contextlib.suppress(XComReferenceError):  # refusing or skipping: either is fine
                values.purge_stored(row)
        assert watch.events == [], f"{row} made a request outside the root"
    assert fired_markers(planted) == [] and outside_intact(planted)


# -- the campaign ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("store", "ci", "soak"), [("local", 300, 20000), ("s3", 60, 2000)])
def test_hostile_campaign(request, tmp_path, store, ci, soak):
    """Protections: all of the above, at random (every way in, mixed, with partly open pulls and,
    on a local root, symlinks), and the same against a chunked list's row and its stored chunks
    (``values.chunked_row_fields``, ``ChunkedSequence``, ``chunks.read_chunk``): nothing let in,
    every refusal one of our errors. ``FLOWSPEC_SOAK=1`` runs the soak count."""
    if store == "s3":
        request.getfixturevalue("s3_endpoint")
        root = f"s3://{S3_TEST_BUCKET}/campaign-{uuid.uuid4().hex[:12]}"
    else:
        root = str(tmp_path / "store")
    tries = soak_tries(ci, soak)
    figures = hostile_campaign(root=root, tries=tries, seed=20261125)
    print(json.dumps({key: value for key, value in figures.items() if key != "examples"}))
    assert figures["tried"] == tries
    assert figures["let_in"] == 0, figures["examples"]
    assert figures["refused_unclearly"] == 0, figures["examples"]
    assert figures["refused"] + figures["answered_from_derived_key"] == tries
    chunk_ways = [way for way in figures["by_way"] if way.startswith("chunk_")]
    assert len(chunk_ways) >= 10, sorted(figures["by_way"])


# -- names -----------------------------------------------------------------------------------------------

NOT_UTF8 = "run-\udcff"  # what Python makes of the byte 0xff in a name read as UTF-8

FLOW = """
from airflow_flowspec import FlowSpec, step


class NamesFlow(FlowSpec):
    @step
    def start(self):
        self.greeting = "hallo"
        self.next(self.end)

    @step
    def end(self):
        pass
"""


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize("field", ["run_id", "step", "flow_name"])
def test_a_name_that_is_not_utf8_is_refused_before_anything_is_written(tmp_path, field):
    """Protection: ``keys.safe_key_part`` refuses a name with no UTF-8 form (a lone surrogate) with
    the rule in the message, and the step runtime checks every name it will write under before it
    writes anything (``run_step``'s first line)."""
    from airflow_flowspec.identity import RunIdentity
    from airflow_flowspec.runtime.step_runner import run_step
    from airflow_flowspec.runtime.task_spec import TaskSpec

    flow_file = tmp_path / "names_flow.py"
    flow_file.write_text(FLOW, encoding="utf-8")
    root = tmp_path / "store"
    names = {"run_id": "run-1", "step": "start", "flow_name": "NamesFlow", field: NOT_UTF8}
    if field == "flow_name":  # a flow is named by its class: refused as soon as the run is named
        from airflow_flowspec.errors import RunIdentityError

        with pytest.raises(RunIdentityError, match="is not a flow name"):
            RunIdentity(names["flow_name"], names["run_id"])
        return
    run = RunIdentity(names["flow_name"], names["run_id"])
    spec = TaskSpec(flow_file=str(flow_file), run=run, step=names["step"], datastore_root=str(root))
    with pytest.raises(UnsafeKeyError) as caught:
        run_step(spec)
    assert "must be valid UTF-8" in str(caught.value)
    assert [path for path in tree(root) if not path.startswith(".tmp")] == []


def test_a_name_that_is_not_utf8_is_refused_by_the_datastore_and_the_xcom_backend(tmp_path, monkeypatch):
    """Protection: the same rule (``keys.safe_key_part``) for every writer: run records, manifests,
    attempt files and an ordinary task's pickled XCom; nothing is written for any of them."""
    from airflow_flowspec.xcom_backend import values

    root = tmp_path / "store"
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", str(root))
    datastore = Datastore(str(root))
    start = a_manifest("F", "run-1", "start")
    attempts = [
        lambda: datastore.write_run_meta("F", NOT_UTF8, {}),
        lambda: datastore.write_manifest(a_manifest("F", "run-1", "st\udcffep")),
        lambda: datastore.write_attempt_file(start.attempt, "log-\udcfe.txt", b"x"),
        lambda: values.store_value(b"x" * 100, **{**IDENTITY, "run_id": NOT_UTF8}),
        lambda: values.store_value(b"x" * 100, **{**IDENTITY, "key": "k\udcff"}),
    ]
    for attempt in attempts:
        with pytest.raises(UnsafeKeyError, match="must be valid UTF-8"):
            attempt()
    # Nothing but the root's format marker, which a datastore claims before its first write.
    assert [path for path in tree(root) if not path.startswith(".tmp")] in ([], [FORMAT_MARKER_KEY])


NON_ASCII_RUNS = ["lauf-ü-日本", unicodedata.normalize("NFD", "lauf-ü-日本"), "run 🙂 #1%2F..", ".hidden-ü"]


@pytest.mark.parametrize("store", ["local", "s3"])
def test_a_non_ascii_name_round_trips_exactly(request, tmp_path, store):
    """Protection: names are percent-encoded reversibly and injectively (``keys.safe_key_part`` /
    ``decode_key_part``): non-ASCII run ids, flow and step names (composed and decomposed forms kept
    apart, ``%`` and a leading ``.`` included) come back from listings exactly as written."""
    if store == "s3":
        request.getfixturevalue("s3_endpoint")
        root = f"s3://{S3_TEST_BUCKET}/names-{uuid.uuid4().hex[:12]}"
    else:
        root = str(tmp_path / "store")
    datastore = Datastore(root)
    flow, step = "Flüsse日本", "schritt_ü"
    for run_id in NON_ASCII_RUNS:
        datastore.write_run_meta(flow, run_id, {"note": run_id})
        datastore.write_manifest(a_manifest(flow, run_id, step))
        datastore.finish_run(flow, run_id, True, {})
    assert datastore.list_runs(flow) == sorted(NON_ASCII_RUNS)
    for run_id in NON_ASCII_RUNS:
        assert datastore.list_steps(flow, run_id) == [step]
        assert datastore.list_tasks(flow, run_id, step) == ["0"]
        assert datastore.read_manifest(a_manifest(flow, run_id, step).attempt).attempt.run_id == run_id
        assert datastore.read_run_meta(flow, run_id)["note"] == run_id
        assert datastore.run_status(flow, run_id)["status"] == "succeeded"
    assert datastore.latest_run(flow) == NON_ASCII_RUNS[-1]


def test_a_non_ascii_run_id_round_trips_through_a_step(tmp_path):
    """Protection: as above, end to end: the step runtime stores a run under a non-ASCII id, and the
    run, its step and its artifacts are found again under exactly that id."""
    from airflow_flowspec.datastore.views import task_view
    from airflow_flowspec.identity import RunIdentity
    from airflow_flowspec.runtime.step_runner import run_step
    from airflow_flowspec.runtime.task_spec import TaskSpec

    flow_file = tmp_path / "names_flow.py"
    flow_file.write_text(FLOW, encoding="utf-8")
    root = str(tmp_path / "store")
    run_id = "lauf-ü-日本"
    result = run_step(
        TaskSpec(
            flow_file=str(flow_file), run=RunIdentity("NamesFlow", run_id), step="start", datastore_root=root
        )
    )
    assert result.manifest.pathspec == f"NamesFlow/{run_id}/start/0"
    datastore = Datastore(root)
    assert datastore.list_runs("NamesFlow") == [run_id]
    assert datastore.list_steps("NamesFlow", run_id) == ["start"]
    manifest = datastore.latest_attempt_manifest("NamesFlow", run_id, "start", "0")
    assert task_view(manifest, datastore).greeting == "hallo"
