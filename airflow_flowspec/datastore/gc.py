"""Garbage collection (``airflow-flowspec gc``): the only way a datastore shrinks, because Airflow
never deletes what flows store.

The safety rule: gc deletes a stored artifact (a blob or pack under ``data/``) only if nothing kept
references it AND it was last written, or last re-confirmed by a save that found it already stored,
longer ago than the grace period. A save that finds an artifact already stored renews its last
write when that is older than half the freshen interval, as git freshens objects, and a process
forgets which artifacts it saw stored after the other half
(:data:`~airflow_flowspec.datastore.artifacts.FRESHEN_INTERVAL_SECONDS`). So a task that writes
its manifest within the grace period minus the freshen interval of saving its artifacts never loses
one, even while gc deletes the last other run that used them; a grace period shorter than twice the
freshen interval is refused, and none at all is only for a datastore where nothing runs.

Which runs go, per flow: those that started (``created_at`` in run.json) longer ago than the
horizon (``--older-than``), except

* the ``--keep-last`` newest runs;
* the latest successful run, overall and in each system namespace (``user:...``,
  ``production:...``), because other flows read it by that name;
* a run that wrote something more recently than the horizon or the grace period: it is still
  running, or a failed run is being resumed (its status.json says failed until it finishes).

A run whose start never wrote run.json is judged by when its folder was last written.

The order is what makes every step safe to interrupt (a gc killed half-way is finished by the next):

1. Decide, and read what every kept run references: each attempt's manifest, task spec and step
   result, and the run's record (it names the code the run started with). A document that cannot be
   read stops gc before it deleted anything, since what it references is unknown.
2. Delete gone runs: their index entries first, so the client stops offering them; then their files,
   run.json and status.json last, so a half-deleted run is still recognisably a run.
3. Sweep ``data/`` by the safety rule, deleting what it lists within a second or so, so that a blob
   a save freshens meanwhile is rarely judged on a listing older than the freshening.
4. Pickled XComs of ordinary tasks (``_xcom/<dag>/<run>/``): those of a run deleted here (its flow's
   DAG, or the DAG its record names); and, only when asked (``--xcom-older-than``) and every flow is
   collected, those whose objects are all older than that and whose run id no kept run has. Not by
   default: Airflow's row for such an XCom may still be read (``include_prior_dates``).
5. ``damaged/`` blobs set aside before the horizon; then the backend's sweep (scratch files of dead
   processes, S3 multipart uploads never completed); then kept runs missing from the run index
   (recorded by a version before it) are added to it.

Ages are measured with this machine's clock against the times the store records (S3's are the
server's): a clock running ahead shortens the grace period by as much.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow_flowspec.datastore import artifacts, keys
from airflow_flowspec.datastore.backends.base import StorageBackend, StoredObject
from airflow_flowspec.datastore.store import EARLIEST, Datastore, moment_of
from airflow_flowspec.errors import ArtifactNotFoundError, GarbageCollectionError, UnsafeKeyError
from airflow_flowspec.terminal import terminal_safe

#: The longest a save relies on an earlier sign that an artifact is stored (see artifacts.py).
FRESHEN_INTERVAL = timedelta(seconds=artifacts.FRESHEN_INTERVAL_SECONDS)
#: The shortest grace period accepted (other than none at all, for a datastore where nothing runs).
MIN_GRACE = 2 * FRESHEN_INTERVAL
DEFAULT_GRACE = timedelta(days=1)
#: Progress is reported every this many objects examined.
PROGRESS_EVERY = 5000
_DELETE_BATCH = 1000
#: Unreferenced blobs found are deleted once this many seconds passed since the first was listed.
_SWEEP_FLUSH_SECONDS = 1.0
_PARALLEL_READS = 16
_DAMAGED_NAME = re.compile(r"(?P<hash>[0-9a-f]+)\.(?P<stamp>\d{8}T\d{6}Z)\.[0-9a-f]+")


def format_age(value: timedelta) -> str:
    """An age the way ``--older-than`` and ``--grace`` take it: ``30d``, ``2h``, ``90s``."""
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _spoken(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds % size == 0 or unit == "second":
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    raise AssertionError("unreachable")


SAFETY_RULE = (
    f"Safety rule: gc deletes a stored artifact only if nothing kept references it (no manifest, task "
    f"spec or step result of a kept run, no kept run's record) AND it was last written, or last "
    f"re-confirmed by a save that found it already stored, longer ago than the grace period (--grace, "
    f"default {_spoken(DEFAULT_GRACE)}). A save that finds an artifact already stored renews it when its "
    f"last write is older than {_spoken(FRESHEN_INTERVAL / 2)}, and a process forgets what it saw stored "
    f"after {_spoken(FRESHEN_INTERVAL / 2)}; so a task that writes its manifest within the grace period "
    f"minus {_spoken(FRESHEN_INTERVAL)} of saving never loses an artifact. A grace period shorter than "
    f"{_spoken(MIN_GRACE)} is refused; --grace 0 is only for a datastore where nothing is running."
)


@dataclass
class GcResult:
    """What a gc deleted (or, with ``dry_run``, would delete) and what it kept."""

    dry_run: bool
    #: Run ids deleted per flow, newest first; flows with nothing deleted are absent.
    runs_deleted: dict[str, list[str]] = field(default_factory=dict)
    #: Runs kept per flow examined.
    runs_kept: dict[str, int] = field(default_factory=dict)
    blobs_deleted: int = 0
    blob_bytes_freed: int = 0
    #: Blobs left in ``data/``: referenced by a kept run, or younger than the grace period.
    blobs_kept: int = 0
    #: (DAG id, run id) of the ordinary tasks' XCom folders deleted.
    xcom_runs_deleted: list[tuple[str, str]] = field(default_factory=list)
    damaged_deleted: int = 0
    #: Kept runs recorded before the run index existed, added to it.
    runs_indexed: int = 0
    #: Everything deleted: blobs, runs' files and index entries, XComs, damaged blobs.
    bytes_freed: int = 0

    def summary(self) -> str:
        """The report printed by ``airflow-flowspec gc``: one line per flow, then the totals."""
        verb = "Would delete" if self.dry_run else "Deleted"
        lines = []
        for flow in sorted(self.runs_kept.keys() | self.runs_deleted.keys()):
            gone = self.runs_deleted.get(flow, [])
            kept = self.runs_kept.get(flow, 0)
            # Names come from folder names, which a run id with a newline would split into two lines.
            shown = ", ".join(map(terminal_safe, gone[:10])) + (
                f" and {len(gone) - 10} more" if len(gone) > 10 else ""
            )
            lines.append(
                f"{terminal_safe(flow)}: {verb.lower()} {_count(len(gone), 'run')}"
                + (f" ({shown})" if gone else "")
                + f", kept {_count(kept, 'run')}."
            )
        lines.append(
            f"{verb} {_count(self.blobs_deleted, 'artifact blob')} "
            f"({format_size(self.blob_bytes_freed)}) that "
            f"no kept run references, kept {_count(self.blobs_kept, 'blob')}; {verb.lower()} "
            f"{_count(len(self.xcom_runs_deleted), 'XCom folder')} of ordinary tasks and "
            f"{_count(self.damaged_deleted, 'damaged blob')}."
        )
        if self.runs_indexed:
            lines.append(f"Added {_count(self.runs_indexed, 'run')} recorded before the run index to it.")
        freed = "would be freed" if self.dry_run else "freed"
        lines.append(
            f"{format_size(self.bytes_freed)} {freed} in all."
            + (" Nothing was deleted (--dry-run)." if self.dry_run else "")
        )
        return "\n".join(lines)


def collect_garbage(
    datastore: Datastore,
    *,
    older_than: timedelta,
    keep_last: int = 0,
    flow: str | None = None,
    grace: timedelta = DEFAULT_GRACE,
    dry_run: bool = False,
    now: float | None = None,
    progress: Callable[[str], None] | None = None,
    xcom_older_than: timedelta | None = None,
) -> GcResult:
    """Delete runs that started before ``now - older_than`` (with the exceptions in the module
    docstring), then what no kept run references; only ``flow``'s runs when given (every flow's
    kept runs still count as references). ``now`` (seconds since the epoch) is the moment every age
    is measured from; ``progress`` receives a line every :data:`PROGRESS_EVERY` objects examined.
    ``xcom_older_than`` also deletes other DAGs' pickled XComs that old (see the module docstring).
    """
    if older_than < timedelta(0):
        raise GarbageCollectionError(f"--older-than must not be negative, got {older_than}.")
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0:
        raise GarbageCollectionError(f"--keep-last must be a whole number from 0 up, got {keep_last!r}.")
    if grace != timedelta(0) and grace < MIN_GRACE:
        raise GarbageCollectionError(
            f"A grace period of {format_age(grace)} is too short: a task that has just found an artifact "
            f"already stored may rely on a sign up to {format_age(FRESHEN_INTERVAL)} old, so gc could delete "
            f"an artifact a running flow is about to reference. Use --grace {format_age(MIN_GRACE)} or more "
            f"(the default is {format_age(DEFAULT_GRACE)}), or --grace 0 only when no flow is running."
        )
    collector = _Collector(datastore, older_than, keep_last, flow, grace, dry_run, now, progress)
    if xcom_older_than is not None:
        collector.xcom_horizon = collector.now - xcom_older_than.total_seconds()
    return collector.run()


@dataclass
class _RunFolder:
    """One run as found under ``<flow>/runs/``."""

    run_id: str
    prefix: str
    newest: float = 0.0  # last write of any of its objects
    newest_work: float = 0.0  # last write of any object but status.json
    status_written: float = 0.0  # last write of status.json
    objects: int = 0
    size: int = 0
    has_record: bool = False
    record_unreadable: bool = False  # run.json is there but is not JSON
    has_status: bool = False
    documents: list[str] = field(default_factory=list)  # keys of its attempts' manifests, specs, results
    record: dict[str, Any] | None = None
    status: dict[str, Any] | None = None
    started: float = 0.0  # created_at, or ``newest`` for a run without a readable record

    @property
    def succeeded(self) -> bool:
        return self.status is not None and self.status.get("status") == "succeeded"


@dataclass
class _Flow:
    name: str
    runs: list[_RunFolder]
    gone: list[_RunFolder] = field(default_factory=list)
    kept: list[_RunFolder] = field(default_factory=list)


_INVALID = object()


class _Collector:
    def __init__(
        self,
        datastore: Datastore,
        older_than: timedelta,
        keep_last: int,
        flow: str | None,
        grace: timedelta,
        dry_run: bool,
        now: float | None,
        progress: Callable[[str], None] | None,
    ):
        self.datastore = datastore
        self.backend: StorageBackend = datastore.backend
        self.root = datastore.root
        self.keep_last = keep_last
        self.only_flow = flow
        self.dry_run = dry_run
        self.now = time.time() if now is None else now
        self.horizon = self.now - older_than.total_seconds()
        self.grace_cutoff = self.now - grace.total_seconds()
        self.xcom_horizon: float | None = None  # ordinary DAGs' XComs are deleted by age only if set
        self.progress = progress
        self.examined = 0
        self.result = GcResult(dry_run=dry_run)

    def run(self) -> GcResult:
        flows = [_Flow(name, self._survey_runs(name)) for name in self._flow_names()]
        for flow in flows:
            self._decide(flow)
        marked = self._mark(run for flow in flows for run in flow.kept)
        for flow in flows:
            if flow.gone:
                self._delete_runs(flow)
            if flow.name == self.only_flow or self.only_flow is None:
                self.result.runs_kept[flow.name] = len(flow.kept)
        self._sweep_blobs(marked)
        self._sweep_xcoms(flows)
        self._sweep_damaged()
        if not self.dry_run:
            self.backend.sweep()
            for flow in flows:  # runs recorded before the run index existed join it
                if flow.kept and (self.only_flow is None or flow.name == self.only_flow):
                    self.result.runs_indexed += self.datastore.reindex(flow.name)
        return self.result

    # -- which runs go ---------------------------------------------------------------------------

    def _flow_names(self) -> list[str]:
        folders, _ = self.backend.list_dir("")
        names = []
        for folder in folders:
            name = _name_of(folder)
            if name is not None and folder not in keys.NOT_FLOW_FOLDERS:
                names.append(name)
        if self.only_flow is not None and self.only_flow not in names:
            raise GarbageCollectionError(
                f"Flow {self.only_flow!r} has no runs in the datastore {self.root}, so there is nothing of "
                f"it to collect. Flows here: {', '.join(sorted(names)) or 'none'}."
            )
        return sorted(names)

    def _survey_runs(self, flow: str) -> list[_RunFolder]:
        """Every run folder of the flow in one listing (runs are contiguous in key order), then the
        records and statuses read in parallel."""
        prefix = keys.runs_prefix(flow)
        runs: list[_RunFolder] = []
        current: _RunFolder | None = None
        for stored in self.backend.iter_objects(prefix):
            self._tick(f"runs of {flow}")
            folder, _, inner = stored.key[len(prefix) :].partition("/")
            if not inner:
                continue  # a stray file beside the run folders
            if current is None or current.prefix != f"{prefix}{folder}/":
                run_id = _name_of(folder)
                if run_id is None:
                    current = None
                    continue
                current = _RunFolder(run_id, f"{prefix}{folder}/")
                runs.append(current)
            current.objects += 1
            current.size += stored.size
            current.newest = max(current.newest, stored.modified)
            if inner == keys.RUN_STATUS_FILE:
                current.status_written = stored.modified
            else:
                current.newest_work = max(current.newest_work, stored.modified)
            parts = inner.split("/")
            if inner == keys.RUN_META_FILE:
                current.has_record = True
            elif inner == keys.RUN_STATUS_FILE:
                current.has_status = True
            elif len(parts) == 4 and parts[3] in keys.RESERVED_ATTEMPT_FILES:
                current.documents.append(stored.key)
        records = [run.prefix + keys.RUN_META_FILE for run in runs if run.has_record]
        statuses = [run.prefix + keys.RUN_STATUS_FILE for run in runs if run.has_status]
        read = dict(self._read_documents(records + statuses))
        for run in runs:
            record = read.get(run.prefix + keys.RUN_META_FILE)
            status = read.get(run.prefix + keys.RUN_STATUS_FILE)
            run.record = record if isinstance(record, dict) else None
            run.record_unreadable = run.has_record and record is _INVALID
            run.status = status if isinstance(status, dict) else None
            started = moment_of(run.record.get("created_at")) if run.record else None
            run.started = run.newest if started in (None, EARLIEST) else started.timestamp()
        return runs

    def _decide(self, flow: _Flow) -> None:
        if self.only_flow is not None and flow.name != self.only_flow:
            flow.kept = list(flow.runs)  # not collected, but what they reference is kept
            return
        recorded = sorted(
            (run for run in flow.runs if run.record is not None),
            key=lambda run: (run.started, run.run_id),
            reverse=True,
        )
        keep = {id(run) for run in recorded[: self.keep_last]}
        namespaces_seen: set[str | None] = set()
        for run in recorded:
            if not run.succeeded:
                continue
            assert run.record is not None
            tags = run.record.get("system_tags")
            namespaces = (
                [None, *(tag for tag in tags if isinstance(tag, str))] if isinstance(tags, list) else [None]
            )
            if not namespaces_seen.issuperset(namespaces):
                keep.add(id(run))  # the latest successful run of at least one namespace
                namespaces_seen.update(namespaces)
        still_running = min(self.horizon, self.grace_cutoff)  # written since then: not finished, not dead
        for run in flow.runs:
            if (
                id(run) in keep
                or run.started >= self.horizon
                # written to recently without an outcome after it: running, or a failed run being
                # resumed (clearing a failed task re-runs it; the failure's status.json stays)
                or (
                    run.newest >= still_running
                    and (not run.has_status or run.newest_work > run.status_written)
                )
            ):
                flow.kept.append(run)
            else:
                flow.gone.append(run)
        flow.gone.sort(key=lambda run: (run.started, run.run_id), reverse=True)

    # -- what kept runs reference ----------------------------------------------------------------

    def _mark(self, kept: Iterable[_RunFolder]) -> set[str]:
        marked: set[str] = set()
        documents: list[str] = []
        for run in kept:
            if run.record_unreadable:
                self._unreadable(run.prefix + keys.RUN_META_FILE, "run")
            if run.record is not None:
                _collect_hashes(run.record, marked)
            documents.extend(run.documents)
        for key, document in self._read_documents(documents):
            if document is _INVALID:
                self._unreadable(key, "task attempt")
            if document is not None:
                _collect_hashes(document, marked)
        return marked

    def _unreadable(self, key: str, what: str) -> None:
        raise GarbageCollectionError(
            f"{self.backend.describe(key)} is not valid JSON, so which artifacts its {what} needs cannot be "
            f"known; gc stopped before deleting anything. That {what} cannot be used as it is: delete the "
            f"file (or run it again), then run gc again."
        )

    def _read_documents(self, document_keys: list[str]) -> Iterator[tuple[str, Any]]:
        """(key, parsed JSON) for each key, read in parallel: None when the object is gone,
        :data:`_INVALID` when it is not JSON."""

        def read(key: str) -> tuple[str, Any]:
            try:
                data = self.backend.get_bytes(key)
            except ArtifactNotFoundError:
                return key, None
            try:
                return key, json.loads(data)
            except ValueError:
                return key, _INVALID

        if len(document_keys) <= 1:
            results: Iterable[tuple[str, Any]] = map(read, document_keys)
            yield from results
            return
        with ThreadPoolExecutor(max_workers=min(_PARALLEL_READS, len(document_keys))) as pool:
            for key, document in pool.map(read, document_keys):
                self._tick("records and manifests")
                yield key, document

    # -- deleting --------------------------------------------------------------------------------

    def _delete_runs(self, flow: _Flow) -> None:
        gone_ids = {run.run_id for run in flow.gone}
        index = keys.flow_prefix(flow.name) + "index/"
        entries = []
        for stored in self.backend.iter_objects(index):
            self._tick(f"run index of {flow.name}")
            parts = stored.key[len(index) :].split("/")
            if len(parts) != 4:
                continue
            list_prefix = index + f"{parts[0]}/{parts[1]}/"
            if keys.parse_run_index_key(list_prefix, stored.key) in gone_ids:
                entries.append(stored)
        self._delete(entries)
        for run in flow.gone:
            if self.dry_run:
                self.result.bytes_freed += run.size
            else:
                stored = list(self.backend.iter_objects(run.prefix))
                last = {run.prefix + keys.RUN_META_FILE, run.prefix + keys.RUN_STATUS_FILE}
                self._delete([obj for obj in stored if obj.key not in last])
                self._delete([obj for obj in stored if obj.key in last])
                self._prune_local_folders(run.prefix, up_to=keys.runs_prefix(flow.name))
        for entry in entries:
            stamp_folder = entry.key.rpartition("/")[0] + "/"
            self._prune_local_folders(stamp_folder, up_to=stamp_folder)
        if not flow.kept:  # no run left: the flow goes, its index marker too (on S3 as locally)
            marker = keys.run_index_complete_key(flow.name)
            size = self.backend.stored_size(marker)
            if size is not None:
                self._delete([StoredObject(marker, size, self.now)])
            self._prune_local_folders(keys.flow_prefix(flow.name), up_to="")
        self.result.runs_deleted[flow.name] = [run.run_id for run in flow.gone]

    def _delete(self, objects: list[StoredObject]) -> None:
        """Delete (unless a dry run) and count, in batches."""
        for start in range(0, len(objects), _DELETE_BATCH):
            batch = objects[start : start + _DELETE_BATCH]
            if not self.dry_run:
                self.backend.delete_many([obj.key for obj in batch])
            self.result.bytes_freed += sum(obj.size for obj in batch)

    def _sweep_blobs(self, marked: set[str]) -> None:
        candidates: list[StoredObject] = []
        listed_at = 0.0
        for stored in self.backend.iter_objects("data/"):
            self._tick("data/")
            blob_hash = stored.key.rpartition("/")[2]
            if not keys.is_blob_hash(blob_hash) or keys.blob_key(blob_hash) != stored.key:
                continue  # not a blob the datastore wrote: not ours to judge
            if blob_hash in marked or stored.modified >= self.grace_cutoff:
                self.result.blobs_kept += 1
                continue
            if not candidates:
                listed_at = time.monotonic()
            candidates.append(stored)
            if len(candidates) >= _DELETE_BATCH or time.monotonic() - listed_at > _SWEEP_FLUSH_SECONDS:
                self._delete_blobs(candidates)
                candidates = []
        self._delete_blobs(candidates)

    def _delete_blobs(self, blobs: list[StoredObject]) -> None:
        self._delete(blobs)
        self.result.blobs_deleted += len(blobs)
        self.result.blob_bytes_freed += sum(blob.size for blob in blobs)

    def _sweep_xcoms(self, flows: list[_Flow]) -> None:
        gone: set[tuple[str, str]] = set()
        for flow in flows:
            for run in flow.gone:
                context = (run.record or {}).get("context")
                dag_id = context.get("dag_id") if isinstance(context, dict) else None
                gone.add((flow.name, run.run_id))
                if isinstance(dag_id, str):
                    gone.add((dag_id, run.run_id))
        kept_run_ids = {run.run_id for flow in flows for run in flow.kept}
        for prefix, objects in self._xcom_folders():
            dag_id, run_id = map(_name_of, prefix[len(keys.XCOM_PREFIX) :].split("/")[:2])
            if dag_id is None or run_id is None:
                continue
            if (dag_id, run_id) in gone or (
                self.only_flow is None
                and self.xcom_horizon is not None
                and run_id not in kept_run_ids
                and all(obj.modified < self.xcom_horizon for obj in objects)
            ):
                self._delete(objects)
                self.result.xcom_runs_deleted.append((dag_id, run_id))
                self._prune_local_folders(prefix, up_to=prefix)

    def _xcom_folders(self) -> Iterator[tuple[str, list[StoredObject]]]:
        """(``_xcom/<dag>/<run>/``, its objects) for each such folder, from one listing: a folder's
        keys are contiguous in key order."""
        prefix: str | None = None
        objects: list[StoredObject] = []
        for stored in self.backend.iter_objects(keys.XCOM_PREFIX):
            self._tick("_xcom/")
            parts = stored.key[len(keys.XCOM_PREFIX) :].split("/")
            if len(parts) < 3:
                continue  # not inside a run's folder: not an XCom this package wrote
            folder = f"{keys.XCOM_PREFIX}{parts[0]}/{parts[1]}/"
            if folder != prefix:
                if prefix is not None:
                    yield prefix, objects
                prefix, objects = folder, []
            objects.append(stored)
        if prefix is not None:
            yield prefix, objects

    def _sweep_damaged(self) -> None:
        aside = []
        for stored in self.backend.iter_objects(keys.DAMAGED_PREFIX):
            self._tick("damaged/")
            match = _DAMAGED_NAME.fullmatch(stored.key[len(keys.DAMAGED_PREFIX) :])
            moved = stored.modified
            if match:  # a local move keeps the blob's own modification time; the name says when it moved
                stamp = datetime.strptime(match["stamp"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
                moved = max(moved, stamp.timestamp())
            if moved < self.horizon:
                aside.append(stored)
        self._delete(aside)
        self.result.damaged_deleted += len(aside)

    def _prune_local_folders(self, prefix: str, *, up_to: str) -> None:
        """Remove the folders under ``prefix`` that deletions emptied, then its emptied parents up to
        ``up_to`` (excluded; ``""`` is the root): on S3 a folder is only a prefix and vanishes with its
        last object, and a local listing must agree. Folders other writers share (a flow's ``runs/``,
        an index list) are left unless the flow has no run left: a writer creates its folder and then
        renames its file into it, and must not find the folder gone in between."""
        if self.dry_run or not self.backend.is_local:
            return
        for path, _, _ in os.walk(self.backend.describe(prefix), topdown=False):
            _remove_if_empty(path)
        folder, stop = self.backend.describe(prefix), self.backend.describe(up_to)
        while folder != stop and folder.startswith(stop + os.sep) and not os.path.isdir(folder):
            folder = os.path.dirname(folder)
            if folder == stop or not _remove_if_empty(folder):
                break

    def _tick(self, where: str) -> None:
        self.examined += 1
        if self.progress is not None and self.examined % PROGRESS_EVERY == 0:
            self.progress(f"gc: {self.examined} objects examined so far (now in {where})")


def _name_of(folder: str) -> str | None:
    """The name (flow, run id, DAG id) a folder made by the datastore stands for; None for a folder
    it did not make (hidden, or not as :func:`~.keys.safe_key_part` writes it): not gc's to judge."""
    try:
        name = keys.decode_key_part(folder)
        return name if keys.safe_key_part(name) == folder else None
    except (UnicodeDecodeError, UnsafeKeyError):
        return None


def _remove_if_empty(path: str) -> bool:
    try:
        os.rmdir(path)
    except OSError:
        return False  # not empty (or already gone): a folder something still uses
    return True


def _collect_hashes(document: Any, marked: set[str]) -> None:
    """Every ``hash`` and ``pack`` of the artifact references anywhere in a JSON document."""
    pending = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            for name, item in value.items():
                if name in ("hash", "pack") and keys.is_blob_hash(item):
                    marked.add(item)
                elif isinstance(item, (dict, list)):
                    pending.append(item)
        elif isinstance(value, list):
            pending.extend(item for item in value if isinstance(item, (dict, list)))


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def format_size(size: int) -> str:
    """Bytes as a person reads them: 512 bytes, 3.4 KB, 12.0 MB."""
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
