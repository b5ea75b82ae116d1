"""Garbage collection (``airflow-flowspec gc``): the only way a datastore shrinks, because Airflow
never deletes what flows store.

Which runs go, per flow: those that started (``created_at`` in run.json) longer ago than the
horizon (``--older-than``), except

* the ``--keep-last`` newest runs (by number; a record without one by its start);
* the latest successful run, overall and in each system namespace (``user:...``,
  ``production:...``), because other flows read it by that name;
* a running run: one of its tasks holds a live lease (:mod:`.leases`: renewed within
  :data:`~.leases.LEASE_SECONDS`, however long the step has been computing); or Airflow, where gc
  can ask it, has its DAG run queued or running (a failed task cleared and waiting for a worker);
  or it wrote something more recently than the horizon or the grace period without an outcome after
  it (between two tasks of a run, when Airflow cannot be asked).

A run whose start never wrote run.json is judged by when its folder was last written.

A run goes only after gc wrote its deletion mark (``deleting.json``) and then found in it no live
lease and nothing written since it decided: a task writes its lease and then looks for that mark, so
a task that starts just then either keeps the run or stops before touching it (:mod:`.leases`), and
one that started and ended between gc's decision and its mark keeps it by what it wrote.

Artifacts (blobs and packs under ``data/``) go in two steps, so that no save can rely on one just
as it is deleted. A gc takes out of ``data/`` (into a trash round, ``_gc/trash/<round>/``) what
nothing kept references and what was last written, or last re-confirmed by a save that found it
already stored, longer ago than the grace period; a save never finds a blob there, and a reader that
misses one in ``data/`` finds it in the trash (or, moved back meanwhile, in ``data/`` again). A
later gc deletes a round's blobs for good only once every task that held a lease when the round was
closed has ended (its manifest then is among what that gc read) and only those blobs still nothing
kept references; the others go back to ``data/``.
So a task that found a blob stored, or a manifest that names one, never loses it.

The order is what makes every step safe to interrupt (a gc killed half-way is finished by the next):

1. Decide, and read what every kept run references: each attempt's manifest, task spec and step
   result, and the run's record (it names the code the run started with). A document that cannot be
   read stops gc before it deleted anything, since what it references is unknown.
2. Delete gone runs: the deletion mark, a last look at the run (its leases, and whether a task wrote
   into it since gc decided), its index entries and its number (so the client stops offering it),
   then its files, run.json and status.json last (a half-deleted run is still recognisably a run),
   the mark very last. The flow's highest number stays taken, whichever run had it, so that a
   number is never given to another run.
3. Empty the trash rounds of earlier gcs that no live lease holds back; then take this gc's
   unreferenced blobs out of ``data/`` into a new round, closed once every one of them is out.
4. Pickled XComs of ordinary tasks (``_xcom/<dag>/<run>/``): those of a run deleted here (the DAG
   and Airflow run id its identity names); and, only when asked (``--xcom-older-than``) and every
   flow is collected, those whose objects are all older than that and that no kept run's DAG run
   owns. Not by default: Airflow's row for such an XCom may still be read (``include_prior_dates``).
5. ``damaged/`` blobs set aside before the horizon; then the backend's sweep (scratch files of dead
   processes, S3 multipart uploads never completed).

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

from airflow_flowspec.datastore import artifacts, keys, leases
from airflow_flowspec.datastore.backends.base import StorageBackend, StoredObject
from airflow_flowspec.datastore.store import EARLIEST, Datastore, moment_of, record_number
from airflow_flowspec.errors import (
    ArtifactNotFoundError,
    GarbageCollectionError,
    RunIdentityError,
    UnsafeKeyError,
)
from airflow_flowspec.identity import RunIdentity
from airflow_flowspec.terminal import terminal_safe

#: The longest a save relies on an earlier sign that an artifact is stored (see artifacts.py).
FRESHEN_INTERVAL = timedelta(seconds=artifacts.FRESHEN_INTERVAL_SECONDS)
#: The shortest grace period accepted (other than none at all, for a datastore where nothing runs):
#: between two tasks of a run nothing holds a lease, and a queue can keep the next one waiting.
MIN_GRACE = 2 * FRESHEN_INTERVAL
DEFAULT_GRACE = timedelta(days=1)
#: How far apart this machine's clock and the clocks that named leases may be: a trash round waits
#: for leases taken up to this long after it was closed too.
CLOCK_MARGIN_SECONDS = 300.0
#: Progress is reported every this many objects examined.
PROGRESS_EVERY = 5000
_DELETE_BATCH = 1000
_PARALLEL_READS = 16
_DAMAGED_NAME = re.compile(r"(?P<hash>[0-9a-f]+)\.(?P<stamp>\d{8}T\d{6}Z)\.[0-9a-f]+")
#: Whether Airflow has a DAG run queued or running: ``(dag_id, airflow_run_id) -> bool``.
AirflowRunActive = Callable[[str, str], bool]


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
    f"Safety rule: gc deletes a run only when none of its tasks holds a live lease (renewed "
    f"within {_spoken(timedelta(seconds=leases.LEASE_SECONDS))}: a running step renews it every "
    f"minute, however long it computes), Airflow (where gc can ask it) does not have its DAG run "
    f"queued or running, and it wrote nothing for longer than the grace period (--grace, default "
    f"{_spoken(DEFAULT_GRACE)}) without an outcome after it; a task that starts as gc deletes its "
    f"run stops before touching it. gc deletes an artifact in two steps: it moves what no kept run "
    f"references and what was last written, or re-confirmed by a save, longer ago than the grace "
    f"period to the trash, where readers still find it; a later gc deletes it only if still nothing "
    f"kept references it and every task that was running when it was moved has ended. A grace "
    f"period shorter than {_spoken(MIN_GRACE)} is refused; --grace 0 is only for a datastore where "
    f"nothing is running."
)


@dataclass
class GcResult:
    """What a gc deleted (or, with ``dry_run``, would delete) and what it kept."""

    dry_run: bool
    #: Run ids deleted per flow, newest first; flows with nothing deleted are absent.
    runs_deleted: dict[str, list[str]] = field(default_factory=dict)
    #: Runs kept per flow examined.
    runs_kept: dict[str, int] = field(default_factory=dict)
    #: Runs that were to go but whose task took a lease, or whose DAG run Airflow had queued or
    #: running, as gc came to delete them.
    runs_spared: dict[str, list[str]] = field(default_factory=dict)
    #: Blobs this gc moved out of ``data/`` into its trash round (deleted by a later gc).
    blobs_trashed: int = 0
    blob_bytes_trashed: int = 0
    #: Blobs of earlier gcs' trash rounds deleted for good, and moved back because a kept run
    #: came to reference them.
    blobs_deleted: int = 0
    blob_bytes_freed: int = 0
    blobs_restored: int = 0
    #: Trash rounds left for a later gc, because a task running when they were closed still runs.
    trash_rounds_waiting: int = 0
    #: Blobs left in ``data/``: referenced by a kept run, or younger than the grace period.
    blobs_kept: int = 0
    #: (DAG id, run id) of the ordinary tasks' XCom folders deleted.
    xcom_runs_deleted: list[tuple[str, str]] = field(default_factory=list)
    damaged_deleted: int = 0
    #: Everything deleted: blobs, runs' files and index entries, XComs, damaged blobs.
    bytes_freed: int = 0
    #: How Airflow's run states were consulted: "" (not asked), or a line saying what happened.
    airflow: str = ""

    def summary(self) -> str:
        """The report printed by ``airflow-flowspec gc``: one line per flow, then the totals."""
        verb = "Would delete" if self.dry_run else "Deleted"
        lines = []
        for flow in sorted(self.runs_kept.keys() | self.runs_deleted.keys()):
            gone = self.runs_deleted.get(flow, [])
            kept = self.runs_kept.get(flow, 0)
            spared = self.runs_spared.get(flow, [])
            lines.append(
                f"{terminal_safe(flow)}: {verb.lower()} {_count(len(gone), 'run')}"
                + (f" ({_first_ten(gone)})" if gone else "")
                + f", kept {_count(kept, 'run')}"
                + (f" (running as gc came to them: {_first_ten(spared)})" if spared else "")
                + "."
            )
        move = "Would move" if self.dry_run else "Moved"
        lines.append(
            f"{move} {_count(self.blobs_trashed, 'artifact blob')} ({format_size(self.blob_bytes_trashed)}) "
            f"that no kept run references to the trash (a later gc deletes them), kept "
            f"{_count(self.blobs_kept, 'blob')}; {verb.lower()} {_count(self.blobs_deleted, 'blob')} "
            f"({format_size(self.blob_bytes_freed)}) trashed by earlier gcs"
            + (
                f" and moved {_count(self.blobs_restored, 'blob')} back into use"
                if self.blobs_restored
                else ""
            )
            + (
                f"; {_count(self.trash_rounds_waiting, 'trash round')} waiting for tasks that were "
                f"running when it was filled"
                if self.trash_rounds_waiting
                else ""
            )
            + f"; {verb.lower()} {_count(len(self.xcom_runs_deleted), 'XCom folder')} of ordinary tasks "
            f"and {_count(self.damaged_deleted, 'damaged blob')}."
        )
        if self.airflow:
            lines.append(self.airflow)
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
    airflow_run_active: AirflowRunActive | None = None,
) -> GcResult:
    """Delete runs that started before ``now - older_than`` (with the exceptions in the module
    docstring), then what no kept run references; only ``flow``'s runs when given (every flow's
    kept runs still count as references). ``now`` (seconds since the epoch) is the moment every age
    is measured from; ``progress`` receives a line every :data:`PROGRESS_EVERY` objects examined.
    ``xcom_older_than`` also deletes other DAGs' pickled XComs that old (see the module docstring).
    ``airflow_run_active`` says whether Airflow has a DAG run queued or running (asked for each run
    about to go, and again as it is deleted); without it, runs between two tasks are judged by time.
    """
    if older_than < timedelta(0):
        raise GarbageCollectionError(f"--older-than must not be negative, got {older_than}.")
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0:
        raise GarbageCollectionError(f"--keep-last must be a whole number from 0 up, got {keep_last!r}.")
    if grace != timedelta(0) and grace < MIN_GRACE:
        raise GarbageCollectionError(
            f"A grace period of {format_age(grace)} is too short: between two tasks of a run (a task "
            f"waiting in a queue) nothing holds a lease, and where Airflow cannot be asked only the "
            f"grace period tells such a run from an abandoned one; the same period spares artifacts "
            f"just saved. Use --grace {format_age(MIN_GRACE)} or more (the default is "
            f"{format_age(DEFAULT_GRACE)}), or --grace 0 only when no flow is running."
        )
    datastore.format.check()  # another format's files mean other things: delete nothing of them
    collector = _Collector(datastore, older_than, keep_last, flow, grace, dry_run, now, progress)
    collector.airflow_run_active = airflow_run_active
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
    #: Its objects but the leases and gc's mark, by number and bytes (with ``newest``, what gc
    #: decided on: a last look that finds them changed finds a task that ran since).
    work_objects: int = 0
    work_size: int = 0
    has_record: bool = False
    record_unreadable: bool = False  # run.json is there but is not JSON
    has_status: bool = False
    marked_for_deletion: bool = False  # an earlier gc wrote deleting.json and did not finish
    documents: list[str] = field(default_factory=list)  # keys of its attempts' manifests, specs, results
    #: (when taken, last renewed) of each lease, in seconds since the epoch.
    leases: list[tuple[float, float]] = field(default_factory=list)
    record: dict[str, Any] | None = None
    status: dict[str, Any] | None = None
    started: float = 0.0  # created_at, or ``newest`` for a run without a readable record
    identity: RunIdentity | None = None

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
        self.airflow_run_active: AirflowRunActive | None = None
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
                self._delete_runs(flow, marked)
            if flow.name == self.only_flow or self.only_flow is None:
                self.result.runs_kept[flow.name] = len(flow.kept)
        held = [lease for flow in flows for run in flow.runs for lease in run.leases]
        self._empty_trash(marked, self._live_lease_starts(held))
        self._trash_blobs(marked)
        self._sweep_xcoms(flows)
        self._sweep_damaged()
        if not self.dry_run:
            self.backend.sweep()
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
            _note_object(current, inner, stored)
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
            run.identity = _identity_of(flow, run)
        return runs

    def _decide(self, flow: _Flow) -> None:
        if self.only_flow is not None and flow.name != self.only_flow:
            flow.kept = list(flow.runs)  # not collected, but what they reference is kept
            return
        recorded = sorted((run for run in flow.runs if run.record is not None), key=_recency, reverse=True)
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
                or self._has_live_lease(run, self.now)
                # written to recently without an outcome after it: between two tasks, or a failed
                # run being resumed (clearing a failed task re-runs it; the failure's status stays)
                or (
                    run.newest >= still_running
                    and (not run.has_status or run.newest_work > run.status_written)
                )
                or self._airflow_runs(run)
            ):
                flow.kept.append(run)
            else:
                flow.gone.append(run)
        flow.gone.sort(key=lambda run: (run.started, run.run_id), reverse=True)

    @staticmethod
    def _has_live_lease(run: _RunFolder, now: float) -> bool:
        return any(renewed >= now - leases.LEASE_SECONDS for _, renewed in run.leases)

    def _airflow_runs(self, run: _RunFolder) -> bool:
        """Whether Airflow has the run's DAG run queued or running (False where it is not asked)."""
        if self.airflow_run_active is None or run.identity is None:
            return False
        return self.airflow_run_active(run.identity.dag_id, run.identity.airflow_run_id)

    def _live_lease_starts(self, held: list[tuple[float, float]]) -> list[float]:
        return [taken for taken, renewed in held if renewed >= self.now - leases.LEASE_SECONDS]

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

    # -- deleting runs ---------------------------------------------------------------------------

    def _delete_runs(self, flow: _Flow, marked: set[str]) -> None:
        """Delete the flow's gone runs, each only after its deletion mark and a last look at its
        leases (and at Airflow); a run found running then is kept, and what it references marked."""
        deleting: list[tuple[_RunFolder, list[StoredObject]]] = []
        for run in flow.gone:
            if self.dry_run:
                self.result.bytes_freed += run.size
                deleting.append((run, []))
                continue
            stored, spared = self._last_look(run)
            if spared:
                flow.kept.append(run)
                self.result.runs_spared.setdefault(flow.name, []).append(run.run_id)
                run.documents = [obj.key for obj in stored if _is_document(obj.key[len(run.prefix) :])]
                marked.update(self._mark([run]))  # as it is now: a task's manifest written since counts
            else:
                deleting.append((run, stored))
        flow.gone = [run for run, _ in deleting]
        self._delete_index_entries(flow)
        self._delete_numbers(flow)
        for run, stored in deleting:
            if self.dry_run:
                continue
            mark = run.prefix + keys.RUN_DELETION_FILE
            last = {run.prefix + keys.RUN_META_FILE, run.prefix + keys.RUN_STATUS_FILE}
            self._delete([obj for obj in stored if obj.key not in last and obj.key != mark])
            self._delete([obj for obj in stored if obj.key in last])
            self.backend.delete_many([mark])
            self._prune_local_folders(run.prefix, up_to=keys.runs_prefix(flow.name))
        for run in flow.kept:
            if run.marked_for_deletion and not self.dry_run:  # a gc stopped before it decided
                self.backend.delete_many([run.prefix + keys.RUN_DELETION_FILE])
        if not flow.kept:  # no run left: the flow's emptied folders go (on S3 with their objects)
            self._prune_local_folders(keys.flow_prefix(flow.name), up_to="")
        self.result.runs_deleted[flow.name] = [run.run_id for run in flow.gone]

    def _last_look(self, run: _RunFolder) -> tuple[list[StoredObject], bool]:
        """Write the run's deletion mark, then look at it once more: its objects as they are now,
        and whether it is spared (the mark removed again) because a task holds a live lease on it by
        now, a task wrote into it since gc decided, or Airflow runs it. A task writes its lease and
        then looks for the mark, so every lease taken before is seen; a task that started and ended
        before the mark left no lease, but its results."""
        mark = run.prefix + keys.RUN_DELETION_FILE
        self.backend.put_bytes(mark, json.dumps({"by": "airflow-flowspec gc", "at": time.time()}).encode())
        stored = list(self.backend.iter_objects(run.prefix))
        now = _RunFolder(run.run_id, run.prefix)
        for obj in stored:
            _note_object(now, obj.key[len(run.prefix) :], obj)
        if (
            self._has_live_lease(now, max(self.now, time.time()))
            or _written_since(run, now)
            or self._airflow_runs(run)
        ):
            self.backend.delete_many([mark])
            return stored, True
        return stored, False

    def _delete_index_entries(self, flow: _Flow) -> None:
        """The gone runs' run index entries, first, so the client stops offering them (one listing)."""
        gone_ids = {run.run_id for run in flow.gone}
        if not gone_ids:
            return
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
        for entry in entries:
            stamp_folder = entry.key.rpartition("/")[0] + "/"
            self._prune_local_folders(stamp_folder, up_to=stamp_folder)

    def _delete_numbers(self, flow: _Flow) -> None:
        """The gone runs' numbers (``numbers/<n>``: what their record and their ``number.json``
        say), but the flow's highest, which stays taken so that no later run is given it again."""
        if not flow.gone:
            return
        numbers: set[int] = set()
        claims = [keys.run_number_claim_key(flow.name, run.run_id) for run in flow.gone]
        for _, claim in self._read_documents(claims):
            if isinstance(claim, dict):
                numbers.add(record_number(claim) or 0)
        numbers.update(record_number(run.record or {}) or 0 for run in flow.gone)
        numbers -= {0, self.datastore.highest_run_number(flow.name)}
        number_keys = [keys.run_number_key(flow.name, number) for number in sorted(numbers)]
        self._delete([StoredObject(key, 0, self.now) for key in number_keys])

    def _delete(self, objects: list[StoredObject]) -> None:
        """Delete (unless a dry run) and count, in batches."""
        for start in range(0, len(objects), _DELETE_BATCH):
            batch = objects[start : start + _DELETE_BATCH]
            if not self.dry_run:
                self.backend.delete_many([obj.key for obj in batch])
            self.result.bytes_freed += sum(obj.size for obj in batch)

    # -- artifacts: the trash --------------------------------------------------------------------

    def _empty_trash(self, marked: set[str], live_lease_starts: list[float]) -> None:
        """Delete the blobs of earlier gcs' trash rounds for good, or move them back into ``data/``
        when a kept run references them, once no task that was running when a round was closed
        still runs. A round without its closing file (a gc stopped while filling it) is closed now
        and emptied by a later gc."""
        rounds, _ = self.backend.list_dir(keys.TRASH_PREFIX)
        for round_name in sorted(name for name in rounds if keys.is_trash_round(name)):
            prefix = keys.trash_round_prefix(round_name)
            entries = [obj for obj in self.backend.iter_objects(prefix)]
            closing = next(
                (obj for obj in entries if obj.key == prefix + keys.TRASH_ROUND_COMPLETE_FILE), None
            )
            if closing is None:
                if not self.dry_run:
                    self._close_round(prefix)
                self.result.trash_rounds_waiting += 1
                continue
            if any(taken <= closing.modified + CLOCK_MARGIN_SECONDS for taken in live_lease_starts):
                self.result.trash_rounds_waiting += 1
                continue
            blobs = [obj for obj in entries if obj is not closing]
            doomed = []
            for obj in blobs:
                self._tick("trash")
                blob_hash = obj.key.rpartition("/")[2]
                if blob_hash in marked and keys.is_blob_hash(blob_hash):
                    if not self.dry_run:
                        self._restore(obj.key, blob_hash)
                    self.result.blobs_restored += 1
                else:
                    doomed.append(obj)
            self._delete(doomed)
            self.result.blobs_deleted += len(doomed)
            self.result.blob_bytes_freed += sum(obj.size for obj in doomed)
            if not self.dry_run:
                self.backend.delete_many([closing.key])
                self._prune_local_folders(prefix, up_to=keys.TRASH_PREFIX)

    def _restore(self, trashed: str, blob_hash: str) -> None:
        if self.backend.exists(keys.blob_key(blob_hash)):
            self.backend.delete_many([trashed])  # saved anew since: the copy in data/ is as good
        else:
            self.backend.move(trashed, keys.blob_key(blob_hash))

    def _close_round(self, prefix: str) -> None:
        closing = json.dumps({"closed_at": datetime.now(timezone.utc).isoformat()}).encode()
        self.backend.put_bytes(prefix + keys.TRASH_ROUND_COMPLETE_FILE, closing)

    def _trash_blobs(self, marked: set[str]) -> None:
        """Move the blobs in ``data/`` that no kept run references and that are older than the grace
        period into a new trash round, then close it."""
        candidates: list[StoredObject] = []
        for stored in self.backend.iter_objects("data/"):
            self._tick("data/")
            blob_hash = stored.key.rpartition("/")[2]
            if not keys.is_blob_hash(blob_hash) or keys.blob_key(blob_hash) != stored.key:
                continue  # not a blob the datastore wrote: not ours to judge
            if blob_hash in marked or stored.modified >= self.grace_cutoff:
                self.result.blobs_kept += 1
            else:
                candidates.append(stored)
        self.result.blobs_trashed += len(candidates)
        self.result.blob_bytes_trashed += sum(blob.size for blob in candidates)
        if self.dry_run or not candidates:
            return
        prefix = keys.trash_round_prefix(round_name := keys.new_trash_round())

        def move(blob: StoredObject) -> None:
            try:
                self.backend.move(blob.key, keys.trash_key(round_name, blob.key.rpartition("/")[2]))
            except ArtifactNotFoundError:
                pass  # set aside as damaged meanwhile

        with ThreadPoolExecutor(max_workers=_PARALLEL_READS) as pool:
            for _ in pool.map(move, candidates):
                self._tick("data/ into the trash")
        self._close_round(prefix)

    # -- XComs, damaged blobs --------------------------------------------------------------------

    def _sweep_xcoms(self, flows: list[_Flow]) -> None:
        gone = {_xcom_run(run) for flow in flows for run in flow.gone} - {None}
        kept = {_xcom_run(run) for flow in flows for run in flow.kept} - {None}
        for prefix, objects in self._xcom_folders():
            dag_id, run_id = map(_name_of, prefix[len(keys.XCOM_PREFIX) :].split("/")[:2])
            if dag_id is None or run_id is None:
                continue
            if (dag_id, run_id) in gone or (
                self.only_flow is None
                and self.xcom_horizon is not None
                and (dag_id, run_id) not in kept
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


def _recency(run: _RunFolder) -> tuple[Any, ...]:
    """Sorts runs by when they started: by number, after records without one (by start)."""
    number = record_number(run.record or {})
    return (1, number, 0.0, "") if number is not None else (0, 0, run.started, run.run_id)


def _note_object(run: _RunFolder, inner: str, stored: StoredObject) -> None:
    """Count one object of a run's folder (``inner``: its key inside the folder) into ``run``.
    gc's deletion mark and the leases say nothing about when the run last wrote: the leases say
    whether it is running, by their own rule."""
    run.objects += 1
    run.size += stored.size
    parts = inner.split("/")
    if inner == keys.RUN_DELETION_FILE:
        run.marked_for_deletion = True
        return
    if len(parts) == 2 and parts[0] == keys.LEASES_FOLDER:
        taken_us = keys.parse_lease_name(parts[1])
        if taken_us is not None:
            run.leases.append((taken_us / 1_000_000, stored.modified))
        return
    run.work_objects += 1
    run.work_size += stored.size
    run.newest = max(run.newest, stored.modified)
    if inner == keys.RUN_STATUS_FILE:
        run.status_written = stored.modified
    else:
        run.newest_work = max(run.newest_work, stored.modified)
    if inner == keys.RUN_META_FILE:
        run.has_record = True
    elif inner == keys.RUN_STATUS_FILE:
        run.has_status = True
    elif _is_document(inner):
        run.documents.append(stored.key)


def _is_document(inner: str) -> bool:
    """Whether a run folder's object (``inner``: its key inside the folder) is an attempt's
    manifest, spec or result: JSON that names the blobs the attempt needs."""
    parts = inner.split("/")
    return len(parts) == 4 and parts[3] in keys.RESERVED_ATTEMPT_FILES


def _written_since(decided: _RunFolder, now: _RunFolder) -> bool:
    """Whether anything but a lease was written into the run between the listing gc decided on and
    ``now`` (its last look): a task that ran meanwhile, start to end."""
    return (now.work_objects, now.work_size, now.newest) != (
        decided.work_objects,
        decided.work_size,
        decided.newest,
    )


def _identity_of(flow: str, run: _RunFolder) -> RunIdentity | None:
    """The run's identity: as its record states it, else as its stored id says (None if neither can)."""
    try:
        return RunIdentity.of_record(flow, run.run_id, run.record or {})
    except RunIdentityError:
        return None


def _xcom_run(run: _RunFolder) -> tuple[str, str] | None:
    """The (DAG id, Airflow run id) whose XCom folder belongs to the run."""
    return None if run.identity is None else (run.identity.dag_id, run.identity.airflow_run_id)


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


def _first_ten(names: list[str]) -> str:
    return ", ".join(map(terminal_safe, names[:10])) + (
        f" and {len(names) - 10} more" if len(names) > 10 else ""
    )


def format_size(size: int) -> str:
    """Bytes as a person reads them: 512 bytes, 3.4 KB, 12.0 MB."""
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
