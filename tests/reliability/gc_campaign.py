"""The gc campaign: ``airflow-flowspec gc`` back to back while real flows write (issue 20, findings 1
and 2), local root or S3 root.

gc decides on listings and deletes later, and nothing a running step writes tells it how long the
step will still run. Here one thread runs gc pass after pass (``collect_garbage`` asking Airflow's
metadata database, as ``gc --airflow`` does) while flows write in others, and time is made to pass
between two passes (``tests/aging.py``). The flow (start, train, end) saves values derived from its
``seed`` parameter, so the checker recomputes every artifact. Tasks run in this process with the
step runtime, each with a datastore client of its own (a worker process) and holding its run's
lease as the operator does. Before the first round three runs fail (their train step), and each
round but the last leaves three more for the next:

* *time passes*: every run that finished in an earlier round, and the failed runs, are aged
  (started 60 days ago, last written 40: gc deletes them), new *pool* values are stored as a run gc
  deleted long ago leaves them (unreferenced), and every blob in ``data/`` is aged three days, past
  the grace period: each pass takes out of ``data/`` whatever no manifest references yet, the blobs
  of tasks still running too;
* *ordinary runs* save fresh values, and values of the earlier rounds' pool again;
* *long steps*: ``train`` computes for longer than a lease lives unrenewed (leases are scaled
  down to :data:`LEASE_SECONDS`, renewed every :data:`RENEW_SECONDS`), and until its run, aged
  meanwhile to look abandoned 40 days ago, has been judged by a whole gc pass;
* *racing saves* (finding 2): gc's deletes are slowed by ``delete_delay`` seconds (on S3 a
  ``before-send`` hook on the collector's client alone holds each DeleteObject, the second half of a
  move out of ``data/`` or out of the trash, as throttling does; locally the collector's moves wait
  as long). When gc starts taking one of this round's pool blobs out of ``data/``, a new run (a
  worker whose client is up) saves that value again: the save finds the blob still there, freshens
  it and relies on it, while gc's delete is held until it has (up to :data:`RACE_SECONDS` more).
  That task writes its manifest only after gc made a whole pass more (gc comes back to the trash
  round holding the blob while the task that relies on it runs), and its next steps read the blob
  from gc's trash. When a later pass moves the blob back into ``data/`` (the run's manifests name
  it), a reader loading it misses it in ``data/`` just before the move and learns so only after it
  (a slow read);
* *a cleared run* (on Airflow, ``dag.test()``): its train step fails; between two passes it is aged
  and its failed task cleared in Airflow (the DAG run is queued: only Airflow says it is about to
  run), a whole gc pass judges it, then it runs again to the end (``harness.clear_and_rerun``);
* *late re-runs*: two old failed runs whose task is re-run exactly as gc comes to delete them,
  after gc decided and before it writes its deletion mark, one still holding its lease at gc's last
  look, the other run to its end (lease released) before the mark: gc must spare both; and *a
  re-run too late*: one started after gc deleted its run, which must be refused, writing nothing.

gc's clock margin (:data:`CLOCK_MARGIN_SECONDS`: other machines' clocks; here one process, and S3
records times to the second) is scaled down with the leases. After the last round gc passes until
its trash is settled.

Checked: every artifact (and code package) of every run as it finished while gc ran, and at the
end of every run gc kept (of every step with a manifest, for a run that failed), must load through
a fresh client and equal what the step stored: *lost* or *wrong* otherwise. A run made to look old
may be deleted as soon as it finished: its checker holds a lease from before its last task until it
has read it. No task of a run gc was not meant to delete may fail, and gc may delete only runs that
finished, or failed, and were aged. Everything is counted in a :class:`GcReport`.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

HERE = Path(__file__).resolve().parent
FLOW_NAME = "GcCampaignFlow"
STEPS = ("start", "train", "end")
#: Leases scaled down (from 600 s, renewed every 60 s) so that a step outlives one: it must be
#: renewed. The renewal interval must stay above S3's time granularity (gc reads a lease's last
#: renewal from a listing, to the second) and the stalls of a loaded machine (a renewal here took up
#: to 7 s with moto in this process): a task stops if it could not renew for LEASE - RENEW seconds,
#: and gc must not count a lease stale before that.
LEASE_SECONDS = 10.0
RENEW_SECONDS = 2.0
#: gc's allowance for other machines' clocks, scaled down with the leases: one clock here, but S3
#: records times to the second.
CLOCK_MARGIN_SECONDS = 2.0
#: How long a long step computes at least: longer than a lease lives unrenewed.
LONG_STEP_SECONDS = LEASE_SECONDS + 2
#: Campaign sizes (``gc_campaign`` arguments): CI's, and the soak's (``FLOWSPEC_SOAK=1``, soak.py).
CI_SIZE = {"rounds": 1, "ordinary": 2, "long_steps": 1, "pool": 2, "cleared": 1, "delete_delay": 1.0}
SOAK_SIZE = {"rounds": 6, "ordinary": 4, "long_steps": 2, "pool": 3, "cleared": 1, "delete_delay": 3.0}
#: The longest gc's delete of a pool blob is held on, past ``delete_delay``, for its racing save.
RACE_SECONDS = 30.0
MONTH = timedelta(days=30)
DAY = 86400.0
USER = "gc-campaign"
#: The old failed runs each round re-runs: as gc comes to delete them (their task holding its lease
#: at gc's last look, or having ended before gc's mark), and after gc deleted them.
FAILED_KINDS = ("late", "late-ended", "too-late")

#: Shared by the flow file (which sets these artifacts) and the checker (which recomputes them).
#: Values over 64 KB are blobs of their own: the payload is different in every run, a pool value
#: the same in every run that saves it (one blob, content-addressed).
VALUES_SOURCE = """
import hashlib
import random


def pool_value(index):
    return random.Random(f"pool/{index}").randbytes(80 * 1024)


def pool_indices(pool):
    return [int(part) for part in pool.split(",") if part]


