"""The datastore façade the runtime and the client use: runs, tasks, manifests and artifacts.

It is the only place that knows what the files mean; :mod:`.keys` knows where they are and the
backends know how to move bytes. Nothing here needs Airflow: a task in an AWS Batch container and
a notebook reading results use the same class.

Which runs are newest is answered by the run index (see :mod:`.keys`): one entry per run, written
once, ordered by the run's number (:meth:`Datastore.number_run`, taken before its start step runs),
then, for a record that states no number, by its ``created_at`` (set when
:meth:`Datastore.write_run_meta` is first called, unless the caller gives one as an ISO-8601
string). A late-finishing old run or a backfill therefore never passes for newer than a run that
started after it, runs started in the same microsecond still have an order, and runs started at
the same time by different processes never overwrite each other's entries.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow_flowspec.datastore import keys
from airflow_flowspec.datastore.artifacts import ArtifactStore
from airflow_flowspec.datastore.backends import StorageBackend, backend_for_root
from airflow_flowspec.datastore.format_marker import FormatGuard
from airflow_flowspec.datastore.keys import AttemptKey
from airflow_flowspec.datastore.manifest import Manifest
from airflow_flowspec.datastore.run_records import checked_run_record
from airflow_flowspec.datastore.xcoms import XComStore
from airflow_flowspec.errors import (
    ArtifactNotFoundError,
    DatastoreError,
    RunIdentityError,
    UnreadableRecordError,
    UnsafeKeyError,
)
from airflow_flowspec.identity import MAX_RUN_NUMBER, RunIdentity

EARLIEST = datetime.min.replace(tzinfo=timezone.utc)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class Datastore:
    """One datastore root: ``s3://bucket/prefix`` or a local folder."""

    def __init__(self, root: str):
        self.root = root
        self.backend: StorageBackend = backend_for_root(root)
        self.artifacts = ArtifactStore(self.backend)
        #: The root's format marker: checked before the first read of a reader, written (or
        #: checked) before the first write.
        self.format = FormatGuard(self.backend)
        #: The XComs of ordinary Airflow tasks (pickled values, chunked lists) in this root.
        self.xcoms = XComStore(self.backend, self.format)

    def __repr__(self) -> str:
        return f"Datastore({self.root!r})"

    # -- task attempts ---------------------------------------------------------------------------

    def write_manifest(self, manifest: Manifest) -> None:
        """Write a task attempt's manifest, atomically.

        Call it after every artifact and attempt file is stored: a manifest's presence is the
        signal that the attempt's outputs are complete.
        """
        self._write_json(keys.manifest_key(manifest.attempt), manifest.to_json())

    def read_manifest(self, attempt: AttemptKey) -> Manifest:
        document = self._read_json(
            keys.manifest_key(attempt),
            missing=f"{attempt.describe().capitalize()} has no manifest: the attempt has not finished, "
            f"or failed before storing its results",
        )
        return Manifest.from_json(document, where=f"Reading the manifest of {attempt.describe()}")

    def latest_attempt_manifest(self, flow: str, run_id: str, step: str, task_id: str) -> Manifest | None:
        """The manifest of the highest-numbered attempt that wrote one, or None.

        One listing plus one read in the usual case; an attempt that died before its manifest
        costs one more read.
        """
        folders, _ = self.backend.list_dir(keys.task_prefix(flow, run_id, step, task_id))
        attempts = sorted(
            (number for number in map(keys.parse_attempt_folder, folders) if number is not None), reverse=True
        )
        for attempt in attempts:
            try:
                return self.read_manifest(AttemptKey(flow, run_id, step, str(task_id), attempt))
            except ArtifactNotFoundError:
                continue
        return None

    def write_attempt_file(self, attempt: AttemptKey, name: str, data: bytes) -> None:
        """Store a file beside a task attempt's manifest (logs, a traceback, a card...)."""
        self.write_attempt_files(attempt, {name: data})

    def write_attempt_files(self, attempt: AttemptKey, files: dict[str, bytes]) -> None:
        """Store several files beside a task attempt's manifest (in parallel where the medium can)."""
        self.format.claim()
        reserved = sorted(set(files) & keys.RESERVED_ATTEMPT_FILES)
        if reserved:
            raise UnsafeKeyError(
                f"{', '.join(repr(name) for name in reserved)} is reserved for the datastore's own use: use "
                f"write_manifest(), write_task_spec() or write_step_result()."
            )
        self.backend.put_many_bytes(
            {keys.attempt_file_key(attempt, name): (data, None) for name, data in files.items()}
        )

    def read_attempt_file(self, attempt: AttemptKey, name: str) -> bytes:
        return self.backend.get_bytes(keys.attempt_file_key(attempt, name))

    # -- a step run by another process: its spec in, its result out ------------------------------

    def write_task_spec(self, attempt: AttemptKey, spec: dict[str, Any]) -> str:
        """Store a task's spec for a step process (an AWS Batch job); return its key."""
        key = keys.task_spec_key(attempt)
        self._write_json(key, spec)
        return key

    def read_task_spec(self, key: str) -> dict[str, Any]:
        return self._read_json(key, missing="No task spec is stored there")

    def write_step_result(self, attempt: AttemptKey, result: dict[str, Any]) -> None:
        """Leave what the step process produced for the process that publishes it to Airflow."""
        self._write_json(keys.step_result_key(attempt), result)

    def read_step_result(self, attempt: AttemptKey) -> dict[str, Any]:
        return self._read_json(
            keys.step_result_key(attempt),
            missing=f"{attempt.describe().capitalize()} left no result: the step process did not finish",
        )

    # -- runs ------------------------------------------------------------------------------------

    def write_run_meta(
        self, flow: str, run_id: str, meta: dict[str, Any], *, identity: RunIdentity | None = None
    ) -> dict[str, Any]:
        """Record the run (the start step does, once its artifacts are stored); return the record.

        A retry of the start step keeps the first record's ``created_at``. The run becomes the
        flow's latest only with :meth:`index_run`, after the start step's manifest: a
        start step killed on the way leaves the pointer where it was.

        ``identity`` (the run's :class:`RunIdentity`) is recorded with it, and a record already
        there for another identity is never overwritten: :class:`RunIdentityError` instead.
        ``meta["number"]`` is the run's number (:meth:`number_run`); a rewrite without one keeps
        the number recorded before.
        """
        record = {**meta, "flow": flow, "run_id": run_id}
        if identity is not None:
            if (identity.flow, identity.run_id) != (flow, run_id):
                raise RunIdentityError(f"Run {flow}/{run_id} cannot be recorded as {identity.pathspec}.")
            record["identity"] = identity.to_json()
        try:
            earlier: dict[str, Any] | None = self.read_run_meta(flow, run_id)
        except ArtifactNotFoundError:
            earlier = None
        if earlier is not None and identity is not None:
            self._check_same_run(earlier, identity)
        if "created_at" not in record:
            created_at = (earlier or {}).get("created_at")
            record["created_at"] = created_at if isinstance(created_at, str) else _now()
        if record_number(record) is None:  # a run's number never changes once recorded
            record.pop("number", None)
            if earlier is not None and record_number(earlier) is not None:
                record["number"] = record_number(earlier)
        self._write_json(keys.run_meta_key(flow, run_id), record)
        return record

    def number_run(self, identity: RunIdentity) -> int:
        """The run's number (its short id, ``TrainFlow/12``): the one it was given, else the next
        one of its flow, taken now.

        Called before the run's start step runs (by ``python flow.py run`` before Airflow runs it,
        else by the start step), so numbers follow the order runs started. A number is taken by
        creating its object only if absent: a racing run takes the next one. The run's
        ``number.json``, created the same way, settles which of the numbers its racing attempts
        took is its own (a number left unused is never given again).
        """
        self.format.claim()
        flow, run_id = identity.flow, identity.run_id
        claim_key = keys.run_number_claim_key(flow, run_id)
        given = self._given_number(claim_key)
        if given is not None:
            return given
        claim = json.dumps({"flow": flow, "run_id": run_id}).encode()
        number = self.highest_run_number(flow) + 1
        while True:
            if number > MAX_RUN_NUMBER:
                raise DatastoreError(f"Flow {flow} has used every run number up to {MAX_RUN_NUMBER}.")
            number_key = keys.run_number_key(flow, number)
            if self.backend.put_if_absent(number_key, claim) or self._claimed_by(number_key, claim):
                break
            number += 1
        mine = json.dumps({"number": number, **identity.to_json()}).encode()
        if self.backend.put_if_absent(claim_key, mine):
            return number
        for _ in range(50):  # a racing attempt's file, on a file system where it is written in place
            given = self._given_number(claim_key)
            if given is not None:
                return given
            time.sleep(0.02)
        raise DatastoreError(
            f"{self.backend.describe(claim_key)} cannot be read as run {identity.pathspec}'s number: delete "
            f"it (the run then takes a number anew) and run the start step again."
        )

    def _given_number(self, claim_key: str) -> int | None:
        try:
            document = self._read_json(claim_key, missing="")
        except (ArtifactNotFoundError, UnreadableRecordError):
            return None
        number = document.get("number")
        return number if isinstance(number, int) and not isinstance(number, bool) and number > 0 else None

    def _claimed_by(self, number_key: str, claim: bytes) -> bool:
        """Whether the number is taken by this very claim (an S3 request retried after it had
        succeeded finds its own object there)."""
        try:
            return bytes(self.backend.get_bytes(number_key)) == claim
        except ArtifactNotFoundError:
            return False

    def highest_run_number(self, flow: str) -> int:
        """The highest run number ``flow`` ever gave (0 for none): the first key of one listing."""
        for stored in self.backend.iter_objects(keys.run_numbers_prefix(flow), page_size=1):
            number = keys.parse_run_number_key(flow, stored.key)
            if number is not None:
                return number
        return 0

    def run_of_number(self, flow: str, number: int) -> str | None:
        """The stored id of run number ``number`` of ``flow``, None when no run has it (never
        given, not the run's own among numbers it raced for, or the run was deleted)."""
        try:
            claim = self._read_json(keys.run_number_key(flow, number), missing="")
        except (ArtifactNotFoundError, UnreadableRecordError):
            return None
        run_id = claim.get("run_id")
        if not isinstance(run_id, str) or claim.get("flow") != flow:
            return None
        try:
            given = self._given_number(keys.run_number_claim_key(flow, run_id))
        except UnsafeKeyError:
            return None
        return run_id if given == number else None

    def check_run_identity(self, identity: RunIdentity) -> None:
        """Refuse (:class:`RunIdentityError`) to store ``identity``'s run where another run is
        recorded: called before a run's start step writes anything."""
        try:
            record = self.read_run_meta(identity.flow, identity.run_id)
        except ArtifactNotFoundError:
            return
        self._check_same_run(record, identity)

    def _check_same_run(self, record: dict[str, Any], identity: RunIdentity) -> None:
        try:
            recorded: RunIdentity | None = RunIdentity.of_record(identity.flow, identity.run_id, record)
        except RunIdentityError:
            recorded = None
        if recorded == identity:
            return
        other = (
            f"a run of the DAG {recorded.dag_id} (Airflow run {recorded.airflow_run_id})"
            if recorded is not None
            else "a run whose record states no identity this version reads"
        )
        raise RunIdentityError(
            f"Run {identity.airflow_run_id} of the DAG {identity.dag_id} would be stored as "
            f"{identity.pathspec}, where {other} is recorded "
            f"({self.backend.describe(keys.run_meta_key(identity.flow, identity.run_id))}); nothing of it "
            f"was written. Trigger it with another run id."
        )

    def index_run(self, flow: str, run_id: str, record: dict[str, Any]) -> None:
        """Add the run to the flow's index of started runs, making it the latest unless a run that
        started later is already there (``record`` is what :meth:`write_run_meta` returned).

        Called once the start step's manifest is written: a start step killed on the way leaves
        the index as it was.
        """
        self._add_to_index(flow, run_id, record, keys.RUNS_STARTED)

    def replace_run_tags(self, flow: str, run_id: str, remove: list[str], add: list[str]) -> dict[str, Any]:
        """Remove some tags from the run's latest record and add others (one read, one atomic
        rewrite); return the record."""
        record = self.read_run_meta(flow, run_id)
        kept = [tag for tag in record.get("tags", []) if tag not in set(remove)]
        record["tags"] = kept + sorted(set(add) - set(kept))
        self._write_json(keys.run_meta_key(flow, run_id), record)
        return record

    def repin_run_code(self, flow: str, run_id: str, code: dict[str, Any]) -> None:
        """Make ``code`` what the run's retried and cleared tasks run (``airflow-flowspec repin``);
        the codes it ran before stay in ``code_history``, so gc keeps them for its finished tasks."""
        record = self.read_run_meta(flow, run_id)
        history = [*record.get("code_history", []), record["code"]] if record.get("code") else []
        self._write_json(keys.run_meta_key(flow, run_id), {**record, "code": code, "code_history": history})

    def read_run_meta(self, flow: str, run_id: str) -> dict[str, Any]:
        record = self._read_json(
            keys.run_meta_key(flow, run_id),
            missing=f"Run {run_id} of flow {flow} has no run metadata: it never started with this datastore",
        )
        return checked_run_record(record, self.backend.describe(keys.run_meta_key(flow, run_id)))

    def finish_run(
        self,
        flow: str,
        run_id: str,
        succeeded: bool,
        meta: dict[str, Any],
        *,
        ended_at: datetime | None = None,
    ) -> None:
        """Record how a run ended; a successful run joins the index of successful runs.

        ``ended_at`` is when the run ended, if that was before now: Airflow calls a DAG's failure
        callback late, from another process, and by then a user may have cleared the failed task
        and the rerun may have succeeded. A failure that ended before a recorded success is older
        news and leaves the success as it is.
        """
        finished_at = _now() if ended_at is None else _iso(ended_at)
        if not succeeded:
            recorded = self.run_status(flow, run_id)
            if (
                recorded is not None
                and recorded.get("status") == "succeeded"
                and moment_of(recorded.get("finished_at")) > moment_of(finished_at)
            ):
                return
        status = {**meta, "flow": flow, "run_id": run_id, "finished_at": finished_at}
        status["status"] = "succeeded" if succeeded else "failed"
        self._write_json(keys.run_status_key(flow, run_id), status)
        if succeeded:
            try:
                record = self.read_run_meta(flow, run_id)
            except ArtifactNotFoundError:
                record = {"created_at": finished_at}
            # The started entries again (the same keys: a no-op where the start step wrote them),
            # so a run whose start was recorded some other way is never successful yet unlisted.
            self._add_to_index(flow, run_id, record, keys.RUNS_STARTED, keys.RUNS_SUCCEEDED)

    def run_status(self, flow: str, run_id: str) -> dict[str, Any] | None:
        """The run's ``status.json``, or None while it has not finished."""
        try:
            return self._read_json(keys.run_status_key(flow, run_id), missing="")
        except ArtifactNotFoundError:
            return None

    def latest_run(self, flow: str, *, namespace: str | None = None) -> str | None:
        """The run that started last (with the system tag ``namespace``, if given), or None."""
        return next(self.indexed_runs(flow, namespace=namespace, page_size=1), None)

    def latest_successful_run(self, flow: str, *, namespace: str | None = None) -> str | None:
        return next(self.indexed_runs(flow, successful=True, namespace=namespace, page_size=1), None)

    def indexed_runs(
        self, flow: str, *, successful: bool = False, namespace: str | None = None, page_size: int = 100
    ) -> Iterator[str]:
        """Run ids from the index, newest first, read a page at a time as the caller goes on.

        ``namespace`` is a system tag (``user:ana``, ``production:TrainFlow``, ``project:x``...);
        only system tags are indexed.
        """
        prefix = keys.run_index_prefix(
            flow, keys.RUNS_SUCCEEDED if successful else keys.RUNS_STARTED, namespace
        )
        seen: set[str] = set()
        for stored in self.backend.iter_objects(prefix, page_size=page_size):
            run_id = keys.parse_run_index_key(prefix, stored.key)
            if run_id is not None and run_id not in seen:
                seen.add(run_id)
                yield run_id

    def _add_to_index(self, flow: str, run_id: str, record: dict[str, Any], *lists: str) -> None:
        self.format.claim()
        started = moment_of(record.get("created_at"))
        micros = (started - _EPOCH) // timedelta(microseconds=1)
        number = record_number(record)
        entry = json.dumps({"run_id": run_id, "created_at": record.get("created_at"), "number": number})
        namespaces = [None, *sorted(set(record.get("system_tags") or ()))]
        self.backend.put_many_bytes(
            {
                keys.run_index_key(flow, which, tag, micros, run_id, number): (entry.encode(), None)
                for which in lists
                for tag in namespaces
            }
        )

    # -- listings (one delimited listing each) ---------------------------------------------------

    def list_runs(self, flow: str) -> list[str]:
        """Run ids of ``flow``, sorted by name (use :meth:`latest_run` for recency)."""
        return self._list_folders(keys.runs_prefix(flow))

    def list_steps(self, flow: str, run_id: str) -> list[str]:
        """The steps that ran (a step's name never starts with ``_``: the run's own folders do)."""
        folders = self._list_folders(keys.run_prefix(flow, run_id))
        return [name for name in folders if not name.startswith("_")]

    def list_tasks(self, flow: str, run_id: str, step: str) -> list[str]:
        return self._list_folders(keys.step_prefix(flow, run_id, step))

    def list_attempts(self, flow: str, run_id: str, step: str, task_id: str | int) -> list[int]:
        folders, _ = self.backend.list_dir(keys.task_prefix(flow, run_id, step, task_id))
        return sorted(number for number in map(keys.parse_attempt_folder, folders) if number is not None)

    def _list_folders(self, prefix: str) -> list[str]:
        folders, _ = self.backend.list_dir(prefix)
        return sorted(keys.decode_key_part(folder) for folder in folders)

    # -- JSON files ------------------------------------------------------------------------------

    def _write_json(self, key: str, document: dict[str, Any]) -> None:
        self.format.claim()
        try:
            text = json.dumps(document, indent=2, default=_json_default)
        except (TypeError, ValueError) as error:
            raise DatastoreError(
                f"Could not write {self.backend.describe(key)}: {error}. Store only JSON values "
                f"(str, numbers, lists, dicts, artifact references) in manifests and run metadata."
            ) from error
        self.backend.put_bytes(key, text.encode())

    def _read_json(self, key: str, *, missing: str) -> dict[str, Any]:
        try:
            data = self.backend.get_bytes(key)
        except ArtifactNotFoundError as error:
            raise ArtifactNotFoundError(
                f"{missing} (no object under key '{key}' at {self.backend.describe(key)})."
            ) from error
        try:
            document = json.loads(data)
        except ValueError as error:
            raise UnreadableRecordError(
                f"{self.backend.describe(key)} is not valid JSON: {error}."
            ) from error
        if not isinstance(document, dict):
            raise UnreadableRecordError(
                f"{self.backend.describe(key)} holds {type(document).__name__}, not a JSON object."
            )
        return document


