"""gc never takes what a running run, or a save, relies on (issue 20, findings 1 and 2): the gc
campaign on a local root and on S3.

One campaign per backend (see ``gc_campaign.py``): gc pass after pass, its deletes slowed, while
ordinary runs, long steps, saves racing gc for the blobs it takes, a run cleared on Airflow, tasks
re-run as gc comes to delete their runs and one re-run after, write and read. Each test below checks
one promise against the campaign's figures; its docstring names the protection it guards and what
the campaign shows without it (each was tried: the protection removed from the product code, the
campaign run, the test failing as said).

``FLOWSPEC_SOAK=1`` runs six rounds per backend with deletes slowed by 3 s instead of one round
slowed by 1 s (the figures for RELIABILITY.md come from ``soak.py``).
"""

from __future__ import annotations

import json
import os
import uuid

import pytest
from gc_campaign import CI_SIZE, SOAK_SIZE, GcReport, gc_campaign

pytestmark = pytest.mark.usefixtures("airflow_db")

#: The bucket the ``s3_endpoint`` fixture (tests/conftest.py) creates.
S3_TEST_BUCKET = "flowspec-test"
SOAK = os.environ.get("FLOWSPEC_SOAK") == "1"
SIZE = SOAK_SIZE if SOAK else CI_SIZE


@pytest.fixture(scope="module", params=["local", "s3"])
def campaign(request, tmp_path_factory) -> GcReport:
    """The figures of one campaign on the backend, run once for all the tests of this module."""
    workdir = tmp_path_factory.mktemp(f"gc-campaign-{request.param}")
    if request.param == "s3":
        request.getfixturevalue("s3_endpoint")  # moto's server, in this process: objects can be aged
        root = f"s3://{S3_TEST_BUCKET}/gc-campaign-{uuid.uuid4().hex[:8]}"
    else:
        root = str(workdir / "store")
    report = gc_campaign(root=root, seed=20261207, workdir=workdir / "work", **SIZE)
    print(json.dumps(report.as_dict(), indent=1))
    return report


def figures(report: GcReport) -> str:
    """For assertion messages: what went wrong first, then every figure."""
    shown = {name: value for name, value in report.as_dict().items() if name != "problems"}
    return "\n".join(report.problems[:10]) + f"\n{json.dumps(shown)}"


def test_the_campaign_ran_every_race(campaign):
    """Guards the harness itself: without this, the tests below could pass with gc idle.

    gc made passes and deleted old runs; every long step was judged by a whole pass while it
    computed; every run cleared on Airflow was judged while queued; each racing run's save relied
    on its blob during gc's slowed delete, a racing run's next steps read it from the trash and a later pass
    moved it back while a reader loaded it; trash rounds waited for running tasks; every late
    re-run made gc spare its run, and every re-run too late came after gc deleted its run.
    """
    report = campaign
    rounds = SIZE["rounds"]
    assert report.rounds == rounds and report.gc_passes >= 3 * rounds, figures(report)
    assert report.runs_deleted >= 2 * rounds and report.blobs_trashed > 0, figures(report)
    assert report.long_step_runs == rounds * SIZE["long_steps"], figures(report)
    assert report.long_steps_judged_while_computing == report.long_step_runs, figures(report)
    assert report.cleared_runs == report.cleared_runs_judged_while_queued == rounds, figures(report)
    assert report.racing_runs >= 1, figures(report)
    assert report.slowed_deletes_overlapping_a_save >= report.racing_runs, figures(report)
    # At least one racing run's next step read its blob from the trash; on a loaded machine gc
    # may move another run's blob back before that run's next step reads it.
    assert report.reads_from_the_trash >= 1, figures(report)
    assert report.reads_racing_a_move_back >= 1, figures(report)
    assert report.blobs_restored >= 1 and report.trash_rounds_waited >= 1, figures(report)
    assert report.late_reruns == 2 * rounds and report.too_late_reruns == rounds, figures(report)
    assert report.late_reruns_ended_before_the_mark == rounds, figures(report)
    assert report.runs_spared >= report.late_reruns, figures(report)


def test_no_artifact_is_lost_or_wrong(campaign):
    """Guards everything below together: every artifact and code package of every run, read as it
    finished while gc ran and again at the end for every run gc kept, loads and equals what its
    step stored."""
    report = campaign
    assert report.artifacts_lost == 0 and report.artifacts_wrong == 0, figures(report)
    # A finished run's three manifests list at least 24 artifacts, with a code package each.
    assert report.artifacts_checked >= 27 * report.runs_finished_during_gc > 0, figures(report)


def test_a_step_computing_longer_than_a_lease_lives_keeps_its_run(campaign):
    """Guards leases (finding 1): a task renews its lease while its step computes, and gc keeps a
    run with a live lease however long ago it started and last wrote.

    Without the lease check in gc's decision (``_has_live_lease`` always False) the long step's
    run is deleted as it computes and its next task fails with RunDeletedError.
    """
    report = campaign
    assert report.tasks_failed_by_gc == 0, figures(report)
    assert report.runs_deleted_unexpectedly == 0, figures(report)


def test_a_save_that_relies_on_a_blob_as_gc_takes_it_never_loses_it(campaign):
    """Guards the two-step delete (finding 2): gc moves the blob to a trash round, readers find it
    there, and a round is emptied only once every task running when it closed has ended, moving back
    what their manifests name.

    Without the wait (rounds emptied at once) or without the readers' look in the trash, each
    racing run fails: "artifact 'pooled_N' ... is missing from the datastore". Without the readers'
    second look in data/, each read racing the move back is lost (it was, until this campaign).
    """
    report = campaign
    assert report.tasks_failed_by_gc == 0 and report.tasks_failed_otherwise == 0, figures(report)
    assert report.blobs_restored >= 1 and report.trash_left_at_end == 0, figures(report)


def test_a_task_that_starts_as_gc_comes_to_delete_its_run_keeps_it(campaign):
    """Guards the deletion mark and gc's last look: gc writes the mark, then looks at the run once
    more and spares it if a task holds a live lease on it, or wrote into it since gc decided (a
    task that started and ended in between); the task, having written its lease, goes on.

    Without the last look, the late re-runs' runs are deleted under them (RunDeletedError). Without
    its look at what was written (until this campaign), the run whose task ended before gc's mark
    is deleted with that task's results, and its next task fails.
    """
    report = campaign
    assert report.runs_spared >= report.late_reruns >= 1, figures(report)
    assert report.tasks_failed_by_gc == 0, figures(report)


def test_a_cleared_run_is_kept_while_airflow_has_it_queued(campaign):
    """Guards asking Airflow (``airflow_run_active``): between a clear and the task's first write
    only Airflow knows the run is about to run again.

    Without it gc deletes the aged cleared run while it is queued.
    """
    report = campaign
    assert report.cleared_runs_judged_while_queued == report.cleared_runs, figures(report)
    assert report.runs_deleted_unexpectedly == 0, figures(report)


def test_a_task_whose_run_gc_deleted_is_refused_having_written_nothing(campaign):
    """Guards the task's side (``Lease._check_run``): a task re-run after gc deleted its run stops
    with RunDeletedError before it reads or writes anything of the run.

    Without the check the re-run goes ahead and fails on the artifacts gc took.
    """
    report = campaign
    assert report.tasks_refused_on_deleted_runs == report.too_late_reruns, figures(report)


def test_gc_never_fails_while_flows_write(campaign):
    """Guards gc's reading of a store being written (a document it reads half-way, a run folder
    emptied under it): every pass finishes."""
    report = campaign
    assert report.gc_failures == 0, figures(report)
