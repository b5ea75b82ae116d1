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
"""

from __future__ import annotations

import contextlib
import copy
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


def hostile_campaign(*, root: str, tries: int, seed: int) -> dict[str, Any]:
    """Try ``tries`` hostile rows through the XCom backend's read and purge paths; return the figures.

    Needs no Airflow: it drives ``values.deserialize`` (and the artifact view of a manifest) and
    ``values.purge_stored`` the way ``FlowspecXComBackend`` does, with what Airflow asked for
    (``values.expecting``) set as ``get_one`` sets it, or partly open as a pull over every map index
    (``get_all``) or over earlier runs (``include_prior_dates``) leaves it.
    ``AIRFLOW__FLOWSPEC__DATASTORE_ROOT`` is set to ``root`` for the duration. On a local root, one
    try in four also plants a symlink (:func:`symlinked`) under the XCom's derived key.

    A try *lets in* if anything outside the root was opened or deleted (a file, or an S3 request
    to another bucket or prefix: :class:`OutsideWatch`, :class:`S3Watch`), a hostile pickle ran, a
    planted file or object vanished, another XCom's pickle was deleted, or a value other than the
    legitimate XCom's came back. It is *refused* when it raised (or was left to Airflow's serde);
    *answered* when the legitimate value came back from the XCom's own derived key (a row whose
    extra path fields were ignored).
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
            rows = hostile_rows(rng, legit, planted, root)
            watch = OutsideWatch(outside)
            for _ in range(tries):
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
                expected = dict(identity)
                if rng.random() < 0.25:
                    expected["run_id"] = None  # include_prior_dates: any run
                if rng.random() < 0.25:
                    expected["map_index"] = None  # get_all: any map index
                with contextlib.ExitStack() as stack:
                    if link is not None:
                        stack.enter_context(symlinked(link, root, identity, planted, bystander))
                    with watch, S3Watch(root) as s3_watch:
                        outcome = _try_row(values, row, expected, legit_value)
                        _try_purge(values, row, expected)
                breached = (
                    bool(watch.events)
                    or bool(s3_watch.events)
                    or bool(fired_markers(planted))
                    or not outside_intact(planted)
                    or (local and not os.path.isfile(bystander))
                )
                if breached:
                    outcome = "let_in"
                figures["tried"] += 1
                figures[
                    {"refused": "refused", "answered": "answered_from_derived_key"}.get(outcome, "let_in")
                ] += 1
                tally = figures["by_way"].setdefault(way, {"tried": 0, "refused": 0, "let_in": 0})
                tally["tried"] += 1
                tally["refused"] += outcome == "refused"
                tally["let_in"] += outcome == "let_in"
                if outcome == "let_in" and len(figures["examples"]) < 5:
                    figures["examples"].append(
                        {"way": way, "row": repr(row)[:300], "events": watch.events[:3]}
                    )
                if breached:  # the next try starts from a clean slate
                    watch.events.clear()
                    for marker in planted["markers"].values():
                        Path(marker).unlink(missing_ok=True)
                    planted = plant_outside(root, Path(outside))
                    values.store_value(b"another task's value", **other)
                # A hostile row claiming this XCom's identity may purge its derived key: the one
                # key purge may delete. Store the value again for the next try.
                legit = values.store_value(legit_value, **identity)
    finally:
        if previous is None:
            os.environ.pop("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", None)
        else:
            os.environ["AIRFLOW__FLOWSPEC__DATASTORE_ROOT"] = previous
    return figures


def planted_hash(planted: dict[str, Any]) -> str:
    from airflow_flowspec.datastore.encoding import content_hash

    return content_hash(Path(planted["file"]).read_bytes())


def _try_row(values: Any, row: Any, expected: dict[str, Any], legit_value: bytes) -> str:
    """'refused', 'answered' (the legit value) or 'let_in' (anything else came back)."""
    try:
        with values.expecting(**expected):
            ours, value = values.deserialize(row)
            if not ours:
                return "refused"  # left to Airflow's serde: not read as ours
            if isinstance(value, values.InputView):
                value = {name: getattr(value, name) for name in value.artifact_names()}
    except Exception:  # noqa: BLE001 - any refusal counts; what matters is nothing got through
        return "refused"
    return "answered" if value == legit_value else "let_in"


def _try_purge(values: Any, row: Any, expected: dict[str, Any]) -> None:
    with contextlib.suppress(Exception), values.expecting(**expected):
        values.purge_stored(row)
