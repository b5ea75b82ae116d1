"""A foreach's children as a chunked XCom: a small row, chunks a reader proves against its root.

The split returns its children as a ``ChunkedList``; Airflow resolves each mapped child's element
by pulling the split's whole return value, which is now a row of constant size whose
``ChunkedSequence`` reads only the chunk holding that element. Whoever edits a chunk in the
store, or the row in Airflow's table, cannot hand a child an item its split did not return.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import clear_and_rerun, load_flow, raw_xcom

from airflow_flowspec import config
from airflow_flowspec.datastore import open_datastore
from airflow_flowspec.datastore.chunks import CHUNK_ITEMS
from airflow_flowspec.datastore.keys import xcom_chunk_key, xcom_value_key
from airflow_flowspec.errors import ArtifactNotFoundError, CorruptArtifactError, XComReferenceError
from airflow_flowspec.xcom_backend import values

IDENTITY = {
    "dag_id": "ChunkFlow",
    "run_id": "manual__1",
    "task_id": "start",
    "map_index": -1,
    "key": "return_value",
}
DESCRIPTION = "the children of the foreach in step 'start' of flow ChunkFlow"


def children(width: int) -> list[dict]:
    return [
        {
            "stack": [
                {
                    "step": "start",
                    "var": "items",
                    "index": i,
                    "num_splits": width,
                    "item": {"hash": f"{i:064x}", "type": "int", "size": 5, "repr": str(i)},
                }
            ],
            "parent_map_index": -1,
        }
        for i in range(width)
    ]


def chunk_path(position: int, identity: dict = IDENTITY) -> Path:
    return Path(config.datastore_root()) / xcom_chunk_key(**identity, position=position)


def stored_row(width: int, identity: dict = IDENTITY) -> dict:
    row = values.serialize(values.ChunkedList(children(width), description=DESCRIPTION), **identity)
    return json.loads(json.dumps(row))  # what Airflow's table keeps


def read(row: dict, index: int, expected: dict = IDENTITY):
    expecting = {**expected, "map_index": None}  # how Airflow resolves a mapped task's argument
    with values.expecting(**expecting):
        ours, sequence = values.deserialize(row)
        assert ours
        return sequence[index]


def test_the_row_is_small_and_a_reader_of_one_element_reads_one_chunk():
    width = 10 * CHUNK_ITEMS + 3
    row = stored_row(width)
    assert len(json.dumps(row)) < 600  # the same for any width: no list, no per-chunk hash
    assert (row["flowspec_xcom_chunks"], row["length"], row["chunk_items"]) == (1, width, CHUNK_ITEMS)
    assert row["description"] == DESCRIPTION and "root" in row and "path" not in json.dumps(row)
    counters = open_datastore(config.datastore_root()).backend.counters
    before = counters.snapshot()
    with values.expecting(**{**IDENTITY, "map_index": None}):
        sequence = values.deserialize(row)[1]
    assert len(sequence) == width and counters.snapshot()["requests"] == before["requests"]
    assert sequence[5 * CHUNK_ITEMS + 7] == children(width)[5 * CHUNK_ITEMS + 7]
    after = counters.snapshot()
    assert after["requests"] - before["requests"] == 1
    assert after["bytes_read"] - before["bytes_read"] == chunk_path(5).stat().st_size
    assert list(sequence) == children(width) and sequence[-1] == children(width)[-1]


def test_an_edited_chunk_is_refused_naming_the_flow_the_step_and_the_item():
    """Guards the children's frames in the store: item 70's reference swapped for item 71's (a
    valid blob, which would load and verify as itself) is caught by the chunk's proof."""
    row = stored_row(100)
    path = chunk_path(1)
    proof, payload = path.read_bytes().split(b"\n")
    frames = json.loads(payload)
    frames[70 - CHUNK_ITEMS]["stack"][0]["item"] = frames[71 - CHUNK_ITEMS]["stack"][0]["item"]
    path.write_bytes(proof + b"\n" + json.dumps(frames, separators=(",", ":")).encode())
    with pytest.raises(CorruptArtifactError) as refusal:
        read(row, 70)
    message = str(refusal.value)
    assert message.startswith(f"Item 70 of {DESCRIPTION} (XCom 'return_value' of task start in run manual__1")
    assert "does not belong there" in message and str(path) in message and "nothing of it was used" in message
    assert read(row, 3)["stack"][0]["index"] == 3  # the other chunk is intact


