"""Every private Airflow name ``airflow_flowspec/airflow/_internals.py`` relies on, pinned.

An Airflow upgrade that moves or reshapes one of them fails here first, naming the name and the
function of the compat module that uses it, rather than deep inside a flow run. The public
``airflow.sdk`` names the package imports instead of internal paths are checked too, and so is
``airflow.sdk.conf`` reading what Airflow core's ``conf`` reads (the API server's plugin and a
task both read options through it).
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest

from airflow_flowspec.airflow import _internals

#: (module, attribute, what it must take or be, the _internals function that relies on it)
PINNED = [
    (_internals.DAG_CONTEXT_MODULE, "DagContext.autoregistered_dags", set, "unregister_dag"),
    (_internals.DAG_CONTEXT_MODULE, "DagContext.current_autoregister_module_name", None, "dagbag_importing"),
    (
        "airflow.sdk.execution_time.lazy_sequence",
        "LazyXComSequence",
        {"xcom_arg", "ti"},
        "lazy_xcom_sequence",
    ),
    ("airflow.utils.db", "upgradedb", set(), "migrate_database"),
    (
        "airflow.dag_processing.bundles.manager",
        "DagBundlesManager.sync_bundles_to_db",
        None,
        "migrate_database",
    ),
    ("airflow.dag_processing.dagbag", "DagBag", {"dag_folder", "collect_dags"}, "write_dag_to_database"),
    ("airflow.dag_processing.dagbag", "DagBag.bag_dag", {"dag"}, "write_dag_to_database"),
    (
        "airflow.dag_processing.dagbag",
        "sync_bag_to_db",
        {"dagbag", "bundle_name", "bundle_version"},
        "write_dag_to_database",
    ),
    ("airflow.configuration", "AIRFLOW_CONFIG", str, "airflow_config_path"),
    ("airflow.serialization.serialized_objects", "DagSerialization.serialize_dag", {"dag"}, "scheduler_dag"),
    ("airflow.serialization.serialized_objects", "DagSerialization.deserialize_dag", None, "scheduler_dag"),
    ("airflow.serialization.encoders", "coerce_to_core_timetable", None, "create_test_dag_run"),
    (
        "airflow.models.dagrun",
        "get_or_create_dagrun",
        {
            "dag",
            "run_id",
            "logical_date",
            "data_interval",
            "run_after",
            "conf",
            "triggered_by",
            "triggering_user_name",
            "start_date",
            "session",
        },
        "create_test_dag_run",
    ),
    ("airflow.utils.types", "DagRunTriggeredByType.TEST", None, "create_test_dag_run"),
    ("airflow.sdk.definitions.dag", "_run_task", {"ti", "task", "run_triggerer"}, "run_task_in_process"),
    ("airflow.sdk.execution_time.supervisor", "in_process_api_server", set(), "in_process_execution_app"),
    ("airflow.sdk.api.datamodels._generated", "API_VERSION", str, "build_lean_execution_api"),
    ("cadwyn.route_generation", "_DELETED_ROUTE_TAG", str, "build_lean_execution_api"),
    ("cadwyn", "VersionBundle", None, "build_lean_execution_api"),
    (_internals.EXECUTION_API_VERSIONS_MODULE, "bundle", None, "build_lean_execution_api"),
    (
        "airflow.api_fastapi.execution_api.routes",
        "execution_api_router.routes",
        list,
        "build_lean_execution_api",
    ),
    *[
        (f"{package}.stats", "initialize", {"factory", "export_legacy_names"}, "initialize_metrics")
        for package, _ in _internals.METRICS_PACKAGES
    ],
    *[
        (f"{package}.base_stats_logger", "NoStatsLogger", None, "initialize_metrics")
        for package, _ in _internals.METRICS_PACKAGES
    ],
    *[(utils, "get_stats_factory", set(), "initialize_metrics") for _, utils in _internals.METRICS_PACKAGES],
    *[(name, "initialize", None, "use_system_time_zone") for name in _internals.TIMEZONE_MODULES],
    *[(name, "__name__", str, "import_task_run_modules") for name in _internals.TASK_RUN_MODULES],
]


def _resolve(module_name: str, dotted: str) -> object:
    value: object = importlib.import_module(module_name)
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize(
    ("module_name", "attribute", "expected", "user"),
    PINNED,
    ids=[f"{module}:{attribute}" for module, attribute, _, _ in PINNED],
)
def test_every_private_airflow_name_the_compat_module_uses_is_where_it_expects(
    module_name, attribute, expected, user
):
    where = f"{module_name}.{attribute} (used by airflow_flowspec.airflow._internals.{user})"
    try:
        value = _resolve(module_name, attribute)
    except (ImportError, AttributeError) as error:
        pytest.fail(f"{where} is gone in this Airflow: {error}. Adapt {user} to where it is now.")
    if isinstance(expected, type):
        assert isinstance(value, expected), (
            f"{where} is a {type(value).__name__} now, not a {expected.__name__}"
        )
    elif isinstance(expected, set):
        parameters = set(inspect.signature(value).parameters)  # type: ignore[arg-type]
        missing = expected - parameters
        assert not missing, f"{where} no longer takes {sorted(missing)} (it takes {sorted(parameters)})"


def test_the_execution_api_versions_source_names_the_version_the_client_speaks():
    """``build_lean_execution_api`` stands in for the versions module only when the version it
    reads from the module's source is the task SDK client's; read on this Airflow, they agree (else
    every run quietly loses the speed-up)."""
    from airflow.sdk.api.datamodels._generated import API_VERSION

    spec = importlib.util.find_spec(_internals.EXECUTION_API_VERSIONS_MODULE)
    assert spec is not None and spec.origin is not None
    assert _internals.newest_execution_api_version(Path(spec.origin).read_text()) == API_VERSION
    assert _internals.newest_execution_api_version("no versions here") is None


def test_both_copies_of_the_stats_module_are_found():
    copies = _internals.metrics_copies()
    assert len(copies) == len(_internals.METRICS_PACKAGES), "a copy of Airflow's stats module moved"
    for copy in copies:
        for name in ("_factory", "_backend", "_export_legacy_names"):  # what the test below reads
            assert hasattr(copy.stats, name), f"{copy.stats.__name__}.{name} is gone"


def test_legacy_metric_names_are_kept_only_for_a_configured_exporter(monkeypatch):
    """`run` skips Airflow's legacy metric names (0.3 s of YAML parsing) only when no exporter is
    configured; with statsd/Datadog/OTel on, [metrics] legacy_names_on still decides."""
    copies = _internals.metrics_copies()
    for copy in copies:  # restored after the test: other tests share them
        for name in ("_factory", "_backend", "_export_legacy_names"):
            monkeypatch.setattr(copy.stats, name, getattr(copy.stats, name))

    for copy in copies:
        monkeypatch.setattr(copy.stats_utils, "get_stats_factory", lambda copy=copy: copy.no_exporter)
    _internals.initialize_metrics()
    assert [copy.stats._export_legacy_names for copy in copies] == [False, False]  # core's and the SDK's

    def exporter():
        return copies[0].no_exporter()  # stands in for a statsd client

    for copy in copies:
        monkeypatch.setattr(copy.stats_utils, "get_stats_factory", lambda: exporter)
    monkeypatch.setenv("AIRFLOW__METRICS__LEGACY_NAMES_ON", "True")
    _internals.initialize_metrics()
    assert [copy.stats._export_legacy_names for copy in copies] == [True, True]
    assert copies[0].stats._factory is exporter
    monkeypatch.setenv("AIRFLOW__METRICS__LEGACY_NAMES_ON", "False")
    _internals.initialize_metrics()
    assert [copy.stats._export_legacy_names for copy in copies] == [False, False]


def test_a_dagbag_import_is_seen_only_for_the_module_it_imports(monkeypatch):
    from airflow.sdk.definitions._internal.contextmanager import DagContext

    assert not _internals.dagbag_importing("some_flow_module")
    monkeypatch.setattr(DagContext, "current_autoregister_module_name", "some_flow_module")
    assert _internals.dagbag_importing("some_flow_module")
    assert not _internals.dagbag_importing("another_module")


def test_a_stale_dag_is_dropped_from_the_import_by_identity_only(monkeypatch):
    from airflow.sdk.definitions._internal.contextmanager import DagContext

    class Unhashable:  # equal to every other, as a DAG whose tasks changed may compare
        __hash__ = object.__hash__

        def __eq__(self, other):
            return True

    stale, kept = Unhashable(), Unhashable()
    monkeypatch.setattr(DagContext, "autoregistered_dags", {(stale, "module"), (kept, "module")})
    _internals.unregister_dag(stale)
    assert [entry[0] for entry in DagContext.autoregistered_dags] == [kept]
    _internals.unregister_dag(stale)  # already gone: nothing changes
    assert [entry[0] for entry in DagContext.autoregistered_dags] == [kept]


@pytest.mark.parametrize(
    ("dag_run", "by_dag_test"),
    [
        (SimpleNamespace(triggering_user_name="dag_test"), True),  # the task SDK's DagRun
        (SimpleNamespace(triggering_user_name="alice", triggered_by="DagRunTriggeredByType.TEST"), True),
        (SimpleNamespace(triggering_user_name="alice", triggered_by="ui"), False),
        (SimpleNamespace(triggering_user_name=None, triggered_by=None), False),
        (SimpleNamespace(), False),
        (None, False),  # no dag_run in the context at all
    ],
)
def test_a_dag_test_run_is_known_by_its_user_or_trigger(dag_run, by_dag_test):
    assert _internals.is_dag_test_run(dag_run) is by_dag_test


def test_the_test_run_user_is_the_one_dag_test_sets():
    """``python flow.py run`` marks its runs with the user dag.test() uses; if Airflow renamed it,
    runs would read as production."""
    from airflow.sdk.definitions.dag import DAG

    assert f'triggering_user_name="{_internals.DAG_TEST_USER}"' in inspect.getsource(DAG.test)


@pytest.mark.parametrize(
    "name", ["SkipMixin", "BaseXCom", "XComArg", "conf", "BaseOperator", "BaseOperatorLink"]
)
def test_the_public_task_sdk_names_the_package_imports_are_public(name):
    import airflow.sdk

    assert name in airflow.sdk.__all__ and getattr(airflow.sdk, name) is not None


@pytest.mark.parametrize(
    ("section", "option", "variable_value"),
    [
        ("core", "max_map_length", "7"),  # check_foreach_width, in a task
        ("api", "base_url", "http://airflow.example:8080/sub"),  # the plugin's links, in the API server
        ("core", "default_timezone", "system"),  # a preloaded run
        ("metrics", "legacy_names_on", "True"),  # initialize_metrics
    ],
)
def test_the_task_sdk_conf_reads_what_airflow_core_reads(monkeypatch, section, option, variable_value):
    from airflow.configuration import conf as core_conf
    from airflow.sdk import conf

    assert conf.get(section, option, fallback="") == core_conf.get(section, option, fallback="")
    monkeypatch.setenv(f"AIRFLOW__{section.upper()}__{option.upper()}", variable_value)
    assert conf.get(section, option) == core_conf.get(section, option) == variable_value
