"""``python -m airflow_flowspec.runtime --spec-file spec.json [--result-file result.json]``.

The step runtime as a process: what an AWS Batch container runs (it has Python, boto3, cloudpickle
and this package, no Airflow). Exit status 0 when the step succeeded; a flow mistake prints one
paragraph; the step's own exception prints its traceback, as it would in a task log.
"""

from __future__ import annotations

import argparse
import sys

from airflow_flowspec.errors import FlowspecError
from airflow_flowspec.runtime.step_runner import run_step
from airflow_flowspec.runtime.task_spec import TaskSpec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_flowspec.runtime")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec-file", help="path of a TaskSpec JSON file")
    source.add_argument("--spec-json", help="a TaskSpec as JSON text")
    parser.add_argument("--result-file", help="where to write the StepResult JSON")
    args = parser.parse_args(argv)
    if args.spec_file:
        with open(args.spec_file, encoding="utf-8") as handle:
            spec = TaskSpec.from_json(handle.read())
    else:
        spec = TaskSpec.from_json(args.spec_json)
    try:
        result = run_step(spec)
    except FlowspecError as err:
        print(f"{spec.flow_name}: {err}", file=sys.stderr)
        return 1
    if args.result_file:
        with open(args.result_file, "w", encoding="utf-8") as handle:
            handle.write(result.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
