"""The S3 fault campaign: save and load a task's worth of artifacts, and run flows, while S3 fails.

One round stores a realistic mix through a fresh S3 backend (so its client is made while the
faults are on): many small artifacts (packs), medium ones (blobs written in parallel), one that
goes up in multipart parts and comes back in parallel ranges, then reads every one back through
another fresh backend and compares it with what was saved. Two kinds of fault:

* ``"botocore"``: :func:`faults.inject_s3_faults` fails a fraction of requests with 500, 503 or a
  connection error before they are sent (what S3 does under load);
* ``"proxy"``: :class:`faults.FaultyProxy` resets a fraction of new connections and cuts others
  after a random number of response bytes (a download breaking off mid-body).

:func:`fault_campaign` adds up rounds (and optionally whole flow runs on Airflow) into a
:class:`SurvivalReport`; the tests run it small, ``soak.py`` large.
"""

from __future__ import annotations

import contextlib
import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from faults import FaultyProxy, inject_s3_faults

BUCKET = "flowspec-test"
#: Part size for the round's multipart artifact (S3's minimum part is 5 MB).
PART_BYTES = 5 * 1024 * 1024
#: Backoff base for the injected faults' retries: real backoff would make a campaign sleep minutes.
FAST_BACKOFF = 0.001


@dataclass
class SurvivalReport:
    kind: str
    rate: float
    rounds: int = 0
    requests: int = 0
    injected: dict[str, int] = field(default_factory=dict)
    resumed_downloads: int = 0
    artifacts_verified: int = 0
    artifacts_lost_or_wrong: int = 0
    rounds_failed: int = 0
    flow_runs: int = 0
    flow_runs_failed: int = 0
    failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def round_values(rng: random.Random, round_number: int) -> dict[str, Any]:
    """What one step might set: 40 small values, 4 medium blobs, one 2 MB and one 12 MB array of bytes.

    Every value carries the round number, so no round finds another's blobs already stored.
    """
    tag = f"round {round_number} {uuid.uuid4().hex}"
    values: dict[str, Any] = {f"metric_{i}": {"tag": tag, "value": rng.random()} for i in range(40)}
    for i in range(4):
        values[f"table_{i}"] = (tag, rng.randbytes(200 * 1024))
    values["weights"] = (tag, rng.randbytes(2 * 1024 * 1024))
    values["checkpoint"] = (tag, rng.randbytes(12 * 1024 * 1024))
    return values


def one_round(root: str, rng: random.Random, round_number: int, report: SurvivalReport) -> None:
    """Save a round's values through one fresh backend and read them back through another."""
    from airflow_flowspec.datastore import encoding
    from airflow_flowspec.datastore.artifacts import ArtifactStore
    from airflow_flowspec.datastore.backends.s3 import S3Backend

    def store() -> ArtifactStore:
        backend = S3Backend(root, multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES)
        return ArtifactStore(backend)

    values = round_values(rng, round_number)
    writer = store()
    refs = writer.save_many(values)
    reader = store()
    limit = encoding.REMOTE_IN_MEMORY_LOAD_LIMIT
    encoding.REMOTE_IN_MEMORY_LOAD_LIMIT = 4 * 1024 * 1024  # the 12 MB blob: parallel ranged download
    try:
        for name, ref in refs.items():
            if reader.load(ref, what=f"artifact {name!r}") == values[name]:
                report.artifacts_verified += 1
            else:
                report.artifacts_lost_or_wrong += 1
    finally:
        encoding.REMOTE_IN_MEMORY_LOAD_LIMIT = limit
    report.resumed_downloads += reader.backend.counters.resumed


@contextlib.contextmanager
def _endpoint(url: str) -> Iterator[None]:
    previous = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = url
    try:
        yield
    finally:
        os.environ["AWS_ENDPOINT_URL"] = previous or ""
        if previous is None:
            del os.environ["AWS_ENDPOINT_URL"]


@contextlib.contextmanager
def faulty_s3(kind: str, rate: float, endpoint: str, seed: int) -> Iterator[Any]:
    """S3 failing at ``rate`` in the given way, for clients made inside the block; yields a
    callable that returns (requests, {fault kind: count}) so far."""
    if kind == "botocore":
        with inject_s3_faults(rate, seed=seed, backoff=FAST_BACKOFF) as counters:
            yield lambda: (counters.requests, dict(counters.injected))
    elif kind == "proxy":
        with FaultyProxy(endpoint, reset_rate=rate / 2, cut_rate=rate / 2, seed=seed) as proxy:
            with _endpoint(proxy.url):
                yield lambda: (proxy.connections, {"reset": proxy.resets, "cut": proxy.cuts})
    else:
        raise ValueError(f"Unknown fault kind {kind!r}: botocore or proxy.")


def fault_campaign(
    *,
    endpoint: str,
    kind: str,
    rate: float,
    rounds: int,
    seed: int,
    flow_file: Path | None = None,
    flow_runs: int = 0,
) -> SurvivalReport:
    """``rounds`` datastore rounds, then ``flow_runs`` runs of ``flow_file`` on Airflow, all under faults.

    Flow runs need Airflow's database ready (the ``airflow_db`` fixture) and use a fresh datastore
    root each, so each run's S3 client is made while the faults are on.
    """
    report = SurvivalReport(kind=kind, rate=rate)
    rng = random.Random(seed)
    with faulty_s3(kind, rate, endpoint, seed) as seen:
        for number in range(rounds):
            root = f"s3://{BUCKET}/survival-{kind}-{uuid.uuid4().hex}"
            report.rounds += 1
            try:
                one_round(root, rng, number, report)
            except Exception as error:  # noqa: BLE001 - a failed round is a figure, not a crash
                report.rounds_failed += 1
                report.failures.append(f"round {number}: {type(error).__name__}: {error}"[:500])
        for number in range(flow_runs):
            assert flow_file is not None
            report.flow_runs += 1
            failure = run_flow_on_fresh_root(flow_file, f"s3://{BUCKET}/survival-flow-{uuid.uuid4().hex}")
            if failure:
                report.flow_runs_failed += 1
                report.failures.append(f"flow run {number}: {failure}"[:500])
        report.requests, report.injected = seen()
    return report


def run_flow_on_fresh_root(flow_file: Path, root: str) -> str | None:
    """Run the flow with its datastore at ``root``; None when it succeeded with the right results,
    else what went wrong."""
    from harness import run_flow

    previous = os.environ.get("AIRFLOW__FLOWSPEC__DATASTORE_ROOT")
    os.environ["AIRFLOW__FLOWSPEC__DATASTORE_ROOT"] = root
    try:
        run = run_flow(flow_file)
        if not run.succeeded:
            return f"run {run.run_id} failed: {run.states()}"
        if run.artifacts("end")["results"] != ["0:A", "1:B", "2:C", "3:D"]:
            return "wrong results"
        return None
    finally:
        os.environ["AIRFLOW__FLOWSPEC__DATASTORE_ROOT"] = previous or ""
