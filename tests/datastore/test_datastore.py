"""The datastore: what a step's artifacts, manifests and runs look like once stored.

Behavioural tests run twice, against a local folder and against S3 (moto's HTTP server on
loopback, see ``s3_endpoint`` in conftest.py).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid

import pytest
from harness import REPO, a_manifest, attempt

from airflow_flowspec.datastore import ArtifactRef, Datastore, open_datastore
from airflow_flowspec.datastore.artifacts import short_repr
from airflow_flowspec.datastore.backends import backend_for_root
from airflow_flowspec.datastore.backends.local import LocalBackend
from airflow_flowspec.datastore.backends.s3 import S3Backend
from airflow_flowspec.datastore.keys import blob_key, decode_key_part, safe_key_part
from airflow_flowspec.errors import (
    ArtifactNotFoundError,
    ArtifactSaveError,
    ConfigurationError,
    CorruptArtifactError,
    DatastoreError,
    UnsafeKeyError,
)

BUCKET = "flowspec-test"  # created by the s3_endpoint fixture (conftest.py)
REPO_ROOT = str(REPO)
RUN_ID = "manual__2026-11-23T08:57:05.123456+00:00"


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    request.getfixturevalue("s3_endpoint")
    return f"s3://{BUCKET}/prefix-{uuid.uuid4().hex}"


@pytest.fixture
def datastore(root):
    return Datastore(root)


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A private system temp folder, so a test can see every scratch file the datastore makes."""
    folder = tmp_path / "system-temp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__SCRATCH_DIR", str(folder))
    return folder


def scratch_files(folder) -> list[str]:
    """Scratch files in ``folder`` (not the S3 sweep's marker, which is meant to stay)."""
    return [name for name in os.listdir(folder) if not name.startswith(".multipart-sweep-")]


def stored_keys(datastore: Datastore) -> list[str]:
    """Every key under the datastore root, hidden local files included."""
    backend = datastore.backend
    if isinstance(backend, LocalBackend):
        base = backend.describe("")
        return sorted(
            os.path.relpath(os.path.join(folder, name), base).replace(os.sep, "/")
            for folder, _, files in os.walk(base)
            for name in files
        )
    paginator = backend.client.get_paginator("list_objects_v2")
    return sorted(
        entry["Key"][len(backend.prefix) :]
        for page in paginator.paginate(Bucket=backend.bucket, Prefix=backend.prefix)
        for entry in page.get("Contents", [])
    )


def blob_keys(datastore: Datastore) -> list[str]:
    return [key for key in stored_keys(datastore) if key.startswith("data/")]


# -- key safety -------------------------------------------------------------------------------------


def test_airflow_run_ids_stay_readable():
    assert safe_key_part(RUN_ID) == RUN_ID
    assert safe_key_part("scheduled__2026-01-01T00:00:00+00:00") == "scheduled__2026-01-01T00:00:00+00:00"
    assert safe_key_part(7) == "7"


@pytest.mark.parametrize(
    ("part", "encoded"),
    [
        ("a/b", "a%2Fb"),
        ("../../etc", "%2E.%2F..%2Fetc"),
        ("..", "%2E."),
        (".", "%2E"),
        (".hidden", "%2Ehidden"),
        ("a\\b", "a%5Cb"),
        ("a b", "a%20b"),
        ("x\x00y", "x%00y"),
        ("100%", "100%25"),
        ("café", "caf%C3%A9"),
    ],
)
def test_unsafe_key_parts_become_one_harmless_segment(part, encoded):
    assert safe_key_part(part) == encoded
    assert decode_key_part(encoded) == part


@pytest.mark.parametrize("part", ["", None, "x" * 300])
def test_empty_or_absurd_key_parts_are_refused(part):
    with pytest.raises(UnsafeKeyError):
        safe_key_part(part)


