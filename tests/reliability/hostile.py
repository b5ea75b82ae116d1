"""Hostile XCom rows: what someone who can write Airflow's ``xcom`` table would try, and a watch on
everything outside the datastore root.

Issue 10, finding 2: a stored XCom row ``{"flowspec_xcom": 1, "root": ..., "key": ...}`` was taken
at its word, so an edited (or planted) row made a reader unpickle a file outside the root, read an
object from another bucket, and made ``purge`` delete a file and an object outside the root.

* :class:`OutsideWatch` (an audit hook) records every ``open``, ``remove``, ``rename`` and
  ``replace`` of a path in the watched folders, so "nothing outside was read or deleted" is
  observed, not assumed.
* :func:`plant_outside` puts hostile pickles (each writes a marker file when unpickled) where a row
  might point: a folder outside the root, another S3 bucket, another prefix of the same bucket.
* :func:`hostile_rows` makes rows of every way in; :func:`hostile_campaign` tries many of them at
  random through the XCom backend's read and purge paths and returns the figures.
* :func:`hostile_chunked_rows` does the same to a chunked list's row (a foreach's children, read a
  chunk at a time and proven against the row's root), and :func:`chunk_planted` replaces what is
  stored under its derived chunk keys (another list's chunk, an edited or cut chunk, a pickle, a
  symlink); every element of such a list must be the legitimate one's or refused.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from corruption import RawStore, hostile_pickle

#: The bucket a hostile row points at when it names "another bucket".
HOSTILE_BUCKET = "flowspec-hostile"


# -- watching everything outside the root ------------------------------------------------------------


class OutsideWatch:
    """Paths under the watched folders that this process opened, removed or renamed.

    An audit hook cannot be removed once added, so one hook is installed for the process and
    watches whatever folders are registered at the time.
    """

    _installed = False
    _lock = threading.Lock()
    _active: list[OutsideWatch] = []

    def __init__(self, *folders: str | os.PathLike, exclude: str | os.PathLike | None = None):
        self.folders = [os.path.realpath(str(folder)) for folder in folders]
        self.exclude = os.path.realpath(str(exclude)) if exclude is not None else None
        self.events: list[tuple[str, str]] = []

    def __enter__(self) -> OutsideWatch:
        with OutsideWatch._lock:
            if not OutsideWatch._installed:
                sys.addaudithook(OutsideWatch._hook)
                OutsideWatch._installed = True
            OutsideWatch._active.append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with OutsideWatch._lock:
            OutsideWatch._active.remove(self)

    def _matches(self, path: str) -> bool:
        # Both the path as given and where it leads: a symlink inside the root to a file outside
        # is opened under the root's name.
        def under(candidate: str, folder: str) -> bool:
            return candidate == folder or candidate.startswith(folder + os.sep)

        candidates = {os.path.abspath(path), os.path.realpath(path)}
        return any(
            under(candidate, folder) and not (self.exclude and under(candidate, self.exclude))
            for candidate in candidates
            for folder in self.folders
        )

    @staticmethod
    def _hook(event: str, args: tuple[Any, ...]) -> None:
        if not OutsideWatch._active or event not in ("open", "os.remove", "os.rename", "os.replace"):
            return
        paths = [args[0]] if event in ("open", "os.remove") else list(args[:2])
        for path in paths:
            if isinstance(path, bytes):
                path = os.fsdecode(path)
            if not isinstance(path, str):
                continue  # a file descriptor
            for watch in list(OutsideWatch._active):
                if watch._matches(path):
                    watch.events.append((event, path))


class S3Watch:
    """S3 requests, from any boto3 client of this process, that reach outside ``root``.

    For an S3 root that is another bucket or a key outside its prefix; for a local root (or None),
    any S3 request at all. Patches ``BaseClient._make_api_call`` for the block, so it also sees
    clients a reader would make for a bucket named in a row.
    """

    def __init__(self, root: str | None = None):
        self.bucket, self.prefix = None, ""
        if root and root.startswith("s3://"):
            self.bucket, _, prefix = root[len("s3://") :].partition("/")
            self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.events: list[tuple[str, str, str]] = []
        self._original: Any = None

    def _outside(self, bucket: str, key: str) -> bool:
        return bucket != self.bucket or not key.startswith(self.prefix)

    def __enter__(self) -> S3Watch:
        from botocore.client import BaseClient

        original = self._original = BaseClient._make_api_call
        watch = self

        def _make_api_call(client: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
            for bucket, key in _objects(api_params):
                if watch._outside(bucket, key):
                    watch.events.append((operation_name, bucket, key))
            return original(client, operation_name, api_params)

        BaseClient._make_api_call = _make_api_call
        return self

    def __exit__(self, *exc_info: object) -> None:
        from botocore.client import BaseClient

        BaseClient._make_api_call = self._original


def _objects(api_params: dict[str, Any]) -> list[tuple[str, str]]:
    """(bucket, key or prefix) of every object an S3 call names."""
    bucket = api_params.get("Bucket")
    if not isinstance(bucket, str):
        return []
    named = [(bucket, str(api_params[field])) for field in ("Key", "Prefix") if field in api_params]
    for item in (api_params.get("Delete") or {}).get("Objects", []):
        named.append((bucket, str(item.get("Key", ""))))
    source = api_params.get("CopySource")
    if isinstance(source, dict):
        named.append((str(source.get("Bucket")), str(source.get("Key", ""))))
    return named or [(bucket, "")]


# -- what hostile rows point at ----------------------------------------------------------------------


def plant_outside(root: str, folder: Path) -> dict[str, Any]:
    """Hostile pickles where an edited row could point, outside ``root``; return where and their markers.

    Always a file in ``folder`` (outside the root); for an S3 root also an object in another bucket
    and one in another prefix of the root's bucket. Each, if unpickled, writes its own marker.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    planted: dict[str, Any] = {"folder": str(folder), "markers": {}, "objects": {}}
    marker = folder / f"unpickled-outside-file-{tag}"
    path = folder / f"evil-{tag}.pkl"
    path.write_bytes(hostile_pickle(marker))
    planted["file"] = str(path)
    planted["markers"]["file"] = str(marker)
    if root.startswith("s3://"):
        raw = RawStore(root)
        with contextlib.suppress(Exception):
            raw.client.create_bucket(Bucket=HOSTILE_BUCKET)
        for where, bucket, key in (
            ("other_bucket", HOSTILE_BUCKET, f"evil-{tag}.pkl"),
            ("other_prefix", raw.bucket, f"outside-{tag}/evil.pkl"),
        ):
            marker = folder / f"unpickled-{where}-{tag}"
            raw.client.put_object(Bucket=bucket, Key=key, Body=hostile_pickle(marker))
            planted["objects"][where] = (bucket, key)
            planted["markers"][where] = str(marker)
    return planted


