"""Every error a data scientist may see, in one place, each with a message that says what to fix.

Every error names the flow, step, line, option or artifact it is about. None of them needs Airflow,
and this module imports nothing of the package, so any module may import it.

Two kinds of failure must never be confused, because only one of them is worth running again:

* a **flow mistake** (a lint error, a bad parameter, a merge conflict, an unpicklable artifact, a
  step that no longer exists, a bad option): running the step again gives the same result, so it
  fails at once with its message, without using up ``@retry`` attempts and never swallowed by
  ``@catch``. These errors have ``retryable = False``.
* a **failure of the step** (the step's own code raised, or the datastore could not be reached):
  ``@retry`` runs it again and ``@catch`` may take it after the last attempt. The step's own
  exceptions are the user's classes; of ours, only :class:`DatastoreError` is retryable.

A process running a step (``python -m airflow_flowspec.runtime``, e.g. in an AWS Batch container)
says which it was by its exit status, as Metaflow's runtime does.
"""

from __future__ import annotations

#: Exit status of a step process that failed with a flow mistake: do not retry (Metaflow's value).
EXIT_DISALLOW_RETRY = 202
#: Exit status of a step process whose step failed (its own exception, a network error): retry.
EXIT_STEP_FAILED = 1


class FlowspecError(Exception):
    """Base class: shown as one paragraph, without a traceback, by the command line."""

    #: Whether running the step again could succeed. Flow mistakes (the default) cannot.
    retryable = False
    #: What a failure that is not retried is called in the task's last line ("...: not retried"):
    #: only what the flow's author can fix is called a mistake in the flow.
    failure_kind = "a mistake in the flow"


# ---------------------------------------------------------------------- the flow's definition


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


class DecoratorError(FlowspecError):
    """A decorator is misplaced or has an invalid argument."""


class ProjectError(DecoratorError):
    """``@project`` cannot name a deployment: a bad project or branch name, or a branch or production
    flag given both in the decorator and on the command line."""


class ParameterError(FlowspecError):
    """A parameter is declared wrongly or was given a value of the wrong type."""


class TagError(ParameterError, ValueError):
    """A run's tag breaks the tag rule (:mod:`airflow_flowspec.run_tags`): ``run --tag``, the trigger's
    tags or ``Run.add_tag``. A ``ValueError`` too, as the client's tag methods always raised."""


class FlowLoadError(FlowspecError):
    """The flow file could not be loaded, does not define the flow, or lacks the step asked for."""


# ---------------------------------------------------------------------- what a step does at run time


class TransitionError(FlowspecError):
    """``self.next`` was called in a way the flow's graph does not allow, or its foreach/switch
    value cannot be used."""


class MergeArtifactsError(FlowspecError):
    """``merge_artifacts`` found inputs that disagree on an artifact, or was misused."""


class ForeachTooWideError(FlowspecError):
    """A foreach has more items than Airflow's ``[core] max_map_length`` allows."""


class StepInputError(FlowspecError):
    """A task was handed inputs that do not fit its step (no parent manifest, a foreign value)."""


# ---------------------------------------------------------------------- the run's name


class RunIdentityError(FlowspecError):
    """A run cannot be named: a flow, project, branch or Airflow run id that does not fit the one
    scheme every stored run, DAG id and XCom folder is derived from (:mod:`airflow_flowspec.identity`),
    or a run that would be stored where another deployment's run is."""

    failure_kind = "a run id this flow cannot be stored under, not a mistake in the flow"


# ---------------------------------------------------------------------- configuration


class ConfigurationError(FlowspecError):
    """A ``[flowspec]`` option has a value we cannot use; names the option and what it accepts."""


# ---------------------------------------------------------------------- the datastore


class DatastoreError(FlowspecError):
    """The artifact store could not be read or written (network, permissions, a damaged object).

    Retryable: the network comes back and permissions get fixed; a later attempt may succeed.
    """

    retryable = True
    failure_kind = "a problem with the datastore, not a mistake in the flow"


class ArtifactNotFoundError(DatastoreError):
    """An artifact or manifest that should exist is missing from the store.

    Not retryable: it was deleted, never written, or the run used another datastore root.
    """

    retryable = False


class ArtifactSaveError(DatastoreError):
    """An artifact could not be pickled; names the artifact (and the step once known).

    Not retryable: the same value fails to pickle every time.
    """

    retryable = False

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


class CorruptArtifactError(DatastoreError):
    """Bytes read from the datastore do not hash to the name they were stored under.

    Not retryable by the task that read them: the blob was read twice, and is moved aside so that
    running the step that produced it again stores it anew.
    """

    retryable = False


class RunDeletedError(ArtifactNotFoundError):
    """The run a task belongs to was deleted by ``airflow-flowspec gc`` (or is being deleted):
    there is nothing left for the task to run on. Raised before the task reads or writes anything."""

    failure_kind = "a run deleted by airflow-flowspec gc, not a mistake in the flow"


class LeaseLostError(DatastoreError):
    """A running task could not renew the record that tells ``airflow-flowspec gc`` it is running
    (its lease) for longer than gc waits for one: what it was about to reference may be gone, so it
    stops before writing its results, and a retry starts afresh. Retryable."""