def test_unsafe_names_cannot_escape_the_root(datastore, tmp_path):
    nasty = ["../../etc", "a/b", "..", ".", "x\x00y", "/abs", "c:\\win"]
    for index, name in enumerate(nasty):
        record = datastore.write_run_meta(name, name, {"index": index, "system_tags": [f"user:{name}"]})
        datastore.index_run(name, name, record)
        datastore.write_manifest(a_manifest(name, name, name, name, 0, parameters=[f"p{index}"]))
        datastore.write_attempt_file(attempt(name, name, name, name, 0), name, b"log")
        datastore.finish_run(name, name, True, {})

    keys = stored_keys(datastore)
    # run.json, status.json, manifest, attempt file, index entries (started and succeeded, each
    # for every run and for the run's user tag, itself made of the nasty name); and the root's
    # format marker
    assert len(keys) == len(nasty) * 8 + 1
    for key in keys:
        segments = key.split("/")
        assert not any(segment in ("", ".", "..") or segment.startswith(".") for segment in segments), key
        assert "\x00" not in key and "\\" not in key
    if isinstance(datastore.backend, LocalBackend):
        assert os.listdir(tmp_path) == ["store"]  # nothing was written beside the root
    for index, name in enumerate(nasty):
        assert datastore.list_runs(name) == [name]
        assert datastore.list_steps(name, name) == [name]
        assert datastore.list_tasks(name, name, name) == [name]
        assert datastore.read_manifest(attempt(name, name, name, name, 0)).parameters == (f"p{index}",)
        assert datastore.latest_successful_run(name) == name
        assert datastore.latest_run(name, namespace=f"user:{name}") == name

    with pytest.raises(UnsafeKeyError):
        datastore.write_run_meta("", "run", {})
    with pytest.raises(UnsafeKeyError):
        datastore.write_manifest(a_manifest("Flow", RUN_ID, "start", "1", -1))
    # an attempt file may not take the name of what the datastore itself writes there
    kept = a_manifest("Flow", RUN_ID, "start", "1", 1, parameters=["kept"])
    datastore.write_manifest(kept)
    with pytest.raises(UnsafeKeyError, match="'manifest.json' is reserved .* use write_manifest"):
        datastore.write_attempt_file(kept.attempt, "manifest.json", b"{}")
    assert datastore.read_manifest(kept.attempt) == kept


def test_the_local_backend_refuses_paths_outside_its_root(tmp_path):
    backend = LocalBackend(str(tmp_path / "store"))
    for key in ["../outside", "a/../../outside", "/etc/passwd", "a\\..\\b"]:
        with pytest.raises(UnsafeKeyError):
            backend.put_bytes(key, b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "store").mkdir()
    os.symlink(outside, tmp_path / "store" / "link")
    with pytest.raises(UnsafeKeyError, match="outside the datastore root"):
        backend.put_bytes("link/file", b"x")
    assert os.listdir(outside) == []


def test_backends_keep_the_same_contract(datastore, tmp_path):
    backend = datastore.backend
    backend.put_many_bytes(
        {"a/one.json": (b"1", None), "a/two.json": (b"22", None), "a/b/c.bin": (b"333", None)}
    )
    assert backend.get_bytes("a/two.json") == b"22"
    assert backend.list_dir("a/") == (["b"], ["one.json", "two.json"])
    assert backend.list_dir("") == (["a"], [])
    assert backend.list_dir("nothing/here/") == ([], [])
    assert backend.exists("a/one.json") and not backend.exists("a/three.json")
    assert backend.stored_size("a/b/c.bin") == 3 and backend.stored_size("a/zzz") is None

    source = tmp_path / "source.bin"
    source.write_bytes(b"payload" * 1000)
    backend.put_file("files/payload.bin", str(source))
    assert source.exists()  # put_file copies
    backend.download_file("files/payload.bin", str(tmp_path / "copy.bin"))
    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()
    with backend.open_read("files/payload.bin") as stream:
        assert stream.read() == source.read_bytes()

    backend.delete_many(["a/one.json", "a/b/c.bin", "a/never-existed"])
    assert [key for key in ("a/one.json", "a/two.json", "a/b/c.bin") if backend.exists(key)] == ["a/two.json"]
    backend.move("a/two.json", "moved/two.json")
    assert backend.get_bytes("moved/two.json") == b"22" and not backend.exists("a/two.json")
    for read in (
        backend.get_bytes,
        backend.open_read,
        lambda key: backend.download_file(key, str(tmp_path / "x")),
    ):
        with pytest.raises(ArtifactNotFoundError, match="a/missing.json"):
            read("a/missing.json")
    assert backend.counters.bytes_written == 1 + 2 + 3 + 7000


# -- artifacts --------------------------------------------------------------------------------------


def make_counter(start):
    count = [start]

    def increment():
        count[0] += 1
        return count[0]

    return increment


def test_values_of_many_kinds_come_back(datastore):
    class Model:
        def __init__(self, weights):
            self.weights = weights

        def predict(self, x):
            return sum(w * x for w in self.weights)

    big = os.urandom(20 * 1024 * 1024)
    values = {
        "params": {"alpha": 0.5, "layers": [64, 32], "name": "run", "nested": {"ok": True}},
        "nothing": None,
        "tags": {"a", "b"},
        "square": lambda x: x * x,
        "counter": make_counter(41),
        "model_class": Model,
        "model": Model([1, 2, 3]),
        "big": big,
    }
    try:
        import numpy

        values["matrix"] = numpy.arange(12, dtype="float32").reshape(3, 4)
    except ImportError:
        pass

    refs = datastore.artifacts.save_many(values)

    reader = Datastore(datastore.root)  # a fresh process would start from the references alone
    loaded = {name: reader.artifacts.load(ArtifactRef.from_json(ref.to_json())) for name, ref in refs.items()}
    assert loaded["params"] == values["params"]
    assert loaded["nothing"] is None
    assert loaded["tags"] == {"a", "b"}
    assert loaded["square"](7) == 49
    assert loaded["counter"]() == 42
    assert loaded["model_class"]([2]).predict(3) == 6
    assert loaded["model"].predict(2) == 12
    assert loaded["big"] == big
    if "matrix" in values:
        assert (loaded["matrix"] == values["matrix"]).all()
        assert refs["matrix"].type == "numpy.ndarray"

    assert refs["params"].type == "dict"
    assert refs["model"].type.endswith("test_values_of_many_kinds_come_back.<locals>.Model")
    assert refs["big"].size > 20 * 1024 * 1024
    assert all(len(ref.repr) <= 80 for ref in refs.values())