def fired_markers(planted: dict[str, Any]) -> list[str]:
    return sorted(name for name, marker in planted["markers"].items() if os.path.exists(marker))


def outside_intact(planted: dict[str, Any]) -> bool:
    """Whether every planted file and object is still there (purge deleted nothing outside)."""
    if not os.path.isfile(planted["file"]):
        return False
    if planted["objects"]:
        client = RawStore(f"s3://{HOSTILE_BUCKET}").client
        for bucket, key in planted["objects"].values():
            try:
                client.head_object(Bucket=bucket, Key=key)
            except Exception:  # noqa: BLE001 - gone
                return False
    return True


# -- hostile rows ------------------------------------------------------------------------------------

IDENTITY_FIELDS = ("dag_id", "run_id", "task_id", "map_index", "key")
_TRAVERSALS = ("..", "../..", "../../..", "../" * 8 + "tmp", "..\\..", "%2e%2e", "./..", "a/../../..")


def _outside_refs(planted: dict[str, Any], root: str) -> list[tuple[str, str]]:
    """(root, key) pairs a format-1 row may name, each leading to a planted hostile pickle."""
    file = Path(planted["file"])
    refs = [
        (str(file.parent), file.name),
        ("/", str(file).lstrip("/")),
        (root, str(file)),  # an absolute key under the configured root
        (root, "../" * 12 + str(file).lstrip("/")),
        (f"file://{file.parent}", file.name),
    ]
    for bucket, key in planted["objects"].values():
        refs.append((f"s3://{bucket}", key))
        refs.append((root, "../" * 3 + key))
    return refs


