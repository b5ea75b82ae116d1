"""A 3-step flow with a 256 MB artifact under ``python flow.py run``: ours vs Metaflow's local runtime."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from common import BENCHMARKS, MB, Context, Measurement, median, run_command

FLOWS = BENCHMARKS / "flows"
OUR_IMPORT = "from airflow_flowspec import"
METAFLOW_IMPORT = "from metaflow import"

#: workdir -> seconds of our first ``python flow.py run`` there (it migrates Airflow's SQLite DB).
_first_runs: dict[str, float] = {}


# -- shared by the cases that run the same flow file under Metaflow and ours (5, 7, 10) ----------


def flowspec_home(context: Context) -> Path:
    """The private Airflow home + datastore our CLI prepares for itself, one per benchmark run."""
    return context.workdir / "flowspec-home"


def ours_env(context: Context, tag: str) -> dict[str, str]:
    """Environment of ``python flow.py run`` (ours): the private home, a fresh datastore per run."""
    return {
        "AIRFLOW_HOME": "",  # unset: our CLI then prepares (and keeps) its own home under FLOWSPEC_HOME
        "FLOWSPEC_HOME": str(flowspec_home(context)),
        "AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(context.workdir / "datastores" / tag),
        "FLOWSPEC_PRELOAD": "0",  # cold runs: a case that wants the preloader turns it on
    }


def metaflow_env(context: Context, tag: str) -> dict[str, str]:
    return {
        "USERNAME": "bench",
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(context.workdir / "metaflow-datastores" / tag),
    }


def metaflow_copy(context: Context, flow: Path) -> Path:
    """The same flow file with only its import line switched to Metaflow's."""
    source = flow.read_text()
    if OUR_IMPORT not in source:
        raise ValueError(f"{flow} does not import from airflow_flowspec")
    target = context.workdir / "metaflow-flows" / flow.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(source.replace(OUR_IMPORT, METAFLOW_IMPORT, 1))
    return target


def run_ours(
    context: Context, flow: Path, tag: str, env: dict[str, str] | None = None
) -> tuple[float, int, str]:
    """``python flow.py run`` with our package: (wall s, peak RSS of the process tree, output)."""
    warm_up(context)
    try:
        return _run_in_temp_cwd(
            context, [sys.executable, str(flow), "run"], {**ours_env(context, tag), **(env or {})}
        )
    finally:
        shutil.rmtree(context.workdir / "datastores" / tag, ignore_errors=True)


def run_metaflow(
    context: Context, flow: Path, tag: str, env: dict[str, str] | None = None
) -> tuple[float, int, str]:
    """``python flow.py run`` of the Metaflow copy of ``flow`` (made with :func:`metaflow_copy`)."""
    try:
        return _run_in_temp_cwd(
            context, [sys.executable, str(flow), "run"], {**metaflow_env(context, tag), **(env or {})}
        )
    finally:
        shutil.rmtree(context.workdir / "metaflow-datastores" / tag, ignore_errors=True)


def _run_in_temp_cwd(context: Context, argv: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    cwd = tempfile.mkdtemp(prefix="cwd-", dir=context.workdir)
    try:
        return run_command(argv, env=env, cwd=cwd)
    finally:
        shutil.rmtree(cwd, ignore_errors=True)


def warm_up(context: Context) -> float:
    """Our first run in this benchmark's home migrates the SQLite DB once; do it untimed.

    Returns the wall time of that first run (also the Metaflow copy of the hello flow runs once
    untimed, so that both sides start with compiled bytecode).
    """
    key = str(context.workdir)
    if key not in _first_runs:
        hello = FLOWS / "hello_flow.py"
        wall, _, _ = _run_in_temp_cwd(
            context, [sys.executable, str(hello), "run"], ours_env(context, "warm-up")
        )
        _first_runs[key] = wall
        run_metaflow(context, metaflow_copy(context, hello), "warm-up")
        shutil.rmtree(context.workdir / "datastores" / "warm-up", ignore_errors=True)
    return _first_runs[key]


def first_run_note(context: Context) -> str:
    return (
        f"our first-ever run (migrates the private Airflow DB, not counted) took "
        f"{_first_runs[str(context.workdir)]:.1f} s"
    )


def alternate(context: Context, *runners):
    """Call every runner once per repetition, rotating which goes first, so drift hits all alike."""
    results: list[list] = [[] for _ in runners]
    for index in range(context.repeat):
        order = list(range(len(runners)))
        order = order[index % len(order) :] + order[: index % len(order)]
        for which in order:
            results[which].append(runners[which](index))
    return results


# -- case 5 --------------------------------------------------------------------------------------

BLOB_BYTES = 256 * MB


def run(context: Context) -> list[Measurement]:
    flow = FLOWS / "blob_flow.py"
    metaflow_flow = metaflow_copy(context, flow)
    warm_up(context)
    expected = f"blob size {BLOB_BYTES}"

    def ours(index: int):
        result = run_ours(context, flow, f"blob-{index}")
        assert expected in result[2], result[2][-2000:]
        return result

    def metaflow(index: int):
        result = run_metaflow(context, metaflow_flow, f"blob-{index}")
        assert expected in result[2], result[2][-2000:]
        return result

    ours_runs, metaflow_runs = alternate(context, ours, metaflow)
    case = "5 256 MB blob flow vs Metaflow"
    walls = [r[0] for r in ours_runs], [r[0] for r in metaflow_runs]
    peaks = [r[1] for r in ours_runs], [r[1] for r in metaflow_runs]
    return [
        Measurement(
            case,
            "python flow.py run: wall time",
            median(walls[0]),
            median(walls[1]),
            "s",
            "Metaflow 2.19 local",
            max_ratio=0.5,
            note=f"ours {_runs(walls[0])} s, Metaflow {_runs(walls[1])} s; {first_run_note(context)}",
        ),
        Measurement(
            case,
            "python flow.py run: peak RSS of the process tree",
            median(peaks[0]),
            median(peaks[1]),
            "B",
            "Metaflow 2.19 local",
            max_ratio=0.4,
            note=f"ours {_runs([p / MB for p in peaks[0]], 0)} MB, Metaflow "
            f"{_runs([p / MB for p in peaks[1]], 0)} MB (one process for ours; runtime + one "
            f"process per task for Metaflow)",
        ),
    ]


def _runs(values: list[float], digits: int = 2) -> str:
    return "/".join(f"{v:.{digits}f}" for v in values)
