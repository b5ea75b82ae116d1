"""airflow-flowspec: Metaflow-style flows that run as Apache Airflow DAGs."""
