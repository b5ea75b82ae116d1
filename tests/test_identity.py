"""One identity per run (issue 20): every stored name, DAG id and XCom folder comes from
``RunIdentity``, two deployments can never name the same stored run, and a name that would is
refused with its rule."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from airflow_flowspec.errors import RunIdentityError
from airflow_flowspec.identity import Deployment, RunIdentity

AIRFLOW_RUN = "scheduled__2026-11-02T00:00:00+00:00"


def test_a_run_of_a_flow_without_project_keeps_metaflows_path():
    run = RunIdentity("TrainFlow", "manual__2026-11-25T10:00:00+00:00")
    assert (run.dag_id, run.run_id, run.pathspec) == (
        "TrainFlow",
        "manual__2026-11-25T10:00:00+00:00",
        "TrainFlow/manual__2026-11-25T10:00:00+00:00",
    )


def test_project_runs_of_two_projects_and_branches_never_share_a_stored_run():
    """Guards finding 4: the project is part of the stored id, not only the branch."""
    runs = [
        RunIdentity("TrainFlow", AIRFLOW_RUN, project, branch)
        for project in ("alpha", "beta")
        for branch in ("prod", "prod.nightly", "test.staging", "user.ana")
    ]
    runs.append(RunIdentity("TrainFlow", AIRFLOW_RUN))
    assert len({run.run_id for run in runs}) == len(runs) == 9
    assert len({run.dag_id for run in runs}) == 9
    alpha = runs[0]
    assert (alpha.dag_id, alpha.run_id) == ("alpha.prod.TrainFlow", f"alpha.prod:{AIRFLOW_RUN}")


@pytest.mark.parametrize("branch", ["prod", "prod.nightly", "test.a.b", "user.ana-b"])
def test_every_form_of_a_run_leads_back_to_it(branch):
    run = RunIdentity("TrainFlow", AIRFLOW_RUN, "demand_forecast", branch)
    assert RunIdentity.parse("TrainFlow", run.run_id) == run
    assert RunIdentity.of_dag_run(run.dag_id, run.airflow_run_id) == run
    assert RunIdentity.from_json(run.to_json()) == run
    assert Deployment.from_text(run.deployment.to_text()).run(AIRFLOW_RUN) == run


def test_a_run_id_of_the_project_form_is_refused_for_a_flow_without_project():
    """Guards injectivity: Airflow accepts a custom run id such as 'alpha.prod:x'; stored as is under
    a flow without @project, it would be project alpha's run of a flow of that name."""
    with pytest.raises(RunIdentityError, match="has the form <project>.<branch>:<run id>"):
        RunIdentity("TrainFlow", f"alpha.prod:{AIRFLOW_RUN}")
    # Airflow's own run ids never have that form.
    for airflow_run in (
        "manual__2026-11-25T10:00:00.123+00:00",
        AIRFLOW_RUN,
        "backfill__2026-11-02T00:00:00+00:00",
    ):
        assert RunIdentity("TrainFlow", airflow_run).run_id == airflow_run


@pytest.mark.parametrize(
    ("dag_id", "rule"),
    [
        ("evil..VictimFlow", "without a branch"),  # the look-alike of finding 3
        ("Evil.prod.VictimFlow", "not a project name"),
        ("alpha.prod.Victim-Flow", "not a flow name"),
    ],
)
def test_a_dag_id_that_is_no_deployment_names_no_run(dag_id, rule):
    with pytest.raises(RunIdentityError, match=rule):
        RunIdentity.of_dag_run(dag_id, AIRFLOW_RUN)


def test_a_recorded_identity_that_does_not_add_up_is_refused():
    document = RunIdentity("TrainFlow", AIRFLOW_RUN, "alpha", "prod").to_json()
    with pytest.raises(RunIdentityError, match="says dag_id 'beta.prod.TrainFlow'"):
        RunIdentity.from_json({**document, "dag_id": "beta.prod.TrainFlow"})
    with pytest.raises(RunIdentityError, match="needs 'airflow_run_id'"):
        RunIdentity.from_json({"flow": "TrainFlow"})
    with pytest.raises(RunIdentityError, match="does not describe a flow's deployment"):
        Deployment.from_text('{"flow": "TrainFlow"}')


def test_records_written_before_identities_are_read_as_they_were_stored():
    legacy_project = {
        "context": {"project": "alpha", "project_branch": "prod", "dag_id": "alpha.prod.TrainFlow"}
    }
    run = RunIdentity.of_record("TrainFlow", f"prod:{AIRFLOW_RUN}", legacy_project)
    assert (run.dag_id, run.airflow_run_id) == ("alpha.prod.TrainFlow", AIRFLOW_RUN)
    assert RunIdentity.of_record("TrainFlow", AIRFLOW_RUN, {}) == RunIdentity("TrainFlow", AIRFLOW_RUN)


def test_an_id_of_digits_alone_or_latest_is_never_a_stored_run_id():
    """Guards the short ids (issue 21): ``TrainFlow/12`` is run number 12 and ``TrainFlow/latest``
    the latest run, so no run may be stored under either. Airflow accepts such a custom run id
    (its ``run_id_pattern`` allows digits alone), so the identity refuses it, for every deployment;
    Airflow's own ids (``<run type>__<date>``) never are one: they start with their type."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.types import DagRunType

    from airflow_flowspec.identity import is_latest, run_number_of

    for custom in ("12", "0012", "0", "latest"):
        with pytest.raises(RunIdentityError, match="would be read as") as refused:
            RunIdentity("TrainFlow", custom)
        assert ("the latest run" if custom == "latest" else "a run's number") in str(refused.value)
        with pytest.raises(RunIdentityError, match="would be read as"):
            RunIdentity("TrainFlow", custom, "alpha", "prod")
    assert [run_number_of(text) for text in ("12", "1", "0012", "0", "-3", "1e3", "12 ", "١٢")] == [
        12,
        1,
        None,
        None,
        None,
        None,
        None,
        None,
    ]
    moment = datetime(2026, 12, 7, 14, 11, 40, 626705, tzinfo=timezone.utc)
    for run_type in DagRunType:
        airflow_run = DagRun.generate_run_id(run_type=run_type, logical_date=moment, run_after=moment)
        assert airflow_run.startswith(f"{run_type.value}__")
        assert run_number_of(airflow_run) is None and not is_latest(airflow_run)
        assert RunIdentity("TrainFlow", airflow_run).run_id == airflow_run
