"""One ``save_many`` through every storage path, and the store's clock.

Guards the batch a save is (already stored, packed, previews, medium pickles in parallel batches,
large pickles spilled to scratch files: one call, references in the order given, ``written`` naming
exactly what had to be written), and that every rule about how long a confirmation is relied on
reads the store's clock, so it is tested by moving a clock, not by sleeping.
"""

from __future__ import annotations

import os

from airflow_flowspec.datastore.artifacts import SECRET_REPR, ArtifactStore
from airflow_flowspec.datastore.backends.local import LocalBackend
from airflow_flowspec.datastore.store import Datastore


class SteppedClock:
    """A clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_save_takes_every_storage_path_and_keeps_the_order_given(tmp_path):
    root = str(tmp_path / "store")
    known = {"rows": list(range(300))}
    Datastore(root).artifacts.save("known", known)
    store = Datastore(root).artifacts
    store.save("known", known)  # this process has now seen it stored
    values = {
        "large": os.urandom(3 * 1024 * 1024),  # spilled to a scratch file, stored on its own
        "small": {"a": 1, "text": "x" * 200},  # packed, with a preview
        "known": known,
        "medium": os.urandom(200 * 1024),  # in memory, too big for a pack: a batch
        "token": "s3cr3t",
        **{f"item_{i}": [i] * 10 for i in range(5)},  # packs closed every 2 artifacts
    }
    written: set[str] = set()
    refs = store.save_many(values, secret_names=["token"], written=written, pack_items=2)

    assert list(refs) == list(values)
    assert written == {ref.hash for name, ref in refs.items() if name != "known"}
    assert refs["large"].pack is None and refs["medium"].pack is None and refs["small"].pack is not None
    assert len({refs[f"item_{i}"].pack for i in range(5)}) == 3
    assert refs["token"].repr == SECRET_REPR and refs["token"].preview is None
    assert refs["small"].preview is not None

    reader = Datastore(root).artifacts  # a fresh process: reads everything back from storage
    assert {name: reader.load(ref) for name, ref in refs.items()} == values
    assert reader.load_preview(refs["small"], what="artifact 'small'") is not None


def test_what_a_save_relies_on_expires_by_the_stores_clock(tmp_path):
    backend = LocalBackend(str(tmp_path / "store"))
    clock = SteppedClock()
    store = ArtifactStore(backend, clock=clock, freshen_interval=10.0)
    assert store.freshen_after == 5.0
    value = list(range(200_000))  # a blob of its own
    ref = store.save("numbers", value)
    counters = backend.counters

    requests = counters.requests
    clock.now += 4.9
    assert store.save("numbers", value) == ref
    assert counters.requests == requests  # remembered: no request at all

    clock.now += 0.2
    assert store.save("numbers", value) == ref
    assert counters.requests > requests  # forgotten: checked (and freshened) again

    # A load verifies the blob: a check soon after need not read it back, a later one must.
    clock.now += 4
    assert store.load(ref) == value
    clock.now += 1.5  # the save's confirmation has expired, the load's verification has not
    read, requests = counters.bytes_read, counters.requests
    store.save("numbers", value)
    assert counters.requests > requests and counters.bytes_read == read
    clock.now += 5.1
    store.save("numbers", value)
    assert counters.bytes_read > read
