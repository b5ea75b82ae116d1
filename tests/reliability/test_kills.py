"""Kills leave nothing that lasts (issue 10): SIGKILLed step processes, local root and S3 root.

One kill campaign per backend (see ``kills.py``): a real step process (``python -m
airflow_flowspec.runtime``) saving 20 artifacts is SIGKILLed at seeded random instants of its save
and at fixed points, then a fresh process opens the datastore (the sweep), every manifest is read
back and verified, and killed tasks are run again. Each test below checks one promise against the
campaign's figures; its docstring names the protection it guards, and says how it fails without it.

``FLOWSPEC_SOAK=1`` runs 200 kills per backend instead of 8 (the figures for RELIABILITY.md are
printed with ``-s``, or come from ``python tests/reliability/kills.py --kills 200``).
"""

from __future__ import annotations

import json
import os
import uuid

import pytest
from kills import KILL_POINTS, KillReport, expected_artifacts, kill_campaign

#: The bucket the ``s3_endpoint`` fixture (tests/conftest.py) creates.
S3_TEST_BUCKET = "flowspec-test"
SOAK = os.environ.get("FLOWSPEC_SOAK") == "1"
RANDOM_KILLS = 200 if SOAK else 8
RANDOM_RETRIES = 20 if SOAK else 3
ARTIFACTS_PER_TASK = len(expected_artifacts(0))


def points_for(backend: str, *, retried: bool = False) -> int:
    return sum(point.backend in ("any", backend) and (point.retry or not retried) for point in KILL_POINTS)


@pytest.fixture(scope="module", params=["local", "s3"])
def campaign(request, tmp_path_factory) -> KillReport:
    """The figures of one campaign on the backend, run once for all the tests of this module."""
    workdir = tmp_path_factory.mktemp(f"kills-{request.param}")
    if request.param == "s3":
        request.getfixturevalue("s3_endpoint")  # moto's server; the AWS_* variables point at it
        root = f"s3://{S3_TEST_BUCKET}/kills-{uuid.uuid4().hex[:8]}"
        env = {"AIRFLOW__FLOWSPEC__SCRATCH_DIR": str(workdir / "scratch")}
    else:
        root, env = str(workdir / "store"), {}
    report = kill_campaign(
        root=root, kills=RANDOM_KILLS, seed=10 if request.param == "local" else 11, workdir=workdir, env=env,
        retries=RANDOM_RETRIES,
    )  # fmt: skip
    print(json.dumps(report.as_dict(), indent=1))
    return report


def figures(report: KillReport) -> str:
    """For assertion messages: what went wrong first, then every figure."""
    shown = {name: value for name, value in report.as_dict().items() if name != "problems"}
    return "\n".join(report.problems[:10]) + f"\n{json.dumps(shown)}"


def test_the_kills_hit_the_save(campaign):
    """Guards the harness itself: without this, the tests below could pass by killing nothing.

    Every kill point was reached (a point whose function was renamed fails here), random kills
    found the child still saving, the kills left scratch files and run folders with no manifest,
    some manifests were complete anyway (kills after the manifest), and on S3 at least one
    multipart upload was left open for the sweep to abort.
    """
    report = campaign
    assert report.kill_points_missed == 0, figures(report)
    assert report.kills_at_points == points_for(report.backend), figures(report)
    assert report.kills == RANDOM_KILLS + report.kills_at_points, figures(report)
    # A save's length varies from run to run: a kill in the last slice of the window may find the
    # child gone (typically 1 or 2 of 8). The kill points are what guarantees the narrow windows.
    assert report.kills_mid_save - report.kills_at_points >= RANDOM_KILLS // 4, figures(report)
    assert report.scratch_files_left_by_kills > 0 and report.scratch_files_before_sweep > 0, figures(report)
    assert report.runs_without_start_manifest > 0 and report.manifests_checked >= 3, figures(report)
    if report.backend == "s3":
        assert report.multipart_uploads_before_sweep > 0, figures(report)


