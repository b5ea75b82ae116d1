"""The step runtime: runs one task of a flow, on an Airflow worker or in another process (an AWS
Batch container). Needs no Airflow: only the flow file, the datastore and a ``TaskSpec``."""
