"""``python flow.py run`` of a foreach whose tasks can run side by side: ours vs Metaflow.

A 16-wide foreach of one-second sleeps (what parallelism saves when tasks wait) and a 4-wide
CPU-bound foreach (how many of the machine's cores a run keeps busy; each flow reports the cores
its tasks used, from their own CPU times over the span they ran in). Ours runs warm, through the
preloader, as a user's second run does.
"""

from __future__ import annotations

import re

from cases.hello_time import Preloaded, _metaflow_runner
from cases.vs_metaflow_blob import FLOWS, alternate, metaflow_copy
from common import Context, Measurement, median

SLEEPS = FLOWS / "sleep_foreach_flow.py"
CPU = FLOWS / "cpu_foreach_flow.py"


def run(context: Context) -> list[Measurement]:
    preloaded = Preloaded(context)
    try:
        preloaded.start()
        return [
            _row(context, preloaded, SLEEPS, "16 naps within", "16-wide foreach of 1 s sleeps", 1.1),
            _row(context, preloaded, CPU, "cores used:", "4-wide CPU-bound foreach", 1.2),
        ]
    finally:
        preloaded.stop()


def _row(
    context: Context, preloaded: Preloaded, flow, expected: str, label: str, max_ratio: float
) -> Measurement:
    figures: dict[str, list[str]] = {"ours": [], "Metaflow": []}

    def ours(index: int) -> float:
        wall, _, output = preloaded.run(flow, f"{flow.stem}-{index}")
        figures["ours"].append(_figure(output, expected))
        return wall

    metaflow_run = _metaflow_runner(context, metaflow_copy(context, flow), flow.stem, expected)
    ours_walls, metaflow_walls = alternate(context, ours, metaflow_run)
    from cases.vs_metaflow_blob import run_metaflow  # its output, for the flow's own figure

    _, _, output = run_metaflow(context, metaflow_copy(context, flow), f"{flow.stem}-figure")
    figures["Metaflow"].append(_figure(output, expected))

    def seconds(walls: list[float]) -> str:
        return "/".join(f"{wall:.2f}" for wall in walls)

    return Measurement(
        "14 parallel foreach vs Metaflow",
        f"{label}: wall time",
        median(ours_walls),
        median(metaflow_walls),
        "s",
        "Metaflow 2.19 local",
        max_ratio=max_ratio,
        note=(
            f"ours {seconds(ours_walls)} s, Metaflow {seconds(metaflow_walls)} s; the flow says "
            f"'{expected} ...': ours {', '.join(figures['ours'])}, Metaflow {', '.join(figures['Metaflow'])}"
        ),
    )


def _figure(output: str, expected: str) -> str:
    match = re.search(re.escape(expected) + r" ([0-9.]+)", output)
    assert match, output[-2000:]
    return match.group(1)
