"""Look results up the way Metaflow's client does, from the datastore alone (no Airflow needed)."""

from airflow_flowspec.client.namespaces import default_namespace, get_namespace, namespace
from airflow_flowspec.client.objects import DataArtifact, Flow, Metaflow, MetaflowData, Run, Step, Task
from airflow_flowspec.client.source import get_metadata, metadata

__all__ = [
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
]
