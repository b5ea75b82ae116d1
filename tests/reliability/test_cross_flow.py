"""The artifact view shows a run only through the DAG that made it, only to users Airflow lets read
that DAG (issue 20, findings 3 and 4): the cross-flow campaign.

One campaign (see ``cross_flow.py``): flows' DAGs, look-alikes and impostors sharing Airflow run
ids, ``@project`` flows of one class name in three projects and several branches, crafted run ids,
an older version's stored run; every run of every DAG asked for once per user, then requests at
random. Each test below checks one promise against the figures; its docstring names the protection
it guards and what the campaign shows without it (each was tried: the protection removed from the
product code, the campaign run, the test failing as said).

``FLOWSPEC_SOAK=1`` makes 3,000 random requests instead of 150.
"""

from __future__ import annotations

import json
import os

import pytest
from cross_flow import (
    CI_TRIES,
    FLOW_DAGS,
    IMPOSTORS,
    LOOK_ALIKES,
    PASSWORDS,
    PATHS,
    SOAK_TRIES,
    CrossFlowReport,
    cross_flow_campaign,
)

pytestmark = pytest.mark.usefixtures("airflow_db")

SOAK = os.environ.get("FLOWSPEC_SOAK") == "1"
TRIES = SOAK_TRIES if SOAK else CI_TRIES


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> CrossFlowReport:
    folder = tmp_path_factory.mktemp("cross-flow")
    report = cross_flow_campaign(
        root=str(folder / "store"), tries=TRIES, seed=20261207, workdir=folder / "dags"
    )
    print(json.dumps(report.as_dict(), indent=1))
    return report


def figures(report: CrossFlowReport) -> str:
    return json.dumps(report.as_dict())[:4000]


def test_the_campaign_tried_every_way_in(campaign):
    """Guards the harness: every deployment's runs succeeded (their markers are the truth), every
    way in, user and kind of DAG was tried, and runs were both served and refused, by Airflow (403)
    and by the view (404)."""
    report = campaign
    assert report.flow_runs_failed == 0, figures(report)
    assert report.dags == len(FLOW_DAGS) + len(LOOK_ALIKES) + len(IMPOSTORS), figures(report)
    assert set(report.by_path) == set(PATHS) and set(report.by_user) == set(PASSWORDS), figures(report)
    assert set(report.by_dag_kind) == {"flow", "look-alike", "impostor", "unknown"}, figures(report)
    assert set(report.served_by_dag) == {dag.dag_id for dag in FLOW_DAGS}, figures(report)
    assert report.refused_by_airflow > 0 and report.refused_by_the_view > 0, figures(report)
    assert report.tried == report.served_correctly + report.refused_correctly + report.let_in + (
        report.wrong_answers
    ), figures(report)


def test_nothing_is_let_in(campaign):
    """Guards, together: Airflow's access check on the DAG in the URL (a route dependency), the
    flow deployment read from the serialized DAG and its DAG id compared with the URL's
    (``_run_identity``), the run's identity checked against its record (``overview.run_of``),
    and the project in every stored run id.

    Without the DAG id comparison, ``beta.prod.TrainFlow.x`` (an impostor claiming alpha's prod)
    serves alpha's runs. Parsing the flow from the DAG id's text instead (as before issue 20),
    ``evil..VictimFlow`` serves VictimFlow's. Without the record check, the ``TrainFlow`` without
    ``@project`` serves, as its run ``prod:<run id>``, alpha's prod run an older version stored
    there.
    """
    report = campaign
    assert report.let_in == 0, json.dumps(report.examples, indent=1)


def test_every_run_a_user_may_read_is_served_through_its_own_dag(campaign):
    """Guards the other side: a refusal that is too wide would pass the test above. Every request
    for a flow's run the user may read gets that run's marker and no other; nothing errs.

    Storing ``@project`` runs without their project (finding 4) fails it: the start step of the
    second deployment to run refuses to record over the first's run, so its runs fail.
    """
    report = campaign
    assert report.wrong_answers == 0, json.dumps(report.examples, indent=1)
    assert report.served_correctly > len(FLOW_DAGS), figures(report)
