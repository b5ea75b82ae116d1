"""Damage stored blobs the way disks, copies and careless tools do, and prove reads never lie.

Three kinds of damage, on a local root (files under ``<root>/data/``) and on an S3 root (objects
in the bucket, rewritten with boto3 behind the datastore's back):

* ``flip``: one byte XORed in place. Size unchanged and, on S3, the object keeps its metadata (its
  recorded BLAKE3 hash), the way bit rot or a buggy copy looks from outside: nothing but the bytes
  says anything is wrong.
* ``truncate``: the blob cut short (metadata kept on S3).
* ``swap``: two blobs exchange their objects (bytes and metadata), as a tool that renamed objects
  to the wrong names would leave them.

The values stored carry a :class:`Tripwire`: unpickling one writes a file, so a test can tell
whether any byte of a damaged blob reached the unpickler (a truncated pickle that fails half way
still runs the opcodes before the cut; the tripwire is the first thing in every value). The decoy
that a blob is swapped with is :func:`hostile_pickle`, which writes a marker file through
``exec`` if it is ever unpickled, in any process.

:func:`corruption_campaign` runs many random corruptions (and transient faults: a first read bad,
the second good) against a root and returns the figures a soak run reports.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

KINDS = ("flip", "truncate", "swap")
#: Artifacts pickled up to this size travel in packs (airflow_flowspec.datastore.artifacts).
PACK_ITEM_MAX_BYTES = 64 * 1024


# -- values that show whether they were unpickled ----------------------------------------------------


class Tripwire:
    """A value whose unpickling writes ``<folder>/<name>``: proof that bytes reached ``pickle``."""

    def __init__(self, folder: str | os.PathLike, name: str):
        self.folder = str(folder)
        self.name = name

    @property
    def path(self) -> Path:
        return Path(self.folder) / self.name

    @property
    def fired(self) -> bool:
        return self.path.exists()

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)

    def __reduce__(self) -> tuple[Callable[..., Tripwire], tuple[str, str]]:
        return (tripwire_fired, (self.folder, self.name))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tripwire) and (other.folder, other.name) == (self.folder, self.name)

    def __hash__(self) -> int:
        return hash((self.folder, self.name))

    def __repr__(self) -> str:
        return f"Tripwire({self.name!r})"


def tripwire_fired(folder: str, name: str) -> Tripwire:
    """What unpickling a :class:`Tripwire` calls."""
    Path(folder, name).write_text("unpickled\n")
    return Tripwire(folder, name)


def tripped_value(tripwire: Tripwire, size: int, seed: int = 0) -> list[Any]:
    """A value pickling to about ``size`` bytes, tripwire first (its opcodes run before the rest)."""
    payload = random.Random(seed).randbytes(max(0, size - 200))
    return [tripwire, payload]


def hostile_pickle(marker: str | os.PathLike) -> bytes:
    """A pickle that writes ``marker`` when loaded, through builtins only (so it would run anywhere)."""
    code = f"open({str(marker)!r}, 'w').write('a hostile pickle was unpickled')"
    return pickle.dumps(_Exec(code), protocol=2)


class _Exec:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (self.code,))


# -- raw access to a root, behind the datastore's back -----------------------------------------------


class RawStore:
    """Read and overwrite the objects of a datastore root directly (a folder or ``s3://bucket/prefix``)."""

    def __init__(self, root: str):
        self.root = root
        self.is_s3 = root.startswith("s3://")
        if self.is_s3:
            self.bucket, _, prefix = root[len("s3://") :].partition("/")
            self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
            self.client = _s3_client()
        else:
            self.folder = Path(root)

    def path(self, key: str) -> Path:
        return self.folder.joinpath(*key.split("/"))

    def read(self, key: str) -> tuple[bytes, dict[str, str]]:
        """The object's bytes and (S3) its user metadata."""
        if self.is_s3:
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
            return response["Body"].read(), dict(response.get("Metadata") or {})
        return self.path(key).read_bytes(), {}

    def write(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        """Overwrite in place (same inode locally; same metadata on S3 unless given other)."""
        if self.is_s3:
            extra = {"Metadata": metadata} if metadata else {}
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data, **extra)
            return
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "r+b" if path.exists() else "wb") as stream:
            stream.write(data)
            stream.truncate()

    def exists(self, key: str) -> bool:
        if self.is_s3:
            listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix + key, MaxKeys=1)
            return any(item["Key"] == self.prefix + key for item in listed.get("Contents", []))
        return self.path(key).is_file()

    def keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (relative to the root)."""
        if self.is_s3:
            found = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                found += [item["Key"][len(self.prefix) :] for item in page.get("Contents", [])]
            return sorted(found)
        base = self.path(prefix.rstrip("/")) if prefix else self.folder
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.folder)) for p in base.rglob("*") if p.is_file())


_clients: dict[str | None, Any] = {}


def _s3_client() -> Any:
    """One boto3 client per endpoint (making one costs about 0.2 s)."""
    import boto3

    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint not in _clients:
        _clients[endpoint] = boto3.session.Session().client("s3")
    return _clients[endpoint]


def fresh(datastore: Any) -> Any:
    """``datastore`` as a new task process would see it: same backend (and S3 client), no caches.

    Caches of what this process stored or loaded (blob locations, recent packs) live in the
    ArtifactStore; a new one forgets them, so a read really goes to the stored bytes.
    """
    from airflow_flowspec.datastore.artifacts import ArtifactStore

    datastore.artifacts = ArtifactStore(datastore.backend)
    return datastore


# -- the three kinds of damage -----------------------------------------------------------------------


def flip(root: str, key: str, *, rng: random.Random, offset: int | None = None) -> dict[str, Any]:
    """XOR one byte of the object (at ``offset``, else at random); size and metadata stay."""
    store = RawStore(root)
    data, metadata = store.read(key)
    where = rng.randrange(len(data)) if offset is None else offset
    damaged = bytearray(data)
    damaged[where] ^= 1 << rng.randrange(8)
    store.write(key, bytes(damaged), metadata)
    return {"kind": "flip", "key": key, "offset": where}


def truncate(root: str, key: str, *, rng: random.Random, length: int | None = None) -> dict[str, Any]:
    """Cut the object to ``length`` bytes (at random, 0 included, else); metadata stays."""
    store = RawStore(root)
    data, metadata = store.read(key)
    keep = rng.randrange(len(data)) if length is None else length
    store.write(key, data[:keep], metadata)
    return {"kind": "truncate", "key": key, "length": keep, "was": len(data)}


def swap(root: str, key: str, other_key: str) -> dict[str, Any]:
    """Exchange two objects (bytes and metadata): each now sits under the other's name."""
    store = RawStore(root)
    (first, first_meta), (second, second_meta) = store.read(key), store.read(other_key)
    store.write(key, second, second_meta)
    store.write(other_key, first, first_meta)
    return {"kind": "swap", "key": key, "other_key": other_key}


