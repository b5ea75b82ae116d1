"""The fault layer really injects faults, of each kind, where botocore and the datastore will meet them.

Tests that later claim "the datastore survives S3 faults" prove nothing if the faults never
happen, or happen somewhere botocore quietly absorbs them. So each fault is shown to occur (the
counters), and each kind is shown to reach botocore's retry logic the way real ones do: resets and
injected 500/503/connection errors are retried, and a body cut mid-way is not.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ResponseStreamingError,
)
from faults import (
    FAULT_KINDS,
    FAULT_SITE,
    FaultyProxy,
    fault_environment,
    inject_s3_faults,
    read_fault_reports,
)

BUCKET = "flowspec-test"
#: Fast retries: the injector's backoff, in seconds, instead of botocore's 50 ms (1 s after SlowDown).
BACKOFF = 0.001


def s3_client(endpoint_url: str, attempts: int = 10):
    """A client made the way S3Backend makes one (own session, standard retries), with more attempts."""
    retries = {"mode": "standard", "total_max_attempts": attempts}
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=Config(retries=retries))


def unique_prefix() -> str:
    return f"faults/{uuid.uuid4().hex}"


def proxy_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("faulty-proxy-")]


# -- the proxy ---------------------------------------------------------------------------------------


def test_reset_connections_are_retried_by_botocore(s3_endpoint):
    """A reset before any response is a failed attempt: botocore opens a new connection and retries."""
    prefix = unique_prefix()
    retries = 0
    with FaultyProxy(s3_endpoint, reset_rate=0.5, seed=3) as proxy:
        for number in range(6):  # a client per object: kept-alive connections would dodge the resets
            client = s3_client(proxy.url)
            key, body = f"{prefix}/{number}", f"object {number}".encode()
            retries += client.put_object(Bucket=BUCKET, Key=key, Body=body)["ResponseMetadata"][
                "RetryAttempts"
            ]
            response = client.get_object(Bucket=BUCKET, Key=key)
            retries += response["ResponseMetadata"]["RetryAttempts"]
            assert response["Body"].read() == body
        assert proxy.resets > 0
        assert retries == proxy.resets  # each reset cost one retry, and nothing else failed

        proxy.reset_rate = 0  # the network heals
        resets = proxy.resets
        healed = s3_client(proxy.url).put_object(Bucket=BUCKET, Key=f"{prefix}/healed", Body=b"")
        assert healed["ResponseMetadata"]["RetryAttempts"] == 0
        assert proxy.resets == resets


def test_a_body_cut_midway_reaches_the_caller(s3_endpoint):
    """botocore returns a GetObject response at its headers: a body cut later is the caller's problem.

    The read raises ResponseStreamingError (urllib3's ProtocolError "Connection broken:
    ConnectionResetError", wrapped by botocore/response.py's StreamingBody.read), and botocore never
    asks for the object again: the proxy sees one connection.
    """
    key, data = f"{unique_prefix()}/big", os.urandom(2 * 1024 * 1024)
    s3_client(s3_endpoint).put_object(Bucket=BUCKET, Key=key, Body=data)
    with FaultyProxy(
        s3_endpoint, cut_rate=1.0, seed=1, min_cut_bytes=64 * 1024, max_cut_bytes=1024 * 1024
    ) as proxy:
        response = s3_client(proxy.url).get_object(Bucket=BUCKET, Key=key)
        assert response["ContentLength"] == len(data)  # the headers came through whole
        with pytest.raises(ResponseStreamingError, match="Connection broken"):
            response["Body"].read()
    assert (proxy.connections, proxy.cuts) == (1, 1)
    assert proxy.bytes_forwarded < len(data)


def test_stop_closes_live_connections_and_ends_every_thread(s3_endpoint):
    """A test's proxy must not leave threads or open connections behind for the next test."""
    proxy = FaultyProxy(s3_endpoint).start()
    client = s3_client(proxy.url, attempts=1)
    client.put_object(Bucket=BUCKET, Key=f"{unique_prefix()}/kept-alive", Body=b"")
    # accept, and up to two pumps for the link: on a busy machine the second may not have started
    # yet, or the server may already have closed the idle link (its pumps then end on their own)
    assert proxy.connections == 1 and 1 <= len(proxy_threads()) <= 3

    started = time.monotonic()
    proxy.stop()
    assert time.monotonic() - started < 1.0
    assert proxy_threads() == []
    with pytest.raises(EndpointConnectionError):  # the listener is closed too
        client.put_object(Bucket=BUCKET, Key=f"{unique_prefix()}/after-stop", Body=b"")


# -- botocore-level faults ---------------------------------------------------------------------------


def test_injected_faults_of_every_kind_are_retried(s3_endpoint):
    """Each injected 500, 503 and connection error costs exactly one retry, and every call succeeds."""
    prefix = unique_prefix()
    with inject_s3_faults(0.5, seed=11, backoff=BACKOFF) as counters:
        client = s3_client(s3_endpoint)
        retries = sum(
            client.put_object(Bucket=BUCKET, Key=f"{prefix}/{number}", Body=b"x")["ResponseMetadata"][
                "RetryAttempts"
            ]
            for number in range(20)
        )
    assert all(counters.injected[kind] > 0 for kind in FAULT_KINDS), counters
    assert counters.requests == 20 + counters.faults
    assert retries == counters.faults

    # Leaving the context heals the clients made inside it.
    assert client.head_object(Bucket=BUCKET, Key=f"{prefix}/19")["ResponseMetadata"]["RetryAttempts"] == 0
    assert counters.requests == 20 + counters.faults
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")
    assert listed["KeyCount"] == 20


@pytest.mark.parametrize(
    ("kind", "error", "message"),
    [
        ("500", ClientError, r"\(InternalError\) .*\(reached max retries: 3\)"),
        ("503", ClientError, r"\(SlowDown\) .*\(reached max retries: 3\)"),
        # botocore re-raises the last exception as it is: nothing in it counts the attempts.
        ("connection", (ConnectionClosedError, EndpointConnectionError), "127.0.0.1"),
    ],
)
def test_a_fault_on_every_attempt_fails_after_max_attempts(s3_endpoint, kind, error, message):
    with inject_s3_faults(1.0, kinds=(kind,), backoff=BACKOFF) as counters:
        client = s3_client(s3_endpoint, attempts=4)
        with pytest.raises(error, match=message):
            client.put_object(Bucket=BUCKET, Key=f"{unique_prefix()}/never", Body=b"")
    assert counters.requests == 4
    assert counters.injected == {kind: 4}


def test_a_child_process_injects_faults_and_reports_them(s3_endpoint, tmp_path):
    """What a task run as a subprocess gets: faults from start-up, counted in a report per pid."""
    prefix = unique_prefix()
    child = textwrap.dedent(f"""
        import boto3
        from botocore.config import Config

        config = Config(retries={{"mode": "standard", "total_max_attempts": 10}})
        client = boto3.session.Session().client("s3", endpoint_url={s3_endpoint!r}, config=config)
        for number in range(10):
            client.put_object(Bucket={BUCKET!r}, Key=f"{prefix}/{{number}}", Body=b"child")
    """)
    reports = tmp_path / "reports"
    environment = {**os.environ, **fault_environment(0.5, seed=7, report_dir=reports, backoff=BACKOFF)}
    subprocess.run([sys.executable, "-c", child], env=environment, check=True, timeout=60)

    (counters,) = read_fault_reports(reports).values()
    assert counters.faults > 0
    assert counters.requests == 10 + counters.faults
    assert s3_client(s3_endpoint).list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")["KeyCount"] == 10


def test_the_childs_own_sitecustomize_and_pythonpath_still_apply(tmp_path, monkeypatch):
    """Ours comes first in PYTHONPATH, so it must run the sitecustomize it hides, and keep the path."""
    other_site = tmp_path / "other_site"
    other_site.mkdir()
    (other_site / "sitecustomize.py").write_text("import os\nos.environ['OTHER_SITECUSTOMIZE'] = 'ran'\n")
    monkeypatch.setenv("PYTHONPATH", str(other_site))
    reports = tmp_path / "reports"
    environment = {**os.environ, **fault_environment(0.0, report_dir=reports)}
    show = "import os, sitecustomize; print(sitecustomize.__file__); print(os.environ['OTHER_SITECUSTOMIZE'])"
    result = subprocess.run(
        [sys.executable, "-c", show], env=environment, check=True, timeout=60, capture_output=True, text=True
    )

    assert result.stdout.splitlines() == [str(FAULT_SITE / "sitecustomize.py"), "ran"]
    assert environment["PYTHONPATH"].split(os.pathsep) == [str(FAULT_SITE), str(other_site)]
    (counters,) = read_fault_reports(reports).values()  # the injector was active, if idle
    assert counters.requests == 0
    assert Path(reports).is_dir()