def hostile_rows(
    rng: random.Random, legit: dict[str, Any], planted: dict[str, Any], root: str
) -> Iterator[tuple[str, dict[str, Any] | Any]]:
    """Endless (way in, row) pairs, each a mutation of the legitimate format-2 row ``legit``."""
    from airflow_flowspec.datastore.encoding import content_hash

    evil_hash = content_hash(Path(planted["file"]).read_bytes())
    evil_size = Path(planted["file"]).stat().st_size
    outside = _outside_refs(planted, root)
    while True:
        way = rng.choice(
            (
                "format1_outside",
                "format1_inside",
                "traversal_in_identity",
                "absolute_in_identity",
                "copied_identity",
                "path_fields_added",
                "hash_of_outside_pickle",
                "malformed",
                "unknown_version",
                "manifest_outside",
            )
        )
        row = copy.deepcopy(legit)
        if way == "format1_outside":
            row_root, key = rng.choice(outside)
            row = {
                "flowspec_xcom": 1,
                "root": row_root,
                "key": key,
                "type": "bytes",
                "size": 10,
                "repr": "b''",
            }
        elif way == "format1_inside":  # what the old backend wrote for this very XCom
            from airflow_flowspec.datastore.keys import xcom_value_key

            key = xcom_value_key(*(legit[field] for field in IDENTITY_FIELDS))
            row = {"flowspec_xcom": 1, "root": root, "key": key, "type": "bytes", "size": 10, "repr": "b''"}
        elif way == "traversal_in_identity":
            field = rng.choice(("dag_id", "run_id", "task_id", "key"))
            row[field] = rng.choice(_TRAVERSALS) + rng.choice(("", "/evil", "/" + Path(planted["file"]).name))
        elif way == "absolute_in_identity":
            field = rng.choice(("dag_id", "run_id", "task_id", "key"))
            row[field] = rng.choice((planted["file"], "/", "/etc/passwd", "C:\\evil", "\\\\host\\share"))
        elif way == "copied_identity":
            field = rng.choice(IDENTITY_FIELDS)
            row[field] = rng.choice((-7, 0, 3)) if field == "map_index" else f"{legit[field]}-other"
        elif way == "path_fields_added":  # a format-2 row with a path beside it: ignored
            row_root, key = rng.choice(outside)
            row.update(root=row_root, key_path=key, path=planted["file"], bucket=HOSTILE_BUCKET)
            if rng.random() < 0.5:
                row["hash"], row["size"] = evil_hash, evil_size
        elif way == "hash_of_outside_pickle":
            row["hash"], row["size"] = evil_hash, evil_size
        elif way == "malformed":
            field = rng.choice((*IDENTITY_FIELDS, "hash", "size"))
            row[field] = rng.choice(
                (None, True, 1.5, ["x"], {"a": 1}, "", "x\x00y", "run-\udcff", "A" * 70, evil_hash.upper())
            )
            if rng.random() < 0.3:
                del row[field]
        elif way == "unknown_version":
            row["flowspec_xcom"] = rng.choice((0, 3, "2", None, True, 2.0 + 1e-9))
        elif way == "manifest_outside":  # a manifest row naming what it cannot reach
            hostile_hash = rng.choice(
                (
                    "../" * 6 + planted["file"].lstrip("/"),
                    planted["file"],
                    "/".join(("..",) * 4),
                    evil_hash.upper(),
                )
            )
            ref = {"hash": hostile_hash, "type": "bytes", "size": evil_size, "repr": "b''"}
            if rng.random() < 0.5:
                ref = {**ref, "hash": evil_hash, "pack": hostile_hash, "offset": 0}
            row = {
                "flowspec_manifest": 1,
                "pathspec": "F/r/start/0",
                "flow": "F",
                "run_id": "r",
                "step": "start",
                "task_id": "0",
                "attempt": 1,
                "artifacts": {"victim": ref},
                "parameters": [],
                "foreach_stack": [],
            }
        yield way, row


# -- hostile chunked-list rows and chunks ------------------------------------------------------------

#: Elements of the legitimate chunked list (a foreach's children): several chunks of CHUNK_ITEMS.
CHUNKED_WIDTH = 200
#: Elements of the bystander's chunked list: another length, so another root and other chunks.
BYSTANDER_WIDTH = 150

#: Ways that edit the chunked row itself (any root).
CHUNK_ROW_WAYS = (
    "chunk_traversal_in_identity",
    "chunk_absolute_in_identity",
    "chunk_copied_identity",
    "chunk_row_of_bystander",
    "chunk_root_of_bystander",
    "chunk_length_edited",
    "chunk_items_edited",
    "chunk_root_malformed",
    "chunk_identity_malformed",
    "chunk_unknown_version",
    "chunk_fields_missing",
    "chunk_path_fields_added",
    "chunk_stored_marker_added",
)
#: Ways that leave the row as written and replace what is stored under a derived chunk key (any
#: root; see :func:`chunk_planted`).
CHUNK_PLANT_WAYS = (
    "chunk_planted_bystander_chunk",
    "chunk_planted_moved_chunk",
    "chunk_planted_truncated",
    "chunk_planted_items_edited",
    "chunk_planted_pickle",
    "chunk_planted_deep_json",
    "chunk_planted_deleted",
)
#: Symlinks under a derived chunk key, as :data:`SYMLINK_WAYS` for pickles (local root only).
CHUNK_SYMLINK_WAYS = (
    "chunk_symlink_file_to_outside",
    "chunk_symlink_folder_to_outside",
    "chunk_symlink_file_to_inside",
)


def chunked_items(width: int, step: str) -> list[dict[str, Any]]:
    """What a foreach split returns for ``width`` children: plain JSON frames, one per child."""
    return [
        {
            "stack": [{"step": step, "var": "items", "index": i, "num_splits": width, "item": f"{step}-{i}"}],
            "parent_map_index": -1,
        }
        for i in range(width)
    ]


