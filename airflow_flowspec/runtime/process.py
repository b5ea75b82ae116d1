"""The step runtime as a process: what an AWS Batch container runs (Python, boto3, cloudpickle and
this package; no Airflow).

``python -m airflow_flowspec.runtime --root ROOT --spec-key KEY`` reads the task's spec from the
datastore, runs the step, and leaves its result in the datastore next to the manifest, where the
process that started it (an Airflow operator, possibly resumed after deferring) picks it up with
:func:`read_step_result`. ``--spec-file PATH [--result-file PATH]`` does the same with local files,
for running one task by hand.

The exit status says what the caller should do next, as Metaflow's runtime does:
0 the step succeeded; :data:`~airflow_flowspec.errors.EXIT_STEP_FAILED` the step's own code (or the
network) failed, so a retry may succeed; :data:`~airflow_flowspec.errors.EXIT_DISALLOW_RETRY` a
flow mistake, which a retry would only repeat. A flow mistake prints one paragraph; the step's own
exception prints its traceback, as it would in a task log.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from typing import NoReturn

from airflow_flowspec.datastore import keys, open_datastore
from airflow_flowspec.errors import (
    EXIT_DISALLOW_RETRY,
    EXIT_STEP_FAILED,
    FlowspecError,
    StepInputError,
    is_flow_mistake,
)
from airflow_flowspec.runtime.step_runner import run_step
from airflow_flowspec.runtime.task_spec import StepResult, TaskSpec


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # A malformed command line is the caller's mistake: running it again changes nothing.
        self.print_usage(sys.stderr)
        self.exit(EXIT_DISALLOW_RETRY, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m airflow_flowspec.runtime", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec-key", help="datastore key of the task's spec (with --root)")
    source.add_argument("--spec-file", help="path of a task spec JSON file")
    parser.add_argument("--root", help="the datastore root the spec key is in")
    parser.add_argument("--result-file", help="with --spec-file: where to write the step's result JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.spec_key and not args.root:
        parser.error("--spec-key needs --root, the datastore root the key is in")
    flow_name = "flow"
    try:
        spec = _read_spec(args)
        flow_name = spec.flow_name
        result = run_step(spec, store_result=bool(args.spec_key))
        if args.result_file:
            with open(args.result_file, "w", encoding="utf-8") as handle:
                json.dump(result.to_json(), handle)
    except FlowspecError as error:
        print(f"{flow_name}: {error}", file=sys.stderr, flush=True)
        return EXIT_DISALLOW_RETRY if is_flow_mistake(error) else EXIT_STEP_FAILED
    except Exception:  # noqa: BLE001 - the step's own exception: its traceback is the message
        traceback.print_exc()
        sys.stderr.flush()
        return EXIT_STEP_FAILED
    return 0


def _read_spec(args: argparse.Namespace) -> TaskSpec:
    if args.spec_file:
        try:
            with open(args.spec_file, encoding="utf-8") as handle:
                return TaskSpec.from_text(handle.read())
        except OSError as error:
            raise StepInputError(f"Cannot read the task spec {args.spec_file}: {error.strerror}.") from None
    spec = TaskSpec.from_json(open_datastore(args.root).read_task_spec(args.spec_key))
    # The key is derived from the task's identity: a spec stored elsewhere, or one that names
    # another datastore, is not the task this process was started for.
    expected = keys.task_spec_key(spec.attempt_key)
    if args.spec_key != expected or spec.datastore_root != args.root:
        raise StepInputError(
            f"The task spec at {args.spec_key} in {args.root} describes {spec.pathspec} attempt "
            f"{spec.attempt} in the datastore {spec.datastore_root}, which belongs at {expected} in "
            f"{spec.datastore_root}: refusing to run a spec that is not where its task's spec belongs."
        )
    return spec


def write_task_spec(spec: TaskSpec) -> str:
    """Store ``spec`` for a step process; return the key to pass as ``--spec-key``."""
    datastore = open_datastore(spec.datastore_root)
    return datastore.write_task_spec(spec.attempt_key, spec.to_json())


def read_step_result(spec: TaskSpec) -> StepResult:
    """What the step process for ``spec`` left in the datastore (it must have exited 0)."""
    datastore = open_datastore(spec.datastore_root)
    document = datastore.read_step_result(spec.attempt_key)
    return StepResult.from_json(document)