def start_values(seed, pool):
    words = [random.Random(f"{seed}/{i}").randbytes(4).hex() for i in range(20)]
    values = {
        "payload": random.Random(f"{seed}/payload").randbytes(96 * 1024),
        "small": {"seed": seed, "words": words},
    }
    for index in pool_indices(pool):
        values[f"pooled_{index}"] = pool_value(index)
    return values


def train_values(start):
    digest = hashlib.sha256()
    for name in sorted(start):
        digest.update(name.encode())
        digest.update(repr(start[name]).encode())
    return {"checksum": digest.hexdigest()}


def end_values(seed, checksum):
    return {"summary": f"{seed}:{checksum[:16]}"}
"""

FLOW_SOURCE = f"""
import os
import time

from airflow_flowspec import FlowSpec, Parameter, step

{VALUES_SOURCE}

class {FLOW_NAME}(FlowSpec):
    seed = Parameter("seed", default=0)
    pool = Parameter("pool", default="")
    sleep = Parameter("sleep", default=0.0)
    hold = Parameter("hold", default="")
    fixed = Parameter("fixed", default="")

    @step
    def start(self):
        for name, value in start_values(self.seed, self.pool).items():
            setattr(self, name, value)
        self.next(self.train)

    @step
    def train(self):
        began = time.time()  # computes for sleep seconds, and until the file hold names exists
        while self.hold and not os.path.exists(self.hold) and time.time() < began + 300:
            time.sleep(0.05)
        time.sleep(max(0.0, began + self.sleep - time.time()))
        if self.fixed and not os.path.exists(self.fixed):
            raise ValueError("not fixed yet")
        start = {{name: getattr(self, name) for name in start_values(self.seed, self.pool)}}
        for name, value in train_values(start).items():
            setattr(self, name, value)
        self.next(self.end)

    @step
    def end(self):
        for name, value in end_values(self.seed, self.checksum).items():
            setattr(self, name, value)
"""

_VALUES: dict[str, Any] = {}
exec(VALUES_SOURCE, _VALUES)  # noqa: S102 - our own constant, shared with the flow file


@dataclass
class GcReport:
    """What a campaign did and found. Lost, wrong, failed tasks and unexpected deletions must be 0."""

    backend: str
    root: str
    seed: int
    delete_delay: float
    lease_seconds: float = LEASE_SECONDS
    renew_seconds: float = RENEW_SECONDS
    rounds: int = 0
    runs_written: int = 0  # runs started, every kind below
    ordinary_runs: int = 0
    long_step_runs: int = 0
    long_steps_judged_while_computing: int = 0  # a whole gc pass ran on the aged run mid-step
    racing_runs: int = 0  # started as gc began taking a pool blob they save out of data/
    cleared_runs: int = 0  # on Airflow: failed, aged, cleared, run again
    cleared_runs_judged_while_queued: int = 0  # a whole gc pass ran while Airflow had it queued
    late_reruns: int = 0  # an old failed run's task re-run as gc came to delete the run
    late_reruns_ended_before_the_mark: int = 0  # ... that ended, its lease released, before gc's mark
    too_late_reruns: int = 0  # ... re-run after gc deleted the run
    runs_finished_during_gc: int = 0
    gc_passes: int = 0
    gc_failures: int = 0  # passes that raised: must be 0
    runs_deleted: int = 0
    runs_spared: int = 0  # at gc's last look
    blobs_trashed: int = 0
    blobs_deleted: int = 0
    blobs_restored: int = 0
    trash_rounds_waited: int = 0  # pass by pass: rounds left for later, a task of then still running
    trash_left_at_end: int = 0  # blobs still in the trash after the last pass
    slowed_deletes: int = 0  # the collector's DeleteObjects (S3) or moves (local), each held
    saves_relying_on_a_blob_gc_was_taking: int = 0  # confirmed between gc's listing and the delete
    slowed_deletes_overlapping_a_save: int = 0  # ... during the slowed delete itself
    reads_from_the_trash: int = 0  # artifacts a checker found in the trash, not in data/
    reads_racing_a_move_back: int = 0  # a racing run's blob read as gc moved it back into data/
    artifacts_checked: int = 0
    artifacts_lost: int = 0  # must be 0
    artifacts_wrong: int = 0  # must be 0
    tasks_failed_by_gc: int = 0  # a task of a run gc was not meant to delete: must be 0
    tasks_failed_otherwise: int = 0  # must be 0
    runs_deleted_unexpectedly: int = 0  # not finished and aged: must be 0
    tasks_refused_on_deleted_runs: int = 0  # the re-runs too late, refused as they must be
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def note(self, problem: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(problem[:600])


@dataclass
class _Plan:
    """One run the campaign starts, and what it became."""

    run_id: str
    kind: str  # ordinary, long, racing, cleared, or one of FAILED_KINDS
    seed: int
    pool: str = ""
    sleep: float = 0.0
    hold: str = ""
    fixed: str = ""
    finished: bool = False
    aged: bool = False  # made to look old: gc may delete it once finished
    start_manifest: dict[str, Any] | None = None  # of a run whose train step failed
    pool_hash: str = ""  # the pool blob a racing run raced gc for
    writer: Any = None  # the datastore client its start task uses (made ahead for a racing run)
    stage: str = ""  # the task it runs, or ran last (for messages)
    relied: threading.Event = field(default_factory=threading.Event)  # ... which a save relied on
    taken: threading.Event = field(default_factory=threading.Event)  # ... which gc has out of data/
    mark_gone: threading.Event = field(default_factory=threading.Event)  # gc's mark on it, removed

    def parameters(self) -> dict[str, Any]:
        names = ("seed", "pool", "sleep", "hold", "fixed")
        return {name: getattr(self, name) for name in names}

    def expected(self, step: str) -> dict[str, Any]:
        """Every artifact the step's manifest lists (what it set, and what it carries on)."""
        values = {**self.parameters(), **_VALUES["start_values"](self.seed, self.pool)}
        if step in ("train", "end"):
            start = _VALUES["start_values"](self.seed, self.pool)
            values.update(_VALUES["train_values"](start))
        if step == "end":
            values.update(_VALUES["end_values"](self.seed, values["checksum"]))
        return values