def hostile_chunked_rows(
    rng: random.Random, legit: dict[str, Any], bystander: dict[str, Any], planted: dict[str, Any]
) -> Iterator[tuple[str, dict[str, Any] | Any]]:
    """Endless (way in, row) pairs, each a mutation of the legitimate chunked-list row ``legit``
    (``bystander`` is another task's chunked row, stored too) or, for :data:`CHUNK_PLANT_WAYS`,
    the row as written, with :func:`chunk_planted` replacing what it reads."""
    from airflow_flowspec.datastore.encoding import content_hash
    from airflow_flowspec.xcom_backend.values import CHUNKED_MARKER, MAX_CHUNKED_LENGTH

    evil_hash = content_hash(Path(planted["file"]).read_bytes())
    while True:
        way = rng.choice(CHUNK_ROW_WAYS + CHUNK_PLANT_WAYS)
        row = copy.deepcopy(legit)
        if way == "chunk_traversal_in_identity":
            field = rng.choice(("dag_id", "run_id", "task_id", "key"))
            row[field] = rng.choice(_TRAVERSALS) + rng.choice(("", "/evil", "/" + Path(planted["file"]).name))
        elif way == "chunk_absolute_in_identity":
            field = rng.choice(("dag_id", "run_id", "task_id", "key"))
            row[field] = rng.choice((planted["file"], planted["folder"], "/", "C:\\evil", "\\\\host\\share"))
        elif way == "chunk_copied_identity":  # another run, map index, task (the bystander's), key
            field = rng.choice(IDENTITY_FIELDS)
            if field == "map_index":
                row[field] = rng.choice((-7, 0, 3))
            elif field == "task_id":
                row[field] = rng.choice((bystander["task_id"], f"{legit['task_id']}-other"))
            else:
                row[field] = f"{legit[field]}-other"
        elif way == "chunk_row_of_bystander":  # the bystander's row as written, where ours was asked
            row = copy.deepcopy(bystander)
        elif way == "chunk_root_of_bystander":  # our identity, the bystander's root (and its length)
            row["root"] = bystander["root"]
            if rng.random() < 0.5:
                row["length"] = bystander["length"]
        elif way == "chunk_length_edited":
            width = legit["length"]
            row["length"] = rng.choice(
                (
                    width + 1,
                    width + 56,
                    4 * width,
                    width - 1,
                    width - 50,
                    64,
                    1,
                    0,
                    -1,
                    -width,
                    MAX_CHUNKED_LENGTH,  # the most a row may claim: list() sizes its buffer by it
                    MAX_CHUNKED_LENGTH + 1,
                    2**62,
                    2**63,
                    10**30,
                )
            )
        elif way == "chunk_items_edited":
            row["chunk_items"] = rng.choice(
                (0, 1, 32, 63, 65, 128, legit["length"], 10**6, True, 64.0, 1.5, -64)
            )
        elif way == "chunk_root_malformed":
            row["root"] = rng.choice(
                (
                    None,
                    "",
                    0,
                    [legit["root"]],
                    legit["root"].upper(),
                    legit["root"][:-1],
                    legit["root"] + "0",
                    "0" * 64,
                    evil_hash,
                    "../" * 6 + planted["file"].lstrip("/"),
                    planted["file"],
                    legit["root"][:32] + "\x00" + legit["root"][33:],
                )
            )
        elif way == "chunk_identity_malformed":
            field = rng.choice(IDENTITY_FIELDS)
            row[field] = rng.choice((None, True, 1.5, ["x"], {"a": 1}, "", "x\x00y", "run-\udcff", "A" * 300))
        elif way == "chunk_unknown_version":
            row[CHUNKED_MARKER] = rng.choice((0, 2, -1, "1", None, 1.5, [1]))
        elif way == "chunk_fields_missing":
            for field in rng.sample(sorted(row), rng.randint(1, 3)):
                del row[field]
        elif way == "chunk_path_fields_added":  # fields naming places beside a row as written: ignored
            row.update(
                path=planted["file"],
                key_path="../" * 4 + planted["file"].lstrip("/"),
                bucket=HOSTILE_BUCKET,
                prefix="outside/",
                chunk_keys=[planted["file"]] * 4,
                hash=evil_hash,
            )
        elif way == "chunk_stored_marker_added":  # a chunked row that also claims a stored value
            row.update(flowspec_xcom=2, hash=evil_hash, size=Path(planted["file"]).stat().st_size)
        yield way, row


