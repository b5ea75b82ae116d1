"""airflow-flowspec: Metaflow-style flows that run as Apache Airflow DAGs.

Everything a flow file needs is imported from here. Importing it is cheap and needs no Airflow,
boto3 or cloudpickle: Airflow imports flow files at every parse, and Batch containers have no Airflow.
"""

from airflow_flowspec.current import current
from airflow_flowspec.decorators import (
    batch,
    catch,
    environment,
    project,
    resources,
    retry,
    schedule,
    step,
    timeout,
)
from airflow_flowspec.flowspec import FlowSpec
from airflow_flowspec.parameters import IncludeFile, JSONType, Parameter

#: The client (Metaflow's ``Flow``, ``Run``...) is imported on first use: a DAG parse never needs it.
_CLIENT_NAMES = frozenset(
    {
        "DataArtifact",
        "Flow",
        "Metaflow",
        "MetaflowData",
        "Run",
        "Step",
        "Task",
        "default_namespace",
        "get_metadata",
        "get_namespace",
        "metadata",
        "namespace",
    }
)


def __getattr__(name: str):
    if name in _CLIENT_NAMES:
        from airflow_flowspec import client

        return getattr(client, name)
    raise AttributeError(f"module 'airflow_flowspec' has no attribute {name!r}")


__all__ = [
    "DataArtifact",
    "Flow",
    "FlowSpec",
    "IncludeFile",
    "JSONType",
    "Metaflow",
    "MetaflowData",
    "Parameter",
    "Run",
    "Step",
    "Task",
    "batch",
    "catch",
    "current",
    "default_namespace",
    "environment",
    "get_metadata",
    "get_namespace",
    "metadata",
    "namespace",
    "project",
    "resources",
    "retry",
    "schedule",
    "step",
    "timeout",
]
__version__ = "0.1.0"