class _Collector(threading.Thread):
    """gc, pass after pass, on its own datastore client (another process, as far as the store
    knows); what must happen between two passes (time passing) is queued to it."""

    def __init__(self, campaign: _Campaign):
        super().__init__(name="gc-campaign-collector", daemon=True)
        from airflow_flowspec.datastore.store import Datastore

        self.campaign = campaign
        self.datastore = Datastore(campaign.root)
        self.stop = threading.Event()
        self.between_passes: queue.Queue[tuple[Callable[[], None], threading.Event]] = queue.Queue()
        self.passes = 0  # finished
        self.begun = 0
        self.passed = threading.Condition()
        self.deleted: set[str] = set()
        self.results: list[Any] = []

    def do_between_passes(self, action: Callable[[], None], *, timeout: float = 300) -> int:
        """Run ``action`` in gc's thread before its next pass (what it raises is raised here);
        the number of that pass."""
        done = threading.Event()
        following: list[int] = []
        failed: list[BaseException] = []

        def noted() -> None:
            following.append(self.begun + 1)
            try:
                action()
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                failed.append(error)

        self.between_passes.put((noted, done))
        deadline = time.monotonic() + timeout
        while not done.wait(0.5):
            if not self.is_alive() or time.monotonic() > deadline:
                raise TimeoutError("gc never came round to it")
        if failed:
            raise failed[0]
        return following[0]

    def wait_for_passes(self, count: int, *, first: int | None = None, timeout: float = 300) -> None:
        """Until ``count`` passes from pass number ``first`` on (by default the next to begin) are done."""
        with self.passed:
            target = (self.begun + 1 if first is None else first) + count - 1
            if not self.passed.wait_for(lambda: self.passes >= target or not self.is_alive(), timeout):
                raise TimeoutError(f"gc did not make {count} passes in {timeout} s")

    def run(self) -> None:
        from airflow_flowspec.airflow.run_states import metadata_database_run_states
        from airflow_flowspec.datastore.gc import collect_garbage

        report = self.campaign.report
        run_active, _ = metadata_database_run_states()
        while True:
            while not self.between_passes.empty():
                action, done = self.between_passes.get()
                try:
                    action()
                finally:
                    done.set()
            if self.stop.is_set():
                return
            with self.passed:
                self.begun += 1
            try:
                result = collect_garbage(self.datastore, older_than=MONTH, airflow_run_active=run_active)
            except Exception as error:  # noqa: BLE001 - a figure: must not happen
                report.gc_failures += 1
                report.note(f"gc pass {self.passes}: {type(error).__name__}: {error}")
            else:
                self.results.append(result)
                self.deleted.update(result.runs_deleted.get(FLOW_NAME, []))
            with self.passed:
                self.passes += 1
                self.passed.notify_all()
            time.sleep(0.02)  # room for the between-passes queue