@contextlib.contextmanager
def chunk_planted(
    way: str,
    rng: random.Random,
    root: str,
    legit: dict[str, Any],
    bystander: dict[str, Any],
    planted: dict[str, Any],
) -> Iterator[None]:
    """For the block, replace what is stored under one of ``legit``'s derived chunk keys.

    :data:`CHUNK_PLANT_WAYS` (any root): the bystander's chunk at that position, another chunk of
    the same list, the chunk cut short, the chunk's proof line with an item edited, a hostile
    pickle, a proof line nested deeper than JSON parsers go, or nothing. :data:`CHUNK_SYMLINK_WAYS`
    (local root): the chunk's file links to a copy of itself (or the hostile pickle) outside the
    root, the task's folder links to an outside folder holding copies of every chunk, or the
    chunk's file links to the bystander's chunk inside the root (which a purge following the link
    would delete). The caller stores the legitimate chunks again afterwards.
    """
    from airflow_flowspec.datastore.chunks import chunk_count
    from airflow_flowspec.datastore.keys import xcom_chunk_key

    def chunk_key(row: dict[str, Any], position: int) -> str:
        return xcom_chunk_key(*(row[field] for field in IDENTITY_FIELDS), position=position)

    raw = RawStore(root)
    count = chunk_count(legit["length"], legit["chunk_items"])
    position = rng.randrange(count)
    key = chunk_key(legit, position)
    if way in CHUNK_SYMLINK_WAYS:
        with _chunk_symlinked(
            way,
            rng,
            raw,
            planted,
            [chunk_key(legit, each) for each in range(count)],
            position,
            chunk_key(bystander, min(position, 2)),
        ):
            yield
        return
    original = raw.read(key)[0]
    proof, _, payload = original.partition(b"\n")
    if way == "chunk_planted_bystander_chunk":
        raw.write(key, raw.read(chunk_key(bystander, min(position, 2)))[0])
    elif way == "chunk_planted_moved_chunk":
        raw.write(key, raw.read(chunk_key(legit, (position + 1) % count))[0])
    elif way == "chunk_planted_truncated":
        raw.write(key, original[: rng.randrange(len(original))])
    elif way == "chunk_planted_items_edited":  # the proof line kept, one item changed
        items = json.loads(payload)
        index = rng.randrange(len(items))
        items[index]["stack"][0]["item"] = rng.choice(
            (items[(index + 1) % len(items)]["stack"][0]["item"], "evil")
        )
        raw.write(key, proof + b"\n" + json.dumps(items, separators=(",", ":")).encode())
    elif way == "chunk_planted_pickle":
        raw.write(key, Path(planted["file"]).read_bytes())
    elif way == "chunk_planted_deep_json":
        raw.write(key, rng.choice((b"[", b'{"a":')) * 100_000 + b"\n" + payload)
    elif way == "chunk_planted_deleted":
        if raw.is_s3:
            raw.client.delete_object(Bucket=raw.bucket, Key=raw.prefix + key)
        else:
            raw.path(key).unlink()
    yield


@contextlib.contextmanager
def _chunk_symlinked(
    way: str,
    rng: random.Random,
    raw: RawStore,
    planted: dict[str, Any],
    chunk_keys: list[str],
    position: int,
    bystander_key: str,
) -> Iterator[None]:
    derived = raw.path(chunk_keys[position])
    task_folder = derived.parent.parent
    saved = Path(tempfile.mkdtemp(prefix="flowspec-saved-"))
    mirror = Path(planted["folder"], f"mirror-{uuid.uuid4().hex[:8]}")
    if way == "chunk_symlink_folder_to_outside":  # every chunk copied outside, as written
        (mirror / derived.parent.name).mkdir(parents=True)
        for key in chunk_keys:
            shutil.copyfile(raw.path(key), mirror / derived.parent.name / raw.path(key).name)
        shutil.move(str(task_folder), saved / "task")
        task_folder.symlink_to(mirror, target_is_directory=True)
    else:
        if way == "chunk_symlink_file_to_outside":  # the chunk itself, as written, or a pickle
            mirror.mkdir(parents=True)
            target = mirror / derived.name
            shutil.copyfile(derived, target)
            if rng.random() < 0.3:
                target = Path(planted["file"])
        else:
            target = raw.path(bystander_key)
        derived.unlink()
        derived.symlink_to(target)
    try:
        yield
    finally:
        if way == "chunk_symlink_folder_to_outside":
            task_folder.unlink()
            shutil.move(str(saved / "task"), task_folder)
        else:
            derived.unlink(missing_ok=True)
        shutil.rmtree(saved, ignore_errors=True)


# -- the campaign ------------------------------------------------------------------------------------


SYMLINK_WAYS = ("symlink_file_to_outside", "symlink_folder_to_outside", "symlink_file_to_inside")


