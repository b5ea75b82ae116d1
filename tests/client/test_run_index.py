"""The run index: the client's "latest run" and "last N runs" cost requests that do not grow with
the number of runs a flow has, on the local store and on S3 (moto's server), and concurrent runs
never lose each other's entries.

Runs are written through the same Datastore calls the runtime makes when a start step finishes
(``write_run_meta``, ``index_run``) and when a run ends (``finish_run``): a thousand real flow
runs would take minutes and prove nothing more about the index.
"""

from __future__ import annotations

import itertools
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from conftest import S3_TEST_BUCKET
from harness import a_manifest

from airflow_flowspec import Flow, metadata, namespace
from airflow_flowspec.client.source import client_datastore
from airflow_flowspec.datastore.store import Datastore

# The client in every namespace, its root and namespace forgotten after each test (conftest).
pytestmark = pytest.mark.usefixtures("every_namespace")

FLOW = "IndexFlow"
T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "s3":
        request.getfixturevalue("s3_endpoint")
        return f"s3://{S3_TEST_BUCKET}/index-{uuid.uuid4().hex[:8]}"
    return str(tmp_path / "store")


def record_runs(datastore: Datastore, count: int, *, user=lambda i: "ana", succeeded=lambda i: True, start=0):
    """``count`` finished runs, one second apart, each with an end task whose ``score`` is its number
    (written by eight threads: the index does not depend on the order runs are recorded in)."""

    def record(i: int) -> None:
        run_id = f"run-{i:05d}"
        who = user(i)
        record = datastore.write_run_meta(
            FLOW,
            run_id,
            {
                "created_at": (T0 + timedelta(seconds=i)).isoformat(),
                "tags": [f"user:{who}"],
                "system_tags": [f"user:{who}"],
            },
        )
        datastore.index_run(FLOW, run_id, record)
        ref = datastore.artifacts.save("score", i)
        datastore.write_manifest(a_manifest(FLOW, run_id, "end", artifacts={"score": ref}))
        datastore.finish_run(FLOW, run_id, succeeded(i), {})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(record, range(start, start + count)))


def requests_for(action) -> tuple[object, int]:
    counters = client_datastore().backend.counters
    before = counters.snapshot()["requests"]
    result = action()
    return result, counters.snapshot()["requests"] - before


def test_latest_runs_and_the_last_ten_cost_the_same_with_ten_times_the_runs(root):
    """Guards the run index: ``latest_successful_run``, ``latest_run`` and the last ten runs are
    read from the index's first keys, not by listing and reading every run (which made each grow
    with the flow's history). The counts with 10x more runs (1,000 locally, 200 on S3) must be equal."""
    datastore = Datastore(root)
    metadata(root)
    counts = []
    totals = (20, 200) if root.startswith("s3://") else (100, 1000)
    for total in totals:
        already = 0 if not counts else totals[0]
        # a run in seven failed, and the newest: the latest successful run is not the latest run
        record_runs(
            datastore, total - already, start=already, succeeded=lambda i, n=total: i % 7 != 3 and i != n - 1
        )
        latest_ok, ok_requests = requests_for(lambda: Flow(FLOW).latest_successful_run)
        assert latest_ok.id == f"run-{total - 2:05d}" and latest_ok.successful
        assert latest_ok.data.score == total - 2
        latest, latest_requests = requests_for(lambda: Flow(FLOW).latest_run)
        assert latest.id == f"run-{total - 1:05d}" and not latest.successful
        last_ten, ten_requests = requests_for(
            lambda: [run.id for run in itertools.islice(Flow(FLOW).runs(), 10)]
        )
        assert last_ten == [f"run-{i:05d}" for i in range(total - 1, total - 11, -1)]
        counts.append((ok_requests, latest_requests, ten_requests))
    assert counts[0] == counts[1], counts
    ok_requests, latest_requests, ten_requests = counts[1]
    # S3 lists ten entries in one request; a local folder's entries are one listing each
    ten_bound = 16 if root.startswith("s3://") else 26
    assert ok_requests <= 8 and latest_requests <= 6 and ten_requests <= ten_bound, counts


def test_a_namespace_finds_its_latest_run_without_reading_other_users_runs(root):
    """Guards the per-tag index lists: with 100 of bob's runs newer than ana's last, ana's
    notebook (namespace ``user:ana``) finds her latest successful run in a handful of requests,
    where walking the runs newest first would read 100 records."""
    datastore = Datastore(root)
    metadata(root)
    record_runs(datastore, 120, user=lambda i: "ana" if i < 20 else "bob")  # bob's are newer
    namespace("user:ana")
    run, requests = requests_for(lambda: Flow(FLOW).latest_successful_run)
    assert run.id == "run-00019" and run.data.score == 19
    assert requests <= 8, requests
    assert [r.id for r in itertools.islice(Flow(FLOW).runs(), 3)] == ["run-00019", "run-00018", "run-00017"]
    namespace("user:carol")
    assert Flow(FLOW).latest_successful_run is None and list(Flow(FLOW).runs()) == []
    namespace("production:IndexFlow")
    assert Flow(FLOW).latest_run is None


def test_concurrent_runs_never_lose_each_others_entries(root):
    """Guards the index's write-once entries: two writers (separate Datastore objects, as two
    workers are) recording runs at the same time all end up listed, newest first, and the latest
    is the run that started last. A shared index file updated by read-then-write loses entries."""

    def writer(offset: int) -> None:
        datastore = Datastore(root)
        for i in range(offset, 80, 2):  # interleaved start times
            run_id = f"run-{i:05d}"
            record = datastore.write_run_meta(
                FLOW,
                run_id,
                {"created_at": (T0 + timedelta(seconds=i)).isoformat(), "system_tags": ["user:ana"]},
            )
            datastore.index_run(FLOW, run_id, record)
            datastore.finish_run(FLOW, run_id, True, {})

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(writer, [0, 1]))
    datastore = Datastore(root)
    expected = [f"run-{i:05d}" for i in range(79, -1, -1)]
    assert list(datastore.indexed_runs(FLOW, page_size=7)) == expected
    assert list(datastore.indexed_runs(FLOW, successful=True, namespace="user:ana")) == expected
    assert datastore.latest_run(FLOW) == datastore.latest_successful_run(FLOW) == "run-00079"
