"""Where everything lives in the datastore, and why no user-supplied name can escape it.

Layout, relative to the datastore root (a local folder or ``s3://bucket/prefix``)::

    flowspec-datastore.json                               the root's format, {"format": 1} (format_marker.py)
    data/<h[:2]>/<h>                                      pickled artifact, named by its BLAKE3 hash
    damaged/<h>.<time>.<random>                           a blob that failed its hash check, moved aside
    <flow>/index/<list>/<namespace>/<newest-first>/<run>  one empty-ish entry per run and list
    <flow>/numbers/<highest-first>.json                   run number n is taken, by this run
    <flow>/runs/<run>/run.json                            run metadata, written when the run starts
    <flow>/runs/<run>/number.json                         the run's number (its short id)
    <flow>/runs/<run>/status.json                         {"status": "succeeded"|"failed", ...} at the end
    <flow>/runs/<run>/deleting.json                       gc is deleting the run (see gc.py)
    <flow>/runs/<run>/_leases/<started>-<token>.json      a task of the run is running (leases.py)
    <flow>/runs/<run>/<step>/<task>/attempt-<n>/manifest.json   written last by a task attempt
    <flow>/runs/<run>/<step>/<task>/attempt-<n>/spec.json       the task's spec, for a step process
    <flow>/runs/<run>/<step>/<task>/attempt-<n>/result.json     what that process leaves to publish
    <flow>/runs/<run>/<step>/<task>/attempt-<n>/stdout.log      what the step printed (and stderr.log)
    <flow>/runs/<run>/<step>/<task>/attempt-<n>/<name>           any other file of that attempt
    _xcom/<dag>/<run>/<task>/<map_index>/<key>.pkl        pickled XCom value of an ordinary task
    _xcom/<dag>/<run>/<task>/<map_index>/<key>.chunk-<i>.json   chunk i of a list tasks map over
    _gc/trash/<round>/<h[:2]>/<h>                         a blob gc took out of data/, not yet deleted
    _gc/trash/<round>/complete.json                       written once every blob of the round is out

Why this shape:

* The client that reads results later has no Airflow and no database: only the store. Every
  question it asks maps to a constant number of requests. "Which runs does flow F have?" is one
  S3 ``ListObjectsV2(Prefix="F/runs/", Delimiter="/")``; a run's steps, a step's tasks and a
  task's attempts are the same one-level listing one folder deeper. Files and sub-folders of a
  folder never share a name pattern (``run.json``/``status.json`` next to step folders, step names
  being identifiers), so one delimited listing separates them.
* "The latest (successful) run" and "the last ten runs" must not list every run and read every
  record. The run index answers them from the first keys of one listing: an entry's folder is the
  run's start time counted down (:func:`newest_first`), so the newest run sorts first in S3's key
  order and ``MaxKeys=1`` returns it. There is a list of runs that started and one of runs that
  succeeded, each kept for every run (``all``) and per system tag (``user:ana``,
  ``production:TrainFlow``, ``project:...``): the client's default namespaces are answered without
  reading a single other user's run. Entries are written once and never rewritten, each under its
  own key, so concurrent runs cannot lose each other's updates (a shared index file could).
* A run's number (its short id, ``TrainFlow/12``, see :mod:`airflow_flowspec.identity`) is taken
  by creating ``numbers/<n>`` only if it is not there (O_EXCL-like on a folder, ``If-None-Match``
  on S3): two runs starting at once never share a number, whichever process each runs in. The
  names count down (:func:`highest_first`), so the highest number taken is the first key of one
  listing. The run's own ``number.json``, created the same way, says which of the numbers it
  claimed is its (one per run, even when two attempts of its start race), and the run index files
  a numbered run under its number: ``-`` and the number counted down, which sorts before every
  start time, so runs list in the order they were numbered, then any record without a number, by
  start time.
* Artifacts are content-addressed in one global namespace so an unchanged value is stored once
  however many steps, tasks, attempts or runs carry it; the manifests say which names point where.
  The two-character fan-out keeps local folders small. ``data`` cannot clash with a flow named
  ``data``: a flow's folders are ``runs``, ``index`` and ``numbers``, never two hex digits.
* Attempts get their own folder so a retry never overwrites what a failed attempt left behind, and
  a manifest is written last, so its presence means the attempt finished writing.
* What only gc and running tasks read sits where a client's listing does not meet it: a run's
  leases in ``_leases/`` (step names never start with ``_``), gc's trash under ``_gc/`` (beside
  ``data/`` and ``_xcom/``, never a flow's folders).

Every part supplied by a user or by Airflow (flow, run id, step, task id, file name) goes through
:func:`safe_key_part`, which makes it a single, readable path segment that cannot be ``.`` or
``..``: nothing can climb out of the root or into another run's folder.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from urllib.parse import unquote

from airflow_flowspec.errors import UnsafeKeyError

# Characters that are safe and meaningful in both S3 keys and local file names. Airflow run ids
# (``manual__2026-11-23T08:57:05.123456+00:00``) use only these, so they stay readable.
_SAFE_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:+=-")
# Most local file systems refuse longer file names; S3 keys may be 1,024 bytes in all.
_MAX_PART_BYTES = 255
_BLOB_HASH = re.compile(r"[0-9a-f]{16,128}")
_ATTEMPT_FOLDER = re.compile(r"attempt-(\d+)")
_CHUNK_POSITION = re.compile(r"(0|[1-9]\d*)\.json")
_LEASE_NAME = re.compile(r"(\d{17})-[0-9a-f]{8,32}\.json")
_TRASH_ROUND = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}")

#: The root's format marker (:mod:`.format_marker`); a file, so no flow's folder can take its name.
FORMAT_MARKER_KEY = "flowspec-datastore.json"
MANIFEST_FILE = "manifest.json"
TASK_SPEC_FILE = "spec.json"
STEP_RESULT_FILE = "result.json"
#: What the step printed on an attempt (the step runtime keeps it, the client shows it).
STDOUT_FILE = "stdout.log"
STDERR_FILE = "stderr.log"
#: Files of an attempt that only the datastore itself writes.
RESERVED_ATTEMPT_FILES = frozenset({MANIFEST_FILE, TASK_SPEC_FILE, STEP_RESULT_FILE})
XCOM_PREFIX = "_xcom/"
DAMAGED_PREFIX = "damaged/"
#: A flow's folder of runs (beside its ``index`` and ``numbers``).
RUNS_FOLDER = "runs"
RUN_META_FILE = "run.json"
RUN_STATUS_FILE = "status.json"
#: Written by gc before it looks at a run's leases a last time and deletes the run (or spares it).
RUN_DELETION_FILE = "deleting.json"
#: A run's folder of leases (step names never start with ``_``, so it is never taken for a step).
LEASES_FOLDER = "_leases"
GC_PREFIX = "_gc/"
TRASH_PREFIX = GC_PREFIX + "trash/"
#: The file that closes a trash round: every blob of the round is out of ``data/`` by its time.
TRASH_ROUND_COMPLETE_FILE = "complete.json"
#: The run index's lists: runs that started (after the start step's manifest), runs that succeeded.
RUNS_STARTED = "started"
RUNS_SUCCEEDED = "succeeded"
#: The index's list of every run, beside the per-tag ones (a tag always contains ``:``).
ALL_RUNS = "all"
#: Prefixes of the tags the system gives a run when it starts; they never change afterwards, so
#: the run index keeps a list per such tag, and a user's own tag may not take one of them.
SYSTEM_TAG_PREFIXES = ("user:", "production:", "project:", "project_branch:")
#: Top-level folders of a datastore root that are not flows.
NOT_FLOW_FOLDERS = frozenset(
    {"data", XCOM_PREFIX.rstrip("/"), DAMAGED_PREFIX.rstrip("/"), GC_PREFIX.rstrip("/")}
)
_NEWEST_FIRST_LIMIT = 10**17  # microseconds since 1970: good until the year 5138
#: Run numbers have 16 digits at most (:data:`airflow_flowspec.identity.MAX_RUN_NUMBER`).
_HIGHEST_FIRST_LIMIT = 10**16
#: The file of a run's folder that says its number.
RUN_NUMBER_FILE = "number.json"
_NUMBER_NAME = re.compile(r"(\d{16})\.json")


def safe_key_part(part: str | int) -> str:
    """One path segment for ``part``: readable when it can be, percent-encoded when it must be.

    The encoding is reversible (:func:`decode_key_part`) and injective (``%`` itself is encoded), so
    two different run ids never share a folder. Integers (task ids, attempt numbers) are accepted.
    """
    if isinstance(part, bool) or not isinstance(part, (str, int)):
        raise UnsafeKeyError(
            f"A datastore key part must be a string, got {type(part).__name__} {part!r}: "
            f"use a flow, run, step or task name."
        )
    text = str(part)
    if not text:
        raise UnsafeKeyError(
            "A datastore key part (flow name, run id, step name, task id or file name) is empty: "
            "give it a name."
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        # A lone surrogate (what Python makes of undecodable bytes) has no UTF-8 form: it could be
        # stored only as something else, and would come back from a listing as a different name.
        raise UnsafeKeyError(
            f"The name {text!r} cannot be stored: character {error.start} is not valid Unicode text "
            f"(an unpaired surrogate, as left by bytes that were not UTF-8). Names (run ids, step, "
            f"flow and XCom names) must be valid UTF-8 text."
        ) from None
    encoded = "".join(
        character if character in _SAFE_CHARACTERS else _percent_encode(character) for character in text
    )
    if encoded.startswith("."):
        # ".", ".." and hidden names would be a way out of the root or invisible in listings.
        encoded = "%2E" + encoded[1:]
    if len(encoded.encode()) > _MAX_PART_BYTES:
        raise UnsafeKeyError(
            f"The datastore key part {text[:60]!r}... is {len(encoded)} characters once encoded; "
            f"the limit is {_MAX_PART_BYTES}. Use a shorter flow, run, step or task name."
        )
    return encoded


def decode_key_part(encoded: str) -> str:
    """The original name for a segment that :func:`safe_key_part` produced (for listings)."""
    return unquote(encoded, errors="strict")


def _percent_encode(character: str) -> str:
    return "".join(f"%{byte:02X}" for byte in character.encode("utf-8"))


def system_tags_among(tags: object) -> list[str]:
    """The tags of ``tags`` that take a system prefix (:data:`SYSTEM_TAG_PREFIXES`)."""
    items = tags if isinstance(tags, (list, tuple, set, frozenset)) else []
    return sorted(tag for tag in items if isinstance(tag, str) and tag.startswith(SYSTEM_TAG_PREFIXES))


def is_blob_hash(text: object) -> bool:
    """Whether ``text`` can name a blob (lowercase hex, as :func:`blob_key` accepts)."""
    return isinstance(text, str) and _BLOB_HASH.fullmatch(text) is not None


def blob_key(blob_hash: str) -> str:
    if not is_blob_hash(blob_hash):
        raise UnsafeKeyError(
            f"{blob_hash!r} is not an artifact hash (lowercase hex digits expected); "
            f"pass the 'hash' of an artifact reference from a manifest."
        )
    return f"data/{blob_hash[:2]}/{blob_hash}"


def damaged_blob_key(blob_hash: str) -> str:
    """Where a blob that failed its hash check is moved, so its name is free for a good copy."""
    blob_key(blob_hash)  # validates the hash
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{DAMAGED_PREFIX}{blob_hash}.{stamp}.{secrets.token_hex(4)}"


def flow_prefix(flow: str) -> str:
    return f"{safe_key_part(flow)}/"


def newest_first(microseconds_since_epoch: int) -> str:
    """A fixed-width folder name that sorts later runs first (S3 lists keys in ascending order)."""
    return f"{_NEWEST_FIRST_LIMIT - 1 - max(0, microseconds_since_epoch):017d}"


def highest_first(number: int) -> str:
    """A fixed-width name that sorts higher run numbers first."""
    if isinstance(number, bool) or not isinstance(number, int) or not 0 < number < _HIGHEST_FIRST_LIMIT:
        raise UnsafeKeyError(
            f"A run number is a whole number from 1 to {_HIGHEST_FIRST_LIMIT - 1}, not {number!r}."
        )
    return f"{_HIGHEST_FIRST_LIMIT - 1 - number:016d}"


def run_numbers_prefix(flow: str) -> str:
    return flow_prefix(flow) + "numbers/"


def run_number_key(flow: str, number: int) -> str:
    """The object whose creation takes run number ``number`` of ``flow``."""
    return run_numbers_prefix(flow) + f"{highest_first(number)}.json"


def parse_run_number_key(flow: str, key: str) -> int | None:
    """The number a key listed under :func:`run_numbers_prefix` takes, None for a stray key."""
    prefix = run_numbers_prefix(flow)
    match = _NUMBER_NAME.fullmatch(key[len(prefix) :]) if key.startswith(prefix) else None
    return _HIGHEST_FIRST_LIMIT - 1 - int(match.group(1)) if match else None


def run_index_prefix(flow: str, which: str, namespace: str | None = None) -> str:
    """Where the index list ``which`` (:data:`RUNS_STARTED`/:data:`RUNS_SUCCEEDED`) of a namespace
    (a system tag; None for every run) keeps its entries."""
    if which not in (RUNS_STARTED, RUNS_SUCCEEDED):
        raise UnsafeKeyError(f"{which!r} is not a run index list ({RUNS_STARTED!r} or {RUNS_SUCCEEDED!r}).")
    return flow_prefix(flow) + f"index/{which}/{safe_key_part(namespace or ALL_RUNS)}/"


def run_index_key(
    flow: str, which: str, namespace: str | None, started_us: int, run_id: str, number: int | None = None
) -> str:
    """A run's entry in an index list: under its number when it has one (before every entry filed
    by start time: ``-`` sorts before digits), else under its start time."""
    stamp = newest_first(started_us) if number is None else f"-{highest_first(number)}"
    return run_index_prefix(flow, which, namespace) + f"{stamp}/{safe_key_part(run_id)}"


def parse_run_index_key(index_prefix: str, key: str) -> str | None:
    """The run id of an index entry (``key`` as listed under ``index_prefix``), None for a stray key."""
    rest = key[len(index_prefix) :] if key.startswith(index_prefix) else ""
    stamp, _, run = rest.partition("/")
    digits = stamp[1:] if stamp.startswith("-") else stamp
    if len(stamp) != 17 or not digits.isdigit() or not digits.isascii() or not run or "/" in run:
        return None
    try:
        return decode_key_part(run)
    except UnicodeDecodeError:
        return None


def runs_prefix(flow: str) -> str:
    return flow_prefix(flow) + f"{RUNS_FOLDER}/"


def run_prefix(flow: str, run_id: str) -> str:
    return runs_prefix(flow) + f"{safe_key_part(run_id)}/"


def run_meta_key(flow: str, run_id: str) -> str:
    return run_prefix(flow, run_id) + RUN_META_FILE


def run_status_key(flow: str, run_id: str) -> str:
    return run_prefix(flow, run_id) + RUN_STATUS_FILE


def run_number_claim_key(flow: str, run_id: str) -> str:
    """The run's ``number.json``: which number is the run's (see the module docstring)."""
    return run_prefix(flow, run_id) + RUN_NUMBER_FILE


def run_deletion_key(flow: str, run_id: str) -> str:
    return run_prefix(flow, run_id) + RUN_DELETION_FILE


def run_leases_prefix(flow: str, run_id: str) -> str:
    return run_prefix(flow, run_id) + f"{LEASES_FOLDER}/"


def run_lease_key(flow: str, run_id: str, started_us: int, token: str) -> str:
    """A lease's key names when it was taken, so gc learns every lease's start from one listing."""
    if not re.fullmatch(r"[0-9a-f]{8,32}", token):
        raise UnsafeKeyError(f"{token!r} is not a lease token (hex digits).")
    return run_leases_prefix(flow, run_id) + f"{max(0, started_us):017d}-{token}.json"


def parse_lease_name(name: str) -> int | None:
    """When the lease named ``name`` (a file of a run's ``_leases/``) was taken, in microseconds
    since 1970; None for any other file."""
    match = _LEASE_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def trash_round_prefix(round_name: str) -> str:
    if not _TRASH_ROUND.fullmatch(round_name):
        raise UnsafeKeyError(f"{round_name!r} is not a gc trash round.")
    return f"{TRASH_PREFIX}{round_name}/"


def new_trash_round() -> str:
    """A trash round's name: when it started (sorting by time) and a random part."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(4)}"


def is_trash_round(name: str) -> bool:
    return _TRASH_ROUND.fullmatch(name) is not None


def trash_key(round_name: str, blob_hash: str) -> str:
    """Where gc keeps a blob it took out of ``data/`` in a round (the same fan-out as ``data/``)."""
    return trash_round_prefix(round_name) + blob_key(blob_hash)[len("data/") :]


def step_prefix(flow: str, run_id: str, step: str) -> str:
    return run_prefix(flow, run_id) + f"{safe_key_part(step)}/"


def task_prefix(flow: str, run_id: str, step: str, task_id: str | int) -> str:
    return step_prefix(flow, run_id, step) + f"{safe_key_part(task_id)}/"


def attempt_folder(attempt: int) -> str:
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise UnsafeKeyError(f"A task attempt must be a whole number from 0 up, got {attempt!r}.")
    return f"attempt-{attempt}"


def parse_attempt_folder(name: str) -> int | None:
    """The attempt number of an ``attempt-<n>`` folder name, None for anything else."""
    match = _ATTEMPT_FOLDER.fullmatch(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class AttemptKey:
    """Which task attempt: the one identity every record of an attempt is stored under.

    ``attempt`` is Airflow's try number (1 for the first try); the manifest of each attempt is
    kept, so a retry never overwrites what an earlier attempt wrote.
    """

    flow: str
    run_id: str
    step: str
    task_id: str
    attempt: int

    @property
    def task_pathspec(self) -> str:
        """``Flow/run/step/task``, the client's name for the task."""
        return f"{self.flow}/{self.run_id}/{self.step}/{self.task_id}"

    @property
    def pathspec(self) -> str:
        """``Flow/run/step/task/attempt``."""
        return f"{self.task_pathspec}/{self.attempt}"

    def describe(self) -> str:
        """The attempt, in words, for messages."""
        return (
            f"task {self.task_id} of step '{self.step}' (attempt {self.attempt}) in run {self.run_id} of "
            f"flow {self.flow}"
        )


def attempt_prefix(attempt: AttemptKey) -> str:
    return task_prefix(attempt.flow, attempt.run_id, attempt.step, attempt.task_id) + (
        f"{attempt_folder(attempt.attempt)}/"
    )


def manifest_key(attempt: AttemptKey) -> str:
    return attempt_prefix(attempt) + MANIFEST_FILE


def attempt_file_key(attempt: AttemptKey, name: str) -> str:
    return attempt_prefix(attempt) + safe_key_part(name)


def task_spec_key(attempt: AttemptKey) -> str:
    return attempt_prefix(attempt) + TASK_SPEC_FILE


def step_result_key(attempt: AttemptKey) -> str:
    return attempt_prefix(attempt) + STEP_RESULT_FILE


def xcom_value_key(dag_id: str, run_id: str, task_id: str, map_index: int, key: str) -> str:
    """Where an ordinary task's pickled XCom lives: one key per XCom, so a re-run replaces exactly it."""
    return xcom_folder(dag_id, run_id, task_id, map_index) + safe_key_part(f"{key}.pkl")


def xcom_folder(dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """The folder of one task instance's stored XComs."""
    return XCOM_PREFIX + "".join(
        f"{safe_key_part(part)}/" for part in (dag_id, run_id, task_id, str(map_index))
    )


def xcom_chunk_key(dag_id: str, run_id: str, task_id: str, map_index: int, key: str, position: int) -> str:
    """Where chunk ``position`` of a chunked XCom (a list that mapped tasks read one element of each,
    see :mod:`.chunks`) lives: beside where the XCom's pickle would be, one key per chunk."""
    if isinstance(position, bool) or not isinstance(position, int) or position < 0:
        raise UnsafeKeyError(f"A chunk position must be a whole number from 0 up, got {position!r}.")
    return xcom_folder(dag_id, run_id, task_id, map_index) + xcom_chunk_name(key, position)


def xcom_chunk_name(key: str, position: int) -> str:
    return safe_key_part(f"{key}.chunk-{position}.json")


def parse_xcom_chunk_name(key: str, name: str) -> int | None:
    """The position of a file named like chunk ``position`` of XCom ``key``, None for any other file."""
    prefix = safe_key_part(f"{key}.chunk-")
    match = _CHUNK_POSITION.fullmatch(name[len(prefix) :]) if name.startswith(prefix) else None
    return int(match.group(1)) if match else None
