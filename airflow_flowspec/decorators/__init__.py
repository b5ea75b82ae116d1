from airflow_flowspec.decorators.step import step

__all__ = ["step"]
