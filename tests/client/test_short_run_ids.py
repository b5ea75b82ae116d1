"""Short run ids (issue 21): every run gets a number per flow (``TrainFlow/12``) in the order runs
started, ``latest`` names the latest run, and both are taken wherever a run id is, on the local
store and on S3 (moto's server, which honours ``If-None-Match: *`` as S3 does).

Runs are written through the Datastore calls the runtime makes (``number_run`` before the start
step, ``write_run_meta`` and ``index_run`` after it), as tests/client/test_run_index.py does; the
command line, the flow CLI and the artifact view are tried on real runs in tests/test_shell.py,
tests/test_cli.py, tests/test_flow_commands.py and tests/airflow/test_artifact_view.py.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from aging import DAY, age_objects, age_run
from conftest import S3_TEST_BUCKET
from harness import a_manifest

from airflow_flowspec import Flow, Metaflow, Run, Step, metadata, namespace
from airflow_flowspec.datastore import keys
from airflow_flowspec.datastore.gc import collect_garbage
from airflow_flowspec.datastore.store import Datastore
from airflow_flowspec.errors import MetaflowNamespaceMismatch, MetaflowNotFound
from airflow_flowspec.identity import RunIdentity

# The client in every namespace, its root and namespace forgotten after each test (conftest).
pytestmark = pytest.mark.usefixtures("every_namespace")

FLOW = "ShortFlow"
#: One moment for every run: runs started in the same microsecond still have an order.
SAME_MOMENT = "2026-11-01T00:00:00+00:00"


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "s3":
        request.getfixturevalue("s3_endpoint")
        root = f"s3://{S3_TEST_BUCKET}/short-{uuid.uuid4().hex[:8]}"
    else:
        root = str(tmp_path / "store")
    metadata(root)
    return root


def airflow_run() -> str:
    return f"manual__2026-11-01T00:00:00.{uuid.uuid4().int % 10**6:06d}+00:00"


def start_run(
    datastore: Datastore,
    airflow_run_id: str,
    *,
    user: str = "ana",
    created_at: str = SAME_MOMENT,
    project: tuple[str, str] | None = None,
) -> RunIdentity:
    """A run's start as the runtime records it: numbered first, then its record, start manifest and
    index entry."""
    identity = RunIdentity(FLOW, airflow_run_id, *(project or (None, None)))
    meta = {"created_at": created_at, "tags": [f"user:{user}"], "system_tags": [f"user:{user}"]}
    meta["number"] = datastore.number_run(identity)
    record = datastore.write_run_meta(FLOW, identity.run_id, meta, identity=identity)
    datastore.write_manifest(a_manifest(FLOW, identity.run_id, "start"))
    datastore.index_run(FLOW, identity.run_id, record)
    return identity


def test_runs_starting_at_once_get_distinct_numbers_and_list_in_that_order(root):
    """Guards the allocation: twelve runs numbered at once (by twelve threads: the claims race in
    the store itself, as separate workers' do) take 1..12, each exactly once; six attempts of one
    run's start racing each other agree on one number. Runs then list by number, although every one started in
    the same microsecond and their ids sort the other way (the arbitrary tie order before)."""
    datastore = Datastore(root)
    identities = [RunIdentity(FLOW, f"manual__run-{99 - i:02d}") for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        numbers = list(pool.map(datastore.number_run, identities))
    assert sorted(numbers) == list(range(1, 13))

    again = RunIdentity(FLOW, "manual__raced-by-its-own-attempts")
    with ThreadPoolExecutor(6) as pool:
        agreed = set(pool.map(lambda _: datastore.number_run(again), range(6)))
    (number,) = agreed
    assert number >= 13 and datastore.run_of_number(FLOW, number) == again.run_id
    assert Datastore(root).number_run(again) == number  # asked again (a retry): the same

    by_number = dict(zip(numbers, identities, strict=True))
    for identity in [*identities, again]:
        meta = {"created_at": SAME_MOMENT, "number": datastore.number_run(identity), "tags": []}
        datastore.index_run(FLOW, identity.run_id, datastore.write_run_meta(FLOW, identity.run_id, meta))
    listed = [(run.number, run.id) for run in Flow(FLOW)]
    expected = [(n, by_number[n].run_id) for n in range(12, 0, -1)]
    assert listed == [(number, again.run_id), *expected]
    assert Flow(FLOW).latest_run.id == again.run_id


def test_a_run_is_named_by_its_number_by_latest_and_by_its_full_id(root):
    """Guards the lookups: ``Flow/<number>``, ``Flow/latest`` (in the namespace) and the full id
    name the same run, in Run, Flow[...], ``in`` and the paths of steps; what names no run gets
    the one-paragraph answer with what there is."""
    datastore = Datastore(root)
    first = start_run(datastore, airflow_run())
    second = start_run(datastore, airflow_run(), user="bob")
    project = start_run(datastore, airflow_run(), project=("alpha", "prod"))

    assert [run.id for run in Flow(FLOW)] == [project.run_id, second.run_id, first.run_id]
    assert [run.number for run in Flow(FLOW)] == [3, 2, 1]
    assert Run(f"{FLOW}/1").id == first.run_id and Run(f"{FLOW}/1") == Run(first.pathspec)
    assert Flow(FLOW)["2"].id == second.run_id
    assert Run(f"{FLOW}/latest").id == project.run_id == Flow(FLOW).latest_run.id
    assert "1" in Flow(FLOW) and "latest" in Flow(FLOW) and "4" not in Flow(FLOW)
    assert Step(f"{FLOW}/1/start").pathspec == f"{first.pathspec}/start"
    # A @project deployment's DAG id takes its own runs' numbers only.
    assert Run(f"alpha.prod.{FLOW}/3").id == project.run_id
    assert Run(f"alpha.prod.{FLOW}/latest").id == project.run_id
    with pytest.raises(MetaflowNotFound, match=f"has no run number 1 of the DAG alpha.prod.{FLOW}"):
        Run(f"alpha.prod.{FLOW}/1")

    namespace("user:bob")
    assert Run(f"{FLOW}/latest").id == second.run_id
    with pytest.raises(MetaflowNamespaceMismatch):
        Run(f"{FLOW}/1")  # ana's, as by its full id
    namespace("user:carol")
    with pytest.raises(MetaflowNotFound) as nothing:
        Run(f"{FLOW}/latest")
    assert str(nothing.value) == (
        f"Flow '{FLOW}' has no run in the namespace 'user:carol', so no run is the latest. Call "
        f"namespace(None) to see every run."
    )
    namespace(None)
    with pytest.raises(MetaflowNotFound) as unknown:
        Run(f"{FLOW}/7")
    assert str(unknown.value).startswith(f"Flow '{FLOW}' has no run number 7 in the datastore ")
    assert "its runs are numbered 1 to 3" in str(unknown.value)
    for not_a_number in ("07", "0"):  # a number has no leading zero: these would be stored ids
        with pytest.raises(MetaflowNotFound, match=f"has no run '{not_a_number}'"):
            Run(f"{FLOW}/{not_a_number}")


def test_gc_takes_a_deleted_runs_number_with_it_and_never_gives_a_number_again(root):
    """Guards gc: a deleted run's number goes with it (it names no run any more) but the flow's
    highest number stays taken, so the next run is not given a deleted run's number."""
    datastore = Datastore(root)
    started = [start_run(datastore, airflow_run()) for _ in range(3)]
    for run in started:
        datastore.finish_run(FLOW, run.run_id, False, {})  # failed: nothing keeps them
        age_run(root, FLOW, run.run_id, started_days_ago=60)
    age_objects(root, f"{FLOW}/", 3 * DAY)

    result = collect_garbage(datastore, older_than=timedelta(days=30))

    assert sorted(result.runs_deleted[FLOW]) == sorted(run.run_id for run in started)
    assert [obj.key for obj in datastore.backend.iter_objects(keys.run_numbers_prefix(FLOW))] == [
        keys.run_number_key(FLOW, 3)
    ]
    assert FLOW not in {flow.id for flow in Metaflow().flows}
    assert all(datastore.run_of_number(FLOW, number) is None for number in (1, 2, 3))
    after = start_run(datastore, airflow_run())
    assert Run(f"{FLOW}/4").id == after.run_id and Run(f"{FLOW}/latest").number == 4
    with pytest.raises(MetaflowNotFound, match="has no run number 3 "):
        Run(f"{FLOW}/3")


def test_a_folder_on_a_file_system_without_hard_links_still_gives_each_number_once(tmp_path, monkeypatch):
    """Guards the local backend's fallback: where ``link()`` is refused (some network shares), a
    number is claimed by O_EXCL on its own path, still once per number and once per run."""
    import errno
    import os

    def refused(*_: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", refused)
    identities = [RunIdentity(FLOW, f"manual__run-{i}") for i in range(8)]
    root = str(tmp_path / "store")
    with ThreadPoolExecutor(8) as pool:
        numbers = list(pool.map(lambda identity: Datastore(root).number_run(identity), identities))
    assert sorted(numbers) == list(range(1, 9))
    assert [Datastore(root).number_run(identity) for identity in identities] == numbers
    assert not Datastore(root).backend.put_if_absent(keys.run_number_key(FLOW, 3), b"{}")
