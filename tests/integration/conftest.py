"""One real Airflow (PostgreSQL metadata database, LocalExecutor, REST API on loopback) per test
session, shared by every module under tests/integration.

Its dags folder holds the examples of ``dags_examples/`` and ``tests/flows/nested_foreach_flow.py``;
a module may add its own flow files there and wait for them with ``wait_for_dags``. It is stopped
after the last test of this folder, so the tests that run after it do not share the machine with
an idle Airflow.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from browser import installed_chromium

from .services import DAG_FILES, DAG_IDS, AirflowServices, start_airflow

HERE = Path(__file__).resolve().parent


def _say(config: pytest.Config, text: str) -> None:
    """A line on the terminal even when output is captured (where Airflow runs, what it cost)."""
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if terminal is None or capture is None:
        print(text, file=sys.stderr)
        return
    with capture.global_and_fixture_disabled():
        terminal.write_line(text)


#: Stops the running services (once), or None.
_stop_services: Callable[[], None] | None = None


@pytest.fixture(scope="session")
def airflow_services(request: pytest.FixtureRequest) -> Iterator[AirflowServices]:
    """The session's running Airflow, its example DAGs parsed.

    A process or port left behind when it stops is an error. The temporary folder (home,
    datastore, every service's log) is removed unless a test failed.
    """
    global _stop_services
    began = time.monotonic()
    services = start_airflow(DAG_FILES)

    def stop() -> None:
        global _stop_services
        _stop_services = None
        stopping = time.monotonic()
        left = services.stop()
        memory = services.watch.report() if services.watch else "memory not sampled"
        _say(
            request.config,
            f"\nAirflow stopped in {time.monotonic() - stopping:.1f} s; up {time.monotonic() - began:.0f} s; "
            f"{memory}",
        )
        if request.session.testsfailed:
            _say(request.config, f"Kept {services.root} (service logs in {services.logs_dir})")
        else:
            shutil.rmtree(services.root, ignore_errors=True)
            if services.postgres is not None:
                shutil.rmtree(services.postgres.root, ignore_errors=True)
        assert not left, f"Left running after Airflow stopped: {left}"

    _stop_services = stop
    try:
        services.wait_for_dags(DAG_IDS, timeout=120, files=DAG_FILES)
        services.timings["DAGs listed"] = time.monotonic() - began
        _say(
            request.config,
            f"\nAirflow on {services.base_url} ({services.database}), home {services.home}; seconds to: "
            + ", ".join(f"{name} {seconds:.1f}" for name, seconds in services.timings.items()),
        )
        yield services
    finally:
        if _stop_services is not None:
            _stop_services()


@pytest.fixture(scope="session")
def chromium() -> str:
    """Chromium's path (installed by .ci/install-browser; see tests/browser.py)."""
    return installed_chromium()


def _in_this_folder(item: pytest.Item | None) -> bool:
    return item is not None and HERE in Path(item.path).resolve().parents


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After the last test of this folder (and its fixtures' teardown), stop Airflow."""
    if _stop_services is not None and _in_this_folder(item) and not _in_this_folder(nextitem):
        _stop_services()


@pytest.fixture
def client(airflow_services: AirflowServices, monkeypatch: pytest.MonkeyPatch):
    """Our client (``airflow_flowspec.client``), reading the services' datastore, every user's runs."""
    from airflow_flowspec import client
    from airflow_flowspec.client import namespaces

    monkeypatch.setenv("AIRFLOW__FLOWSPEC__DATASTORE_ROOT", str(airflow_services.datastore_root))
    monkeypatch.setattr(namespaces, "_chosen", namespaces._chosen)  # restored after the test
    client.namespace(None)
    return client


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs the real Airflow services (slow start-up)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _in_this_folder(item):
            item.add_marker(pytest.mark.integration)
            # One xdist worker runs them all, so the session starts one Airflow, not one per worker.
            item.add_marker(pytest.mark.xdist_group("airflow-services"))
