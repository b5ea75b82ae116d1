"""The kill harness: SIGKILL a step process while it saves its artifacts, then check what is left.

A task can die at any instant (SIGKILL, the out-of-memory killer, a Batch job terminated) and
nothing runs after that to tidy up. This harness starts the step runtime as another process,
``python -m airflow_flowspec.runtime --root R --spec-key K``, exactly as a Batch job runs it, for
the ``start`` step of a flow that sets 20 artifacts of mixed sizes (packed small ones, blobs of
their own, pickles over 1 MB that spill to scratch files, and one of 12 MB that goes to S3 as a
multipart upload), and kills it:

* at a seeded random instant of the save window (measured first on runs that are not killed:
  from the end of the step's body, printed by the flow, to the exit of the process); the delays
  are stratified so that the window is covered evenly however few kills there are;
* at fixed points (:data:`KILL_POINTS`): the child then runs the same module through a tiny
  bootstrap that makes it SIGKILL itself right before or after a named function, so that the
  narrow windows (between the run record and the manifest, with a multipart upload open...) are
  hit on every campaign, not once in a while.

Then, as the product promises (``open_datastore`` sweeps what killed processes left):

1. a fresh process opens the datastore with ``[flowspec] sweep_after_hours = 0``;
2. every manifest present is read back through a fresh :class:`Datastore`: every artifact it lists
   loads, verified against its hash, and equals what the step set (the values are derived from a
   per-run seed, so the checker can recompute them); nothing is lost or wrong;
3. the scratch folder (``<root>/.tmp/`` or ``[flowspec] scratch_dir``) holds no file, S3 holds no
   incomplete multipart upload under the root, and the run index (checked after every kill)
   never names a run whose start step has no manifest;
4. killed tasks are run again (the next attempt, or the same one) and succeed, with artifacts that
   load and keep the run's first ``created_at``.

Everything is counted in a :class:`KillReport`. ``python tests/reliability/kills.py --kills 200``
runs a soak campaign per backend (S3 on a moto server it starts) and prints the figures as JSON.

Standard-library imports only at the top: the kill-point bootstrap imports this module in the child.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import itertools
import json
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FLOW_NAME = "KillFlow"
#: What the flow prints when its step body is done and the save begins.
SAVING_MARKER = b"KILLS: saving"
#: Longest a child may take to reach the save, or to finish; a hang fails the campaign.
CHILD_TIMEOUT_SECONDS = 120.0
#: Randomly killed tasks run again per campaign unless told otherwise (besides kill points').
DEFAULT_RANDOM_RETRIES = 4
#: Retries run side by side (more gain nothing on 2 cores with moto in the same process).
RETRIES_AT_ONCE = 2
_MULTIPART_MARKER_PREFIX = ".multipart-sweep-"

#: Shared by the flow file (which sets these artifacts) and the checker (which recomputes them).
#: Sizes are those of the pickles: up to 64 KB they travel in packs, above that as blobs of their
#: own, above 1 MB through a scratch file, and ``huge_12m`` as a multipart upload on S3 when the
#: threshold is 5 MB. The bytes are BLAKE3 output keyed by the run's seed: no two runs share a
#: blob (nothing is deduplicated between kills), and a retry of the same run stores the same ones.
ARTIFACT_SOURCE = """
def make_artifacts(seed):
    from blake3 import blake3

    def noise(name, size):
        return blake3(f"{seed}/{name}".encode()).digest(length=size)

    return {
        "count": seed,
        "ratio": seed / 7,
        "label": f"run with seed {seed}",
        "flags": [seed % 2 == 0, seed % 3 == 0],
        "config": {"seed": seed, "layers": [64, 32, 16], "name": noise("config", 8).hex()},
        "ids": list(range(seed % 100, seed % 100 + 500)),
        "pair": (seed, -seed),
        "token": noise("token", 16).hex(),
        "words": [noise(f"word{i}", 6).hex() for i in range(200)],
        "small_1k": noise("small_1k", 1024),
        "small_8k": noise("small_8k", 8 * 1024),
        "small_40k": noise("small_40k", 40 * 1024),
        "nested": {"a": [noise("n1", 20_000), noise("n2", 30_000)], "b": seed},
        "blob_100k": noise("blob_100k", 100 * 1024),
        "blob_300k": noise("blob_300k", 300 * 1024),
        "blob_900k": noise("blob_900k", 900 * 1024),
        "table": {"x": [float(i) + seed for i in range(150_000)], "tag": noise("table", 32)},
        "big_2m": noise("big_2m", 2 * 1024 * 1024),
        "big_4m": noise("big_4m", 4 * 1024 * 1024),
        "huge_12m": noise("huge_12m", 12 * 1024 * 1024),
    }