def test_an_unchanged_value_is_never_written_twice(datastore):
    table = {"rows": list(range(1000))}
    model = os.urandom(3 * 1024 * 1024)  # above the in-memory limit: goes through a scratch file
    first = datastore.artifacts.save_many({"table": table, "model": model})
    counters = datastore.backend.counters
    written = counters.bytes_written
    assert written >= first["model"].size + first["table"].size

    requests = counters.requests
    again = datastore.artifacts.save_many({"table": table, "model": model, "copy": dict(table)})
    assert (counters.bytes_written, counters.requests) == (written, requests)  # known here: not even a check
    assert again["table"] == first["table"] and again["model"] == first["model"]
    assert again["copy"].hash == first["table"].hash

    other_process = Datastore(datastore.root)
    other_process.artifacts.save_many({"table": table, "model": model})
    assert other_process.backend.counters.bytes_written == 0  # it checked, and found them stored
    # Two pickles, and the pack of the table's preview (its repr is longer than a line; raw bytes
    # get no preview).
    preview_pack = first["table"].preview["pack"]
    assert first["model"].preview is None
    assert sorted(blob_keys(datastore)) == sorted(
        blob_key(h) for h in (first["table"].pack or first["table"].hash, first["model"].hash, preview_pack)
    )


def test_loading_is_counted_so_laziness_can_be_proved(datastore):
    refs = datastore.artifacts.save_many({"small": [1, 2, 3], "large": os.urandom(2 * 1024 * 1024)})
    datastore.write_manifest(a_manifest("Flow", RUN_ID, "start", "1", 0, refs))

    reader = Datastore(datastore.root)
    manifest = reader.read_manifest(attempt("Flow", RUN_ID, "start", "1", 0))
    manifest_size = reader.backend.counters.bytes_read
    assert 0 < manifest_size < 2000  # the manifest only: no artifact was fetched

    assert reader.artifacts.load(manifest.artifacts["small"]) == [1, 2, 3]
    assert reader.backend.counters.bytes_read == manifest_size + refs["small"].size
    assert reader.backend.counters.bytes_written == 0


def test_many_small_artifacts_are_packed_into_one_object(datastore):
    values = {f"feature_{index}": os.urandom(1024) for index in range(100)}
    refs = datastore.artifacts.save_many(values)
    assert len(blob_keys(datastore)) == 1  # one pack, not 100 objects
    assert datastore.backend.counters.requests <= 2  # its existence check and its write
    assert len({ref.hash for ref in refs.values()}) == 100  # each artifact keeps its own hash
    assert {ref.pack for ref in refs.values()} == {blob_keys(datastore)[0].rsplit("/", 1)[-1]}

    reader = Datastore(datastore.root)  # another process: nothing cached
    assert reader.artifacts.load(refs["feature_42"]) == values["feature_42"]
    assert {name: reader.artifacts.load(ref) for name, ref in refs.items()} == values
    assert reader.backend.counters.requests == 1  # the pack was fetched once for all of them

    # Saved again by another process (a re-run), the identical pack is found, not rewritten.
    rerun = Datastore(datastore.root)
    assert rerun.artifacts.save_many(values) == refs
    assert rerun.backend.counters.bytes_written == 0


def test_a_foreachs_items_are_packed_a_few_at_a_time_so_a_child_reads_few_siblings(datastore):
    """A foreach child loads only its own item: with ``pack_items`` it fetches one pack of at most
    that many items, however many the foreach has; the packs go up in one parallel batch."""
    items = {f"items[{index}]": f"item {index} " * 40 for index in range(200)}
    refs = datastore.artifacts.save_many(items, pack_items=64)
    packs = {ref.pack for ref in refs.values()}
    assert len(packs) == 4  # 64 + 64 + 64 + 8 items
    assert len(blob_keys(datastore)) == 5  # and one pack of their previews (their reprs are cut)
    assert datastore.backend.counters.requests <= 2 * 5  # a check and a write each

    child = Datastore(datastore.root)  # a child task's process: nothing cached
    assert child.artifacts.load(refs["items[150]"]) == items["items[150]"]
    assert child.backend.counters.requests == 1
    assert child.backend.counters.bytes_read == child.backend.stored_size(
        f"data/{refs['items[150]'].pack[:2]}/{refs['items[150]'].pack}"
    )
    assert child.backend.counters.bytes_read < 64 * 500


