"""Decorators users put on steps and flows."""

from airflow_flowspec.decorators.flow_decorators import project, schedule
from airflow_flowspec.decorators.step import step
from airflow_flowspec.decorators.step_decorators import batch, catch, environment, resources, retry, timeout

__all__ = ["batch", "catch", "environment", "project", "resources", "retry", "schedule", "step", "timeout"]
