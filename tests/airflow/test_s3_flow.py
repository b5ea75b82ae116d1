"""A flow whose datastore is S3 (moto's server over HTTP), run on real Airflow."""

from __future__ import annotations

import uuid

import pytest
from conftest import S3_TEST_BUCKET
from harness import FLOWS, run_flow

pytestmark = pytest.mark.usefixtures("airflow_db")


def test_foreach_flow_with_an_s3_datastore(s3_endpoint, monkeypatch):
    import boto3

    prefix = f"flows-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", f"s3://{S3_TEST_BUCKET}/{prefix}")

    run = run_flow(FLOWS / "foreach_flow.py")

    assert run.succeeded, run.states()
    assert run.datastore.root == f"s3://{S3_TEST_BUCKET}/{prefix}"
    assert run.artifacts("end")["results"] == ["0:A", "1:B", "2:C", "3:D"]
    assert run.artifacts("upper", "2")["result"] == "2:C"
    assert run.datastore.latest_successful_run("ForeachFlow") == run.run_id

    keys = []
    for page in (
        boto3.client("s3")
        .get_paginator("list_objects_v2")
        .paginate(Bucket=S3_TEST_BUCKET, Prefix=f"{prefix}/")
    ):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    manifests = [key for key in keys if key.endswith("/manifest.json")]
    # start, four foreach children, join, end: one manifest each, all on the first attempt.
    assert len(manifests) == 7 and all("/attempt-1/" in key for key in manifests)
    # The 2 MB artifact that every task carries was uploaded once: blobs are content-addressed.
    big_hash = run.manifest("start").artifacts["big"].hash
    assert sum(key.endswith(big_hash) for key in keys) == 1
    assert all(run.manifest("upper", str(i)).artifacts["big"].hash == big_hash for i in range(4))