def test_a_damaged_pack_is_detected_not_unpickled(datastore):
    refs = datastore.artifacts.save_many({"a": [1, 2, 3], "b": {"x": 1}})
    (pack_key,) = blob_keys(datastore)
    data = datastore.backend.get_bytes(pack_key)
    datastore.backend.put_bytes(pack_key, data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(CorruptArtifactError, match="pack holding the artifact 'b' of .* is damaged"):
        Datastore(datastore.root).artifacts.load(refs["b"], what="artifact 'b' of F/1/start/0")


def test_medium_artifacts_reach_s3_in_parallel(s3_endpoint):
    """With real S3's per-request latency, one request at a time would take count x latency."""
    datastore = Datastore(f"s3://{BUCKET}/parallel-{uuid.uuid4().hex}")
    latency = 0.1

    def network_latency(**_):
        time.sleep(latency)

    datastore.backend.client.meta.events.register("before-send.s3", network_latency)
    values = {f"feature_{index}": os.urandom(100 * 1024) for index in range(30)}  # too big to pack
    started = time.perf_counter()
    datastore.artifacts.save_many(values)
    elapsed = time.perf_counter() - started
    sequential_puts_at_least = len(values) * latency
    assert elapsed < sequential_puts_at_least / 2, elapsed
    assert len(blob_keys(datastore)) == 30


@pytest.mark.parametrize(
    "make_value",
    [
        pytest.param(threading.Lock, id="lock"),
        pytest.param(lambda: socket.socket(), id="socket"),
        pytest.param(lambda: (x for x in range(3)), id="generator"),
        pytest.param(
            lambda: {"big": os.urandom(3 * 1024 * 1024), "lock": threading.Lock()}, id="spilled-then-lock"
        ),
    ],
)
def test_an_unpicklable_value_names_the_artifact_and_leaves_nothing(datastore, scratch, make_value):
    value = make_value()
    try:
        with pytest.raises(ArtifactSaveError) as caught:
            datastore.artifacts.save_many({"fine": [1, 2], "connection": value})
    finally:
        if isinstance(value, socket.socket):
            value.close()
    assert caught.value.artifact_name == "connection"
    assert "'connection'" in str(caught.value)
    assert "cannot pickle" in caught.value.reason
    assert blob_keys(datastore) == []
    assert [key for key in stored_keys(datastore) if "tmp" in key] == []
    assert scratch_files(scratch) == []


class _RaisesOSErrorWhenPickled:
    def __reduce__(self):
        raise OSError("this object refuses to be pickled")


def test_a_full_scratch_disk_is_retryable_but_a_value_raising_oserror_is_not(tmp_path):
    """Which failure may be retried: the disk's (another attempt may have room) or the value's."""
    from airflow_flowspec.datastore.encoding import encode
    from airflow_flowspec.errors import is_flow_mistake

    big = os.urandom(2 * 1024 * 1024)  # over the in-memory limit: goes to a scratch file
    (tmp_path / "a-file").write_bytes(b"")
    unwritable = str(tmp_path / "a-file" / "scratch")  # a folder that cannot be made
    with pytest.raises(DatastoreError) as caught:
        encode(big, name="weights", scratch_dir=unwritable)
    assert not is_flow_mistake(caught.value) and "Free some disk space" in str(caught.value)
    assert "'weights'" in str(caught.value) and unwritable in str(caught.value)

    with pytest.raises(ArtifactSaveError) as caught:
        encode(_RaisesOSErrorWhenPickled(), name="model", scratch_dir=str(tmp_path))
    assert is_flow_mistake(caught.value) and "refuses to be pickled" in str(caught.value)
    assert os.listdir(tmp_path) == ["a-file"]


def test_a_missing_blob_names_its_key(datastore):
    missing = "ab" * 32
    with pytest.raises(ArtifactNotFoundError) as caught:
        datastore.artifacts.load(missing)
    assert f"data/ab/{missing}" in str(caught.value)
    with pytest.raises(UnsafeKeyError):
        datastore.artifacts.load("../../etc/passwd")


def test_large_objects_on_s3_go_up_in_parallel_parts(s3_endpoint, scratch):
    backend = S3Backend(
        f"s3://{BUCKET}/multipart-{uuid.uuid4().hex}",
        multipart_threshold=5 * 1024 * 1024,
        multipart_chunksize=5 * 1024 * 1024,
    )
    from airflow_flowspec.datastore.artifacts import ArtifactStore

    store = ArtifactStore(backend)
    value = os.urandom(12 * 1024 * 1024)
    ref = store.save("weights", value)
    assert backend.counters.requests >= 5  # HEAD + create + 3 parts + complete
    assert store.load(ref) == value
    assert scratch_files(scratch) == []  # the downloaded copy is removed after unpickling


def test_an_xcom_value_that_cannot_be_stored_names_it_and_keeps_the_earlier_one(root, scratch, monkeypatch):
    from airflow_flowspec.xcom_backend.values import load_stored_value, store_value

    monkeypatch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", root)
    where = {"key": "rows", "task_id": "extract", "dag_id": "etl", "run_id": RUN_ID, "map_index": -1}
    rows = [os.urandom(1024) for _ in range(3 * 1024)]  # 3 MB: spilled to a scratch file
    stored = store_value(rows, **where)
    assert load_stored_value(stored) == rows

    # The lock comes after 3 MB of rows: pickling fails with part of the value already written.
    with pytest.raises(ArtifactSaveError) as caught:
        store_value([rows, threading.Lock()], **where)
    assert "XCom 'rows' of task extract" in str(caught.value) and "lock" in str(caught.value)
    assert load_stored_value(stored) == rows  # the earlier value is untouched
    assert [key for key in stored_keys(Datastore(root)) if "tmp" in key] == []
    assert scratch_files(scratch) == []


def test_a_stream_that_keeps_breaking_off_is_a_network_error_not_a_bad_pickle(s3_endpoint, monkeypatch):
    """Guards the resumable read's last word: a body that ends early on every attempt (each resumed
    from the byte reached) is a DatastoreError naming the object and the network, after the
    configured attempts; never short bytes handed to the unpickler."""
    backend = S3Backend(f"s3://{BUCKET}/short-{uuid.uuid4().hex}")
    backend.put_bytes("value.pkl", b"0123456789")
    backend.max_attempts = 3
    real_get = backend.client.get_object
    ranges = []

    def get_object_cut_short(**kwargs):
        response = real_get(**kwargs)
        ranges.append(kwargs.get("Range"))
        response["Body"] = io.BytesIO(response["Body"].read()[:4] if len(ranges) == 1 else b"")
        return response

    monkeypatch.setattr(backend.client, "get_object", get_object_cut_short)
    with backend.open_read("value.pkl") as stream, pytest.raises(DatastoreError) as caught:
        stream.read()
    assert "value.pkl" in str(caught.value) and "kept breaking off" in str(caught.value)
    assert ranges == [None, "bytes=4-9", "bytes=4-9"]  # 3 attempts at the rest


# -- references -------------------------------------------------------------------------------------


class Broken:
    def __repr__(self):
        raise RuntimeError("no")


class Caught:
    def __repr__(self):
        return "CaughtException(builtins.ValueError: alpha=10.0 too large for this solver, use alpha <= 1)"


def test_a_short_repr_is_cut_at_its_end_keeping_the_message():
    """Guards the cut: reprlib's keeps both ends and dropped the middle of an exception's message
    (``CaughtException(builtins.Val....0 too large for this solver)``); so for strings and
    numbers, at the top level or inside a container."""
    assert short_repr(Caught()) == repr(Caught())[:77] + "..."
    assert short_repr(Caught()).startswith("CaughtException(builtins.ValueError: alpha=10.0 too large for")
    assert short_repr("abcdefghij" * 20) == repr("abcdefghij" * 20)[:77] + "..."
    assert short_repr(int("1234567890" * 10)) == "1234567890" * 3 + "1234567..."
    assert short_repr([Caught()]).startswith("[CaughtException(builtins.ValueError: alpha=10.0 too large")
    assert short_repr({"k": "v" * 100}) == "{'k': '" + "v" * 70 + "..."


def test_references_are_small_json_and_reprs_stay_short():
    assert short_repr(Broken()) == f"<unrepresentable {Broken.__module__}.Broken>"
    huge = b"\x00" * (64 * 1024 * 1024)
    started = time.perf_counter()
    assert len(short_repr(huge)) <= 80
    assert time.perf_counter() - started < 0.05  # sliced first, never repr'd whole
    assert short_repr("line one\n   line two") == "'line one\\n   line two'"
    assert "\n" not in short_repr(type("Multi", (), {"__repr__": lambda self: "a\n  b"})())
    ref = ArtifactRef(hash="ab" * 32, type="dict", size=10, repr="{}")
    assert ArtifactRef.from_json(json.loads(json.dumps(ref.to_json()))) == ref
    with pytest.raises(DatastoreError):
        ArtifactRef.from_json({"hash": "ab"})


# -- manifests, attempts, runs ----------------------------------------------------------------------


def test_latest_attempt_manifest_is_the_highest_attempt_that_finished(datastore):
    for number in [0, 1, 2, 9, 10]:
        datastore.write_manifest(a_manifest("Flow", RUN_ID, "train", "7", number))
    datastore.write_attempt_file(attempt("Flow", RUN_ID, "train", "7", 11), "stderr.log", b"killed")

    assert datastore.latest_attempt_manifest("Flow", RUN_ID, "train", "7").attempt.attempt == 10
    assert datastore.list_attempts("Flow", RUN_ID, "train", "7") == [0, 1, 2, 9, 10, 11]
    assert datastore.latest_attempt_manifest("Flow", RUN_ID, "train", "8") is None
    with pytest.raises(ArtifactNotFoundError, match="attempt 11"):
        datastore.read_manifest(attempt("Flow", RUN_ID, "train", "7", 11))


def test_attempts_and_tasks_never_overwrite_each_other(datastore):
    for task_id in ["1", "2"]:
        for number in [0, 1]:
            datastore.write_manifest(
                a_manifest("Flow", RUN_ID, "train", task_id, number, parameters=[task_id])
            )
            datastore.write_attempt_file(
                attempt("Flow", RUN_ID, "train", task_id, number), "out.log", f"{task_id}/{number}".encode()
            )
    for task_id in ["1", "2"]:
        for number in [0, 1]:
            where = attempt("Flow", RUN_ID, "train", task_id, number)
            manifest = datastore.read_manifest(where)
            assert (manifest.attempt, manifest.parameters) == (where, (task_id,))
            assert datastore.read_attempt_file(where, "out.log") == f"{task_id}/{number}".encode()
    with pytest.raises(UnsafeKeyError, match="reserved"):
        datastore.write_attempt_file(attempt("Flow", RUN_ID, "train", "1", 0), "manifest.json", b"{}")


def test_readers_never_see_half_a_manifest(datastore):
    small = a_manifest("Flow", RUN_ID, "start", "1", 0)
    ref = ArtifactRef(hash="ab" * 32, type="str", size=60, repr="x" * 60)
    large = a_manifest("Flow", RUN_ID, "start", "1", 0, {f"a{index}": ref for index in range(3000)})
    datastore.write_manifest(small)
    stop = threading.Event()

    def rewrite():
        while not stop.is_set():
            for manifest in (large, small):
                datastore.write_manifest(manifest)

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        for _ in range(40):
            assert datastore.read_manifest(small.attempt) in (small, large)
    finally:
        stop.set()
        writer.join()
    assert [key for key in stored_keys(datastore) if "tmp" in key] == []


def test_run_pointers_name_the_newest_run_and_the_newest_success(datastore):
    assert datastore.latest_run("Flow") is None
    assert datastore.latest_successful_run("Flow") is None

    def start(run_id, meta):
        """What a start step does: the run record, then (after its manifest) the pointer."""
        record = datastore.write_run_meta("Flow", run_id, meta)
        datastore.index_run("Flow", run_id, record)

    start("run-1", {"user": "ana"})
    datastore.write_run_meta("Flow", "run-2", {"user": "ana"})
    assert datastore.latest_run("Flow") == "run-1"  # a start step killed before its manifest
    start("run-2", {"user": "ana"})
    assert datastore.latest_run("Flow") == "run-2"
    assert datastore.run_status("Flow", "run-1") is None

    datastore.finish_run("Flow", "run-2", False, {"failed_step": "train"})
    datastore.finish_run("Flow", "run-1", True, {})  # an older run finishing late
    assert datastore.latest_run("Flow") == "run-2"
    assert datastore.latest_successful_run("Flow") == "run-1"
    assert datastore.run_status("Flow", "run-2")["status"] == "failed"
    assert datastore.run_status("Flow", "run-1")["status"] == "succeeded"
    assert datastore.read_run_meta("Flow", "run-1")["user"] == "ana"

    start("backfill-2020", {"created_at": "2020-01-01T00:00:00+00:00"})
    datastore.finish_run("Flow", "backfill-2020", True, {})
    assert datastore.latest_successful_run("Flow") == "run-1"

    start("run-3", {})
    datastore.finish_run("Flow", "run-3", True, {})
    assert (datastore.latest_run("Flow"), datastore.latest_successful_run("Flow")) == ("run-3", "run-3")

    with pytest.raises(ArtifactNotFoundError, match="never started"):
        datastore.read_run_meta("Flow", "run-404")


def test_a_late_failure_callback_leaves_the_success_of_a_rerun_that_came_after_it(datastore):
    """Guards the client's word on a cleared and rerun run: Airflow's DAG processor calls the
    failure callback late, and by then the user may have cleared the failed task and the rerun may
    have succeeded. The failure, recorded with the moment the run failed, is older news than the
    success and must not overwrite it; a failure after a success (a later clear that failed) does."""
    from datetime import datetime, timedelta, timezone

    datastore.write_run_meta("Flow", "run-1", {})
    failed_at = datetime.now(timezone.utc) - timedelta(seconds=30)
    datastore.finish_run("Flow", "run-1", True, {})
    datastore.finish_run("Flow", "run-1", False, {"reason": "task_failure"}, ended_at=failed_at)
    assert datastore.run_status("Flow", "run-1")["status"] == "succeeded"
    assert datastore.latest_successful_run("Flow") == "run-1"

    datastore.finish_run("Flow", "run-1", False, {"reason": "task_failure"})
    status = datastore.run_status("Flow", "run-1")
    assert (status["status"], status["reason"]) == ("failed", "task_failure")

    datastore.finish_run("Flow", "run-2", False, {}, ended_at=failed_at.replace(tzinfo=None))
    assert datastore.run_status("Flow", "run-2")["finished_at"] == failed_at.isoformat(
        timespec="microseconds"
    )


def test_runs_steps_and_tasks_are_listed_with_one_request_each(datastore):
    for run_id in [RUN_ID, "scheduled__2026-01-01T00:00:00+00:00"]:
        datastore.write_run_meta("Flow", run_id, {})
        for step, tasks in {"start": ["1"], "train": ["2", "3", "4"], "end": ["5"]}.items():
            for task_id in tasks:
                datastore.write_manifest(a_manifest("Flow", run_id, step, task_id, 0))
    datastore.finish_run("Flow", RUN_ID, True, {})

    before = datastore.backend.counters.requests
    assert datastore.list_runs("Flow") == sorted([RUN_ID, "scheduled__2026-01-01T00:00:00+00:00"])
    assert datastore.list_steps("Flow", RUN_ID) == ["end", "start", "train"]
    assert datastore.list_tasks("Flow", RUN_ID, "train") == ["2", "3", "4"]
    assert datastore.backend.counters.requests - before == 3
    assert datastore.list_runs("NoSuchFlow") == []
    assert datastore.list_steps("Flow", "no-such-run") == []


# -- roots, errors, imports -------------------------------------------------------------------------


def test_roots_pick_their_backend(tmp_path):
    assert isinstance(backend_for_root(str(tmp_path)), LocalBackend)
    assert isinstance(backend_for_root(f"file://{tmp_path}"), LocalBackend)
    s3 = backend_for_root("s3://bucket/some/prefix/")
    assert isinstance(s3, S3Backend) and (s3.bucket, s3.prefix) == ("bucket", "some/prefix/")
    for bad in ["", "gs://bucket/x", "s3:///x"]:  # a mistake in [flowspec] datastore_root: not retried
        with pytest.raises(ConfigurationError, match=r"\[flowspec\] datastore_root"):
            backend_for_root(bad)
    assert open_datastore(str(tmp_path)) is open_datastore(str(tmp_path))


def test_an_unreachable_s3_endpoint_names_the_bucket(monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    datastore = Datastore("s3://unreachable-bucket/runs")
    with pytest.raises(DatastoreError, match="unreachable-bucket") as caught:
        datastore.latest_run("Flow")
    assert not isinstance(caught.value, ArtifactNotFoundError)
    assert f"127.0.0.1:{port}" in str(caught.value)
    with pytest.raises(DatastoreError, match="unreachable-bucket"):
        datastore.artifacts.save("x", 1)


def test_a_missing_bucket_says_so(s3_endpoint):
    datastore = Datastore("s3://no-such-bucket-here/runs")
    with pytest.raises(ConfigurationError, match="bucket 'no-such-bucket-here'.*does not exist"):
        datastore.write_run_meta("Flow", RUN_ID, {})


def run_python(code: str) -> str:
    environment = {**os.environ, "PYTHONPATH": REPO_ROOT}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_importing_the_datastore_loads_neither_boto3_nor_cloudpickle_nor_airflow():
    loaded = run_python(
        """
        import sys
        import airflow_flowspec.datastore
        from airflow_flowspec.datastore import Datastore
        Datastore("s3://bucket/prefix")  # an S3 datastore makes no request until used
        heavy = sorted(
            name for name in sys.modules
            if name.split(".")[0] in ("boto3", "botocore", "cloudpickle", "airflow")
        )
        print(",".join(heavy))
        """
    )
    assert loaded.strip() == ""


def test_the_datastore_works_where_airflow_is_not_installed(tmp_path):
    output = run_python(
        f"""
        import sys

        class NoAirflow:
            def find_spec(self, name, path=None, target=None):
                if name == "airflow" or name.startswith("airflow."):
                    raise ImportError("No module named " + repr(name))
                return None

        sys.meta_path.insert(0, NoAirflow())
        from airflow_flowspec.datastore import Datastore

        datastore = Datastore({str(tmp_path / "store")!r})
        ref = datastore.artifacts.save("scores", {{"f1": 0.9, "square": lambda x: x * x}})
        from airflow_flowspec.datastore.keys import AttemptKey
        from airflow_flowspec.datastore.manifest import new_manifest

        where = AttemptKey("Flow", "run", "start", "1", 0)
        datastore.write_manifest(
            new_manifest(where, artifacts={{"scores": ref}}, parameters=[], foreach_stack=[])
        )
        manifest = datastore.latest_attempt_manifest("Flow", "run", "start", "1")
        scores = datastore.artifacts.load(manifest.artifacts["scores"])
        assert scores["square"](3) == 9 and scores["f1"] == 0.9
        print("boto3" in sys.modules, any(name.startswith("airflow.") for name in sys.modules))
        """
    )
    assert output.split() == ["False", "False"]


def test_a_value_loaded_and_saved_again_is_not_read_back_to_be_checked(tmp_path):
    """A step that reads a large artifact and stores it unchanged (a mutable value the runtime
    cannot know was left alone) pays no second read of the stored blob: the load verified it. A
    blob this process did not just verify is still read and hashed before it is trusted, so a
    same-size damaged copy is rewritten."""
    root = str(tmp_path / "store")
    value = list(range(200_000))  # ~1 MB pickled: a blob of its own, not packed
    ref = Datastore(root).artifacts.save("numbers", value)

    step = Datastore(root)  # a fresh process: nothing remembered
    loaded = step.artifacts.load(ref)
    before = step.backend.counters.snapshot()
    assert step.artifacts.save("numbers", loaded) == ref
    after = step.backend.counters.snapshot()
    assert after["bytes_read"] == before["bytes_read"] and after["bytes_written"] == before["bytes_written"]

    path = step.backend.describe(f"data/{ref.hash[:2]}/{ref.hash}")
    with open(path, "r+b") as blob:  # a flipped byte, same size
        blob.seek(100)
        byte = blob.read(1)
        blob.seek(100)
        blob.write(bytes([byte[0] ^ 0xFF]))
    other = Datastore(root)
    assert other.artifacts.save("numbers", value) == ref
    assert other.backend.counters.snapshot()["bytes_written"] == ref.size  # found damaged, rewritten
    assert Datastore(root).artifacts.load(ref) == value


@pytest.mark.parametrize(
    "stored, reason",
    [
        (b"{truncated", "is not valid JSON: "),
        (b"[1, 2]", "holds list, not a JSON object."),
        (b'{"run_id": "r1", "tags": "user:ana"}', "holds tags 'user:ana', not a list of strings."),
        (
            b'{"run_id": "r1", "tags": [], "system_tags": ["user:ana", 7]}',
            "holds system_tags ['user:ana', 7], not",
        ),
    ],
)
def test_a_run_record_in_a_shape_we_never_write_is_unreadable_naming_its_file(datastore, stored, reason):
    """Guards _read_json's UnreadableRecordError and checked_run_record: a damaged or foreign run.json
    is told apart from a missing one and from a network failure (which it subclasses, as before),
    so that readers can skip it; tags as one string would otherwise read as a set of characters."""
    from airflow_flowspec.datastore import keys
    from airflow_flowspec.errors import UnreadableRecordError

    key = keys.run_meta_key("LedgerFlow", "r1")
    datastore.backend.put_bytes(key, stored)
    with pytest.raises(UnreadableRecordError) as unreadable:
        datastore.read_run_meta("LedgerFlow", "r1")
    assert str(unreadable.value).startswith(f"{datastore.backend.describe(key)} {reason}")
    assert isinstance(unreadable.value, DatastoreError)


# -- the root's format marker -----------------------------------------------------------------------


def test_a_new_root_is_marked_at_its_first_write_and_read_without_a_marker(root):
    """Guards format_marker: reading a root nothing wrote yet writes nothing (a notebook with
    read-only credentials), and the first write marks it as this version's format, once."""
    from airflow_flowspec.datastore import keys

    reader = open_datastore(root, sweep=False)
    assert reader.list_runs("LedgerFlow") == [] and reader.latest_run("LedgerFlow") is None
    assert stored_keys(reader) == []

    writer = Datastore(root)
    writer.write_run_meta("LedgerFlow", "r1", {})
    first = writer.backend.counters.requests
    writer.write_run_meta("LedgerFlow", "r2", {})
    assert writer.backend.counters.requests - first == first - 1  # the marker only at the first write
    assert json.loads(writer.backend.get_bytes(keys.FORMAT_MARKER_KEY))["format"] == 1
    Datastore(root).write_manifest(a_manifest("LedgerFlow", "r1", "start"))  # a second writer agrees


@pytest.mark.parametrize(
    ("marker", "says"),
    [(b'{"format": 2}', "holds format 2 "), (b"<html>", "holds a format this version does not recognise")],
)
def test_a_root_in_another_format_is_refused_by_writers_readers_and_gc(root, marker, says):
    from datetime import timedelta

    from airflow_flowspec.datastore import keys
    from airflow_flowspec.datastore.gc import collect_garbage
    from airflow_flowspec.errors import DatastoreFormatError

    Datastore(root).backend.put_bytes(keys.FORMAT_MARKER_KEY, marker)
    before = stored_keys(Datastore(root))
    writer = Datastore(root)
    for write in (
        lambda: writer.write_run_meta("LedgerFlow", "r1", {}),
        lambda: writer.write_manifest(a_manifest("LedgerFlow", "r1", "start")),
        lambda: open_datastore(root),
        lambda: open_datastore(root, sweep=False),
        lambda: collect_garbage(Datastore(root), older_than=timedelta(days=30)),
    ):
        with pytest.raises(DatastoreFormatError) as refused:
            write()
        assert str(refused.value).startswith(f"The datastore at {writer.backend.describe('')} {says}")
        assert "this version of airflow-flowspec reads and writes format 1 only" in str(refused.value)
    assert stored_keys(Datastore(root)) == before
