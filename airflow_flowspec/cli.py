"""``python flow.py run|show|check|logs|dump|tag|output-dot``: the command line a flow file gets
from ``TrainFlow()`` (``logs``, ``dump``, ``tag`` and ``output-dot`` are Metaflow's, carried out in
:mod:`airflow_flowspec.flow_commands`).

``run`` executes the flow once with Airflow's ``dag.test()`` (tasks one after another in this
process, on SQLite), always on a private Airflow home under ``~/.airflow_flowspec/airflow``
(prepared the first time; a user's ``AIRFLOW_HOME`` is only read, see
:func:`airflow_flowspec.airflow.local_run.run_environment`), so a data scientist needs no Airflow
set-up to try a flow. Mistakes in the flow print one paragraph and exit non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import gc
import getpass
import inspect
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from airflow_flowspec import config
from airflow_flowspec.config import DEFAULT_MAX_NUM_SPLITS, DEFAULT_MAX_WORKERS
from airflow_flowspec.errors import FlowspecError, ParameterError

if TYPE_CHECKING:
    from airflow_flowspec.decorators.flow_decorators import ProjectBranch


def main(flow_class: type, argv: list[str] | None = None) -> NoReturn:
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = _dispatch(flow_class, argv)
    except FlowspecError as err:
        print(f"{flow_class.__name__}: {err}", file=sys.stderr)
        code = 1
    # Freed at exit, Airflow's objects would be walked by the garbage collector for 1.5-2 s after
    # the result is printed; frozen, the interpreter exits at once.
    gc.freeze()
    sys.exit(code)


def _flow_file(flow_class: type) -> str:
    return os.path.abspath(inspect.getsourcefile(flow_class) or sys.argv[0])


def _parser(flow_class: type) -> argparse.ArgumentParser:
    from airflow_flowspec.decorators.flow_decorators import project_of
    from airflow_flowspec.parameters import flow_parameters

    parser = argparse.ArgumentParser(
        prog=os.path.basename(_flow_file(flow_class)), description=(flow_class.__doc__ or "").strip() or None
    )
    has_project = project_of(flow_class) is not None
    if has_project:
        _add_project_options(parser, before_command=True)
    _add_with_option(parser, before_command=True)
    commands = parser.add_subparsers(dest="command", required=True)
    from airflow_flowspec.preload import run_help

    run = commands.add_parser(
        "run",
        help="run the flow once, locally, with Airflow's dag.test()",
        epilog=run_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if has_project:
        _add_project_options(run, before_command=False)
    _add_with_option(run, before_command=False)
    for parameter in flow_parameters(flow_class):
        run.add_argument(
            f"--{parameter.name}",
            dest=f"param:{parameter.name}",
            default=None,
            metavar=parameter.type_name.upper(),
            help=f"{parameter.help} (default: {parameter.default!r})",
        )
    run.add_argument(
        "--no-preload",
        action="store_true",
        help="start Airflow in this process instead of using the warm one kept between runs",
    )
    run.add_argument(
        "--max-workers",
        type=_positive("--max-workers"),
        default=DEFAULT_MAX_WORKERS,
        metavar="N",
        help=f"run at most N tasks at once (default {DEFAULT_MAX_WORKERS})",
    )
    run.add_argument(
        "--max-num-splits",
        type=_positive("--max-num-splits"),
        default=DEFAULT_MAX_NUM_SPLITS,
        metavar="N",
        help=f"fail a foreach of more than N items (default {DEFAULT_MAX_NUM_SPLITS})",
    )
    run.add_argument(
        "--run-id-file",
        metavar="PATH",
        help="write the run's short id (its number, which every command takes) to this file as the "
        "run starts",
    )
    run.add_argument(
        "--namespace",
        dest="user_namespace",
        metavar="TAG",
        help="the namespace the steps' client API sees (default: the run's own, user:<you>); "
        "--namespace= for every run. The run's tags stay as they are",
    )
    run.add_argument(
        "--tag",
        dest="tags",
        action="append",
        default=[],
        metavar="TAG",
        help="tag the run (repeatable); the client finds runs by tag: Flow(...).runs('TAG')",
    )
    commands.add_parser("show", help="print the steps and how they connect")
    commands.add_parser("check", help="lint the flow and check that Airflow will find the file")
    from airflow_flowspec import flow_commands

    flow_commands.add_parsers(commands)
    return parser


def _add_with_option(parser: argparse.ArgumentParser, *, before_command: bool) -> None:
    """``--with batch``: every step as an AWS Batch job, before the command (Metaflow's place) or
    after ``run``."""
    parser.add_argument(
        "--with",
        dest="with_",
        action="append",
        default=[] if before_command else argparse.SUPPRESS,
        metavar="batch",
        help="run every step on AWS Batch (the [flowspec] batch_* options say where)",
    )


def _add_project_options(parser: argparse.ArgumentParser, *, before_command: bool) -> None:
    """``--branch`` and ``--production`` of a ``@project`` flow: before the command, where Metaflow
    takes them (``python flow.py --branch x run``), and after ``run``."""
    # Not given after the command, the value before it must stand: the command adds no default.
    parser.add_argument(
        "--branch",
        default=None if before_command else argparse.SUPPRESS,
        metavar="NAME",
        help="run on the @project branch test.NAME (prod.NAME with --production) instead of user.<you>",
    )
    parser.add_argument(
        "--production",
        action="store_true",
        default=False if before_command else argparse.SUPPRESS,
        help="run on the @project's production branch, prod",
    )


def _dispatch(flow_class: type, argv: list[str]) -> int:
    from airflow_flowspec.graph import graph_of
    from airflow_flowspec.lint import airflow_target, lint_flow

    args = _parser(flow_class).parse_args(argv)
    _apply_with(flow_class, args.with_)
    graph = graph_of(flow_class)
    if args.command == "show":
        print(graph.to_text())
        return 0
    from airflow_flowspec import flow_commands

    if args.command in flow_commands.COMMANDS:  # they look at runs: nothing to lint or to start
        return flow_commands.run_command(flow_class, graph, args)
    # check and run lint alike, for the Airflow the flow will run on, and read the same options:
    # they agree on every flow.
    target = airflow_target()
    lint_flow(graph, target)
    _read_every_option()
    project = _project_branch(flow_class, args)
    if args.command == "check":
        return _check(flow_class, graph, project)
    raw = {
        key.split(":", 1)[1]: value
        for key, value in vars(args).items()
        if key.startswith("param:") and value is not None
    }
    conf = _convert_parameters(flow_class, raw)
    if args.tags:  # the start step checks them too (a trigger's conf): here, before anything runs
        from airflow_flowspec.run_tags import check_tags

        check_tags(args.tags, whose=f"the run of flow {flow_class.__name__} (run --tag)")
    from airflow_flowspec import preload

    if preload.enabled(args.no_preload):
        code = preload.run_preloaded([_flow_file(flow_class), *argv])
        if code is not None:
            return code
    from airflow_flowspec.airflow.local_run import run_locally

    if args.tags:
        from airflow_flowspec.parameters import RUN_TAGS_CONF_KEY

        conf[RUN_TAGS_CONF_KEY] = list(args.tags)
    return run_locally(
        flow_class,
        _flow_file(flow_class),
        conf,
        target,
        project,
        max_workers=args.max_workers,
        max_num_splits=args.max_num_splits,
        run_id_file=args.run_id_file,
        user_namespace=args.user_namespace,
    )


def _positive(option: str) -> Any:
    def whole_number(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"{option} takes a whole number from 1 up, not {text!r}")
        return int(text)

    return whole_number


def _apply_with(flow_class: type, extensions: list[str]) -> None:
    """``--with batch`` is ``[flowspec] execution = batch`` for this command."""
    from airflow_flowspec.errors import ConfigurationError

    unknown = [name for name in extensions if name != "batch"]
    if unknown:
        raise ConfigurationError(
            f"--with {unknown[0]} is not something flow {flow_class.__name__} can run with here: "
            f"--with batch (every step an AWS Batch job) is. Put other step decorators in the flow file."
        )
    if extensions:
        os.environ["AIRFLOW__FLOWSPEC__EXECUTION"] = "batch"
        root = config.datastore_root()
        if not root.startswith("s3://"):
            raise ConfigurationError(
                f"--with batch runs flow {flow_class.__name__}'s steps in AWS Batch containers, which "
                f"read and write artifacts in S3, but [flowspec] datastore_root is {root!r}. Set "
                f"AIRFLOW__FLOWSPEC__DATASTORE_ROOT=s3://bucket/prefix (for the local AWS emulator, "
                f"run `python -m airflow_flowspec.testing.local_aws` and use the lines it prints)."
            )


def _project_branch(flow_class: type, args: argparse.Namespace) -> ProjectBranch | None:
    """The branch this command runs on, by Metaflow's rule (None for a flow without ``@project``)."""
    from airflow_flowspec.decorators.flow_decorators import branch_for_run

    return branch_for_run(
        flow_class,
        getpass.getuser(),
        branch=getattr(args, "branch", None),
        production=getattr(args, "production", False),
    )


def _read_every_option() -> None:
    """Read every ``[flowspec]`` option, so a bad value is reported by check as by run."""
    from airflow_flowspec.datastore.backends import backend_for_root

    backend_for_root(config.datastore_root())  # parses the root; no client, no request
    config.xcom_inline_max_bytes()
    config.s3_multipart_threshold_bytes()
    config.execution()
    config.sweep_after_seconds()
    config.scratch_dir()
    config.project_branch()
    config.code_include()
    config.batch_poll_ceiling_seconds()
    config.batch_deferrable()


def _convert_parameters(flow_class: type, raw: dict[str, str]) -> dict[str, Any]:
    from airflow_flowspec.parameters import JSONType, flow_parameters

    values = {}
    for parameter in flow_parameters(flow_class):
        if parameter.required and parameter.default is None and parameter.name not in raw:
            raise ParameterError(
                f"Parameter '{parameter.name}' is required: run with --{parameter.name} "
                f"{parameter.type_name.upper()}."
            )
        if parameter.name in raw:
            value = parameter.convert(raw[parameter.name], flow_class.__name__)
            if parameter.is_include_file:
                value = os.path.abspath(value)
            if parameter.type is JSONType:  # checked here; the start step parses the text, as a
                value = raw[parameter.name]  # trigger's conf has it (a parsed "hello" is no JSON)
            values[parameter.name] = value
    return values


def _check(flow_class: type, graph: Any, project: ProjectBranch | None) -> int:
    from airflow_flowspec.airflow.discovery import DISCOVERY_CALLABLE, discovery_skips
    from airflow_flowspec.decorators.flow_decorators import branch_for_deployment

    flow_file = _flow_file(flow_class)
    print(f"Flow {flow_class.__name__} in {flow_file}: {len(graph.nodes)} steps, lint passed.")
    if project is not None:
        deployed = branch_for_deployment(flow_class, config.project_branch(), getpass.getuser())
        assert deployed is not None
        print(
            f"Project {project.project_name}: run uses branch {project.branch_name}; in Airflow's dags "
            f"folder the flow is the DAG {deployed.project_flow_name} ([flowspec] project_branch)."
        )
    if discovery_skips(flow_file):
        print(
            f"Warning: Airflow's safe-mode DAG discovery ([core] might_contain_dag_callable = "
            f"{config.might_contain_dag_callable()}) will skip this file (it never mentions 'dag'). "
            f"Set once, in airflow.cfg: [core] might_contain_dag_callable = {DISCOVERY_CALLABLE} (or the "
            f"environment variable AIRFLOW__CORE__MIGHT_CONTAIN_DAG_CALLABLE={DISCOVERY_CALLABLE}); "
            f"or add a comment containing the word 'dag' to the file.",
            file=sys.stderr,
        )
    return 0