class _Campaign:
    def __init__(self, root: str, seed: int, workdir: Path, delete_delay: float, report: GcReport):
        self.root = root
        self.rng = random.Random(seed)
        self.workdir = workdir
        self.delete_delay = delete_delay
        self.report = report
        self.flow_file = workdir / "gc_campaign_flow.py"
        self.flow_file.write_text(FLOW_SOURCE)
        self.plans: dict[str, _Plan] = {}
        self.lock = threading.RLock()
        self.pool: dict[str, int] = {}  # blob hash -> pool index
        self.raced: dict[str, _Plan] = {}  # pool blob hash -> the run racing gc for it
        self.ready_writers: queue.Queue[Any] = queue.Queue()
        self.late_targets: dict[str, _Plan] = {}
        self.late_threads: list[threading.Thread] = []
        self.racer_threads: list[threading.Thread] = []
        self.listings: list[float] = []  # when gc began listing data/, pass by pass
        self.removals: list[tuple[str, float, float]] = []  # (blob hash, slowed from, removed at)
        self.confirmations: list[tuple[str, float]] = []  # (blob hash, when a save relied on it)
        self.collector = _Collector(self)
        self._slow_the_collector(self.collector.datastore)
        self.counter = 0

    # -- the collector's slowed deletes, and the races they start ------------------------------

    def _slow_the_collector(self, datastore: Any) -> None:
        from airflow_flowspec.datastore import keys

        backend = datastore.backend
        if backend.is_local:
            real_move = backend.move

            def slow_move(key: str, new_key: str) -> None:
                started = time.time()
                self._taking(key)
                self._held(key)
                real_move(key, new_key)
                self._taken(key, started)

            backend.move = slow_move
        else:
            prefix = f"/{backend.bucket}/{backend.prefix}"

            def slow_delete_object(request: Any, **_: Any) -> None:
                path = unquote(urlparse(request.url).path)
                key = path[len(prefix) :] if path.startswith(prefix) else path
                started = time.time()
                self._taking(key)
                self._held(key)
                self._taken(key, started)  # sent right after this returns

            backend.client.meta.events.register("before-send.s3.DeleteObject", slow_delete_object)
        real_iter_objects = backend.iter_objects

        def iter_objects(prefix: str, **kwargs: Any) -> Any:
            if prefix == "data/":
                self.listings.append(time.time())
            return real_iter_objects(prefix, **kwargs)

        backend.iter_objects = iter_objects
        moving = backend.move

        def move(key: str, new_key: str) -> None:
            racing = self.raced.get(new_key.rpartition("/")[2])
            if key.startswith(keys.TRASH_PREFIX) and new_key.startswith("data/") and racing is not None:
                self._read_as_it_moves_back(racing, lambda: moving(key, new_key))
            else:
                moving(key, new_key)

        backend.move = move
        real_delete_many = backend.delete_many

        def delete_many(keys_: Any) -> None:
            keys_ = list(keys_)
            real_delete_many(keys_)
            for plan in list(self.plans.values()):
                if (
                    plan.kind in ("late", "late-ended")
                    and keys.run_deletion_key(FLOW_NAME, plan.run_id) in keys_
                ):
                    plan.mark_gone.set()  # gc spared the run (or deleted it): its re-run goes on
                    if plan.hold:
                        Path(plan.hold).touch()

        backend.delete_many = delete_many
        real_put = backend.put_bytes

        def put_bytes(key: str, data: bytes, **kwargs: Any) -> None:
            for run_id in list(self.late_targets):
                if key == keys.run_deletion_key(FLOW_NAME, run_id):
                    self._rerun_late(self.late_targets.pop(run_id))
            real_put(key, data, **kwargs)

        backend.put_bytes = put_bytes

    def _read_as_it_moves_back(self, plan: _Plan, move_back: Callable[[], None]) -> None:
        """gc moves a racing run's pool blob back into data/ (the run's manifests name it) while a
        reader loads it: the reader misses it in data/ just before the move, and only learns so once
        the move is done (a slow read), then looks for it (in the trash, where it was)."""
        from airflow_flowspec.datastore import keys
        from airflow_flowspec.datastore.store import Datastore
        from airflow_flowspec.errors import ArtifactNotFoundError

        missed, moved = threading.Event(), threading.Event()
        reader = Datastore(self.root)
        verified_read = reader.artifacts._verified_read
        data_key = keys.blob_key(plan.pool_hash)

        def slow_miss(key: str, *args: Any) -> Any:
            try:
                return verified_read(key, *args)
            except ArtifactNotFoundError:
                if key == data_key and not missed.is_set():
                    missed.set()
                    moved.wait(30)
                raise

        reader.artifacts._verified_read = slow_miss
        outcome: list[Any] = []

        def read() -> None:
            try:
                outcome.append(reader.artifacts.load(plan.pool_hash, what=f"pool value {plan.pool}"))
            except Exception as error:  # noqa: BLE001 - counted
                outcome.append(error)

        thread = threading.Thread(target=read, name=f"reader-{plan.run_id}", daemon=True)
        thread.start()
        missed.wait(30)
        try:
            move_back()
        finally:
            moved.set()
        thread.join(60)
        with self.lock:
            self.report.reads_racing_a_move_back += 1
            got = outcome[0] if outcome else TimeoutError("the reader never answered")
            if isinstance(got, BaseException):
                self.report.artifacts_lost += 1
                self.report.note(
                    f"pool value {plan.pool} read as gc moved it back: {type(got).__name__}: {got}"
                )
            elif got != _VALUES["pool_value"](int(plan.pool)):
                self.report.artifacts_wrong += 1
            else:
                self.report.artifacts_checked += 1

    def _taking(self, key: str) -> None:
        with self.lock:
            self.report.slowed_deletes += 1
            blob_hash = key.rpartition("/")[2]
            if not key.startswith("data/") or blob_hash not in self.pool or blob_hash in self.raced:
                return
            plan = self._new_plan("racing", pool=str(self.pool[blob_hash]), pool_hash=blob_hash)
            self.raced[blob_hash] = plan
        try:  # a worker whose client is up already: it gets to the blob while gc deletes it
            plan.writer = self.ready_writers.get_nowait()
        except queue.Empty:
            plan.writer = self._writer()
        self._slow_manifest(plan)
        thread = threading.Thread(target=self._run, args=(plan,), name=f"racer-{plan.run_id}", daemon=True)
        self.racer_threads.append(thread)
        thread.start()

    def _held(self, key: str) -> None:
        """``delete_delay`` seconds; a pool blob's delete is held on until its racing save relied on
        the blob (up to RACE_SECONDS more), so that the race is run, not merely tried."""
        time.sleep(self.delete_delay)
        racing = self.raced.get(key.rpartition("/")[2]) if key.startswith("data/") else None
        if racing is not None and not racing.relied.wait(RACE_SECONDS):
            self.report.note(f"racing run {racing.run_id} did not save its pool value in {RACE_SECONDS} s")

    def _taken(self, key: str, started: float) -> None:
        if key.startswith("data/"):
            with self.lock:
                self.removals.append((key.rpartition("/")[2], started, time.time()))
                racing = self.raced.get(key.rpartition("/")[2])
            if racing is not None:
                racing.taken.set()

    # -- runs ----------------------------------------------------------------------------------

    def _new_plan(self, kind: str, *, run_id: str | None = None, **fields: Any) -> _Plan:
        with self.lock:
            self.counter += 1
            plan = _Plan(
                run_id or f"gc-{kind}-{self.counter}-{uuid.uuid4().hex[:6]}",
                kind,
                self.rng.randrange(10**9),
                **fields,
            )
            if kind in ("late", "late-ended", "too-late", "cleared"):
                plan.fixed = str(self.workdir / f"fixed-{self.counter}")
            if kind == "late":  # its train step waits, when re-run, until gc has spared the run
                plan.hold = str(self.workdir / f"hold-{self.counter}")
            self.plans[plan.run_id] = plan
            self.report.runs_written += 1
            counted = {"ordinary": "ordinary_runs", "long": "long_step_runs", "racing": "racing_runs"}
            if kind in counted:
                setattr(self.report, counted[kind], getattr(self.report, counted[kind]) + 1)
            return plan

    def _writer(self) -> Any:
        """A task's own datastore client (a worker process), noting each blob a save relied on."""
        from airflow_flowspec.datastore.store import Datastore

        datastore = Datastore(self.root)
        backend = datastore.backend
        real = backend.blob_is_stored

        def blob_is_stored(key: str, *args: Any, **kwargs: Any) -> bool:
            found = real(key, *args, **kwargs)
            if found:
                blob_hash = key.rpartition("/")[2]
                with self.lock:
                    self.confirmations.append((blob_hash, time.time()))
                    racing = self.raced.get(blob_hash)
                if racing is not None:
                    racing.relied.set()
            return found

        backend.blob_is_stored = blob_is_stored
        return datastore

    def _task(
        self, plan: _Plan, step: str, parents: list[dict[str, Any]], attempt: int = 1
    ) -> dict[str, Any]:
        """One task, as the operator runs it: the lease first, then the step."""
        from airflow_flowspec.datastore.leases import Lease
        from airflow_flowspec.identity import RunIdentity
        from airflow_flowspec.runtime.step_runner import run_step
        from airflow_flowspec.runtime.task_spec import RunContext, TaskSpec

        datastore = plan.writer if step == "start" and plan.writer is not None else self._writer()
        run = RunIdentity(FLOW_NAME, plan.run_id)
        plan.stage = f"{step}, attempt {attempt}"
        with Lease(datastore, run, holder="task", needs_record=step != "start") as lease:
            spec = TaskSpec(
                str(self.flow_file),
                run,
                step,
                self.root,
                attempt=attempt,
                input_manifests=parents,
                parameters=plan.parameters() if step == "start" else {},
                run_context=RunContext(username=USER, run_type="manual"),
                code=parents[0].code.to_json() if parents and parents[0].code else None,
            )
            return run_step(spec, datastore, lease=lease).manifest

    def _run(self, plan: _Plan) -> None:
        """Start, train and end; checked as it finishes."""
        try:
            start = self._task(plan, "start", [])
            watcher = None
            computing = threading.Event()
            if plan.kind == "long":
                computing.set()
                watcher = threading.Thread(
                    target=self._age_while_computing, args=(plan, computing), daemon=True
                )
                watcher.start()
            try:
                train = self._task(plan, "train", [start])
            finally:
                computing.clear()
                if watcher is not None:
                    watcher.join()
            self._end_and_check(plan, train)
        except Exception as error:  # noqa: BLE001 - counted
            self._task_failed(plan, error)

    def _slow_manifest(self, plan: _Plan) -> None:
        """A racing run's start task writes its manifest (which names the pool blob it relied on)
        only once gc has the blob out of data/ and has made a whole pass after that: gc comes back
        to the trash round holding the blob while the task that relies on it still runs. Its next
        steps then read the blob from gc's trash."""
        from airflow_flowspec.datastore import keys

        real = plan.writer.write_manifest
        looker = plan.writer.backend

        def write_manifest(manifest: Any) -> Any:
            if manifest.attempt.step == "start":
                plan.taken.wait(60)
                deadline = time.time() + 10  # on S3 the DeleteObject is sent once the hook returns
                while looker.exists(keys.blob_key(plan.pool_hash)) and time.time() < deadline:
                    time.sleep(0.02)
                self.collector.wait_for_passes(1)
            return real(manifest)

        plan.writer.write_manifest = write_manifest

    @contextlib.contextmanager
    def _checker_lease(self, plan: _Plan) -> Iterator[None]:
        """A run made to look old may go as soon as it finished, and gc would be right to delete it:
        the checker holds a lease of its own on it from before its last task until it has read it."""
        from airflow_flowspec.datastore.leases import Lease
        from airflow_flowspec.identity import RunIdentity

        if not plan.aged:
            yield
            return
        plan.stage = "the checker's lease"
        run = RunIdentity(FLOW_NAME, plan.run_id)
        with Lease(self._writer(), run, holder="checker", needs_record=True):
            yield

    def _end_and_check(self, plan: _Plan, train: dict[str, Any]) -> None:
        with self._checker_lease(plan):
            self._task(plan, "end", [train])
            self._finished(plan)

    def _finished(self, plan: _Plan) -> None:
        self.verify(plan, "as it finished")
        with self.lock:
            plan.finished = True  # from now on, time passes for it too
            self.report.runs_finished_during_gc += 1

    def _task_failed(self, plan: _Plan, error: BaseException) -> None:
        from airflow_flowspec.errors import ArtifactNotFoundError

        with self.lock:
            if isinstance(error, ArtifactNotFoundError):  # a run or an artifact gc took
                self.report.tasks_failed_by_gc += 1
            else:
                self.report.tasks_failed_otherwise += 1
            self.report.note(f"{plan.kind} run {plan.run_id} ({plan.stage}): {type(error).__name__}: {error}")

    def _age_while_computing(self, plan: _Plan, computing: threading.Event) -> None:
        """Once the long step holds its lease, age its run to look abandoned 40 days ago, let a
        whole gc pass judge it, and only then let the step end (it computes at least
        LONG_STEP_SECONDS, and until ``hold`` exists)."""
        from aging import age_run

        from airflow_flowspec.datastore import keys
        from airflow_flowspec.datastore.store import Datastore

        try:
            looker = Datastore(self.root).backend
            leases = keys.run_leases_prefix(FLOW_NAME, plan.run_id)
            deadline = time.time() + 60
            while computing.is_set() and not any(True for _ in looker.iter_objects(leases)):
                if time.time() > deadline:
                    return
                time.sleep(0.05)

            def abandoned_40_days_ago() -> None:
                if computing.is_set():  # never a run between two tasks: that one would be abandoned
                    age_run(self.root, FLOW_NAME, plan.run_id, started_days_ago=60, written_days_ago=40)
                    plan.aged = True

            judged_by = self.collector.do_between_passes(abandoned_40_days_ago)
            self.collector.wait_for_passes(1, first=judged_by)
            if plan.aged and computing.is_set():
                with self.lock:
                    self.report.long_steps_judged_while_computing += 1
        finally:
            Path(plan.hold).touch()

    def _fail_once(self, kind: str) -> _Plan:
        """A run whose train step failed (the DAG run failed), to be re-run in the next round."""
        from airflow_flowspec.datastore import open_datastore

        plan = self._new_plan(kind)
        if plan.hold:
            Path(plan.hold).touch()  # the first attempt does not wait
        start = self._task(plan, "start", [])
        try:
            self._task(plan, "train", [start])
        except ValueError:
            pass
        else:
            raise AssertionError("the train step was to fail")
        open_datastore(self.root).finish_run(FLOW_NAME, plan.run_id, False, {"reason": "train failed"})
        plan.start_manifest = start
        return plan

    def _rerun_late(self, plan: _Plan) -> None:
        """Re-run the failed task as gc is about to mark the run for deletion (called from gc's
        thread, just before it writes the mark). A ``late`` run's task returns once its lease is
        stored, and holds it until gc removes the mark (its step waits for ``hold``); a
        ``late-ended`` run's task has run to its end, its lease released, before gc writes it."""
        from airflow_flowspec.datastore import keys
        from airflow_flowspec.datastore.store import Datastore

        Path(plan.fixed).touch()
        if plan.hold:
            Path(plan.hold).unlink()
        with self.lock:
            self.report.late_reruns += 1
            self.report.late_reruns_ended_before_the_mark += plan.kind == "late-ended"
        trained = threading.Event()
        thread = threading.Thread(
            target=self._resume, args=(plan, trained), name=f"late-{plan.run_id}", daemon=True
        )
        self.late_threads.append(thread)
        thread.start()
        if plan.kind == "late-ended":
            if not trained.wait(60):
                self.report.note(f"late re-run of {plan.run_id}: its task did not end in 60 s")
            return
        looker = Datastore(self.root).backend
        leases = keys.run_leases_prefix(FLOW_NAME, plan.run_id)
        deadline = time.time() + 30
        while not any(True for _ in looker.iter_objects(leases)):
            if time.time() > deadline:
                self.report.note(f"late re-run of {plan.run_id}: no lease 30 s after it started")
                return
            time.sleep(0.02)

    def _resume(self, plan: _Plan, trained: threading.Event) -> None:
        try:
            try:
                train = self._task(plan, "train", [plan.start_manifest], attempt=2)
            finally:
                trained.set()
            if plan.kind == "late-ended":  # nothing of it runs during gc's last look: only what it wrote
                plan.mark_gone.wait(60)
            self._end_and_check(plan, train)
        except Exception as error:  # noqa: BLE001 - counted
            self._task_failed(plan, error)

    def _rerun_too_late(self, plan: _Plan) -> None:
        """The failed task re-run after gc deleted its run: refused, writing nothing."""
        from airflow_flowspec.datastore import keys
        from airflow_flowspec.errors import RunDeletedError

        self.report.too_late_reruns += 1
        Path(plan.fixed).touch()
        try:
            self._task(plan, "train", [plan.start_manifest], attempt=2)
        except RunDeletedError:
            left = list(self._writer().backend.iter_objects(keys.run_prefix(FLOW_NAME, plan.run_id)))
            if left:
                self.report.note(f"re-run too late of {plan.run_id} left {[obj.key for obj in left]}")
            else:
                self.report.tasks_refused_on_deleted_runs += 1
        except Exception as error:  # noqa: BLE001 - reported
            self.report.note(f"re-run too late of {plan.run_id}: {type(error).__name__}: {error}")
        else:
            self.report.note(f"re-run too late of {plan.run_id} ran on a deleted run")

    # -- a run on Airflow, cleared -------------------------------------------------------------

    def cleared_run(self, dag: Any) -> None:
        from aging import age_run
        from airflow.serialization.serialized_objects import DagSerialization
        from harness import clear_and_rerun

        fixed = self.workdir / f"fixed-airflow-{uuid.uuid4().hex[:8]}"
        seed = self.rng.randrange(10**9)
        dag_run = dag.test(run_conf={"seed": seed, "pool": "", "sleep": 0.0, "hold": "", "fixed": str(fixed)})
        plan = self._new_plan("cleared", run_id=dag_run.run_id)
        plan.seed, plan.fixed = seed, str(fixed)
        self.report.cleared_runs += 1
        states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
        if states.get("train") != "failed":
            self.report.note(f"cleared run {plan.run_id}: train did not fail first ({states})")
            return

        def weeks_later_it_is_cleared() -> None:
            age_run(self.root, FLOW_NAME, plan.run_id, started_days_ago=60, written_days_ago=40)
            plan.aged = True
            DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag)).clear(
                run_id=plan.run_id, task_ids=["train", "end"]
            )  # as the UI's Clear does (downstream too): queued until a worker takes the task

        judged_by = self.collector.do_between_passes(weeks_later_it_is_cleared)
        self.collector.wait_for_passes(1, first=judged_by)
        if plan.run_id in self.collector.deleted:
            self.report.note(f"gc deleted the cleared run {plan.run_id} while Airflow had it queued")
            return
        self.report.cleared_runs_judged_while_queued += 1
        Path(plan.fixed).touch()
        with self._checker_lease(plan):
            rerun = clear_and_rerun(dag, plan.run_id, task_ids=["train", "end"])
            if str(rerun.state) != "success":
                states = {ti.task_id: str(ti.state) for ti in rerun.get_task_instances()}
                self._task_failed(plan, RuntimeError(f"the cleared run ended {rerun.state}: {states}"))
                return
            self._finished(plan)

    # -- checking --------------------------------------------------------------------------------

    def verify(self, plan: _Plan, when: str) -> None:
        """Every artifact of every step of the run (of every step that wrote a manifest, for a run
        that did not finish), and its code package, read through a fresh client (another process)
        and compared with what the step stored."""
        from airflow_flowspec.datastore.artifacts import ArtifactRef
        from airflow_flowspec.datastore.store import Datastore
        from airflow_flowspec.errors import ArtifactNotFoundError, DatastoreError

        reader = Datastore(self.root)
        trashed_key = reader.artifacts.trashed_key
        found_in_trash: list[str] = []

        def trashed_key_noted(blob_hash: str) -> str | None:
            key = trashed_key(blob_hash)
            if key is not None:
                found_in_trash.append(blob_hash)
            return key

        reader.artifacts.trashed_key = trashed_key_noted
        lost = wrong = checked = 0
        problems = []
        for step in STEPS:
            expected = plan.expected(step)
            typed = reader.latest_attempt_manifest(FLOW_NAME, plan.run_id, step, "0")
            manifest = None if typed is None else typed.to_json()
            if manifest is None and not plan.finished and when == "at the end":
                continue  # the run stopped before this step
            if manifest is None:
                lost += len(expected)
                problems.append(f"{step}: no manifest")
                continue
            refs = dict(manifest["artifacts"])
            for name in sorted(set(refs) - set(expected)):
                wrong += 1
                problems.append(f"{step}: unexpected artifact {name}")
            for name, value in expected.items():
                if name not in refs:
                    lost += 1
                    problems.append(f"{step}.{name}: not in the manifest")
                    continue
                try:
                    got = reader.artifacts.load(ArtifactRef.from_json(refs[name]), what=f"{step}.{name}")
                except ArtifactNotFoundError as error:
                    lost += 1
                    problems.append(f"{step}.{name}: {error}")
                except DatastoreError as error:
                    wrong += 1
                    problems.append(f"{step}.{name}: {type(error).__name__}: {error}")
                else:
                    checked += 1
                    if got != value:
                        wrong += 1
                        problems.append(f"{step}.{name}: another value")
            try:
                package = reader.artifacts.load(ArtifactRef.from_json(manifest["code"]), what=f"{step} code")
            except ArtifactNotFoundError as error:
                lost += 1
                problems.append(f"{step} code: {error}")
            else:
                checked += 1
                if package["files"].get(self.flow_file.name) != FLOW_SOURCE.encode():
                    wrong += 1
                    problems.append(f"{step} code: another flow file")
        with self.lock:
            self.report.artifacts_checked += checked
            self.report.artifacts_lost += lost
            self.report.artifacts_wrong += wrong
            self.report.reads_from_the_trash += len(found_in_trash)
            for problem in problems[:5]:
                self.report.note(f"{plan.kind} run {plan.run_id} ({when}): {problem}")

    # -- the rounds ------------------------------------------------------------------------------

    def seed_pool(self, count: int) -> None:
        """Values left unreferenced by runs gc deleted long ago (aged with the rest of data/)."""
        from airflow_flowspec.datastore.store import Datastore

        first = len(self.pool)
        values = {f"pool_{index}": _VALUES["pool_value"](index) for index in range(first, first + count)}
        refs = Datastore(self.root).artifacts.save_many(values)
        with self.lock:
            for name, ref in refs.items():
                self.pool[ref.hash] = int(name.rpartition("_")[2])
        for _ in range(count):
            writer = self._writer()
            writer.backend.list_dir("")  # its client made, its connection open
            self.ready_writers.put(writer)

    def time_passes(self, failed: list[_Plan]) -> None:
        """Between two passes: earlier runs that finished (and the failed ones) become old, and
        every blob in data/ older than the grace period."""
        from aging import age_objects, age_run

        old = [plan for plan in self.plans.values() if plan.finished and not plan.aged] + failed

        def age() -> None:
            for plan in old:
                if plan.run_id not in self.collector.deleted:
                    age_run(self.root, FLOW_NAME, plan.run_id, started_days_ago=60, written_days_ago=40)
                plan.aged = True
            age_objects(self.root, "data/", 3 * DAY)

        self.collector.do_between_passes(age)

    def a_round(
        self,
        number: int,
        *,
        ordinary: int,
        long_steps: int,
        pool: int,
        cleared: int,
        dag: Any,
        failed: list[_Plan],
        last: bool,
    ) -> list[_Plan]:
        """One round; ``failed`` are old failed runs (FAILED_KINDS); returns those it leaves for the
        next round."""
        self.report.rounds += 1
        earlier = sorted(set(self.pool.values()))  # the new ones are for gc to take, and racing runs
        self.seed_pool(pool)
        for plan in failed:  # before they are old: gc may come to them in the very next pass
            if plan.kind in ("late", "late-ended"):
                self.late_targets[plan.run_id] = plan
        too_late = next((plan for plan in failed if plan.kind == "too-late"), None)
        self.time_passes(failed)
        plans = [
            self._new_plan(
                "ordinary",
                pool=",".join(map(str, self.rng.sample(earlier, min(len(earlier), self.rng.randint(0, 2))))),
            )
            for _ in range(ordinary)
        ]
        plans += [self._new_plan("long", sleep=LONG_STEP_SECONDS) for _ in range(long_steps)]
        for plan in plans:
            if plan.kind == "long":
                plan.hold = str(self.workdir / f"hold-{plan.run_id}")
        self.rng.shuffle(plans)
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"round-{number}") as writers:
            running = [writers.submit(self._run, plan) for plan in plans]
            left = [] if last else [writers.submit(self._fail_once, kind) for kind in FAILED_KINDS]
            for _ in range(cleared):
                self.cleared_run(dag)
            for future in running:
                future.result()
            next_failed = [future.result() for future in left]
        if too_late is not None:
            deadline = time.time() + 120
            while too_late.run_id not in self.collector.deleted and time.time() < deadline:
                self.collector.wait_for_passes(1)
            if too_late.run_id in self.collector.deleted:
                self._rerun_too_late(too_late)
            else:
                self.report.note(f"gc never deleted the old failed run {too_late.run_id}")
        return next_failed

    def settle(self) -> None:
        """After the writers: racers and late re-runs end, then gc passes until its trash is settled."""
        for thread in [*self.racer_threads, *self.late_threads]:
            thread.join(120)
        for _ in range(20):
            self.collector.wait_for_passes(1)
            last = self.collector.results[-1] if self.collector.results else None
            if last is not None and not last.trash_rounds_waiting and not last.blobs_trashed:
                break

    def totals(self) -> None:
        from airflow_flowspec.datastore import keys
        from airflow_flowspec.datastore.store import Datastore

        report = self.report
        report.gc_passes = self.collector.passes
        for result in self.collector.results:
            report.runs_deleted += len(result.runs_deleted.get(FLOW_NAME, []))
            report.runs_spared += len(result.runs_spared.get(FLOW_NAME, []))
            report.blobs_trashed += result.blobs_trashed
            report.blobs_deleted += result.blobs_deleted
            report.blobs_restored += result.blobs_restored
            report.trash_rounds_waited += result.trash_rounds_waiting
        report.trash_left_at_end = sum(
            1 for _ in Datastore(self.root).backend.iter_objects(keys.TRASH_PREFIX)
        )
        for run_id in sorted(self.collector.deleted):
            plan = self.plans.get(run_id)
            if plan is None or not (plan.aged and (plan.finished or plan.kind in FAILED_KINDS)):
                report.runs_deleted_unexpectedly += 1
                report.note(f"gc deleted {run_id} ({plan.kind if plan else 'not a campaign run'})")
        for plan in self.plans.values():
            if plan.run_id not in self.collector.deleted:
                self.verify(plan, "at the end")
        # Races: a save relied on a pool blob after gc's listing of data/ and before the blob was out.
        for blob_hash, slowed_from, removed_at in self.removals:
            listed = max((moment for moment in self.listings if moment <= slowed_from), default=slowed_from)
            relied = [moment for hash_, moment in self.confirmations if hash_ == blob_hash]
            report.saves_relying_on_a_blob_gc_was_taking += any(listed <= m <= removed_at for m in relied)
            report.slowed_deletes_overlapping_a_save += any(slowed_from <= m <= removed_at for m in relied)


