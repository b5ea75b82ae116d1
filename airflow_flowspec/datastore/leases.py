"""Leases: how a running task tells ``airflow-flowspec gc`` that its run is in use, and how a task
learns that gc has taken its run away.

Nothing is written while a step computes, so the age of a run's files says nothing about whether
it is running: a day-long training step looks like a run abandoned a day ago. A task therefore holds
a lease while it works with the datastore: an object in its run's ``_leases/`` folder, named after
the moment it was taken and rewritten every :data:`RENEW_SECONDS`. gc counts a run with a lease
renewed within :data:`LEASE_SECONDS` as running, whatever its age, and waits for every task that
held a lease when it took blobs out of ``data/`` to end before it deletes them for good
(see :mod:`.gc`). A task killed outright leaves its lease behind; it goes stale and stops counting.

A task and gc must never both go ahead on one run: gc deletes a run only after writing its
deletion mark (``deleting.json``) and then finding no live lease, and nothing written since it
decided; a task goes ahead only after writing its lease and then finding no deletion mark (and,
past its start step, the run's record). Each writes first and reads second, so at least one of them
sees the other (the datastore's reads see every write that finished before them): gc spares the run,
or the task stops before it reads or writes anything of it, with
:class:`~airflow_flowspec.errors.RunDeletedError`. A task that ended before the mark, its lease
released, is seen by what it wrote.

A task whose lease could not be renewed for longer than gc waits (the datastore unreachable, the
process frozen) stops before writing its manifest, with
:class:`~airflow_flowspec.errors.LeaseLostError`: gc may have counted it gone. A retry starts afresh.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

from airflow_flowspec.datastore import keys
from airflow_flowspec.errors import ArtifactNotFoundError, DatastoreError, LeaseLostError, RunDeletedError
from airflow_flowspec.identity import RunIdentity

#: A lease not renewed for this long is stale: its holder is gone (gc's view of "running").
LEASE_SECONDS = 600.0
#: How often a holder renews its lease.
RENEW_SECONDS = 60.0
#: How long a task waits for gc to finish deciding about its run before it gives up on it.
WAIT_FOR_GC_SECONDS = 30.0
_POLL_SECONDS = 0.5


class Lease:
    """A task's lease on its run, held inside ``with``: taken (and the run checked) on entry,
    renewed by a thread, released on exit.

    ``holder`` says who holds it (``task``, ``step``, ``trigger``, ``repin``), for people reading
    the datastore. ``needs_record``: the run must already be recorded (every step but a new run's
    start), so a run deleted while nothing of it ran is reported as deleted.
    """

    def __init__(self, datastore: Any, run: RunIdentity, *, holder: str, needs_record: bool = False):
        self.datastore = datastore
        self.run = run
        self.holder = holder
        self.needs_record = needs_record
        self.key = ""
        self._token = secrets.token_hex(8)
        self._started = datetime.now(timezone.utc)
        self._renewed_at = 0.0  # time.monotonic() of the last write that succeeded
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- taking and releasing ------------------------------------------------------------------

    def __enter__(self) -> Lease:
        started_us = int(self._started.timestamp() * 1_000_000)
        self.key = keys.run_lease_key(self.run.flow, self.run.run_id, started_us, self._token)
        taken = time.monotonic()
        self._write()
        # What this process saw stored before now may since have been taken out of data/ by gc,
        # and gc waits only for leases older than that: this task confirms it again (artifacts.py).
        self.datastore.artifacts.trust_confirmations_since(taken)
        try:
            self._check_run()
        except BaseException:
            self._release()
            raise
        self._thread = threading.Thread(target=self._renew_until_released, name="flowspec-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._release()

    def _release(self) -> None:
        backend = self.datastore.backend
        try:
            backend.delete_many([self.key])
        except (DatastoreError, OSError):
            return  # a lease left behind goes stale; gc stops counting it
        if backend.is_local:  # on S3 a folder goes with its last object; locally it must be removed
            flow, run_id = self.run.flow, self.run.run_id
            for prefix in (keys.run_leases_prefix(flow, run_id), keys.run_prefix(flow, run_id)):
                try:
                    os.rmdir(backend.describe(prefix))
                except OSError:
                    break  # not empty: others' leases, or the run's files

    # -- renewing ------------------------------------------------------------------------------

    def _write(self) -> None:
        document = {
            "run": self.run.pathspec,
            "holder": self.holder,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "taken_at": self._started.isoformat(),
            "renewed_at": datetime.now(timezone.utc).isoformat(),
        }
        self.datastore.backend.put_bytes(self.key, json.dumps(document).encode())
        self._renewed_at = time.monotonic()

    def _renew_until_released(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            try:
                self._write()
            except (DatastoreError, OSError):
                pass  # tried again next time; check() stops the task before it is too late

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if the lease may have gone stale (call it before writing
        what gc must see while the task holds it, such as the manifest)."""
        unrenewed = time.monotonic() - self._renewed_at
        if unrenewed > LEASE_SECONDS - RENEW_SECONDS:
            raise LeaseLostError(
                f"Task of run {self.run.pathspec} could not renew its lease ({self.key}) for "
                f"{unrenewed:.0f} seconds, longer than airflow-flowspec gc waits for a running task "
                f"({LEASE_SECONDS:.0f} s): gc may have taken what it was about to reference. Nothing "
                f"of its results was written; the task can be run again."
            )

    # -- the run must still be there -----------------------------------------------------------

    def _check_run(self) -> None:
        flow, run_id = self.run.flow, self.run.run_id
        backend = self.datastore.backend
        mark = keys.run_deletion_key(flow, run_id)
        waited_until = time.monotonic() + WAIT_FOR_GC_SECONDS
        while backend.exists(mark):
            # gc decides within a listing of the run: it removes the mark when it spares the run.
            if time.monotonic() > waited_until:
                raise RunDeletedError(
                    f"Run {self.run.pathspec} (Airflow run {self.run.airflow_run_id} of the DAG "
                    f"{self.run.dag_id}) is being deleted by airflow-flowspec gc ({backend.describe(mark)}), "
                    f"so this task cannot run on it. Start a new run. (If no gc is running, a gc was "
                    f"stopped half-way: run airflow-flowspec gc again to finish or undo it.)"
                )
            time.sleep(_POLL_SECONDS)
        if self.needs_record and not backend.exists(keys.run_meta_key(flow, run_id)):
            raise RunDeletedError(
                f"Run {self.run.pathspec} (Airflow run {self.run.airflow_run_id} of the DAG "
                f"{self.run.dag_id}) has no record in the datastore {self.datastore.root}: airflow-flowspec "
                f"gc deleted it (or its start never finished). This task cannot run on it; start a new run."
            )


def read_lease_document(datastore: Any, key: str) -> dict[str, Any] | None:
    """A lease's document (for people and tests), None if it is gone or unreadable."""
    try:
        return json.loads(datastore.backend.get_bytes(key))
    except (ArtifactNotFoundError, ValueError):
        return None