"""

FLOW_SOURCE = f'''
from airflow_flowspec import FlowSpec, Parameter, step

{ARTIFACT_SOURCE}

class {FLOW_NAME}(FlowSpec):
    seed = Parameter("seed", default=0)

    @step
    def start(self):
        for name, value in make_artifacts(self.seed).items():
            setattr(self, name, value)
        print("{SAVING_MARKER.decode()}", flush=True)
        self.next(self.end)

    @step
    def end(self):
        pass
'''


def expected_artifacts(seed: int) -> dict[str, Any]:
    """What the start step of the run with ``seed`` sets (its parameter included)."""
    namespace: dict[str, Any] = {}
    exec(ARTIFACT_SOURCE, namespace)  # noqa: S102 - our own constant, shared with the flow file
    return {"seed": seed, **namespace["make_artifacts"](seed)}


# -- kill points: the child kills itself at a named place ---------------------------------------------


@dataclass(frozen=True)
class KillPoint:
    """SIGKILL the child right ``when`` ("before"/"after") the first call of ``module.qualname``."""

    name: str
    module: str
    qualname: str
    when: str
    backend: str = "any"  # "local", "s3" or "any"
    retry: bool = False  # run the killed task again afterwards (it left what a retry must cope with)


_DATASTORE = "airflow_flowspec.datastore"
_STORE, _LOCAL, _S3 = f"{_DATASTORE}.store", f"{_DATASTORE}.backends.local", f"{_DATASTORE}.backends.s3"
_ENCODING, _ARTIFACTS = f"{_DATASTORE}.encoding", f"{_DATASTORE}.artifacts"
_MULTIPART_PART = ("s3transfer.upload", "UploadPartTask._main")
KILL_POINTS: tuple[KillPoint, ...] = (
    KillPoint("large blob about to be stored", _LOCAL, "LocalBackend.adopt_file", "before", "local"),
    KillPoint("large blob stored", _LOCAL, "LocalBackend.adopt_file", "after", "local", retry=True),
    KillPoint("large blob about to be stored", _S3, "S3Backend.put_file", "before", "s3"),
    KillPoint("large blob stored", _S3, "S3Backend.put_file", "after", "s3", retry=True),
    KillPoint("multipart upload open, a part sent", *_MULTIPART_PART, "after", "s3", retry=True),
    KillPoint("pack stored", _ARTIFACTS, "_SaveBatch._store_pack", "after"),
    KillPoint("run record written", _STORE, "Datastore.write_run_meta", "after", retry=True),
    KillPoint("result written", _STORE, "Datastore.write_step_result", "after"),
    KillPoint("manifest written", _STORE, "Datastore.write_manifest", "after", retry=True),
    KillPoint("run indexed", _STORE, "Datastore.index_run", "after"),
    # Last: the sweeping process then has a scratch file to remove, whatever the other tasks swept.
    KillPoint("pickle half spilled to scratch", _ENCODING, "_HashingSpool._spill", "after", retry=True),
)

#: Runs the step runtime module as ``python -m`` would, after arming a kill point.
_BOOTSTRAP = textwrap.dedent(f"""
    import runpy, sys
    sys.path.insert(0, {str(HERE)!r})
    import kills
    kills.arm_kill_point(*sys.argv[1:4])
    sys.argv = ["airflow_flowspec.runtime", *sys.argv[4:]]
    runpy.run_module("airflow_flowspec.runtime", run_name="__main__", alter_sys=True)
