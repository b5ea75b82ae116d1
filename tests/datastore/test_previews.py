"""Previews: what the artifact view shows of a value, recorded when the value is saved, read back
verified, never by unpickling; and kept off the path of ordinary loads."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from airflow_flowspec.datastore import Datastore
from airflow_flowspec.datastore.keys import blob_key
from airflow_flowspec.datastore.previews import PREVIEW_MAX_BYTES, PREVIEW_REPR_CHARS
from airflow_flowspec.errors import CorruptArtifactError


class LoudRepr:
    def __repr__(self) -> str:
        return "<b>" + "x" * 500 + "</b>"


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr today")


@pytest.fixture
def store(tmp_path):
    return Datastore(str(tmp_path / "store"))


def test_a_preview_says_more_than_the_one_line_repr_and_only_when_it_has_more_to_say(store):
    frame = pd.DataFrame({"user": [f"u{i}" for i in range(300)], "score": [i / 10 for i in range(300)]})
    values = {
        "small": {"a": 1},
        "numbers": list(range(50_000)),
        "frame": frame,
        "loud": LoudRepr(),
        "broken": BrokenRepr(),
        "raw": b"\x00" * 5000,
        "token": "s3cr3t" * 40,
    }
    refs = store.artifacts.save_many(values, secret_names=["token"])
    preview = {name: store.artifacts.load_preview(ref, what=name) for name, ref in refs.items()}

    assert preview["small"] is None  # "{'a': 1}" is all there is
    assert preview["raw"] is None and preview["token"] is None  # bytes, and a secret: the line only
    assert preview["numbers"]["repr"].startswith("[0, 1, 2, 3, 4, 5") and "499" in preview["numbers"]["repr"]
    assert len(preview["numbers"]["repr"]) <= PREVIEW_REPR_CHARS  # bounded, whatever the length
    table = preview["frame"]["table"]
    assert table["columns"] == ["user", "score"] and table["total_rows"] == 300
    assert table["rows"][2] == ["u2", "0.2"] and table["index"][:3] == ["0", "1", "2"]
    assert preview["loud"]["repr"] == repr(LoudRepr())  # kept verbatim: escaping is the page's job
    assert refs["broken"].repr.startswith("<unrepresentable") and preview["broken"] is not None
    assert preview["broken"]["repr"] == "<repr failed: RuntimeError>"
    for ref in refs.values():
        if ref.preview:
            assert ref.preview["size"] <= PREVIEW_MAX_BYTES


def test_loading_an_artifact_never_downloads_previews(store):
    """Previews ride in packs of their own: a step loading a small artifact reads its own pack."""
    refs = store.artifacts.save_many({"short": [1, 2, 3], "long": list(range(20_000))})
    assert refs["long"].preview["pack"] not in (refs["short"].pack, refs["long"].pack)

    reader = Datastore(store.root)
    assert reader.artifacts.load(refs["short"]) == [1, 2, 3]
    packed = len(reader.backend.get_bytes(blob_key(refs["short"].pack)))
    assert reader.backend.counters.bytes_read == 2 * packed  # the load, and the line above


def test_a_value_handed_on_keeps_its_preview_without_making_it_again(store, monkeypatch):
    value = {"weights": list(range(5_000))}
    ref = store.artifacts.save("model", value)

    step = Datastore(store.root)  # the next step, in another process
    loaded = step.artifacts.load(ref)
    import airflow_flowspec.datastore.artifacts as artifacts

    monkeypatch.setattr(artifacts, "make_preview", lambda *a: pytest.fail("the preview was made again"))
    assert step.artifacts.save("model", loaded).preview == ref.preview


def test_a_damaged_or_misplaced_preview_is_refused_not_shown(store):
    """Guards: every read is verified against its hash; a preview is never taken on trust."""
    ref = store.artifacts.save("numbers", list(range(10_000)))
    key = blob_key(ref.preview["pack"])
    path = store.backend.describe(key)
    with open(path, "r+b") as pack:
        data = bytearray(pack.read())
        data[ref.preview["offset"] + 10] ^= 0xFF
        pack.seek(0)
        pack.write(data)
    fresh = Datastore(store.root)
    with pytest.raises(CorruptArtifactError, match="damaged"):
        fresh.artifacts.load_preview(ref, what="numbers")

    other = store.artifacts.save("other", {"k": "v" * 400})
    misplaced = ref.with_preview({**other.preview, "hash": ref.preview["hash"]})
    with pytest.raises(CorruptArtifactError, match="not where its reference says"):
        Datastore(store.root).artifacts.load_preview(misplaced, what="numbers")


def test_a_preview_location_that_is_not_one_is_refused_when_the_reference_is_read():
    from airflow_flowspec.datastore import ArtifactRef
    from airflow_flowspec.errors import DatastoreError

    good = {"hash": "a" * 64, "type": "list", "size": 3, "repr": "[]"}
    for preview in ("../../etc/passwd", {"hash": "../x", "size": 1}, {"hash": "a" * 64, "size": "1"}):
        with pytest.raises(DatastoreError, match="not an artifact reference"):
            ArtifactRef.from_json({**good, "preview": preview})
    assert json.loads(json.dumps(ArtifactRef.from_json(good).to_json())) == good
