"""The step runtime: runs one task of a flow, on an Airflow worker or in an AWS Batch container.

Importable without Airflow: it needs only the flow file, the datastore and a ``TaskSpec``.
"""