@contextlib.contextmanager
def symlinked(
    way: str, root: str, identity: dict[str, Any], planted: dict[str, Any], bystander: str
) -> Iterator[None]:
    """Replace the XCom's derived file (or its task folder) by a symlink, for the block.

    ``symlink_file_to_outside``: the file links to the planted hostile pickle outside the root;
    ``symlink_folder_to_outside``: the task's folder links to an outside folder holding the same
    layout; ``symlink_file_to_inside``: the file links to another XCom's pickle (``bystander``)
    inside the root, which a purge following the link would delete.
    """
    from airflow_flowspec.datastore.keys import xcom_value_key

    derived = Path(root, *xcom_value_key(*(identity[field] for field in IDENTITY_FIELDS)).split("/"))
    task_folder = derived.parent.parent
    saved = Path(tempfile.mkdtemp(prefix="flowspec-saved-"))
    if way == "symlink_folder_to_outside":
        shutil.move(str(task_folder), saved / "task")
        mirror = Path(planted["folder"], f"mirror-{uuid.uuid4().hex[:8]}")
        (mirror / derived.parent.name).mkdir(parents=True)
        shutil.copyfile(planted["file"], mirror / derived.parent.name / derived.name)
        task_folder.symlink_to(mirror, target_is_directory=True)
    else:
        shutil.move(str(derived), saved / "value")
        derived.symlink_to(planted["file"] if way == "symlink_file_to_outside" else bystander)
    try:
        yield
    finally:
        if way == "symlink_folder_to_outside":
            task_folder.unlink()
            shutil.move(str(saved / "task"), task_folder)
        else:
            derived.unlink(missing_ok=True)
            shutil.move(str(saved / "value"), derived)
        shutil.rmtree(saved, ignore_errors=True)


#: The share of tries that attack the chunked list (the rest attack the stored value).
CHUNKED_SHARE = 0.5


