"""Every test in one tier, derived from where it lives and what it uses; and the time each tier took.

- ``integration``: under ``tests/integration`` (a real Airflow's services).
- ``reliability``: under ``tests/reliability`` (fault, kill and corruption campaigns).
- ``flows``: anything else that runs something beyond its own process or needs a service: a
  fixture in :data:`SERVICE_FIXTURES` (the metadata database, moto's S3 server, the local AWS),
  asked for by name or by a fixture's ``request.getfixturevalue`` (for a param not in
  :data:`LOCAL_PARAMS`), or a call, by the test, one of its fixtures or a helper either reaches, of a name in
  :data:`RUNNERS` (a flow run, the command line, a subprocess, a fork).
- ``unit``: the rest. ``pytest -m unit`` is the fast lane CI runs first.

The rule reads the code the test would run (names its functions refer to, followed through the
helpers and fixtures defined in tests/), so a new test lands in its tier without a list to edit.
"""

from __future__ import annotations

import time
import types
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "flows", "reliability", "integration")
#: Folders whose tests are all of one tier, whatever they use.
FOLDER_TIERS = {"integration": "integration", "reliability": "reliability"}
#: Fixtures that start or need something outside the test's process.
SERVICE_FIXTURES = frozenset(
    {"airflow_db", "s3_endpoint", "local_aws", "local_aws_environment", "airflow_services"}
)
#: A fixture parametrized over where data lives asks for a service by name
#: (``request.getfixturevalue("s3_endpoint")``) for each of its params but these.
LOCAL_PARAMS = frozenset({"local"})
#: Names whose call runs a flow, the command line or another process.
RUNNERS = frozenset(
    {
        # tests/harness.py
        "run_flow",
        "run_cli",
        "shell",
        "parse_dags_folder",
        "clear_and_rerun",
        # the standard library's ways to start a process
        "subprocess",
        "Popen",
        "fork",
        "forkserver",
        "multiprocessing",
        "ProcessPoolExecutor",
        "execv",
        "execvp",
        "spawn",
        "system",
        # (Airflow's dag.test() needs the metadata database: airflow_db, a service fixture.)
    }
)


def tier_of(item: pytest.Item) -> str:
    parts = Path(str(item.path)).resolve().relative_to(TESTS).parts
    if parts and parts[0] in FOLDER_TIERS:
        return FOLDER_TIERS[parts[0]]
    if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return "flows"
    functions = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    params = getattr(getattr(item, "callspec", None), "params", {})
    for name, definitions in info.name2fixturedefs.items() if info else ():
        for definition in definitions:
            functions.append(definition.func)
            if _asks_for_a_service(definition.func) and params.get(name) not in LOCAL_PARAMS:
                return "flows"
    seen: set[types.CodeType] = set()
    if any(_runs_something(function, seen) for function in functions if function is not None):
        return "flows"
    return "unit"


def _runs_something(function: Any, seen: set[types.CodeType]) -> bool:
    """Whether ``function``, or a function of tests/ it names, names one of :data:`RUNNERS`."""
    function = getattr(function, "__wrapped__", function)
    code = getattr(function, "__code__", None)
    if code is None or code in seen or not _in_tests(code):
        return False
    seen.add(code)
    namespace = getattr(function, "__globals__", {})
    for name in _names(code):
        if name in RUNNERS:
            return True
        value = namespace.get(name)
        if isinstance(value, type):
            if any(_runs_something(member, seen) for member in vars(value).values()):
                return True
        elif _runs_something(value, seen):
            return True
    return False


def _asks_for_a_service(function: Any) -> bool:
    code = getattr(getattr(function, "__wrapped__", function), "__code__", None)
    return code is not None and bool(SERVICE_FIXTURES.intersection(_strings(code)))


def _strings(code: types.CodeType) -> set[str]:
    strings = {constant for constant in code.co_consts if isinstance(constant, str)}
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            strings |= _strings(constant)
    return strings


def _names(code: types.CodeType) -> set[str]:
    """The global and attribute names ``code`` and the functions nested in it refer to."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _names(constant)
    return names


def _in_tests(code: types.CodeType) -> bool:
    return TESTS in Path(code.co_filename).resolve().parents


def mark_tiers(items: list[pytest.Item]) -> None:
    for item in items:
        tier = tier_of(item)
        if not item.get_closest_marker(tier):
            item.add_marker(getattr(pytest.mark, tier))


class TierTimes:
    """Sums each test's time (setup, call, teardown) by tier and prints it after the run, with
    the run's wall time: with ``-n``, the sums are worker time, spread over the workers."""

    def __init__(self) -> None:
        self.began = time.monotonic()
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        tier = next((name for name in TIERS if name in report.keywords), "unmarked")
        self.seconds[tier] += report.duration
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            self.counts[tier] += 1

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.counts:
            return
        parts = [
            f"{tier} {self.counts[tier]} tests {self.seconds[tier]:.1f} s"
            for tier in (*TIERS, "unmarked")
            if self.counts.get(tier)
        ]
        wall = time.monotonic() - self.began
        summary = ", ".join(parts)
        terminalreporter.write_line(f"time per tier (summed over workers): {summary}; wall {wall:.1f} s")
