"""``python flow.py logs|dump|tag|output-dot``: Metaflow's commands for looking at a flow's runs.

They take Metaflow 2.19's arguments and print what it prints (``dump``'s lines, ``tag``'s columns,
``output-dot``'s graph), so a Metaflow user's habits and scripts carry over. Everything is read
through the client from the datastore (no Airflow): a run is named as the client names it
(``RUN_ID`` alone, the flow being the file's), ``logs`` and ``dump`` read any namespace as
Metaflow's do, ``tag`` acts in the user's namespace unless ``--namespace`` says otherwise. What
came from the datastore is printed through :func:`~airflow_flowspec.terminal.terminal_safe`; the
headers Metaflow writes to stderr go to stderr here too, the data to stdout.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from collections.abc import Callable, Iterable
from typing import Any

from airflow_flowspec.errors import FlowCommandError, MetaflowNamespaceMismatch
from airflow_flowspec.terminal import terminal_safe

#: The commands of this module, by their name on the command line.
COMMANDS = ("logs", "dump", "tag", "output-dot")
#: What ``dump`` prints for a value it does not load (Metaflow's text).
TOO_LARGE = "< artifact too large >"


def add_parsers(commands: Any) -> None:
    """Add this module's commands to the flow file's ``argparse`` subcommands."""
    path_help = "RUN_ID/STEP for every task of the step, or RUN_ID/STEP/TASK_ID for one"
    logs = commands.add_parser(
        "logs",
        help="show stdout/stderr produced by a task or all tasks in a step",
        description="Show stdout/stderr produced by a task or all tasks in a step: what the step "
        "printed on its latest attempt, as task.stdout and task.stderr return it.",
    )
    logs.add_argument("input_path", metavar="RUN_ID/STEP[/TASK_ID]", help=path_help)
    logs.add_argument("--stdout", action="store_true", help="show stdout only (default: both)")
    logs.add_argument("--stderr", action="store_true", help="show stderr only (default: both)")

    dump = commands.add_parser(
        "dump",
        help="print the artifacts of a task or all tasks in a step",
        description="Get data artifacts of a task or all tasks in a step.",
    )
    dump.add_argument("input_path", metavar="RUN_ID/STEP[/TASK_ID]", help=path_help)
    dump.add_argument("--private", action="store_true", help="show also private artifacts (_name)")
    dump.add_argument(
        "--max-value-size",
        type=int,
        default=1000,
        metavar="BYTES",
        help="show only values whose pickle is at most this size (default: 1000; 0 shows names only)",
    )
    dump.add_argument("--include", default="", help="only the artifacts in this comma-separated list")
    dump.add_argument("--file", help="pickle the artifacts to this file instead: {task: {name: value}}")

    tag = commands.add_parser(
        "tag", help="add, remove, replace or list a run's tags", description="Commands related to tagging."
    )
    actions = tag.add_subparsers(dest="tag_command", required=True, metavar="{add,remove,replace,list}")
    for name, text in (("add", "Add tags to a run."), ("remove", "Remove tags from a run.")):
        action = actions.add_parser(name, help=text.lower().rstrip("."), description=text)
        _add_run_options(action)
        action.add_argument("tags", nargs="+", metavar="TAG")
    replace = actions.add_parser(
        "replace",
        help="replace tags of a run in one change",
        description="Replace one or more tags of a run atomically. Removals are applied first, "
        "then additions.",
    )
    _add_run_options(replace)
    replace.add_argument("--add", dest="tags_to_add", action="append", default=[], metavar="TAG")
    replace.add_argument("--remove", dest="tags_to_remove", action="append", default=[], metavar="TAG")
    listing = actions.add_parser("list", help="list tags of a run or of every run", description="List tags.")
    listing.add_argument("--run-id", help="the run to list (default: every run of the flow)")
    listing.add_argument("arg_run_id", nargs="?", metavar="RUN_ID", help="the run, as --run-id")
    listing.add_argument("--all", dest="list_all", action="store_true", help="every run of the flow")
    listing.add_argument("--my-runs", action="store_true", help="every run of the flow in your namespace")
    listing.add_argument("--hide-system-tags", action="store_true", help="hide system tags")
    group = listing.add_mutually_exclusive_group()
    group.add_argument("--group-by-tag", action="store_true", help="runs grouped by tag")
    group.add_argument("--group-by-run", action="store_true", help="tags grouped by run")

    commands.add_parser("output-dot", help="print the flow's graph in Graphviz's dot language")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-id", help="the run to tag [required]")
    parser.add_argument(
        "--namespace",
        dest="user_namespace",
        help="the namespace the run is in (default: user:<you>; e.g. production:TrainFlow)",
    )


def run_command(flow_class: type, graph: Any, args: argparse.Namespace) -> int:
    """Carry out one of :data:`COMMANDS`; a mistake raises a :class:`FlowCommandError`."""
    flow_name = flow_class.__name__
    if args.command == "output-dot":
        print("Visualizing the flow as a GraphViz graph", file=sys.stderr)
        print(
            "    Try piping the output to 'dot -Tpng -o graph.png' to produce an actual image.",
            file=sys.stderr,
        )
        print(graph.output_dot())
        return 0
    if args.command == "logs":
        return _logs(flow_name, args)
    if args.command == "dump":
        return _dump(flow_name, args)
    return _tag(flow_name, args)


# -- logs and dump ------------------------------------------------------------------------------


def _tasks(flow_name: str, input_path: str) -> list[Any]:
    """The tasks ``RUN_ID/STEP[/TASK_ID]`` names (every namespace, as Metaflow's logs and dump)."""
    from airflow_flowspec.client import Step, Task, namespace

    parts = input_path.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise FlowCommandError(
            f"{input_path!r} is not a path to a step or a task of flow {flow_name}: write "
            f"RUN_ID/STEP (every task of the step) or RUN_ID/STEP/TASK_ID (one task)."
        )
    namespace(None)
    if len(parts) == 3:
        return [Task(f"{flow_name}/{input_path}")]
    return list(Step(f"{flow_name}/{input_path}"))


def _headed(tasks: list[Any]) -> list[tuple[Any, str]]:
    """Each task with its place as Metaflow's headers name it; the run (one for every task a path
    names) by its short id where it has one, looked up once."""
    if not tasks:
        return []
    from airflow_flowspec.client import Run

    first = tasks[0]
    number = Run(f"{first.flow_name}/{first.run_id}").number
    run_id = first.run_id if number is None else number
    return [
        (task, terminal_safe(f"run_id={run_id} step={task.step_name} task_id={task.id}")) for task in tasks
    ]


def _logs(flow_name: str, args: argparse.Namespace) -> int:
    streams = [name for name, wanted in (("stdout", args.stdout), ("stderr", args.stderr)) if wanted]
    for task, where in _headed(_tasks(flow_name, args.input_path)):
        print(f"Dumping logs of {where}", file=sys.stderr, flush=True)
        for stream in streams or ["stdout", "stderr"]:
            print(stream, file=sys.stderr, flush=True)
            text = getattr(task, stream)
            if text:
                print(
                    terminal_safe(text, multiline=True), end="" if text.endswith("\n") else "\n", flush=True
                )
    return 0


def _dump(flow_name: str, args: argparse.Namespace) -> int:
    from airflow_flowspec.datastore.artifacts import SECRET_REPR

    include = {name for name in args.include.split(",") if name}
    pickled: dict[str, dict[str, Any]] = {}
    for task, where in _headed(_tasks(flow_name, args.input_path)):
        if not task.successful:
            print(
                f"Task {terminal_safe(task.pathspec)} has no artifacts: it has not finished, or it failed.",
                file=sys.stderr,
            )
            continue
        print(f"Dumping output of {where}", file=sys.stderr, flush=True)
        artifacts = [
            artifact
            for artifact in task
            if (not include or artifact.id in include) and (args.private or not artifact.id.startswith("_"))
        ]
        if args.file is not None:
            pickled[f"{task.run_id}/{task.step_name}/{task.id}"] = {a.id: a.data for a in artifacts}
            continue
        for artifact in artifacts:  # by name, as the task lists them
            if artifact.short_repr == SECRET_REPR:  # printed only by asking for it: `get`
                value = SECRET_REPR
            elif artifact.size == 0 or artifact.size > args.max_value_size:
                value = TOO_LARGE
            else:
                value = terminal_safe(str(artifact.data), multiline=True)
            name, kind = terminal_safe(artifact.id), terminal_safe(artifact.type)
            print(f"{name} [size: {artifact.size} type: <class '{kind}'>] = {value}", flush=True)
    if args.file is not None:
        with open(args.file, "wb") as handle:
            pickle.dump(pickled, handle, protocol=pickle.HIGHEST_PROTOCOL)
        print(f"Artifacts written to {args.file}", file=sys.stderr)
    return 0


# -- tag ----------------------------------------------------------------------------------------


def _tag(flow_name: str, args: argparse.Namespace) -> int:
    if args.tag_command == "list":
        return _tag_list(flow_name, args)
    if args.tag_command == "replace":
        if not args.tags_to_add and not args.tags_to_remove:
            raise FlowCommandError(
                "tag replace: give at least one tag to add (--add) and one tag to remove (--remove)."
            )
        if not args.tags_to_remove:
            raise FlowCommandError(
                "tag replace: give at least one tag to remove (--remove), else use tag add."
            )
        if not args.tags_to_add:
            raise FlowCommandError("tag replace: give at least one tag to add (--add), else use tag remove.")
    run = _tagged_run(flow_name, args.run_id, args.user_namespace)
    if args.tag_command == "add":
        run.add_tags(list(args.tags))
    elif args.tag_command == "remove":
        run.remove_tags(list(args.tags))
    else:
        run.replace_tags(list(args.tags_to_remove), list(args.tags_to_add))
    print("Operation successful. New tags:")
    _print_groups({run.pathspec: set(run.system_tags)}, {run.pathspec: set(run.tags)}, by_tag=False)
    return 0


def _tagged_run(flow_name: str, run_id: str | None, user_namespace: str | None) -> Any:
    """The run ``--run-id`` names, in ``--namespace`` (the user's by default)."""
    from airflow_flowspec.client import Flow, Run, default_namespace, namespace

    chosen = namespace(user_namespace or default_namespace())
    if run_id is None:
        latest = Flow(flow_name).latest_run
        where = f"in namespace {chosen}"
        raise FlowCommandError(
            "Name the run with --run-id. "
            + (
                f"{flow_name}'s latest run {where} is "
                f"{terminal_safe(latest.id if latest.number is None else str(latest.number))} "
                f"(--run-id latest names it too)."
                if latest is not None
                else f"{flow_name} has no run {where} (--namespace names another)."
            )
        )
    if "/" in run_id:
        raise FlowCommandError(
            f"--run-id {run_id!r} is not a run id: give the run's id alone (the flow is {flow_name})."
        )
    try:
        return Run(f"{flow_name}/{run_id}")
    except MetaflowNamespaceMismatch:
        raise FlowCommandError(
            f"Run {flow_name}/{run_id} is not in the namespace {chosen}: name its namespace with "
            f"--namespace (one of its tags, e.g. user:<who started it> or production:{flow_name})."
        ) from None


def _tag_list(flow_name: str, args: argparse.Namespace) -> int:
    from airflow_flowspec.client import Flow, Run, default_namespace, namespace

    if args.run_id is not None and args.arg_run_id is not None:
        raise FlowCommandError("tag list: name the run with --run-id or as an argument, not both.")
    run_id = args.run_id or args.arg_run_id
    if args.list_all and args.my_runs:
        raise FlowCommandError("tag list: --all cannot be used together with --my-runs.")
    if run_id is not None and (args.list_all or args.my_runs):
        raise FlowCommandError("tag list: name one run, or --all/--my-runs, not both.")
    if run_id is None:
        namespace(default_namespace() if args.my_runs else None)
        runs = list(Flow(flow_name).runs())
    else:
        namespace(None)
        if "/" in run_id:
            raise FlowCommandError(
                f"{run_id!r} is not a run id: give the run's id alone (the flow is {flow_name})."
            )
        runs = [Run(f"{flow_name}/{run_id}")]
    system_by_group: dict[str, Any] = {}
    all_by_group: dict[str, Any] = {}
    for run in runs:
        system, every = set(run.system_tags), set(run.tags)
        if args.hide_system_tags:
            every, system = every - system, set()
        if args.group_by_run:
            system_by_group[run.pathspec], all_by_group[run.pathspec] = system, every
        elif args.group_by_tag:
            for tag in every - system:
                all_by_group.setdefault(tag, []).append(run.pathspec)
            for tag in system:
                system_by_group.setdefault(tag, []).append(run.pathspec)
        else:
            system_by_group.setdefault("_", set()).update(system)
            all_by_group.setdefault("_", set()).update(every)
    if not args.group_by_run and not args.group_by_tag:
        pathspecs = ",".join(run.pathspec for run in runs)
        system_by_group = {pathspecs: system_by_group.get("_", set())}
        all_by_group = {pathspecs: all_by_group.get("_", set())}
    _print_groups(system_by_group, all_by_group, by_tag=args.group_by_tag)
    return 0


def _print_groups(system_by_group: dict[str, Any], all_by_group: dict[str, Any], *, by_tag: bool) -> None:
    """Metaflow's tag listing: a header, then each group's tags (or runs) in columns. The tags a
    user can change are shown bold on a terminal (Metaflow highlights them the same way)."""
    bold = _bold if sys.stdout.isatty() else (lambda text: text)
    print(f"\nSystem tags and {bold('tags')}; only {bold('tags')} can be modified")
    print("-" * 56 + "\n")
    for group in sorted(set(all_by_group) | set(system_by_group)):
        every, system = all_by_group.get(group, set()), system_by_group.get(group, set())
        if by_tag:
            if every:
                _print_columns(f"For tag {bold(terminal_safe(group))}", every, lambda _: False, bold)
            if system:
                _print_columns(f"For tag {terminal_safe(group)}", system, lambda _: False, bold)
        else:
            header = None if len(all_by_group) == 1 else f"For run {terminal_safe(group)}"
            _print_columns(header, every, lambda tag, system=system: tag not in system, bold)


def _bold(text: str) -> str:
    return f"\x1b[1m{text}\x1b[0m"


def _print_columns(
    header: str | None, words: Iterable[str], highlighted: Callable[[str], bool], bold: Callable[[str], str]
) -> None:
    """``words`` sorted, down columns of equal width that fit 120 characters (Metaflow's layout)."""
    shown = [(terminal_safe(word), highlighted(word)) for word in sorted(words)]
    width = max((len(text) for text, _ in shown), default=0)
    columns = max(1, 124 // (width + 4))
    rows = (len(shown) + columns - 1) // columns if shown else 0
    lines = [header] if header is not None else []
    for row in range(rows):
        cells = [shown[row + column * rows] for column in range(columns) if row + column * rows < len(shown)]
        padded = [
            bold(text) + " " * (width - len(text)) if loud else text.ljust(width) for text, loud in cells
        ]
        lines.append("    ".join(padded).rstrip())
    print("\n".join(lines) + "\n")