def hostile_campaign(*, root: str, tries: int, seed: int) -> dict[str, Any]:
    """Try ``tries`` hostile rows through the XCom backend's read and purge paths; return the figures.

    Needs no Airflow: it drives ``values.deserialize`` (and the artifact view of a manifest) and
    ``values.purge_stored`` the way ``FlowspecXComBackend`` does, with what Airflow asked for
    (``values.expecting``) set as ``get_one`` sets it, or partly open as a pull over every map index
    (``get_all``) or over earlier runs (``include_prior_dates``) leaves it.
    ``AIRFLOW__FLOWSPEC__DATASTORE_ROOT`` is set to ``root`` for the duration.

    Half the tries attack an ordinary XCom's stored value (:func:`hostile_rows`; on a local root,
    one in four plants a symlink under its derived key, :func:`symlinked`); the other half attack a
    chunked list of :data:`CHUNKED_WIDTH` elements (:func:`hostile_chunked_rows`, with
    :func:`chunk_planted` replacing a stored chunk for :data:`CHUNK_PLANT_WAYS`, and on a local root
    one try in four a symlink, :data:`CHUNK_SYMLINK_WAYS`). Another task's value and another
    task's chunked list are stored beside them throughout.

    A try *lets in* if anything outside the root was opened or deleted (a file, or an S3 request
    to another bucket or prefix: :class:`OutsideWatch`, :class:`S3Watch`), a hostile pickle ran, a
    planted file or object vanished, another XCom's pickle or chunk was deleted, or a value other
    than the legitimate XCom's came back (for a chunked list: any element, slice or iteration that
    differs from the legitimate list's, :func:`_try_chunked`). It is *refused* when it raised (or
    was left to Airflow's serde); *answered* when the legitimate value came back from the XCom's
    own derived key (a row whose extra path fields were ignored). A refusal by anything but one of
    our errors (a ``MemoryError``, a ``RecursionError``, an ``IndexError`` the legitimate list
    would not raise) is counted in ``refused_unclearly`` too: refused, but not with a message that
    says why.
    """
    from airflow_flowspec.datastore.keys import xcom_value_key
    from airflow_flowspec.xcom_backend import values

    rng = random.Random(seed)
    local = not root.startswith("s3://")
    figures: dict[str, Any] = {
        "root_kind": "local" if local else "s3",
        "tries": tries,
        "seed": seed,
        "tried": 0,
        "refused": 0,
        "answered_from_derived_key": 0,
        "let_in": 0,
        "refused_unclearly": 0,
        "by_way": {},
        "examples": [],
    }
    previous = os.environ.get("AIRFLOW__FLOWSPEC__DATASTORE_ROOT")
    os.environ["AIRFLOW__FLOWSPEC__DATASTORE_ROOT"] = root
    try:
        with tempfile.TemporaryDirectory(prefix="flowspec-outside-") as outside:
            planted = plant_outside(root, Path(outside))
            identity = {
                "dag_id": "hostile_dag",
                "run_id": f"manual__campaign-{seed}",
                "task_id": "producer",
                "map_index": -1,
                "key": "return_value",
            }
            legit_value = b"the legitimate value " * 50
            legit = values.store_value(legit_value, **identity)
            other = {**identity, "task_id": "bystander"}
            values.store_value(b"another task's value", **other)
            bystander = str(Path(root, *xcom_value_key(*(other[f] for f in IDENTITY_FIELDS)).split("/")))
            chunked_identity = {**identity, "task_id": "splitter"}
            legit_items = chunked_items(CHUNKED_WIDTH, "splitter")
            legit_chunked = _store_chunked(values, legit_items, chunked_identity)
            other_chunked = {**identity, "task_id": "bystander_splitter"}
            bystander_chunked = _store_chunked(
                values, chunked_items(BYSTANDER_WIDTH, "bystander_splitter"), other_chunked
            )
            raw = RawStore(root)
            rows = hostile_rows(rng, legit, planted, root)
            chunked_rows = hostile_chunked_rows(rng, legit_chunked, bystander_chunked, planted)
            watch = OutsideWatch(outside)
            for _ in range(tries):
                chunked = rng.random() < CHUNKED_SHARE
                plant = None
                if chunked:
                    way, row = next(chunked_rows)
                    if local and rng.random() < 0.25:
                        way = rng.choice(CHUNK_SYMLINK_WAYS)
                        row = dict(legit_chunked)
                    if way in CHUNK_PLANT_WAYS + CHUNK_SYMLINK_WAYS:
                        plant = chunk_planted(way, rng, root, legit_chunked, bystander_chunked, planted)
                    asked, legit_answer = chunked_identity, legit_items
                else:
                    way, row = next(rows)
                    link = rng.choice(SYMLINK_WAYS) if local and rng.random() < 0.25 else None
                    if link is not None:
                        way = link
                        row = {
                            **legit,
                            "hash": planted_hash(planted),
                            "size": Path(planted["file"]).stat().st_size,
                        }
                        if link == "symlink_file_to_inside":
                            row = dict(legit)
                        plant = symlinked(link, root, identity, planted, bystander)
                    asked, legit_answer = identity, legit_value
                expected = dict(asked)
                if rng.random() < 0.25:
                    expected["run_id"] = None  # include_prior_dates: any run
                if rng.random() < 0.25:
                    expected["map_index"] = None  # get_all: any map index
                with contextlib.ExitStack() as stack:
                    if plant is not None:
                        stack.enter_context(plant)
                    with watch, S3Watch(root) as s3_watch:
                        outcome, error = _try_row(values, row, expected, legit_answer, rng)
                        _try_purge(values, row, expected)
                breached = (
                    bool(watch.events)
                    or bool(s3_watch.events)
                    or bool(fired_markers(planted))
                    or not outside_intact(planted)
                    or (local and not os.path.isfile(bystander))
                    or not _chunks_intact(raw, bystander_chunked)
                )
                if breached:
                    outcome = "let_in"
                unclear = outcome == "refused" and error is not None and not _clear_refusal(error)
                figures["tried"] += 1
                figures[
                    {"refused": "refused", "answered": "answered_from_derived_key"}.get(outcome, "let_in")
                ] += 1
                figures["refused_unclearly"] += unclear
                tally = figures["by_way"].setdefault(
                    way, {"tried": 0, "refused": 0, "answered": 0, "let_in": 0, "refused_unclearly": 0}
                )
                tally["tried"] += 1
                tally["refused"] += outcome == "refused"
                tally["answered"] += outcome == "answered"
                tally["let_in"] += outcome == "let_in"
                tally["refused_unclearly"] += unclear
                if (outcome == "let_in" or unclear) and len(figures["examples"]) < 5:
                    figures["examples"].append(
                        {
                            "way": way,
                            "outcome": outcome,
                            "error": repr(error)[:200],
                            "row": repr(row)[:300],
                            "events": (watch.events + s3_watch.events)[:3],
                        }
                    )
                if breached:  # the next try starts from a clean slate
                    watch.events.clear()
                    for marker in planted["markers"].values():
                        Path(marker).unlink(missing_ok=True)
                    planted = plant_outside(root, Path(outside))
                    values.store_value(b"another task's value", **other)
                    _store_chunked(
                        values, chunked_items(BYSTANDER_WIDTH, "bystander_splitter"), other_chunked
                    )
                # A hostile row claiming this XCom's identity may purge its derived keys: the only
                # keys purge may delete. Store the value (or the chunks) again for the next try.
                if chunked:
                    legit_chunked = _store_chunked(values, legit_items, chunked_identity)
                else:
                    legit = values.store_value(legit_value, **identity)
    finally:
        if previous is None:
            os.environ.pop("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", None)
        else:
            os.environ["AIRFLOW__FLOWSPEC__DATASTORE_ROOT"] = previous
    return figures


def _store_chunked(values: Any, items: list[Any], identity: dict[str, Any]) -> dict[str, Any]:
    """The row of ``items`` stored as a chunked list under ``identity``, as Airflow's table keeps it."""
    row = values.serialize(values.ChunkedList(items, description="a hostile campaign's list"), **identity)
    assert values.is_chunked_row(row), row
    return json.loads(json.dumps(row))