""")


def arm_kill_point(module: str, qualname: str, when: str) -> None:
    """In the child: wrap ``module.qualname`` so that its first call SIGKILLs the process."""
    owner: Any = importlib.import_module(module)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    calls = itertools.count(1)
    lock = threading.Lock()

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with lock:
            first = next(calls) == 1
        if first and when == "before":
            die()
        result = original(*args, **kwargs)
        if first and when == "after":
            die()
        return result

    setattr(owner, name, wrapper)


# -- the report -----------------------------------------------------------------------------------------


@dataclass
class KillReport:
    """What a campaign did and found. Lost, wrong, debris after the sweep and bad pointers must be 0."""

    backend: str
    root: str
    seed: int
    kills: int = 0  # children SIGKILLed or told to die, in all
    kills_mid_save: int = 0  # ... that had not exited when the signal came (died by it)
    kills_at_points: int = 0  # ... of them at a kill point
    kill_points_missed: int = 0  # kill points the child never reached (the harness is out of date)
    save_window_seconds: float = 0.0  # measured on unkilled runs: end of the step body to exit
    runs: int = 0  # runs started (baselines, kills, none of the retries)
    manifests_checked: int = 0
    artifacts_verified: int = 0  # loaded, hash-checked and equal to what the step set
    blobs_verified: int = 0  # distinct blobs and packs those came from
    artifacts_lost: int = 0  # listed by a manifest (or expected in it) but not in the store
    artifacts_wrong: int = 0  # stored but not the value set (damaged, unreadable, another value)
    scratch_files_left_by_kills: int = 0  # seen in the scratch folder right after a kill
    scratch_bytes_left_by_kills: int = 0
    scratch_files_before_sweep: int = 0  # after the last kill (each new task sweeps on its own)
    scratch_bytes_before_sweep: int = 0
    scratch_files_after_sweep: int = 0  # must be 0
    scratch_bytes_after_sweep: int = 0
    multipart_uploads_before_sweep: int = 0
    multipart_uploads_after_sweep: int = 0  # must be 0
    unreferenced_blobs: int = 0  # reported only: collecting them is the garbage collector's job
    unreferenced_blob_bytes: int = 0
    runs_without_start_manifest: int = 0  # killed starts: a run folder, no manifest (reported only)
    latest_run_checks: int = 0
    latest_run_without_start_manifest: int = 0  # must be 0
    retries: int = 0
    retries_succeeded: int = 0
    retry_artifacts_verified: int = 0
    retried_runs_with_new_created_at: int = 0  # must be 0: a retried start keeps the run's start time
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def note(self, problem: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(problem)


# -- children -------------------------------------------------------------------------------------------


class _Children:
    """Every child process of a campaign, killed and reaped on the way out whatever happens."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env = env
        self.logs = logs
        self._started: list[subprocess.Popen] = []

    def start(
        self, args: list[str], log_name: str, extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        with open(self.logs / f"{log_name}.err", "wb") as stderr:
            child = subprocess.Popen(
                [sys.executable, *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=self.logs,
                env={**self.env, **(extra_env or {})},
                bufsize=0,
            )
        self._started.append(child)
        return child

    def finish(self, child: subprocess.Popen) -> int:
        """Wait for ``child`` (bounded), read what it still prints, close its pipe; its exit status."""
        try:
            child.communicate(timeout=CHILD_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise RuntimeError(
                f"child {child.args} did not finish in {CHILD_TIMEOUT_SECONDS:.0f} s"
            ) from None
        return child.returncode

    def stderr_of(self, log_name: str) -> str:
        return (self.logs / f"{log_name}.err").read_text(errors="replace")[-3000:]

    def close(self) -> None:
        for child in self._started:
            if child.poll() is None:
                child.kill()
            with contextlib.suppress(Exception):
                child.communicate(timeout=30)


def _wait_for_marker(child: subprocess.Popen) -> float:
    """Block until the child prints :data:`SAVING_MARKER`; the monotonic time it was read."""
    assert child.stdout is not None
    seen = b""
    deadline = time.monotonic() + CHILD_TIMEOUT_SECONDS
    while SAVING_MARKER not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"child {child.args} did not reach its save in {CHILD_TIMEOUT_SECONDS:.0f} s")
        ready, _, _ = select.select([child.stdout], [], [], min(left, 1.0))
        if ready:
            chunk = os.read(child.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"child {child.args} exited (status {child.wait()}) before its save")
            seen = seen[-len(SAVING_MARKER) :] + chunk
    return time.monotonic()


# -- what is in the store and beside it -------------------------------------------------------------------


class _Place:
    """The datastore root under test, its scratch folder, and direct listings of both."""

    def __init__(self, root: str, scratch_dir: Path):
        from airflow_flowspec.datastore.store import Datastore

        self.root = root
        self.is_s3 = root.startswith("s3://")
        self.scratch_dir = scratch_dir
        self.datastore = Datastore(root)  # not open_datastore: that would sweep in this process
        if self.is_s3:
            from airflow_flowspec.datastore.backends.s3 import parse_s3_url

            self.bucket, self.prefix = parse_s3_url(root)

    def fresh(self) -> Any:
        from airflow_flowspec.datastore.store import Datastore

        return Datastore(self.root)

    def scratch_files(self) -> dict[str, int]:
        """Name -> size of every file in the scratch folder but the multipart-sweep markers and the
        recorded code written out for tasks (``code/<hash>``, a cache kept on purpose; a half-written
        copy a kill left, a scratch-named folder in ``code/``, counts)."""
        try:
            entries = list(os.scandir(self.scratch_dir))
        except FileNotFoundError:
            return {}
        files = {}
        for entry in entries:
            if entry.name.startswith(_MULTIPART_MARKER_PREFIX):
                continue
            if entry.name == "code" and entry.is_dir(follow_symlinks=False):
                for staging in os.scandir(entry.path):
                    if staging.name.startswith("flowspec-"):
                        files[f"code/{staging.name}"] = 0
                continue
            with contextlib.suppress(FileNotFoundError):
                files[entry.name] = entry.stat(follow_symlinks=False).st_size
        return files

    def multipart_uploads(self) -> int:
        if not self.is_s3:
            return 0
        client = self.datastore.backend.client
        paginator = client.get_paginator("list_multipart_uploads")
        return sum(
            len(page.get("Uploads", []))
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix)
        )

    def blobs(self) -> dict[str, int]:
        """Blob (or pack) hash -> size, for everything under ``data/``."""
        found = {}
        if self.is_s3:
            client = self.datastore.backend.client
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}data/"):
                for entry in page.get("Contents", []):
                    found[entry["Key"].rsplit("/", 1)[-1]] = entry["Size"]
            return found
        data = Path(os.path.realpath(self.root)) / "data"
        for path in data.glob("*/*") if data.is_dir() else []:
            found[path.name] = path.stat().st_size
        return found

    def backdate_multipart_sweep(self) -> None:
        """Let the next sweep look for stale uploads now: it does so at most every 10 minutes per
        host, and the campaign's own tasks swept minutes ago (this is "10 minutes later")."""
        past = time.time() - 3600
        for path in self.scratch_dir.glob(f"{_MULTIPART_MARKER_PREFIX}*"):
            os.utime(path, (past, past))


