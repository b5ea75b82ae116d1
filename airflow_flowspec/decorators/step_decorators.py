"""Step decorators with Metaflow 2.19's names and arguments.

Where Airflow already does the job (retries, timeouts) the translator hands it to Airflow; we never
run our own retry loop. ``@resources`` and ``@batch`` are recorded for the AWS Batch operator.
"""

from __future__ import annotations

from typing import Any

from airflow_flowspec.decorators.base import StepDecorator, make_step_decorator
from airflow_flowspec.errors import DecoratorError


def _non_negative_number(decorator: str, key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise DecoratorError(f"@{decorator}({key}=...) must be a number >= 0, got {value!r}.")


class RetryDecorator(StepDecorator):
    """Retry the step ``times`` times, ``minutes_between_retries`` apart (Airflow retries)."""

    name = "retry"
    defaults = {"times": 3, "minutes_between_retries": 2}

    def validate(self) -> None:
        times = self.attributes["times"]
        if isinstance(times, bool) or not isinstance(times, int) or times < 0:
            raise DecoratorError(f"@retry(times=...) must be a whole number >= 0, got {times!r}.")
        _non_negative_number("retry", "minutes_between_retries", self.attributes["minutes_between_retries"])


class CatchDecorator(StepDecorator):
    """After the last retry fails, store the exception in ``var`` and let the flow go on."""

    name = "catch"
    defaults = {"var": None, "print_exception": True}

    def validate(self) -> None:
        var = self.attributes["var"]
        if var is not None and (not isinstance(var, str) or not var.isidentifier()):
            raise DecoratorError(f"@catch(var=...) must be an attribute name, got {var!r}.")


class TimeoutDecorator(StepDecorator):
    """Fail the attempt when it runs longer than the given time (Airflow execution_timeout)."""

    name = "timeout"
    defaults = {"seconds": 0, "minutes": 0, "hours": 0}

    def validate(self) -> None:
        for key in self.defaults:
            _non_negative_number("timeout", key, self.attributes[key])
        if self.total_seconds <= 0:
            raise DecoratorError("@timeout needs a positive duration, e.g. @timeout(minutes=10).")

    @property
    def total_seconds(self) -> float:
        a = self.attributes
        return a["seconds"] + 60 * a["minutes"] + 3600 * a["hours"]


class EnvironmentDecorator(StepDecorator):
    """Set environment variables while the step runs."""

    name = "environment"
    defaults = {"vars": {}}

    def validate(self) -> None:
        env = self.attributes["vars"]
        if not isinstance(env, dict) or not all(isinstance(k, str) for k in env):
            raise DecoratorError(f"@environment(vars=...) must be a dict of names to values, got {env!r}.")
        self.attributes["vars"] = {k: str(v) for k, v in env.items()}


class ResourcesDecorator(StepDecorator):
    """Resources the step needs; used by the AWS Batch operator, informational when run locally."""

    name = "resources"
    defaults = {"cpu": 1, "gpu": None, "memory": 4096, "disk": None, "shared_memory": None}

    def validate(self) -> None:
        for key in ("cpu", "memory"):
            _non_negative_number("resources", key, self.attributes[key])


class BatchDecorator(StepDecorator):
    """Run the step as an AWS Batch job, in either execution mode, with Metaflow 2.19's arguments.

    ``container_properties`` is the escape hatch: a dict merged over the job definition's container
    properties, for what the arguments do not cover (its keys are Batch's own, e.g.
    ``{"linuxParameters": {"devices": [...]}}``). ``job_definition`` names an existing definition
    to run instead of one registered from the image and settings.
    """

    name = "batch"
    defaults = {
        "cpu": None,
        "gpu": None,
        "memory": None,
        "image": None,
        "queue": None,
        "iam_role": None,
        "execution_role": None,
        "shared_memory": None,
        "max_swap": None,
        "swappiness": None,
        "inferentia": None,
        "trainium": None,  # Metaflow's alias for inferentia
        "efa": None,
        "use_tmpfs": False,
        "tmpfs_tempdir": True,
        "tmpfs_size": None,
        "tmpfs_path": "/metaflow_temp",
        "host_volumes": None,
        "efs_volumes": None,
        "ephemeral_storage": None,
        "log_driver": None,
        "log_options": None,
        "privileged": False,
        "aws_batch_tags": None,
        "tags": None,
        "job_definition": None,
        "container_properties": None,
    }

    def validate(self) -> None:
        a = self.attributes
        for key in (
            "cpu",
            "gpu",
            "memory",
            "shared_memory",
            "max_swap",
            "swappiness",
            "inferentia",
            "trainium",
            "efa",
            "tmpfs_size",
            "ephemeral_storage",
        ):
            if a[key] is not None:
                try:
                    number = float(a[key])
                except (TypeError, ValueError):
                    number = -1
                if isinstance(a[key], bool) or not 0 <= number < float("inf"):
                    raise DecoratorError(f"@batch({key}=...) must be a number >= 0, got {a[key]!r}.")
        if a["inferentia"] and a["trainium"] and float(a["inferentia"]) != float(a["trainium"]):
            raise DecoratorError(
                "@batch got both inferentia and trainium (its alias) with different values; give one."
            )
        for key in ("aws_batch_tags", "tags", "container_properties", "log_options"):
            if a[key] is not None and not isinstance(a[key], (dict, list)):
                raise DecoratorError(f"@batch({key}=...) must be a dict, got {type(a[key]).__name__}.")
        if a["container_properties"] is not None and not isinstance(a["container_properties"], dict):
            raise DecoratorError(
                "@batch(container_properties=...) must be a dict of AWS Batch container properties, "
                'e.g. {"linuxParameters": {"devices": [...]}}.'
            )


retry = make_step_decorator(RetryDecorator)
catch = make_step_decorator(CatchDecorator)
timeout = make_step_decorator(TimeoutDecorator)
environment = make_step_decorator(EnvironmentDecorator)
resources = make_step_decorator(ResourcesDecorator)
batch = make_step_decorator(BatchDecorator)
