"""Look results up the way Metaflow's client does, from the datastore alone (no Airflow needed)."""

from airflow_flowspec.client.namespaces import default_namespace, forget_namespace, get_namespace, namespace
from airflow_flowspec.client.objects import DataArtifact, Flow, Metaflow, MetaflowData, Run, Step, Task
from airflow_flowspec.client.source import forget_metadata, get_metadata, metadata


def reset() -> None:
    """Put the client back as a new process finds it: the default namespace (``namespace()``
    forgotten) and the configured datastore root (``metadata()`` forgotten). For a notebook that
    wants to start over, and for tests, which must not leave their choice to the next test."""
    forget_namespace()
    forget_metadata()


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
    "reset",
]
