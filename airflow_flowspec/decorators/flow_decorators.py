"""Flow-level decorators: ``@schedule`` and ``@project``.

A class decorator runs after the class body (and so after ``FlowSpec.__init_subclass__``), so it
tells the flow class it changed, which rebuilds the flow's DAG when Airflow is parsing the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from airflow_flowspec.errors import DecoratorError, ProjectError
from airflow_flowspec.identity import MAX_NAME_LENGTH, is_valid_project_name

_NAMED_SCHEDULES = {"hourly": "0 * * * *", "daily": "0 0 * * *", "weekly": "0 0 * * 0"}


class Schedule:
    """When Airflow runs the flow: one of hourly, daily, weekly (as in Metaflow) or a cron string."""

    def __init__(
        self,
        hourly: bool = False,
        daily: bool = True,
        weekly: bool = False,
        cron: str | None = None,
        timezone: str | None = None,
    ):
        if cron is not None:
            if not isinstance(cron, str) or len(cron.split()) not in (5, 6):
                raise DecoratorError(
                    f"@schedule(cron=...) must be a cron expression like '0 6 * * *', got {cron!r}."
                )
            self.cron = cron.strip()
            self.interval_name = None
        elif weekly:
            self.cron, self.interval_name = _NAMED_SCHEDULES["weekly"], "weekly"
        elif hourly:
            self.cron, self.interval_name = _NAMED_SCHEDULES["hourly"], "hourly"
        elif daily:
            self.cron, self.interval_name = _NAMED_SCHEDULES["daily"], "daily"
        else:
            raise DecoratorError("@schedule needs one of hourly=True, daily=True, weekly=True or cron='...'.")
        if timezone is not None:
            try:
                from zoneinfo import ZoneInfo

                ZoneInfo(timezone)
            except Exception:  # noqa: BLE001 - any failure means the name is unknown
                raise DecoratorError(
                    f"@schedule(timezone=...) is not a known IANA time zone: {timezone!r} "
                    f"(e.g. 'Europe/Berlin', 'UTC')."
                ) from None
        self.timezone = timezone or "UTC"

    def __repr__(self) -> str:
        return f"@schedule(cron={self.cron!r}, timezone={self.timezone!r})"


def schedule(flow_class: Any = None, **kwargs: Any) -> Any:
    """``@schedule(daily=True)``, ``@schedule(cron="0 6 * * *", timezone="Europe/Berlin")``."""

    def apply(cls: Any) -> Any:
        if not (isinstance(cls, type) and hasattr(cls, "_flowspec_class_changed")):
            raise DecoratorError("@schedule decorates a FlowSpec class, not a step or function.")
        cls._flowspec_schedule = Schedule(**kwargs)
        cls._flowspec_class_changed()
        return cls

    if flow_class is not None:
        return apply(flow_class)
    return apply


# ---------------------------------------------------------------------- @project

#: Metaflow's limits for project and branch names: both become part of DAG ids and of run tags.
INVALID_NAME_CHARACTERS = re.compile("[^a-z0-9_]")
_PROJECT_ARGUMENTS = ("name", "branch", "production")


class Project:
    """What ``@project`` was given, and which arguments were given at all.

    Checked only when the flow is run, checked or deployed, as Metaflow does: a mistake then is one
    paragraph from ``run`` and ``check`` and the file's import error in the dags folder, where a
    check while the file is imported would be a traceback. Which arguments were given matters
    because a given one may not be contradicted from the command line.
    """

    def __init__(self, **arguments: Any):
        self.name = arguments.get("name")
        self.branch = arguments.get("branch")
        self.production = arguments.get("production", False)
        self.given = frozenset(arguments)

    def __repr__(self) -> str:
        shown = ", ".join(f"{key}={getattr(self, key)!r}" for key in _PROJECT_ARGUMENTS if key in self.given)
        return f"@project({shown})"


@dataclass(frozen=True)
class ProjectBranch:
    """The deployment of a project a run belongs to, named as Metaflow names it.

    Runs are still stored under the flow's class name; the project flow name only tells branches
    apart where they would clash (Airflow's DAG ids).
    """

    project_name: str
    branch_name: str
    flow_name: str
    is_production: bool
    is_user_branch: bool

    @property
    def project_flow_name(self) -> str:
        return f"{self.project_name}.{self.branch_name}.{self.flow_name}"


def project(flow_class: Any = None, **kwargs: Any) -> Any:
    """``@project(name="fraud")``: the flow belongs to a project, and each run to one of its branches.

    Metaflow 2.19's decorator: ``branch`` and ``production`` pin the branch (``test.<branch>``,
    ``prod``, ``prod.<branch>``) instead of the command line or, in the dags folder,
    ``[flowspec] project_branch``.
    """
    if isinstance(flow_class, str):
        raise DecoratorError(f"@project takes its name as a keyword: @project(name={flow_class!r}).")
    unknown = sorted(set(kwargs) - set(_PROJECT_ARGUMENTS))
    if unknown:
        raise DecoratorError(
            f"@project got unknown argument(s) {', '.join(unknown)}; it accepts name, branch and production."
        )

    def apply(cls: Any) -> Any:
        if not (isinstance(cls, type) and hasattr(cls, "_flowspec_class_changed")):
            raise DecoratorError("@project decorates a FlowSpec class, not a step or function.")
        if "_flowspec_project" in cls.__dict__:
            raise DecoratorError(f"Flow {cls.__name__} has @project twice; keep one.")
        cls._flowspec_project = Project(**kwargs)
        cls._flowspec_class_changed()
        return cls

    if flow_class is not None:
        return apply(flow_class)
    return apply


def project_of(flow_class: type) -> Project | None:
    return getattr(flow_class, "_flowspec_project", None)


def branch_for_run(
    flow_class: type, username: str, *, branch: str | None = None, production: bool = False
) -> ProjectBranch | None:
    """The branch of a run started from the command line (``--branch``, ``--production``).

    Metaflow's rule, argument by argument: the decorator's value if it gives one, else the command
    line's; a command line contradicting a value the decorator gives is refused.
    """
    decorator = project_of(flow_class)
    if decorator is None:
        return None
    for argument, asked, default, flag in (
        ("branch", branch, None, f"--branch {branch}"),
        ("production", production, False, "--production"),
    ):
        if argument in decorator.given and asked != default and getattr(decorator, argument) != asked:
            raise ProjectError(
                f"{_decorator_place(flow_class)}Flow {flow_class.__name__} is run with {flag}, but its "
                f"{decorator!r} already sets {argument}={getattr(decorator, argument)!r}. As in "
                f"Metaflow, {argument} comes from one place: drop {flag.split()[0]} from the command "
                f"line, or {argument}= from the decorator."
            )
    chosen_branch = decorator.branch if "branch" in decorator.given else branch
    chosen_production = decorator.production if "production" in decorator.given else production
    where = "@project(branch=...)" if "branch" in decorator.given else "--branch"
    return _name_branch(flow_class, decorator, chosen_branch, chosen_production, username, where)


def branch_for_deployment(
    flow_class: type, configured_branch: str | None, username: str
) -> ProjectBranch | None:
    """The branch a ``@project`` flow is deployed on in the dags folder.

    ``configured_branch`` is ``[flowspec] project_branch`` as ``--branch`` would take it, None
    for production. A decorator that gives ``branch`` or ``production`` pins its branch wherever
    the file is deployed, so the option then plays no part.
    """
    decorator = project_of(flow_class)
    if decorator is None:
        return None
    if decorator.given & {"branch", "production"}:
        branch, production, where = decorator.branch, decorator.production, "@project(branch=...)"
    else:
        branch, production, where = configured_branch, configured_branch is None, "[flowspec] project_branch"
    return _name_branch(flow_class, decorator, branch, production, username, where)


def _name_branch(
    flow_class: type, decorator: Project, branch: Any, production: Any, username: str, where: str
) -> ProjectBranch:
    """Metaflow's ``format_name``: ``test.<branch>``, ``prod.<branch>``, ``prod`` or ``user.<username>``."""
    flow_name = flow_class.__name__
    name = decorator.name
    if name is None or name == "":
        raise ProjectError(
            f"{_decorator_place(flow_class)}@project on flow {flow_name} needs a name. "
            f"Fix: @project(name='my_project')."
        )
    if not is_valid_project_name(name):
        raise ProjectError(
            f"{_decorator_place(flow_class)}@project(name={name!r}) on flow {flow_name} is not a usable "
            f"project name: as in Metaflow it may contain only lowercase letters, digits and "
            f"underscores, at most {MAX_NAME_LENGTH} characters (it becomes part of the DAG id and of "
            f"the tag project:<name>). Fix: e.g. @project(name={_usable(name, 'my_project')!r})."
        )
    if branch:
        if not is_valid_project_name(branch):
            raise ProjectError(
                f"The branch {branch!r} of flow {flow_name} (from {where}) is not a usable branch name: "
                f"as in Metaflow it may contain only lowercase letters, digits and underscores, at "
                f"most {MAX_NAME_LENGTH} characters (it becomes test.<branch>, or prod.<branch> for "
                f"production). Fix: e.g. {_usable(branch, 'staging')!r}."
            )
        branch_name = f"prod.{branch}" if production else f"test.{branch}"
    elif production:
        branch_name = "prod"
    else:
        branch_name = f"user.{username}"
    return ProjectBranch(
        project_name=name,
        branch_name=branch_name,
        flow_name=flow_name,
        is_production=bool(production),
        is_user_branch=branch_name.startswith("user."),
    )


def _usable(name: Any, fallback: str) -> str:
    return INVALID_NAME_CHARACTERS.sub("_", str(name).lower())[:MAX_NAME_LENGTH].strip("_") or fallback


def _decorator_place(flow_class: type) -> str:
    """``<file>, line <n>: `` of the ``@project`` line, as lint errors start; empty if unknown."""
    import inspect

    try:
        lines, first = inspect.getsourcelines(flow_class)
        source_file = inspect.getsourcefile(flow_class)
    except (OSError, TypeError):
        return ""
    for offset, line in enumerate(lines):
        if line.lstrip().startswith("@project"):
            return f"{source_file}, line {first + offset}: "
    return f"{source_file}, line {first}: "