@pytest.mark.parametrize(
    "edit",
    [
        {"root": "0" * 64},  # another root: no chunk proves against it
        {"length": 99},  # fewer children, which Airflow's index would wrap onto
        {"chunk_items": 50},
    ],
    ids=["root", "length", "chunk_items"],
)
def test_an_edited_row_is_refused(edit):
    row = {**stored_row(100), **edit}
    with pytest.raises(CorruptArtifactError, match="Item 64 of the children of the foreach in step 'start'"):
        read(row, 64)


@pytest.mark.parametrize("length", [0, 150, 199])
def test_an_edited_length_cannot_empty_or_shorten_the_list(length):
    """Guards what rests on the row's length alone: an empty list, an empty slice, an index out of
    range are answered only once a chunk has proven the length (``ChunkedSequence._prove_length``),
    so a row whose length was cut cannot hand a reader no children, or fewer."""
    row = {**stored_row(200), "length": length}
    with values.expecting(**{**IDENTITY, "map_index": None}):
        sequence = values.deserialize(row)[1]
        for read in (
            list,
            lambda s: s[150:],
            lambda s: s[180],
            lambda s: s[-200],
            lambda s: list(reversed(s)),
        ):
            with pytest.raises(CorruptArtifactError, match="does not belong there") as refusal:
                read(sequence)
            assert f"of {DESCRIPTION} (XCom 'return_value' of task start in run manual__1" in str(
                refusal.value
            )
    if length == 0:
        assert str(refusal.value).startswith(
            f"Chunk 0 of {DESCRIPTION} (XCom 'return_value' of task start in run manual__1 of DAG "
            f"ChunkFlow), read to check the length its row gives (0 items), is refused"
        )


def test_empty_answers_of_an_intact_list_cost_one_read_at_most():
    empty, full = stored_row(0), stored_row(100, {**IDENTITY, "task_id": "full"})
    counters = open_datastore(config.datastore_root()).backend.counters
    with values.expecting(**{**IDENTITY, "task_id": None, "map_index": None}):
        before = counters.snapshot()["requests"]
        assert list(values.deserialize(empty)[1]) == [] and values.deserialize(empty)[1][5:] == []
        assert counters.snapshot()["requests"] - before == 2  # one each: the empty chunk proves it
        sequence = values.deserialize(full)[1]
        assert sequence[99] == children(100)[99] and sequence[100:] == []
        with pytest.raises(IndexError, match="index 100 is out of range for 100 items"):
            sequence[100]
        assert counters.snapshot()["requests"] - before == 3  # the chunk read for item 99 proved it


@pytest.mark.parametrize("length", [values.MAX_CHUNKED_LENGTH + 1, 2**63, 10**30])
def test_a_row_claiming_more_items_than_any_list_is_refused_before_anything_is_sized_by_it(length):
    """Guards ``len()`` and ``list()``, which use the row's length before any chunk is read (list()
    allocates for it: MemoryError, or OverflowError past sys.maxsize): ``chunked_row_fields``
    refuses a length over ``MAX_CHUNKED_LENGTH``."""
    row = {**stored_row(100), "length": length}
    with values.expecting(**IDENTITY), pytest.raises(XComReferenceError, match="malformed fields"):
        values.deserialize(row)


def test_a_list_longer_than_a_row_may_claim_is_stored_as_any_value(monkeypatch):
    monkeypatch.setattr(values, "MAX_CHUNKED_LENGTH", 5)
    long = {**IDENTITY, "task_id": "long"}
    row = values.serialize(values.ChunkedList(children(6), description=DESCRIPTION), **long)
    assert row == children(6) and not chunk_path(0, long).exists()  # inline, as any small plain list