def _latest_run_is_sound(datastore: Any) -> tuple[bool, str | None]:
    """Whether the latest indexed run is none, or one whose start step has a manifest."""
    run_id = datastore.latest_run(FLOW_NAME)
    if run_id is None:
        return True, None
    return datastore.latest_attempt_manifest(FLOW_NAME, run_id, "start", "0") is not None, run_id


def _verify_manifest(
    datastore: Any, manifest: dict[str, Any], seed: int, report: KillReport, referenced: set[str]
) -> int:
    """Load every artifact of ``manifest`` and compare it with what the step set; the number verified."""
    from airflow_flowspec.datastore.artifacts import ArtifactRef
    from airflow_flowspec.errors import ArtifactNotFoundError, FlowspecError

    where = manifest.get("pathspec", "?")
    listed = dict(manifest.get("artifacts", {}))
    verified = 0
    for name, value in expected_artifacts(seed).items():
        if name not in listed:
            report.artifacts_lost += 1
            report.note(f"{where}: artifact {name!r} is missing from the manifest")
            continue
        ref = ArtifactRef.from_json(listed.pop(name))
        referenced.add(ref.pack or ref.hash)
        try:
            loaded = datastore.artifacts.load(ref, what=f"artifact {name!r} of {where}")
        except ArtifactNotFoundError as error:
            report.artifacts_lost += 1
            report.note(f"{where}: {error}")
            continue
        except FlowspecError as error:  # damaged, or not unpicklable
            report.artifacts_wrong += 1
            report.note(f"{where}: {error}")
            continue
        if loaded != value:
            report.artifacts_wrong += 1
            report.note(f"{where}: artifact {name!r} loads as another value than the step set")
            continue
        verified += 1
    for name in listed:
        report.artifacts_wrong += 1
        report.note(f"{where}: the manifest lists {name!r}, which the step never set")
    return verified


