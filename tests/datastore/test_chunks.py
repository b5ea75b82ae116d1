"""A list stored in chunks: every chunk reads back against the root alone, and nothing else does.

What the foreach's children rest on: each child reads one chunk, and the root in the XCom row is
all it checks it against (:mod:`airflow_flowspec.datastore.chunks`).
"""

from __future__ import annotations

import json

import pytest

from airflow_flowspec.datastore.chunks import ChunkMismatch, chunk_count, chunk_list, read_chunk


def frames(length: int) -> list[dict]:
    return [{"index": i, "item": {"hash": f"{i:064x}", "repr": repr(i)}} for i in range(length)]


@pytest.mark.parametrize("length", [0, 1, 3, 4, 5, 16, 17, 33, 100])
def test_every_chunk_reads_back_against_the_root_alone(length):
    items = frames(length)
    root, objects = chunk_list(items, 4)
    assert len(objects) == chunk_count(length, 4)
    read = []
    for position, data in enumerate(objects):
        read.extend(read_chunk(data, position=position, length=length, chunk_items=4, root=root))
    assert read == items
    # The proof grows with the logarithm of the number of chunks, the chunk with nothing.
    assert max(len(data.split(b"\n")[0]) for data in objects) <= 70 * max(1, (len(objects) - 1).bit_length())


def test_a_chunk_edited_moved_or_from_another_list_does_not_verify():
    items = frames(40)
    root, objects = chunk_list(items, 4)

    def refused(data: bytes, **where) -> str:
        arguments = {"position": 2, "length": 40, "chunk_items": 4, "root": root, **where}
        with pytest.raises(ChunkMismatch) as refusal:
            read_chunk(data, **arguments)
        return refusal.value.reason

    proof, payload = objects[2].split(b"\n")
    edited = json.loads(payload)
    edited[1]["item"]["hash"] = "f" * 64  # another blob, which would load and verify as itself
    assert "does not belong there" in refused(
        proof + b"\n" + json.dumps(edited, separators=(",", ":")).encode()
    )
    assert "does not belong there" in refused(objects[3])  # chunk 3 stored where chunk 2 belongs
    other_root, other = chunk_list(frames(40)[::-1], 4)
    assert "does not belong there" in refused(other[2])  # the same place in another list
    # A row whose length or chunk size was edited: the leaves bind both.
    assert "does not belong there" in refused(objects[2], length=39)
    assert "does not belong there" in refused(objects[2], chunk_items=5)
    assert "does not fit" in refused(json.dumps([]).encode() + b"\n" + payload)  # proof cut short
    assert "no proof line" in refused(payload)
    assert "not a list of hashes" in refused(b'["../../etc/passwd"]\n' + payload)
    assert "not a chunk" in refused(b"[" * 100_000 + b"\n" + payload)  # deeper than the parser goes