def test_no_artifact_is_lost_or_wrong(campaign):
    """Guards the write order and atomic writes: ``run_step`` writes every artifact, then the run
    record, the result and the manifest last; each object appears whole or not at all (a scratch
    file renamed into place locally; one PUT, or a multipart upload completed, on S3).

    Every manifest present, whenever its task was killed, lists exactly the artifacts the step set,
    and each one loads verified against its hash and equal to the value set. Fails when blobs are
    written after the manifest (e.g. deferred until after ``write_manifest``): the "manifest
    written" kill point then leaves a manifest naming blobs that were never stored.
    """
    report = campaign
    assert report.artifacts_lost == 0 and report.artifacts_wrong == 0, figures(report)
    assert report.artifacts_verified == report.manifests_checked * ARTIFACTS_PER_TASK, figures(report)


def test_scratch_files_of_killed_tasks_are_swept(campaign):
    """Guards the scratch sweep: scratch files live in one folder (``<root>/.tmp`` locally,
    ``[flowspec] scratch_dir`` for S3), named after their owner, and ``open_datastore`` removes
    those of dead processes (``scratch.sweep`` via ``StorageBackend.sweep``).

    After a fresh process opened the datastore, no file is left in the scratch folder. Fails when
    ``scratch.sweep`` does nothing (the pickles of killed tasks stay, tens of MB each).
    """
    report = campaign
    assert report.scratch_files_after_sweep == 0 and report.scratch_bytes_after_sweep == 0, figures(report)


def test_multipart_uploads_of_killed_tasks_are_aborted(campaign):
    """Guards ``S3Backend.sweep``: multipart uploads under the root older than ``[flowspec]
    sweep_after_hours`` (0 for this sweep) are aborted when a process opens the datastore.

    Fails when ``abort_stale_uploads`` does nothing: the upload a kill left open stays, billed.
    """
    report = campaign
    if report.backend != "s3":
        pytest.skip("only S3 has multipart uploads")
    assert report.multipart_uploads_after_sweep == 0, figures(report)


def test_a_killed_start_never_moves_latest_run(campaign):
    """Guards the order in ``run_step``: the run enters the run index (``index_run``) only
    after the start step's manifest is written, never with the run record (``write_run_meta``).

    Checked after every kill, after the sweep and after the retries: the latest run is none, or a
    run whose start step has a manifest. Fails when ``write_run_meta`` indexes the run (the
    pointer it replaced once did): the "run record written" kill point leaves the index naming a
    run with nothing in it.
    """
    report = campaign
    assert report.latest_run_checks == report.kills + 2, figures(report)
    assert report.latest_run_without_start_manifest == 0, figures(report)


def test_a_killed_task_runs_again(campaign):
    """Guards the retry of a killed task: nothing a kill leaves (a spec, result or manifest of the
    killed attempt, blobs and packs it stored, an open multipart upload, a run record) blocks the
    next attempt or the same attempt run again, or is taken as stored without a check
    (``blob_is_stored``: the size, and on S3 the hash recorded with the object); and a retried
    start keeps the run's first ``created_at`` (``write_run_meta``), so the run's records say when
    it really started.

    The tasks of the kill points marked ``retry`` and some randomly killed ones run again: each
    exits 0 and its artifacts load as set. Fails when ``write_run_meta`` stamps a new
    ``created_at`` on a retry; and when ``blob_is_stored`` is reduced to "exists" while blobs are
    written in place (a blob cut short by the kill is then taken as stored by the retry).
    """
    report = campaign
    randomly_killed = report.kills_mid_save - report.kills_at_points
    expected = points_for(report.backend, retried=True) + min(RANDOM_RETRIES, randomly_killed)
    assert report.retries == expected, figures(report)
    assert report.retries_succeeded == report.retries, figures(report)
    assert report.retry_artifacts_verified == report.retries * ARTIFACTS_PER_TASK, figures(report)
    assert report.retried_runs_with_new_created_at == 0, figures(report)
