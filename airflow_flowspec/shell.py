"""``airflow-flowspec``: look results up from a shell, through the client (no Airflow needed).

    airflow-flowspec runs TrainFlow [--tag T] [-n 10] [--all-namespaces]
        (a row: short run id, status, start, duration, parameters, tags)
    airflow-flowspec show TrainFlow/<run_id>[/<step>[/<task>]]
    airflow-flowspec get TrainFlow/<run_id>/<step>[/<task>]/<artifact> [-o file]
    airflow-flowspec code TrainFlow/<run_id> [-o folder]
    airflow-flowspec repin TrainFlow/<run_id> [--flow-file PATH]
    airflow-flowspec gc --older-than 30d [--keep-last N] [--flow F] [--dry-run] [--grace 1d]
    airflow-flowspec preloaders [--stop]
    airflow-flowspec airflow up [--dags DIR] [--port N] [--home DIR] | down | status

A ``<run_id>`` is a run's short id (``TrainFlow/12``, what ``runs`` lists), ``latest`` (the
latest run in the namespace) or its full id (``TrainFlow/manual__2026-...``, what ``show`` prints).
``--root`` reads another datastore than ``[flowspec] datastore_root`` (as ``metadata()`` does).
A lookup that fails prints one paragraph and exits 1. ``gc`` is the one command that deletes: its
rules are in :mod:`airflow_flowspec.datastore.gc`, and its ``--help`` states the safety rule.

Everything printed from the datastore (run ids, tags, step and artifact names, types, reprs,
values, paths, error messages) goes through :func:`~airflow_flowspec.terminal.terminal_safe`:
whoever wrote it cannot send the terminal escape sequences or print rows that are not there. A run
whose record cannot be read is left out of ``runs`` with one line on stderr saying so.

``airflow up`` starts a local Airflow with its UI on the flows of a folder
(:mod:`airflow_flowspec.airflow.local_services`, imported only then).
"""

from __future__ import annotations

import argparse
import pickle
import re
import sys
import textwrap
import warnings
from datetime import datetime, timedelta, timezone
from itertools import islice
from typing import Any