@contextlib.contextmanager
def _scaled_down_leases() -> Iterator[None]:
    from airflow_flowspec.datastore import gc, leases

    saved = (leases.LEASE_SECONDS, leases.RENEW_SECONDS, gc.CLOCK_MARGIN_SECONDS)
    leases.LEASE_SECONDS, leases.RENEW_SECONDS = LEASE_SECONDS, RENEW_SECONDS
    gc.CLOCK_MARGIN_SECONDS = CLOCK_MARGIN_SECONDS
    try:
        yield
    finally:
        leases.LEASE_SECONDS, leases.RENEW_SECONDS, gc.CLOCK_MARGIN_SECONDS = saved


@contextlib.contextmanager
def _datastore_root(root: str) -> Iterator[None]:
    """Airflow's tasks (and the client) use ``root``; output of the tasks run in threads is dropped
    (each task tees the process's stdout, and threads would leave one another's tee in place)."""
    from airflow_flowspec.client import namespaces, source

    saved = os.environ.get("AIRFLOW__FLOWSPEC__DATASTORE_ROOT")
    saved_streams = sys.stdout, sys.stderr
    saved_choices = source._chosen_root, namespaces._chosen
    os.environ["AIRFLOW__FLOWSPEC__DATASTORE_ROOT"] = root
    source._chosen_root, namespaces._chosen = None, namespaces._UNSET
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - closed below
    try:
        yield
    finally:
        sys.stdout.close()
        sys.stdout, sys.stderr = saved_streams
        source._chosen_root, namespaces._chosen = saved_choices
        if saved is None:
            os.environ.pop("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", None)
        else:
            os.environ["AIRFLOW__FLOWSPEC__DATASTORE_ROOT"] = saved


