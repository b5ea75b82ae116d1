"""Test support that ships with the package: a local AWS (S3, CloudWatch Logs, a Batch that really
runs its jobs) for running Batch flows with no AWS account and no Docker.

Nothing here is imported by the rest of the package; ``airflow_flowspec.testing.local_aws`` imports
moto (installed with the ``test`` extra) when it is used, not before.
"""
