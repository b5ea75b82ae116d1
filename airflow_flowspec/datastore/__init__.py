"""Where artifacts, manifests and run records live: S3 or a local folder, without Airflow.

Importing this package is cheap on purpose (Airflow imports it at every DAG parse): boto3 is
imported when an S3 datastore makes its first request, cloudpickle at the first save.
"""

from airflow_flowspec.datastore.artifacts import ArtifactRef
from airflow_flowspec.datastore.store import Datastore, open_datastore

__all__ = ["ArtifactRef", "Datastore", "open_datastore"]