def _chunks_intact(raw: RawStore, row: dict[str, Any]) -> bool:
    """Whether every chunk of the chunked list ``row`` is still stored (purge deleted none of them)."""
    from airflow_flowspec.datastore.chunks import chunk_count
    from airflow_flowspec.datastore.keys import xcom_chunk_key, xcom_folder

    stored = set(raw.keys(xcom_folder(*(row[field] for field in IDENTITY_FIELDS[:4]))))
    identity = [row[field] for field in IDENTITY_FIELDS]
    return all(
        xcom_chunk_key(*identity, position=position) in stored
        for position in range(chunk_count(row["length"], row["chunk_items"]))
    )


def _clear_refusal(error: BaseException) -> bool:
    """Whether a refusal came with one of our errors, whose message says what was refused and why."""
    from airflow_flowspec.errors import FlowspecError

    return isinstance(error, FlowspecError)


def planted_hash(planted: dict[str, Any]) -> str:
    from airflow_flowspec.datastore.encoding import content_hash

    return content_hash(Path(planted["file"]).read_bytes())


def _try_row(
    values: Any, row: Any, expected: dict[str, Any], legit_answer: Any, rng: random.Random
) -> tuple[str, BaseException | None]:
    """('refused', the error or None), ('answered', None) for the legitimate value, or ('let_in',
    None or what differed) when anything else came back. A chunked list is read all through
    (:func:`_try_chunked`)."""
    try:
        with values.expecting(**expected):
            ours, value = values.deserialize(row)
            if not ours:
                return "refused", None  # left to Airflow's serde: not read as ours
            if isinstance(value, values.InputView):
                value = {name: getattr(value, name) for name in value.artifact_names()}
            if isinstance(value, values.ChunkedSequence):
                if not isinstance(legit_answer, list):
                    return "let_in", None  # a list where a stored value was asked for
                return _try_chunked(value, legit_answer, rng)
    except Exception as error:  # noqa: BLE001 - any refusal counts; what matters is nothing got through
        return "refused", error
    return ("answered" if value == legit_answer else "let_in"), None


#: What :func:`_try_chunked` takes a probe that raised ``IndexError`` on the legitimate list too for.
_OUT_OF_RANGE = object()


def _try_chunked(
    sequence: Any, legit_items: list[Any], rng: random.Random
) -> tuple[str, BaseException | None]:
    """Read a chunked list as every consumer might: iterate it all, index it (negative, at both
    ends, out of range), slice it (forward, backward, stepped, empty, past the end), and compare
    each answer with the legitimate list's. ``len()`` is not compared on its own: it is the row's
    claim, which every element read proves.

    ('let_in', what differed) if any answer differs from the legitimate list's (an element, a
    slice, the whole); ('refused', an error) if none differs but some raised where the legitimate
    list does not (an unclear one, if any was); ('answered', None) if every answer is the
    legitimate list's.
    """
    width = len(legit_items)
    indexes = [0, width - 1, -1, -width, width, -width - 1, 10**6, -(10**6)]
    indexes += [rng.randrange(-width - 3, width + 3) for _ in range(4)]
    slices = [
        slice(None, None, -1),
        slice(rng.randrange(width), rng.randrange(width)),
        slice(rng.randrange(-width, width), None, rng.choice((2, 3, -2, 64))),
        slice(width - rng.randrange(1, 80), None),  # the end: an edited length shows here first
        slice(width, None),
        slice(rng.randrange(width // 2, width + 1), None),
        slice(5, 5),
    ]
    probes: list[Any] = ["all", *rng.sample(indexes, len(indexes)), *rng.sample(slices, len(slices))]
    errors: list[BaseException] = []
    for probe in probes:
        want = _answer(legit_items, probe)
        try:
            have = _answer(sequence, probe)
        except Exception as error:  # noqa: BLE001 - a refusal; keep probing for anything let in
            errors.append(error)
            continue
        if have is _OUT_OF_RANGE and want is not _OUT_OF_RANGE:
            errors.append(IndexError(f"[{_shown(probe)}] is out of range, where the list has it"))
            continue
        if have is not want and have != want:
            shown = "out of range" if want is _OUT_OF_RANGE else f"{want!r:.80}"
            return "let_in", AssertionError(f"[{_shown(probe)}] gave {have!r:.80}, the list's is {shown}")
    if not errors:
        return "answered", None
    # Each probe is what some reader would do: the least clear of their refusals is the one to show.
    return "refused", next((error for error in errors if not _clear_refusal(error)), errors[0])


def _shown(probe: Any) -> str:
    if isinstance(probe, slice):
        return ":".join("" if part is None else str(part) for part in (probe.start, probe.stop, probe.step))
    return str(probe)


def _answer(items: Any, probe: Any) -> Any:
    """``items[probe]`` (``list(items)`` for "all"), or :data:`_OUT_OF_RANGE` for an ``IndexError``."""
    try:
        return list(items) if probe == "all" else items[probe]
    except IndexError:
        return _OUT_OF_RANGE


def _try_purge(values: Any, row: Any, expected: dict[str, Any]) -> None:
    with contextlib.suppress(Exception), values.expecting(**expected):
        values.purge_stored(row)