class UnreadableRecordError(DatastoreError):
    """A record the datastore keeps as JSON (a run's ``run.json``, a manifest, a spec) is not a JSON
    object, or holds a field in a shape none of ours writes (a run's tags not a list of strings):
    damaged, or written by something else. The message names the file.

    Retryable as any :class:`DatastoreError` is: a retried task writes its spec, result and manifest
    anew. The client skips a run whose record is unreadable when listing runs
    (:class:`UnreadableRecordWarning`) and raises this when that run is asked for by name.
    """


class DatastoreFormatError(DatastoreError):
    """The datastore root was written in a format this version does not read (its
    ``flowspec-datastore.json`` names another one): nothing of it is read or written.

    Not retryable: the root stays in its format until it is pointed elsewhere or the version changes.
    """

    retryable = False


class XComReferenceError(FlowspecError):
    """An XCom row refers to a stored value in a way this XCom backend did not write (an edited or
    planted row): refused, nothing read, unpickled or deleted."""


class ArtifactLoadError(DatastoreError):
    """A stored artifact could not be unpickled here (a module or class missing, another version).

    Not retryable: the same bytes fail the same way until the environment changes.
    """

    retryable = False


class UnsafeKeyError(DatastoreError):
    """A run id, step name or other key part would escape the datastore root."""

    retryable = False


class GarbageCollectionError(FlowspecError):
    """``airflow-flowspec gc`` was asked for something unsafe (a grace period too short for running
    tasks) or impossible (an unknown flow), or found a kept run's record it cannot read, so it cannot
    tell which artifacts that run needs. Raised before anything is deleted."""


class LocalAirflowError(FlowspecError):
    """``airflow-flowspec airflow up|down`` could not start or stop the local Airflow: a port in use,
    a missing dags folder, a service that exited while starting (the message ends with its log)."""


# ---------------------------------------------------------------------- code and AWS Batch


class CodePackageError(FlowspecError):
    """The code a run starts with cannot be recorded (a file of the include list is missing or
    unreadable, or the package is too large to ship to every task)."""


class BatchJobSpecError(FlowspecError):
    """A step's AWS Batch job cannot be assembled: conflicting ``@batch``/``@resources`` values, a
    missing job queue or image, container overrides over Batch's size limit. A flow mistake."""


class BatchJobFailedError(FlowspecError):
    """A step's AWS Batch job ended FAILED: the message has Batch's status reason and the last
    lines of the step's log. Retryable (``@retry``): the step's own exception, a lost instance
    or an out-of-memory kill may not happen again."""

    retryable = True


# ---------------------------------------------------------------------- looking results up


class MetaflowNotFound(FlowspecError, KeyError):  # noqa: N818 - Metaflow's name, so except clauses carry over
    """The client was asked for a flow, run, step, task or artifact that does not exist.

    A ``KeyError`` too, so ``run["nope"]`` fails the way a mapping does; the message lists what exists
    nearby.
    """

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0]) if self.args else ""


class MetaflowNamespaceMismatch(FlowspecError):  # noqa: N818 - Metaflow's name
    """The client was asked for a run outside the current namespace (see ``namespace()``)."""


class ManyTasksError(FlowspecError):
    """An artifact was asked of a step by the step alone (``Flow/run/step/artifact``), but the step
    ran several tasks (a foreach body), each with its own value: the first is not "the" value."""

    def __init__(self, step_pathspec: str, task_pathspecs: list[str], artifact: str):
        shown = task_pathspecs[:10]
        more = f", and {len(task_pathspecs) - len(shown)} more" if len(task_pathspecs) > len(shown) else ""
        super().__init__(
            f"Step {step_pathspec} ran {len(task_pathspecs)} tasks (a foreach), each with its own "
            f"{artifact!r}: name the task, as Flow/run/step/task/artifact (e.g. "
            f"{task_pathspecs[0]}/{artifact}). Its tasks: {', '.join(shown)}{more}."
        )


class FlowCommandError(FlowspecError):
    """``python flow.py logs|dump|tag`` was given a path or options it cannot act on (the message
    says what it takes)."""


class UnreadableRecordWarning(UserWarning):
    """The client skipped a run whose record it cannot read (the message names the run and the
    file); the flow's other runs are listed as usual. Shown once per run by Python's default
    warning filter; ``airflow-flowspec`` prints it as one line on stderr."""


def is_flow_mistake(error: BaseException) -> bool:
    """True for our errors that running the step again cannot fix (see the module docstring): they
    fail the task at once and ``@catch`` does not take them. Most are mistakes in the flow;
    :attr:`FlowspecError.failure_kind` names the others (a missing artifact, a deleted run)."""
    return isinstance(error, FlowspecError) and not error.retryable


def not_retried_label(error: BaseException) -> str:
    """The end of the message of a task failed at once: ``(<kind>: not retried)``."""
    kind = getattr(error, "failure_kind", FlowspecError.failure_kind)
    return f"({kind}: not retried)"