def gc_campaign(
    *,
    root: str,
    seed: int,
    workdir: Path,
    rounds: int,
    ordinary: int = 3,
    long_steps: int = 1,
    pool: int = 2,
    cleared: int = 1,
    delete_delay: float = 3.0,
) -> GcReport:
    """``rounds`` rounds (see the module docstring), each of ``ordinary`` runs, ``long_steps``
    long-step runs, ``pool`` new pool values (a racing run each) and ``cleared`` runs cleared on
    Airflow, under gc passes whose deletes take ``delete_delay`` seconds. Needs Airflow's database
    (the ``airflow_db`` fixture), and for an S3 root moto's server in this process."""
    from harness import load_flow

    from airflow_flowspec.airflow.local_run import sync_dag
    from airflow_flowspec.airflow.registration import dag_for

    backend = "s3" if root.startswith("s3://") else "local"
    report = GcReport(backend=backend, root=root, seed=seed, delete_delay=delete_delay)
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    with _scaled_down_leases(), _datastore_root(root):
        campaign = _Campaign(root, seed, workdir, delete_delay, report)
        dag = dag_for(load_flow(campaign.flow_file), str(campaign.flow_file))
        sync_dag(dag)
        campaign.collector.start()
        try:
            failed = [campaign._fail_once(kind) for kind in FAILED_KINDS]  # for round 0
            for number in range(rounds):
                failed = campaign.a_round(
                    number,
                    ordinary=ordinary,
                    long_steps=long_steps,
                    pool=pool,
                    cleared=cleared,
                    dag=dag,
                    failed=failed,
                    last=number == rounds - 1,
                )
            campaign.settle()
        finally:
            campaign.collector.stop.set()
            campaign.collector.join(300)
        campaign.totals()
    report.seconds = round(time.monotonic() - started, 1)
    return report


if __name__ == "__main__":  # a quick look, local root: python tests/reliability/gc_campaign.py [DELAY]
    sys.path[:0] = [str(HERE), str(HERE.parent)]
    from harness import configure_airflow

    configure_airflow()
    from airflow_flowspec.airflow.local_run import ensure_database, quiet_airflow_warnings

    quiet_airflow_warnings()
    ensure_database(Path(os.environ["AIRFLOW_HOME"]))
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gc-campaign-") as folder:
        delay = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
        figures = gc_campaign(
            root=str(Path(folder) / "store"), seed=1, workdir=Path(folder), rounds=2, delete_delay=delay
        )
    print(json.dumps(figures.as_dict(), indent=1))
