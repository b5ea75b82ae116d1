"""Errors a data scientist may see, each a class with a message that says what to fix.

Every error names the flow, step, line or artifact it is about. None of them needs Airflow.
"""

from __future__ import annotations


class FlowspecError(Exception):
    """Base class: a mistake in a flow or its configuration, shown without a traceback by the CLI."""


class LintError(FlowspecError):
    """The flow's structure is invalid; raised before anything runs.

    ``str(error)`` is one paragraph: where (file and line), what is wrong, how to fix it.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None):
        self.message = message
        self.file = file
        self.line = line
        where = ""
        if file:
            where = f"{file}, line {line}: " if line else f"{file}: "
        super().__init__(where + message)


class DatastoreError(FlowspecError):
    """The artifact store could not be read or written."""


class ArtifactNotFoundError(DatastoreError):
    """An artifact or manifest that should exist is missing from the store."""


class ArtifactSaveError(DatastoreError):
    """An artifact could not be pickled or written; names the artifact (and the step once known)."""

    def __init__(self, artifact_name: str, reason: str, *, flow: str | None = None, step: str | None = None):
        self.artifact_name = artifact_name
        self.reason = reason
        self.flow = flow
        self.step = step
        where = f"step '{step}' of flow {flow}" if step else "this task"
        super().__init__(
            f"Artifact '{artifact_name}' set in {where} cannot be stored: {reason}. "
            f"Only picklable values can be artifacts: keep open files, sockets, locks, generators and "
            f"database connections in local variables instead of on self, or convert the value first."
        )


class UnsafeKeyError(DatastoreError):
    """A run id, step name or other key part would escape the datastore root."""


class StepFailedError(FlowspecError):
    """A step's own code raised; carries the step's exception text for the CLI to show."""


class ConfigurationError(FlowspecError):
    """The [flowspec] configuration is invalid."""
