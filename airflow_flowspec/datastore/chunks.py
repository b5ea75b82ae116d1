"""A long JSON list stored in chunks, each of which a reader checks against one root hash alone.

Why: Airflow maps a foreach body over the list its split returns, and every mapped task gets its
own element by pulling that whole list and indexing it (Airflow 3.3 cannot index inside one XCom
value). Stored whole, a list of N elements costs each of the N tasks all N elements. Stored in
chunks of :data:`CHUNK_ITEMS`, it costs each task one chunk, however long the list.

How a chunk is trusted: the chunks are the leaves of a binary hash tree (BLAKE3) whose root the
reader holds from elsewhere (the XCom row in Airflow's table). A chunk object carries its items
and the sibling hashes on its path to the root, so a reader checks it against the root without
reading anything else: the root stays one hash however long the list is. Each leaf binds the
chunk's position, the list's length and the chunk size, so a chunk of another list, a chunk moved
to another position, or a row whose length was edited does not verify.

A chunk object is two lines: the proof (a JSON list of hex hashes, leaf level first) and the items
(compact ASCII JSON, which never contains a newline).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from blake3 import blake3

#: Elements per chunk: what one reader of one element reads (a foreach frame is about 300 bytes).
CHUNK_ITEMS = 64

_HEX_HASH_CHARS = 64


class ChunkMismatch(Exception):
    """A chunk object does not belong where it was read (or is not a chunk); ``reason`` says how."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def chunk_count(length: int, chunk_items: int) -> int:
    """How many chunks a list of ``length`` elements takes (an empty list takes one, empty)."""
    return max(1, -(-length // chunk_items))


def chunk_list(items: Sequence[Any], chunk_items: int = CHUNK_ITEMS) -> tuple[str, list[bytes]]:
    """(root hash, chunk objects) for ``items``, plain JSON values (``TypeError``/``ValueError``
    otherwise). Chunk ``i`` holds ``items[i * chunk_items:(i + 1) * chunk_items]``."""
    length = len(items)
    payloads = [
        json.dumps(list(items[start : start + chunk_items]), separators=(",", ":"), allow_nan=False).encode()
        for start in range(0, max(length, 1), chunk_items)
    ]
    levels = [[_leaf(position, length, chunk_items, payload) for position, payload in enumerate(payloads)]]
    while len(levels[-1]) > 1:
        below = levels[-1]
        levels.append(
            [
                _node(below[i], below[i + 1]) if i + 1 < len(below) else below[i]
                for i in range(0, len(below), 2)
            ]
        )
    chunks = []
    for position, payload in enumerate(payloads):
        proof, index = [], position
        for level in levels[:-1]:
            if index ^ 1 < len(level):
                proof.append(level[index ^ 1].hex())
            index //= 2
        chunks.append(json.dumps(proof).encode() + b"\n" + payload)
    return levels[-1][0].hex(), chunks


def read_chunk(data: bytes, *, position: int, length: int, chunk_items: int, root: str) -> list[Any]:
    """The items of chunk ``position`` of the list whose root is ``root``, once ``data`` is shown to
    be that chunk; :class:`ChunkMismatch` otherwise (nothing of ``data`` is returned)."""
    proof_line, newline, payload = data.partition(b"\n")
    if not newline:
        raise ChunkMismatch("is not a chunk (it has no proof line)")
    try:
        proof = json.loads(proof_line)
    except ValueError:
        raise ChunkMismatch("is not a chunk (its proof line is not JSON)") from None
    except RecursionError:  # nested deeper than the parser goes: no proof is more than a flat list
        raise ChunkMismatch(
            "is not a chunk (its proof line is nested lists or objects, not hashes)"
        ) from None
    if not isinstance(proof, list) or not all(_is_hex_hash(entry) for entry in proof):
        raise ChunkMismatch("is not a chunk (its proof is not a list of hashes)")
    computed = _root_of(
        _leaf(position, length, chunk_items, payload),
        position,
        chunk_count(length, chunk_items),
        [bytes.fromhex(entry) for entry in proof],
    )
    if computed is None:
        raise ChunkMismatch(f"does not belong there: its proof does not fit chunk {position} of that list")
    if computed != root:
        raise ChunkMismatch(
            f"does not belong there: as chunk {position} of a list of {length} elements in chunks of "
            f"{chunk_items}, its items and proof lead to the root {computed}, not to {root}"
        )
    items = json.loads(payload)  # proven: it is what the writer stored
    if not isinstance(items, list):
        raise ChunkMismatch("holds no list")
    return items


def _root_of(leaf: bytes, position: int, count: int, proof: list[bytes]) -> str | None:
    """The root that ``leaf`` at ``position`` of ``count`` leaves leads to with ``proof``; None when
    the proof has the wrong number of hashes for that position."""
    digest, index, width, used = leaf, position, count, 0
    if not 0 <= position < count:
        return None
    while width > 1:
        if index ^ 1 < width:
            if used == len(proof):
                return None
            sibling = proof[used]
            used += 1
            digest = _node(digest, sibling) if index % 2 == 0 else _node(sibling, digest)
        index //= 2
        width = (width + 1) // 2
    return digest.hex() if used == len(proof) else None


def _leaf(position: int, length: int, chunk_items: int, payload: bytes) -> bytes:
    header = f"flowspec-chunk {position} of a list of {length} in chunks of {chunk_items}\n"
    return blake3(header.encode() + payload).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return blake3(b"flowspec-node\n" + left + right).digest()


def _is_hex_hash(value: Any) -> bool:
    return (
        isinstance(value, str)
        and len(value) == _HEX_HASH_CHARS
        and all(character in "0123456789abcdef" for character in value)
    )
