"""airflow-flowspec: Metaflow-style flows that run as Apache Airflow DAGs.

Everything a flow file needs is imported from here. Importing it is cheap and needs no Airflow,
boto3 or cloudpickle: Airflow imports flow files at every parse, and Batch containers have no Airflow.
"""

from airflow_flowspec.current import current
from airflow_flowspec.decorators import batch, catch, environment, resources, retry, schedule, step, timeout
from airflow_flowspec.flowspec import FlowSpec
from airflow_flowspec.parameters import IncludeFile, JSONType, Parameter

__all__ = [
    "FlowSpec",
    "IncludeFile",
    "JSONType",
    "Parameter",
    "batch",
    "catch",
    "current",
    "environment",
    "resources",
    "retry",
    "schedule",
    "step",
    "timeout",
]
__version__ = "0.1.0"
