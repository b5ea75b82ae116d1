"""The path users put in airflow.cfg: ``[core] might_contain_dag_callable =
airflow_flowspec.discovery.might_contain_dag``. The code lives with the rest of the Airflow edge,
in :mod:`airflow_flowspec.airflow.discovery`; this module only keeps the configured path working."""

from airflow_flowspec.airflow.discovery import might_contain_dag

__all__ = ["might_contain_dag"]