def _verify_store(place: _Place, seeds: dict[str, int], report: KillReport) -> None:
    """Every manifest present: its artifacts load, verified, as set. Then count unreferenced blobs."""
    from airflow_flowspec.datastore.keys import AttemptKey
    from airflow_flowspec.errors import ArtifactNotFoundError, FlowspecError

    datastore = place.fresh()
    referenced: set[str] = set()
    for run_id in datastore.list_runs(FLOW_NAME):
        start_manifest = False
        for step in datastore.list_steps(FLOW_NAME, run_id):
            for task in datastore.list_tasks(FLOW_NAME, run_id, step):
                for attempt in datastore.list_attempts(FLOW_NAME, run_id, step, task):
                    try:
                        where = AttemptKey(FLOW_NAME, run_id, step, task, attempt)
                        manifest = datastore.read_manifest(where).to_json()
                    except ArtifactNotFoundError:
                        continue  # the attempt was killed before its manifest: nothing claimed
                    except FlowspecError as error:
                        report.artifacts_wrong += 1
                        report.note(f"manifest of {run_id}/{step}/{task} attempt {attempt}: {error}")
                        continue
                    report.manifests_checked += 1
                    start_manifest = start_manifest or step == "start"
                    if run_id not in seeds:
                        report.note(f"run {run_id} was not started by this campaign")
                        continue
                    report.artifacts_verified += _verify_manifest(
                        datastore, manifest, seeds[run_id], report, referenced
                    )
        if not start_manifest:
            report.runs_without_start_manifest += 1
    report.blobs_verified = len(referenced)
    stored = place.blobs()
    unreferenced = set(stored) - referenced
    report.unreferenced_blobs = len(unreferenced)
    report.unreferenced_blob_bytes = sum(stored[name] for name in unreferenced)


# -- the campaign -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in os.environ for the block: this process reads the store as the children do."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def kill_campaign(
    *,
    root: str,
    kills: int,
    seed: int,
    workdir: Path,
    env: dict[str, str],
    points: bool = True,
    retries: int = DEFAULT_RANDOM_RETRIES,
) -> KillReport:
    """Kill ``kills`` step processes at random instants of their save (plus one per kill point when
    ``points``), sweep, verify, retry; return the figures.

    ``root`` is a local folder or ``s3://bucket/prefix`` (use a fresh one: every run found there is
    checked). ``env`` is added to the environment of the children and of this process for the
    campaign; for S3 it needs what reaches the bucket (``AWS_*``), and unless it says otherwise the
    scratch folder is ``workdir/scratch`` and the multipart threshold 5 MB. The task of every kill
    point marked ``retry`` is run again, and ``retries`` of the randomly killed ones.
    """
    started = time.monotonic()
    workdir = Path(workdir)
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    flow_file = workdir / "kill_flow.py"
    flow_file.write_text(FLOW_SOURCE)
    is_s3 = root.startswith("s3://")
    settings = dict(env)
    if is_s3:
        settings.setdefault("AIRFLOW__FLOWSPEC__SCRATCH_DIR", str(workdir / "scratch"))
        settings.setdefault("AIRFLOW__FLOWSPEC__S3_MULTIPART_THRESHOLD_MB", "5")
    # The children sweep as tasks do by default: only what the kills left of dead processes, and
    # no multipart upload younger than a day. Only the final sweep is told 0 hours.
    settings.setdefault("AIRFLOW__FLOWSPEC__SWEEP_AFTER_HOURS", "24")
    report = KillReport(backend="s3" if is_s3 else "local", root=root, seed=seed)
    rng = random.Random(seed)
    with _environment(settings):
        children = _Children({**os.environ}, logs)
        try:
            scratch_dir = (
                Path(settings["AIRFLOW__FLOWSPEC__SCRATCH_DIR"])
                if is_s3
                else Path(os.path.realpath(root)) / ".tmp"
            )
            place = _Place(root, scratch_dir)
            _Campaign(place, children, flow_file, report, rng, seed).run(kills, points, retries)
        finally:
            children.close()
    report.seconds = round(time.monotonic() - started, 2)
    return report