from airflow_flowspec.errors import (
    FlowspecError,
    GarbageCollectionError,
    ManyTasksError,
    UnreadableRecordWarning,
)
from airflow_flowspec.terminal import terminal_safe


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="airflow-flowspec", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", help="datastore root to read (default: [flowspec] datastore_root)")
    parser.add_argument(
        "-A", "--all-namespaces", action="store_true", help="show every run, not only your user's"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    runs = commands.add_parser(
        "runs",
        help="a flow's runs, newest first: short id (or, for a run from before short ids, its id), "
        "status, start, duration, parameters, tags",
    )
    runs.add_argument("flow")
    runs.add_argument("--tag", action="append", default=[], help="only runs with this tag (repeatable)")
    runs.add_argument("-n", type=int, default=10, help="how many runs (default 10)")
    show = commands.add_parser("show", help="a run's steps, a step's tasks, or a task's artifacts")
    show.add_argument("pathspec")
    get = commands.add_parser("get", help="an artifact's value: printed, or pickled to a file with -o")
    get.add_argument("pathspec")
    get.add_argument("-o", "--output", help="write the value, pickled, to this file")
    code = commands.add_parser("code", help="write out the flow file a run started with")
    code.add_argument("pathspec")
    code.add_argument("-o", "--output", default=".", help="folder to write it into (default: here)")
    repin = commands.add_parser(
        "repin",
        help="make a run's retried and cleared tasks run the flow file as it is now (fix, repin, clear)",
        description="A run executes the code it started with, also when a failed task is cleared. After "
        "fixing the flow, repin the run to its current code, then clear the failed task: it and every "
        "task after it run the fixed code. The code the run started with stays in its record.",
    )
    repin.add_argument("pathspec", help="Flow/run_id (a short id, latest, or the full id)")
    repin.add_argument("--flow-file", help="the fixed flow file (default: the path the run recorded)")
    _add_gc_parser(commands)
    preloaders = commands.add_parser(
        "preloaders",
        help="the warm Airflows `python flow.py run` forks runs from: pid, age, idle time, memory, callers",
    )
    preloaders.add_argument("--stop", action="store_true", help="stop them all (runs they started go on)")
    _add_airflow_parser(commands)
    return parser


def _add_airflow_parser(commands: Any) -> None:
    airflow = commands.add_parser(
        "airflow",
        help="start or stop a local Airflow with its UI, on the flows of a folder",
        description="A local Airflow on 127.0.0.1: scheduler, DAG processor, triggerer and API server, "
        "each a process of its own with its log in <home>/service-logs, configured by a generated "
        "<home>/airflow.cfg (use AIRFLOW_HOME=<home> airflow ... to reach it from Airflow's CLI).",
    )
    actions = airflow.add_subparsers(dest="action", required=True)
    up = actions.add_parser(
        "up",
        help="start it (or say where it already runs) and print the URL and the login",
        description="Start Airflow on the flows of --dags and return once it answers. DAGs are unpaused "
        "as they appear; new flow files show up within seconds. Stop it with "
        "`airflow-flowspec airflow down`.",
    )
    up.add_argument("--dags", default=".", metavar="DIR", help="the folder of flow files (default: here)")
    up.add_argument(
        "--port", type=int, default=8080, metavar="N", help="the UI's and API's port (default 8080)"
    )
    down = actions.add_parser("down", help="stop it, with every process it started")
    status = actions.add_parser(
        "status", help="whether it runs, where, and its processes (exit 1: not running)"
    )
    for action in (up, down, status):
        action.add_argument(
            "--home",
            metavar="DIR",
            help="its Airflow home: airflow.cfg, database, logs (default: ~/.airflow_flowspec/services)",
        )


def _add_gc_parser(commands: Any) -> None:
    from airflow_flowspec.datastore.gc import DEFAULT_GRACE, MIN_GRACE, SAFETY_RULE, format_age

    gc = commands.add_parser(
        "gc",
        help="delete old runs, then the stored artifacts no kept run references",
        description=textwrap.fill(
            "Delete runs that started before --older-than (except each flow's --keep-last newest, its "
            "latest successful run in each namespace, and runs still running), then the artifacts, "
            "ordinary tasks' XComs and damaged blobs nothing kept needs.",
            100,
            break_on_hyphens=False,
        )
        + "\n\n"
        + textwrap.fill(SAFETY_RULE, 100, break_on_hyphens=False),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gc.add_argument(
        "--older-than",
        required=True,
        type=_age,
        metavar="AGE",
        help="delete runs that started longer ago than this: 30d, 12h, 90m, 2w",
    )
    gc.add_argument("--keep-last", type=int, default=0, metavar="N", help="keep each flow's N newest runs")
    gc.add_argument(
        "--flow", help="only this flow's runs (what every other flow's runs reference is kept all the same)"
    )
    gc.add_argument("--dry-run", action="store_true", help="print what would go, delete nothing")
    gc.add_argument(
        "--grace",
        type=_age,
        default=None,
        metavar="AGE",
        help=f"spare unreferenced artifacts written or re-confirmed this recently (default "
        f"{format_age(DEFAULT_GRACE)}; at least {format_age(MIN_GRACE)}; 0 only when no flow is running)",
    )
    gc.add_argument(
        "--xcom-older-than",
        type=_age,
        default=None,
        metavar="AGE",
        help="also delete ordinary (non-flow) DAGs' pickled XComs older than this; Airflow may still "
        "read such an XCom (include_prior_dates), so only when nothing does",
    )
    gc.add_argument(
        "--airflow",
        dest="airflow",
        action="store_const",
        const=True,
        default=None,
        help="ask Airflow's metadata database which DAG runs are queued or running, and fail if it "
        "cannot be reached (default: ask it when an Airflow configuration is found here)",
    )
    gc.add_argument(
        "--no-airflow",
        dest="airflow",
        action="store_const",
        const=False,
        help="do not ask Airflow: a run whose cleared task waits in a queue is judged by time alone",
    )
    gc.add_argument("--root", default=argparse.SUPPRESS, help="datastore root to collect")


_AGE = re.compile(r"(?P<number>\d+(\.\d+)?)(?P<unit>[smhdw])")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _age(text: str) -> timedelta:
    if text.strip() == "0":
        return timedelta(0)
    match = _AGE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an age: write a number and a unit (s, m, h, d or w), e.g. 30d or 12h"
        )
    return timedelta(seconds=float(match["number"]) * _AGE_UNITS[match["unit"]])


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from airflow_flowspec import client

    try:
        if args.root:
            client.metadata(args.root)
        if args.all_namespaces:
            client.namespace(None)
        commands = {
            "runs": _runs,
            "show": _show,
            "get": _get,
            "code": _code,
            "repin": _repin,
            "gc": _gc,
            "airflow": _airflow,
            "preloaders": _preloaders,
        }
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(args.command, warnings.showwarning)
            return commands[args.command](args)
    except (FlowspecError, KeyError, ValueError) as error:
        print(f"airflow-flowspec {args.command}: {terminal_safe(str(error))}", file=sys.stderr)
        return 1


def _one_line_warning(command: str, show_other: Any) -> Any:
    """``showwarning`` that prints a skipped record as one line on stderr (others as Python does)."""

    def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, UnreadableRecordWarning):
            print(f"airflow-flowspec {command}: warning: {terminal_safe(str(message))}", file=sys.stderr)
        else:
            show_other(message, category, *args, **kwargs)

    return show