@pytest.mark.parametrize("opening", [b"[", b'{"a":'])
def test_a_chunk_nested_past_the_json_parser_is_refused_as_not_a_chunk(opening):
    """Guards ``chunks.read_chunk``: a proof line nested deeper than the parser recurses (a planted
    object) is refused as not a chunk, not a RecursionError."""
    row = stored_row(100)
    chunk_path(1).write_bytes(opening * 100_000 + b"\n[]")
    with pytest.raises(CorruptArtifactError, match="is refused: .* is not a chunk"):
        read(row, 70)


def test_a_row_copied_from_another_task_or_missing_its_chunks_is_refused():
    other = {**IDENTITY, "task_id": "other_split"}
    row = stored_row(10, other)
    with pytest.raises(XComReferenceError, match="claims to be XCom 'return_value' of task other_split"):
        read(row, 1)  # read where Airflow asked for start's children
    chunk_path(0, other).unlink()
    with pytest.raises(
        ArtifactNotFoundError, match="Item 1 of the children .* is missing from the datastore"
    ):
        read(row, 1, expected=other)


def test_purge_deletes_the_chunks_of_that_xcom_only():
    row = stored_row(3 * CHUNK_ITEMS)
    neighbour = {**IDENTITY, "key": "flowspec_foreach_offsets"}
    stored_row(5, neighbour)
    assert all(chunk_path(position).is_file() for position in range(3))
    with values.expecting(**IDENTITY):
        values.purge_stored(row)
    assert not any(chunk_path(position).exists() for position in range(3))
    assert chunk_path(0, neighbour).is_file()


def test_a_list_that_is_not_plain_json_or_a_planted_row_is_stored_as_any_value():
    sets = {**IDENTITY, "task_id": "sets"}
    odd = values.serialize(values.ChunkedList([{1, 2}], description="sets"), **sets)
    assert not values.is_chunked_row(odd) and not chunk_path(0, sets).exists()  # Airflow's serde carries it
    planted = {**stored_row(3), "root": "1" * 64}
    row = values.serialize(planted, **{**IDENTITY, "task_id": "planter"})
    assert (
        row["flowspec_xcom"] == 2
        and Path(config.datastore_root(), xcom_value_key(**{**IDENTITY, "task_id": "planter"})).is_file()
    )


@pytest.mark.usefixtures("airflow_db")
def test_a_child_handed_a_tampered_item_fails_naming_flow_step_and_item(capfd):
    """Through Airflow: a run, then item 2's reference in the stored chunk is swapped for item 3's,
    then the body is cleared and run again. Each child refuses the chunk before its step starts."""
    from airflow_flowspec.airflow.local_run import sync_dag
    from airflow_flowspec.airflow.registration import dag_for

    flow_file = Path(__file__).resolve().parents[1] / "flows" / "foreach_flow.py"
    dag = dag_for(load_flow(flow_file), str(flow_file))
    sync_dag(dag)
    run = dag.test()
    assert str(run.state) == "success"
    row = raw_xcom("ForeachFlow", run.run_id, "start")
    assert (row["flowspec_xcom_chunks"], row["length"]) == (1, 4)
    path = chunk_path(0, {**IDENTITY, "dag_id": "ForeachFlow", "run_id": run.run_id})
    proof, payload = path.read_bytes().split(b"\n")
    frames = json.loads(payload)
    frames[2]["stack"][-1]["item"] = frames[3]["stack"][-1]["item"]  # "d" where "c" was
    path.write_bytes(proof + b"\n" + json.dumps(frames, separators=(",", ":")).encode())
    capfd.readouterr()

    rerun = clear_and_rerun(dag, run.run_id, ["upper"])
    states = {(ti.task_id, ti.map_index): str(ti.state) for ti in rerun.get_task_instances()}
    assert states[("upper", 2)] == "failed"
    output = capfd.readouterr().out
    assert "Item 2 of the children of the foreach in step 'start' of flow ForeachFlow" in output
    assert "Task is starting" not in output  # refused before any step ran