class _Campaign:
    def __init__(
        self,
        place: _Place,
        children: _Children,
        flow_file: Path,
        report: KillReport,
        rng: random.Random,
        seed: int,
    ):
        self.place = place
        self.children = children
        self.flow_file = flow_file
        self.report = report
        self.rng = rng
        self.base_seed = seed
        self.seeds: dict[str, int] = {}  # run id -> the seed its artifacts are made from
        self.killed: list[tuple[str, KillPoint | None]] = []  # children that died, and where
        self.seen_scratch: set[str] = set()

    # -- one run --------------------------------------------------------------------------------

    def spec(self, run_id: str, attempt: int = 1) -> Any:
        from airflow_flowspec.identity import RunIdentity
        from airflow_flowspec.runtime.task_spec import RunContext, TaskSpec

        if run_id not in self.seeds:
            self.seeds[run_id] = self.base_seed * 1_000_003 + len(self.seeds)
        return TaskSpec(
            flow_file=str(self.flow_file),
            run=RunIdentity(FLOW_NAME, run_id),
            step="start",
            datastore_root=self.place.root,
            attempt=attempt,
            max_attempts=3,
            parameters={"seed": self.seeds[run_id]},
            run_context=RunContext(username="kills"),
        )

    def store_spec(self, spec: Any) -> str:
        return self.place.datastore.write_task_spec(spec.attempt_key, spec.to_json())

    def runtime_args(self, spec: Any) -> list[str]:
        return ["--root", self.place.root, "--spec-key", self.store_spec(spec)]

    def baseline(self, run_id: str) -> float:
        """An unkilled run; its save window (end of the step body to exit), in seconds."""
        child = self.children.start(
            ["-m", "airflow_flowspec.runtime", *self.runtime_args(self.spec(run_id))], run_id
        )
        saving = _wait_for_marker(child)
        status = self.children.finish(child)
        window = time.monotonic() - saving
        if status != 0:
            raise RuntimeError(
                f"the unkilled run {run_id} failed ({status}):\n{self.children.stderr_of(run_id)}"
            )
        self.report.runs += 1
        return window

    def kill_at(self, run_id: str, delay: float) -> None:
        child = self.children.start(
            ["-m", "airflow_flowspec.runtime", *self.runtime_args(self.spec(run_id))], run_id
        )
        saving = _wait_for_marker(child)
        time.sleep(max(0.0, saving + delay - time.monotonic()))
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        self.after_kill(run_id, self.children.finish(child), None)

    def kill_at_point(self, point: KillPoint) -> None:
        run_id = "point-" + "-".join(point.name.replace("_", "-").split()) + f"-{point.when}"
        spec_args = self.runtime_args(self.spec(run_id))
        child = self.children.start(
            ["-c", _BOOTSTRAP, point.module, point.qualname, point.when, *spec_args], run_id
        )
        status = self.children.finish(child)
        if status != -signal.SIGKILL:
            self.report.kill_points_missed += 1
            self.report.note(
                f"kill point {point.name!r} ({point.qualname} {point.when}) was not reached: exit {status}"
            )
        self.report.kills_at_points += 1
        self.after_kill(run_id, status, point)

    def after_kill(self, run_id: str, status: int, point: KillPoint | None) -> None:
        report = self.report
        report.kills += 1
        report.runs += 1
        if status == -signal.SIGKILL:
            report.kills_mid_save += 1
            self.killed.append((run_id, point))
        elif status != 0:
            report.note(f"{run_id} exited {status} instead of dying:\n{self.children.stderr_of(run_id)}")
        for name, size in self.place.scratch_files().items():
            if name not in self.seen_scratch:
                self.seen_scratch.add(name)
                report.scratch_files_left_by_kills += 1
                report.scratch_bytes_left_by_kills += size
        self.check_latest_run(f"after the kill of {run_id}")

    def check_latest_run(self, when: str) -> None:
        self.report.latest_run_checks += 1
        sound, run_id = _latest_run_is_sound(self.place.datastore)
        if not sound:
            self.report.latest_run_without_start_manifest += 1
            self.report.note(
                f"{when}: the run index names {run_id} as latest, whose start step has no manifest"
            )

    # -- the whole campaign -----------------------------------------------------------------------

    def run(self, kills: int, points: bool, retries: int) -> None:
        report, place = self.report, self.place
        windows = sorted(self.baseline(f"baseline-{number}") for number in range(3))
        window = report.save_window_seconds = round(windows[1], 3)  # the median: one run may be cold
        # Stratified: kill i lands somewhere in its own slice of the window, the slices shuffled.
        slices = list(range(kills))
        self.rng.shuffle(slices)
        for number, slot in enumerate(slices):
            self.kill_at(f"kill-{number:04d}", window * (slot + self.rng.random()) / kills)
        if points:
            for point in KILL_POINTS:
                if point.backend in ("any", report.backend):
                    self.kill_at_point(point)

        files = place.scratch_files()
        report.scratch_files_before_sweep = len(files)
        report.scratch_bytes_before_sweep = sum(files.values())
        report.multipart_uploads_before_sweep = place.multipart_uploads()
        self.sweep()
        files = place.scratch_files()
        report.scratch_files_after_sweep = len(files)
        report.scratch_bytes_after_sweep = sum(files.values())
        report.multipart_uploads_after_sweep = place.multipart_uploads()
        for name in files:
            report.note(f"left in the scratch folder after the sweep: {place.scratch_dir / name}")
        if report.multipart_uploads_after_sweep:
            report.note(
                f"{report.multipart_uploads_after_sweep} multipart upload(s) still open after the sweep"
            )

        _verify_store(place, self.seeds, report)
        self.check_latest_run("after the sweep")
        self.retry_some(retries)
        self.check_latest_run("after the retries")

    def sweep(self) -> None:
        """A fresh process opens the datastore, as the next task would, sweeping everything stale."""
        self.place.backdate_multipart_sweep()
        code = (
            "import sys; from airflow_flowspec.datastore import open_datastore; open_datastore(sys.argv[1])"
        )
        child = self.children.start(
            ["-c", code, self.place.root], "sweep", {"AIRFLOW__FLOWSPEC__SWEEP_AFTER_HOURS": "0"}
        )
        if self.children.finish(child) != 0:
            raise RuntimeError(f"the sweeping process failed:\n{self.children.stderr_of('sweep')}")

    def retry_some(self, retries: int) -> None:
        """Run killed tasks again, two at a time: those of the kill points marked ``retry``, and
        ``retries`` randomly killed ones."""
        from concurrent.futures import ThreadPoolExecutor

        at_points = [run_id for run_id, point in self.killed if point is not None and point.retry]
        at_random = [run_id for run_id, point in self.killed if point is None]
        chosen = at_points + self.rng.sample(at_random, min(retries, len(at_random)))
        prepared = [
            self.prepare_retry(run_id, same_attempt=number % 2 == 1) for number, run_id in enumerate(chosen)
        ]
        with ThreadPoolExecutor(max_workers=RETRIES_AT_ONCE) as pool:
            statuses = list(
                pool.map(lambda retry: self.children.finish(self.children.start(*retry.child)), prepared)
            )
        for retry, status in zip(prepared, statuses, strict=True):
            self.check_retry(retry, status)

    def prepare_retry(self, run_id: str, *, same_attempt: bool) -> _Retry:
        """The next attempt of a killed task (or the same one again), its spec stored."""
        from airflow_flowspec.errors import ArtifactNotFoundError

        datastore = self.place.datastore
        try:
            created_at = datastore.read_run_meta(FLOW_NAME, run_id)["created_at"]
        except ArtifactNotFoundError:
            created_at = None  # killed before its run record
        attempts = datastore.list_attempts(FLOW_NAME, run_id, "start", "0")
        attempt = max(attempts or [1]) + (0 if same_attempt else 1)
        log_name = f"{run_id}-retry-{attempt}"
        args = ["-m", "airflow_flowspec.runtime", *self.runtime_args(self.spec(run_id, attempt))]
        return _Retry(run_id, attempt, created_at, (args, log_name))

    def check_retry(self, retry: _Retry, status: int) -> None:
        """The retry succeeded, its artifacts load as set, and the run kept its first created_at."""
        from airflow_flowspec.datastore.keys import AttemptKey

        report, datastore = self.report, self.place.fresh()
        report.retries += 1
        if status != 0:
            report.note(
                f"retry of {retry.run_id} (attempt {retry.attempt}) failed ({status}):\n"
                f"{self.children.stderr_of(retry.child[1])}"
            )
            return
        result = datastore.read_step_result(AttemptKey(FLOW_NAME, retry.run_id, "start", "0", retry.attempt))
        errors_before = report.artifacts_lost + report.artifacts_wrong
        report.retry_artifacts_verified += _verify_manifest(
            datastore, result["manifest"], self.seeds[retry.run_id], report, set()
        )
        if report.artifacts_lost + report.artifacts_wrong == errors_before:
            report.retries_succeeded += 1
        created_at = datastore.read_run_meta(FLOW_NAME, retry.run_id)["created_at"]
        if retry.created_at is not None and created_at != retry.created_at:
            report.retried_runs_with_new_created_at += 1
            report.note(
                f"the retry of {retry.run_id} moved created_at from {retry.created_at} to {created_at}"
            )