def _runs(args: argparse.Namespace) -> int:
    from airflow_flowspec.client import Flow

    now = datetime.now(timezone.utc)
    for run in islice(Flow(args.flow).runs(*args.tag), max(args.n, 0)):
        created = run.created_at.isoformat(timespec="seconds") if run.created_at else "-"
        shown_id = run.id if run.number is None else str(run.number)
        row = (
            terminal_safe(shown_id),
            run.status,
            created,
            _duration(run, now),
            _parameters(run),
            _tags(run),
        )
        print("\t".join(row))
    return 0


#: Longest value, and longest list of parameters, a row of ``runs`` shows.
_PARAMETER_VALUE_CHARS = 24
_PARAMETERS_CHARS = 80


def _duration(run: Any, now: datetime) -> str:
    """How long a finished run took ("3m07s"); for a running one, how long it has run so far."""
    started, finished = run.created_at, run.finished_at
    if started is None:
        return "-"
    if started.tzinfo is None:
        started = started.replace(tzinfo=timezone.utc)
    if finished is None:
        return f"{_span((now - started).total_seconds())} so far" if not run.finished else "-"
    if finished.tzinfo is None:
        finished = finished.replace(tzinfo=timezone.utc)
    return _span((finished - started).total_seconds())


def _span(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _parameters(run: Any) -> str:
    """``name=value`` for each parameter, from the reprs the start step recorded (never unpickled;
    secrets as ``<secret>``), each value and the whole cut at the end so a row stays readable."""
    from airflow_flowspec.datastore.previews import cut_end

    values = sorted(run.parameter_reprs.items())
    shown = " ".join(f"{name}={cut_end(value, _PARAMETER_VALUE_CHARS)}" for name, value in values)
    return terminal_safe(cut_end(shown, _PARAMETERS_CHARS)) if shown else "-"


def _show(args: argparse.Namespace) -> int:
    from airflow_flowspec.client import Flow, Run, Step, Task

    parts = args.pathspec.strip("/").split("/")
    kinds: dict[int, Any] = {1: Flow, 2: Run, 3: Step, 4: Task}
    if len(parts) not in kinds:
        raise ValueError(f"{args.pathspec!r} is not Flow[/run_id[/step[/task_id]]].")
    target = kinds[len(parts)]("/".join(parts))
    if isinstance(target, Flow):
        return _runs(argparse.Namespace(flow=target.id, tag=[], n=10))
    if isinstance(target, Run):
        short = "" if target.number is None else f"\tshort id {target.number}"
        print(f"{terminal_safe(target.pathspec)}\t{target.status}{short}\ttags: {_tags(target)}")
        for step in target:
            tasks = list(step)  # one listing: a task reads nothing until asked
            print(f"  {terminal_safe(step.id)}\t{len(tasks)} task{'s' if len(tasks) != 1 else ''}")
        return 0
    tasks = list(target) if isinstance(target, Step) else [target]
    for task in tasks:
        index = "" if task.index is None else f"\tforeach index {task.index}"
        print(f"{terminal_safe(task.pathspec)}\tattempt {task.retry_count + 1}{index}")
        for artifact in task:
            name, type_name, shown = (
                terminal_safe(text) for text in (artifact.id, artifact.type, artifact.short_repr)
            )
            print(f"  {name}\t{type_name}\t{artifact.size} bytes\t{shown}")
    return 0


def _tags(run: Any) -> str:
    return " ".join(terminal_safe(tag) for tag in sorted(run.tags))


def _get(args: argparse.Namespace) -> int:
    from airflow_flowspec.client import Step, Task

    parts = args.pathspec.strip("/").split("/")
    if len(parts) == 4:  # Flow/run/step/artifact: the step's task, when it has only one
        step = Step("/".join(parts[:3]))
        tasks = list(step)
        if not tasks:
            raise ValueError(f"Step {step.pathspec} has no task.")
        if len(tasks) > 1:
            raise ManyTasksError(step.pathspec, [task.pathspec for task in tasks], parts[-1])
        task = tasks[0]
    elif len(parts) == 5:
        task = Task("/".join(parts[:4]))
    else:
        raise ValueError(f"{args.pathspec!r} is not Flow/run_id/step[/task_id]/artifact.")
    value = task[parts[-1]].data
    if args.output:
        with open(args.output, "wb") as handle:
            pickle.dump(value, handle, protocol=5)
        print(terminal_safe(f"{task.pathspec}/{parts[-1]} pickled to {args.output}"))
    else:  # a string's lines stay lines; the pickle written with -o is the value as it is
        print(terminal_safe(value, multiline=True) if isinstance(value, str) else terminal_safe(repr(value)))
    return 0


def _code(args: argparse.Namespace) -> int:
    from airflow_flowspec.client import Run

    run = Run(args.pathspec.strip("/"))
    code = run.code
    if code is None:
        raise ValueError(f"Run {run.pathspec} records no code package.")
    print(terminal_safe(code.extract(args.output)))
    return 0


def _repin(args: argparse.Namespace) -> int:
    import os

    from airflow_flowspec.client.source import client_root
    from airflow_flowspec.datastore import code_package
    from airflow_flowspec.datastore.leases import Lease
    from airflow_flowspec.datastore.store import Datastore
    from airflow_flowspec.flow_loader import load_flow_class
    from airflow_flowspec.identity import RunIdentity, is_latest, run_number_of

    flow_name, _, run_id = args.pathspec.strip("/").partition("/")
    if not run_id or "/" in run_id:
        raise ValueError(f"repin takes Flow/run_id, not {args.pathspec!r}.")
    if run_number_of(run_id) is not None or is_latest(run_id):
        from airflow_flowspec.client import Run

        run_id = Run(f"{flow_name}/{run_id}").id
    datastore = Datastore(client_root())
    record = datastore.read_run_meta(flow_name, run_id)
    flow_file = os.path.abspath(args.flow_file or record.get("flow_file") or "")
    # Importing the flow imports the modules beside it that it uses: they are recorded with it.
    load_flow_class(flow_file, flow_name)
    # The code stored here is referenced only once the record is rewritten: held like a task's.
    with Lease(datastore, RunIdentity.of_record(flow_name, run_id, record), holder="repin"):
        package = code_package.record(datastore, flow_file)
        code = code_package.run_record_code(datastore, package, flow_file)
        if code["package"] == (record.get("code") or {}).get("package"):
            print(terminal_safe(f"Run {flow_name}/{run_id} already runs this code ({flow_file})."))
            return 0
        datastore.repin_run_code(flow_name, run_id, code)
    print(
        terminal_safe(
            f"Run {flow_name}/{run_id} now runs {flow_file} as it is now, from its next retried or "
            f"cleared task on. Clear the failed task in Airflow to run it again."
        )
    )
    return 0


def _gc(args: argparse.Namespace) -> int:
    from airflow_flowspec.client.source import client_root
    from airflow_flowspec.datastore.gc import DEFAULT_GRACE, collect_garbage
    from airflow_flowspec.datastore.store import Datastore

    grace = DEFAULT_GRACE if args.grace is None else args.grace
    if not grace:
        print(
            "airflow-flowspec gc: --grace 0 deletes unreferenced artifacts however recently they were "
            "stored: a flow running now can lose artifacts it has just saved. Use it only when no flow "
            "is running on this datastore.",
            file=sys.stderr,
        )
    run_active, asked = _airflow_run_states(args.airflow)
    result = collect_garbage(
        Datastore(client_root()),
        older_than=args.older_than,
        keep_last=args.keep_last,
        flow=args.flow,
        grace=grace,
        dry_run=args.dry_run,
        progress=lambda line: print(terminal_safe(line), file=sys.stderr, flush=True),
        xcom_older_than=args.xcom_older_than,
        airflow_run_active=run_active,
    )
    result.airflow = asked
    print(terminal_safe(result.summary(), multiline=True))  # it names runs safely: see its summary()
    return 0


def _airflow(args: argparse.Namespace) -> int:
    from pathlib import Path

    from airflow_flowspec.airflow import local_services

    home = Path(args.home).expanduser().resolve() if args.home else local_services.default_services_home()
    if args.action == "up":
        services, started = local_services.up(home, Path(args.dags).expanduser(), args.port)
        if not started:
            print(f"Airflow is already running at {services.url} (home {home}).")
        _print_running(services)
        return 0
    if args.action == "down":
        stopped = local_services.down(home)
        print(f"Stopped the Airflow at {stopped.url}." if stopped else f"No Airflow is running from {home}.")
        return 0
    services = local_services.inspect(home)
    if services is None:
        print(f"No Airflow is running from {home}.")
        return 1
    _print_running(services)
    for service in services.services:
        state = "running" if service.process() is not None else "exited"
        print(f"  {service.name}\tpid {service.pid}\t{state}")
    return 0


def _print_running(services: Any) -> None:
    from airflow_flowspec.airflow.local_services import login

    user = login(services.home)
    print(f"Airflow UI: {services.url}")
    print(f"Login:      {user[0]} / {user[1]}" if user else "Login:      (no password generated yet)")
    print(f"Dags:       {services.dags_folder}")
    print(f"Home:       {services.home} (AIRFLOW_HOME for the airflow CLI; service logs in service-logs/)")
    print(
        "Stop it with: airflow-flowspec airflow down"
        + ("" if _is_default_home(services.home) else f" --home {services.home}")
    )


def _is_default_home(home: Any) -> bool:
    from airflow_flowspec.airflow.local_services import default_services_home

    return home == default_services_home()


def _airflow_run_states(wanted: bool | None) -> tuple[Any, str]:
    """Airflow's answer to "is this DAG run queued or running?" for gc, and a line saying where it
    came from. Asked where an Airflow configuration is found (or ``--airflow``); Airflow is
    imported only then (it writes a configuration where it finds none)."""
    from airflow_flowspec.config import airflow_cfg_options

    cfg, _ = airflow_cfg_options("core")
    not_asked = (
        "Airflow was not asked which runs it has queued or running ({why}): a run whose cleared task "
        "waits in a queue counted as running only while it wrote something within the grace period."
    )
    if wanted is False:
        return None, not_asked.format(why="--no-airflow")
    if wanted is None and not cfg.is_file():
        return None, not_asked.format(why=f"no Airflow configuration at {cfg}")
    try:
        from airflow_flowspec.airflow.run_states import metadata_database_run_states

        run_active, where = metadata_database_run_states()
    except Exception as error:  # noqa: BLE001 - any failure to reach Airflow is reported the same way
        if wanted:
            raise GarbageCollectionError(
                f"--airflow: Airflow's metadata database (configured in {cfg}) could not be asked which "
                f"runs are queued or running: {type(error).__name__}: {error}. Nothing was deleted."
            ) from None
        print(
            f"airflow-flowspec gc: Airflow's metadata database could not be reached ({type(error).__name__}: "
            f"{str(error)[:200]}); going on without it.",
            file=sys.stderr,
        )
        return None, not_asked.format(why="its database could not be reached")
    return run_active, f"Asked Airflow ({where}) which runs are queued or running: those were kept."


def _preloaders(args: argparse.Namespace) -> int:
    import time

    from airflow_flowspec import config, preload, preloaders

    try:
        folder = preload.private_folder()
    except OSError as error:
        print(f"airflow-flowspec preloaders: {error}", file=sys.stderr)
        return 1
    if args.stop:
        stopped, left = preloaders.stop(folder)
        if not stopped and not left:
            print(f"No preloader runs in {folder}.")
        elif stopped:
            print(f"Stopped {len(stopped)} preloader{'' if len(stopped) == 1 else 's'} in {folder}.")
        for registration in left:
            print(f"Preloader {registration.pid} has not exited yet; `kill {registration.pid}` ends it.")
        return 1 if left else 0
    with preloaders.lock(folder):
        running = preloaders.live(folder)
    print(
        f"{len(running)} preloader{'' if len(running) == 1 else 's'} in {folder} (at most "
        f"{config.preload_max_count()} at once; each exits after {config.preload_idle_minutes():g} "
        f"minutes without a run)."
    )
    if not running:
        return 0
    now = time.time()
    rows = [("PID", "AGE", "IDLE", "MEMORY", "SERVES")]
    for registration in reversed(running):  # the most recently used first
        memory = registration.memory_bytes()
        rows.append((
            str(registration.pid),
            _span(now - registration.started),
            _span(now - registration.last_used),
            "?" if memory is None else f"{memory / 2**20:.0f} MB",
            terminal_safe(registration.serves),
        ))  # fmt: skip
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        print("  ".join(row[column].ljust(widths[column]) for column in range(4)) + "  " + row[4])
    return 0


if __name__ == "__main__":
    sys.exit(main())