def record_number(record: dict[str, Any]) -> int | None:
    """The run number a run record states, None for a record that states none."""
    number = record.get("number")
    if isinstance(number, int) and not isinstance(number, bool) and 0 < number <= MAX_RUN_NUMBER:
        return number
    return None


def _now() -> str:
    return _iso(datetime.now(timezone.utc))


def _iso(moment: datetime) -> str:
    """``moment`` as the datastore records times: ISO-8601 in UTC, to the microsecond."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def moment_of(value: Any) -> datetime:
    """An ISO-8601 time as recorded (``created_at``...), in UTC when it names no zone; the earliest
    moment for anything unreadable, so it sorts before every real one."""
    if not isinstance(value, str):
        return EARLIEST
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return EARLIEST
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _json_default(value: Any) -> Any:
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} {value!r:.60} is not JSON serializable")


_open_datastores: dict[str, Datastore] = {}
_swept_roots: set[str] = set()
_open_datastores_lock = threading.Lock()


def open_datastore(root: str, *, sweep: bool = True) -> Datastore:
    """The process-wide :class:`Datastore` for ``root``, so every task in a process shares one
    backend (and one S3 client with its connection pool).

    Opening a root the first time in a process marks it as this version's format (or refuses it,
    :class:`DatastoreFormatError`, if it is marked as another) and sweeps what killed processes left
    behind (scratch files; stale multipart uploads on S3). A sweep that fails does not stop the
    task. Readers (the client) pass ``sweep=False``: a notebook with read-only credentials has
    nothing to clean and should not spend a request trying; its root's marker is only read.
    """
    with _open_datastores_lock:
        datastore = _open_datastores.get(root)
        if datastore is None:
            datastore = _open_datastores[root] = Datastore(root)
        if sweep:
            datastore.format.claim()
        else:
            datastore.format.check()
        if sweep and root not in _swept_roots:
            _swept_roots.add(root)
            try:
                datastore.backend.sweep()
            except (DatastoreError, OSError):
                pass
        return datastore