@dataclass(frozen=True)
class _Retry:
    run_id: str
    attempt: int
    created_at: str | None  # the run record's before the retry, if the killed start wrote one
    child: tuple[list[str], str]  # arguments and log name


# -- soak ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Soak: ``python tests/reliability/kills.py --kills 200 [--backend local|s3|both] [--seed N]``."""
    import argparse
    import tempfile
    import uuid

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--backend", choices=("local", "s3", "both"), default="both")
    parser.add_argument("--workdir", help="where stores, scratch and logs go (default: a new temp folder)")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="flowspec-kills-"))
    reports = []
    if args.backend in ("local", "both"):
        reports.append(
            kill_campaign(
                root=str(workdir / "local" / "store"),
                kills=args.kills,
                seed=args.seed,
                workdir=workdir / "local",
                env={},
            )
        )
    if args.backend in ("s3", "both"):
        with _moto_server() as s3_env:
            reports.append(
                kill_campaign(
                    root=f"s3://flowspec-test/kills-{uuid.uuid4().hex[:8]}",
                    kills=args.kills,
                    seed=args.seed + 1,
                    workdir=workdir / "s3",
                    env=s3_env,
                )
            )
    print(json.dumps([report.as_dict() for report in reports], indent=2))
    bad = [
        report
        for report in reports
        if report.artifacts_lost
        or report.artifacts_wrong
        or report.scratch_files_after_sweep
        or report.multipart_uploads_after_sweep
        or report.latest_run_without_start_manifest
        or report.retries_succeeded != report.retries
        or report.kill_points_missed
    ]
    return 1 if bad else 0


@contextlib.contextmanager
def _moto_server() -> Iterator[dict[str, str]]:
    """moto's S3 server on loopback with the bucket ``flowspec-test``, and the variables reaching it."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    try:
        with _environment(env):
            boto3.session.Session().client("s3").create_bucket(Bucket="flowspec-test")
        yield env
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