def plant_blob(root: str, data: bytes) -> str:
    """Store ``data`` as a blob under its own (correct) name, as the datastore would; return the key."""
    from airflow_flowspec.datastore.encoding import content_hash
    from airflow_flowspec.datastore.keys import blob_key

    digest = content_hash(data)
    RawStore(root).write(blob_key(digest), data, {"blake3": digest})
    return blob_key(digest)


def corrupt(
    root: str, key: str, kind: str, *, rng: random.Random, decoy: bytes | None = None
) -> dict[str, Any]:
    """Damage ``key`` by ``kind``; a swap exchanges it with a planted blob holding ``decoy``."""
    if kind == "flip":
        return flip(root, key, rng=rng)
    if kind == "truncate":
        return truncate(root, key, rng=rng)
    if kind == "swap":
        assert decoy is not None, "a swap needs a decoy blob to swap with"
        return swap(root, key, plant_blob(root, decoy))
    raise ValueError(f"unknown corruption kind {kind!r}; expected one of {KINDS}")


# -- transient faults: the first read is bad, the next one good --------------------------------------


@contextlib.contextmanager
def first_read_damaged(backend: Any, key: str) -> Iterator[dict[str, int]]:
    """Make the first read of ``key`` through ``backend`` return one flipped byte, later ones the truth.

    Covers every way the datastore reads a blob: ``open_read`` (a local blob, memory-mapped from the
    stream's file), ``get_bytes`` (packs, small remote blobs) and ``download_file`` (large remote
    blobs). Yields counters: how many reads of ``key`` there were and how many were damaged.
    """
    counts = {"reads": 0, "damaged": 0}
    originals = {name: getattr(backend, name) for name in ("open_read", "get_bytes", "download_file")}
    scratch = tempfile.mkdtemp(prefix="flowspec-transient-")

    def damaged_now(requested: str) -> bool:
        if requested != key:
            return False
        counts["reads"] += 1
        if counts["damaged"]:
            return False
        counts["damaged"] += 1
        return True

    def damage(data: bytes) -> bytes:
        copy = bytearray(data)
        copy[len(copy) // 2] ^= 0x20
        return bytes(copy)

    def open_read(requested: str) -> Any:
        stream = originals["open_read"](requested)
        if not damaged_now(requested):
            return stream
        with stream:
            data = damage(stream.read())
        path = os.path.join(scratch, uuid.uuid4().hex)
        Path(path).write_bytes(data)
        return open(path, "rb")  # noqa: SIM115 - the reader closes it

    def get_bytes(requested: str) -> Any:
        data = originals["get_bytes"](requested)
        return damage(data) if damaged_now(requested) else data

    def download_file(requested: str, local_path: str) -> None:
        originals["download_file"](requested, local_path)
        if damaged_now(requested):
            Path(local_path).write_bytes(damage(Path(local_path).read_bytes()))

    backend.open_read, backend.get_bytes, backend.download_file = open_read, get_bytes, download_file
    try:
        yield counts
    finally:
        for name in originals:
            with contextlib.suppress(AttributeError):
                delattr(backend, name)
        shutil.rmtree(scratch, ignore_errors=True)


# -- the campaign ------------------------------------------------------------------------------------


def _manifest(flow: str, run_id: str, refs: dict[str, Any]) -> Any:
    from airflow_flowspec.datastore.keys import AttemptKey
    from airflow_flowspec.datastore.manifest import new_manifest

    return new_manifest(
        AttemptKey(flow, run_id, "start", "0", 1), artifacts=refs, parameters=[], foreach_stack=[]
    )


def _read_through_view(datastore: Any, manifest: Any, name: str) -> Any:
    """What a plain Airflow task pulling the step gets (the XCom view), in a fresh process."""
    from airflow_flowspec.datastore.views import task_view

    return getattr(task_view(manifest, fresh(datastore)), name)


def corruption_campaign(*, root: str, tries: int, seed: int) -> dict[str, Any]:
    """Corrupt ``tries`` freshly stored artifacts at random and read each back; return the figures.

    Each try stores a value (a blob of its own, 65 KB to 3 MB pickled, or a small artifact in a
    pack), damages it (flip, truncate or swap with a hostile pickle, in turn), reads it through the
    view a plain Airflow task gets, then saves the same value again and reads it once more. Every
    third try also puts a transient fault (a first read damaged, the second good) in front of a
    healthy read. Every write and read starts with no cache (:func:`fresh`), as separate task
    processes would: no cache can hide damage.

    Figures: ``tried`` by kind and by target; ``detected`` (CorruptArtifactError), ``named`` (its
    message names flow, run, step, task and artifact), ``wrong_values`` (a value returned that is
    not the one stored: must be 0), ``unpickled`` (a damaged blob's bytes reached pickle: must be
    0), ``other_errors`` (another exception: must be 0), ``repaired`` (the next save made the value
    readable again), ``transient_tried`` and ``transient_reported_as_damage`` (must be 0).
    """
    from airflow_flowspec.datastore.keys import blob_key
    from airflow_flowspec.datastore.store import Datastore
    from airflow_flowspec.errors import CorruptArtifactError

    rng = random.Random(seed)
    figures: dict[str, Any] = {
        "root_kind": "s3" if root.startswith("s3://") else "local",
        "tries": tries,
        "seed": seed,
        "tried": dict.fromkeys(KINDS, 0),
        "targets": {"blob": 0, "pack": 0},
        "detected": 0,
        "named": 0,
        "wrong_values": 0,
        "unpickled": 0,
        "other_errors": 0,
        "repaired": 0,
        "transient_tried": 0,
        "transient_reported_as_damage": 0,
        "transient_wrong_values": 0,
        "examples": [],
    }
    flow, run_id = "CampaignFlow", f"campaign-{seed}"
    datastore = Datastore(root)
    with tempfile.TemporaryDirectory(prefix="flowspec-tripwires-") as trip_dir:
        hostile_marker = Path(trip_dir, "hostile-unpickled")
        for number in range(tries):
            kind = KINDS[number % len(KINDS)]
            target = rng.choice(("blob", "pack"))
            size = rng.randrange(PACK_ITEM_MAX_BYTES + 1024, 3 * 1024 * 1024) if target == "blob" else 2000
            tripwire = Tripwire(trip_dir, f"victim-{seed}-{number}")
            value = tripped_value(tripwire, size, seed=number)
            values = {"victim": value, "mate": f"pack-mate {seed}-{number}"}
            refs = fresh(datastore).artifacts.save_many(values)
            ref = refs["victim"]
            assert (ref.pack is not None) == (target == "pack"), (target, ref)
            manifest = _manifest(flow, run_id, refs)
            figures["tried"][kind] += 1
            figures["targets"][target] += 1

            if number % 3 == 0:  # a transient fault on a healthy blob first
                figures["transient_tried"] += 1
                key = blob_key(ref.pack or ref.hash)
                with first_read_damaged(datastore.backend, key):
                    try:
                        got = fresh(datastore).artifacts.load(ref)
                        figures["transient_wrong_values"] += got != value
                    except CorruptArtifactError:
                        figures["transient_reported_as_damage"] += 1

            tripwire.reset()
            hostile_marker.unlink(missing_ok=True)
            key = blob_key(ref.pack or ref.hash)
            report = corrupt(root, key, kind, rng=rng, decoy=hostile_pickle(hostile_marker))
            try:
                got = _read_through_view(datastore, manifest, "victim")
            except CorruptArtifactError as error:
                figures["detected"] += 1
                message = str(error)
                figures["named"] += all(
                    part in message for part in (flow, run_id, "start", "victim", f"{run_id}/start/0")
                )
                if len(figures["examples"]) < 3:
                    figures["examples"].append({**report, "message": message})
            except Exception as error:  # noqa: BLE001 - counted: must not happen
                figures["other_errors"] += 1
                if len(figures["examples"]) < 6:
                    figures["examples"].append({**report, "error": f"{type(error).__name__}: {error}"})
            else:
                figures["wrong_values"] += got != value
            figures["unpickled"] += tripwire.fired or hostile_marker.exists()

            fresh(datastore).artifacts.save_many(values)  # the next run of the producing step
            try:
                figures["repaired"] += _read_through_view(datastore, manifest, "victim") == value
            except Exception as error:  # noqa: BLE001 - not repaired
                if len(figures["examples"]) < 6:
                    figures["examples"].append({**report, "repair": f"{type(error).__name__}: {error}"})
    return figures


def soak_tries(ci: int, soak: int) -> int:
    """``soak`` with ``FLOWSPEC_SOAK=1`` in the environment, else ``ci``."""
    return soak if os.environ.get("FLOWSPEC_SOAK") == "1" else ci
