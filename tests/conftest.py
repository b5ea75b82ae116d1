"""Shared fixtures.

Airflow reads its configuration once, at first import: the session's private Airflow home, XCom
backend and datastore are set here, before any test module imports Airflow.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import configure_airflow
from tiers import TierTimes, mark_tiers

SESSION_ROOT = configure_airflow()


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist) reports
        config.pluginmanager.register(TierTimes(), "tier-times")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """One tier mark per test (unit, flows, reliability, integration): see tests/tiers.py."""
    mark_tiers(items)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Airflow's metadata database (SQLite), migrated once for the session."""
    from airflow_flowspec.airflow.local_run import ensure_database, quiet_airflow_warnings

    quiet_airflow_warnings()
    home = SESSION_ROOT / "airflow"
    ensure_database(home)
    return home


@pytest.fixture
def every_namespace():
    """The client looks in every namespace, and whatever root a test chooses with metadata() (or
    namespace it picks) is forgotten after it."""
    from airflow_flowspec import client

    client.reset()
    client.namespace(None)
    yield
    client.reset()
    client.namespace(None)


#: The bucket the ``s3_endpoint`` fixture creates.
S3_TEST_BUCKET = "flowspec-test"


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP API (moto's server) on loopback, with a bucket named ``flowspec-test``.

    Not ``mock_aws``: going through HTTP exercises what a Batch job does (endpoint resolution,
    multipart transfers, connection errors). The AWS_* variables point boto3 at it for the rest of
    the session and are restored afterwards. Yields the endpoint URL.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint_url = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("AWS_ACCESS_KEY_ID", "testing")
        environment.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        environment.setenv("AWS_DEFAULT_REGION", "us-east-1")
        environment.setenv("AWS_ENDPOINT_URL", endpoint_url)
        for variable in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            environment.delenv(variable, raising=False)
        boto3.session.Session().client("s3").create_bucket(Bucket=S3_TEST_BUCKET)
        try:
            yield endpoint_url
        finally:
            server.stop()


@pytest.fixture(scope="session")
def local_aws():
    """A local AWS whose Batch really runs jobs (``airflow_flowspec.testing.local_aws``), started
    once for the session with a short dwell per status. It sets no environment variables: use
    ``local_aws_environment`` for that. On teardown every job is terminated and no process is left.
    """
    from airflow_flowspec.testing.local_aws import LocalAws

    with LocalAws(dwell_seconds=0.2, max_vcpus=4) as aws:
        yield aws


@pytest.fixture
def local_aws_environment(local_aws, monkeypatch):
    """``local_aws`` with its AWS_* and AIRFLOW__FLOWSPEC__* variables set for one test."""
    for variable in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(variable, raising=False)
    for name, value in local_aws.environment.items():
        monkeypatch.setenv(name, value)
    return local_aws
