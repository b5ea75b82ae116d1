"""``python benchmarks/run.py [CASE ...] [--repeat N] [--write-results]``: the performance table.

Each case measures our figure and a baseline in the same run (medians of ``--repeat`` runs) and
prints the ratio against its target, PASS or MISS. CASE is a number or a name from ``--list``.
``--write-results`` records the table, with the machine it ran on, in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Context, Measurement  # noqa: E402

#: Case number -> module in benchmarks/cases/, in the order of the performance issue.
CASES = {
    1: "large_local",
    2: "large_s3",
    3: "dedup_lazy",
    4: "small_many",
    5: "vs_metaflow_blob",
    6: "dag_parse",
    7: "step_overhead",
    8: "foreach_width",
    9: "xcom_vs_object_storage",
    10: "hello_time",
    11: "client_latest_run",
    12: "client_fresh_load",
    13: "batch_step",
    14: "parallel_foreach",
    15: "batch_foreach",
}


def _select(names: list[str]) -> list[tuple[int, str]]:
    if not names:
        return sorted(CASES.items())
    chosen = []
    by_name = {module: number for number, module in CASES.items()}
    for name in names:
        key = name.replace("-", "_")
        if key.isdigit() and int(key) in CASES:
            chosen.append((int(key), CASES[int(key)]))
        elif key in by_name:
            chosen.append((by_name[key], key))
        else:
            raise SystemExit(
                f"Unknown case {name!r}. Cases: " + ", ".join(f"{n} {m}" for n, m in CASES.items())
            )
    return chosen


def _format_value(value: float, unit: str) -> str:
    if unit == "B":
        return f"{value / (1024 * 1024):.1f} MB"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:g} {unit}".strip()


def table(rows: list[Measurement]) -> str:
    header = ["case", "metric", "ours", "baseline", "ratio", "target", "result"]
    lines = [header]
    for row in rows:
        lines.append(
            [
                row.case,
                row.metric,
                _format_value(row.ours, row.unit),
                f"{_format_value(row.baseline, row.unit)} ({row.baseline_name})",
                f"{row.ratio:.2f}x",
                row.target,
                "-" if row.reported_only else "PASS" if row.passed else "MISS",
            ]
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = [
        "| " + " | ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)) + " |"
        for line in lines
    ]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def machine() -> str:
    import airflow_flowspec  # noqa: F401 - the version below is the installed one

    try:
        from importlib.metadata import version

        airflow_version = version("apache-airflow")
    except Exception:  # noqa: BLE001
        airflow_version = "?"
    memory = ""
    try:
        with open("/proc/meminfo") as meminfo:
            memory = f", {int(meminfo.readline().split()[1]) // (1024 * 1024)} GB RAM"
    except OSError:
        pass
    return (
        f"{platform.platform()}, {os.cpu_count()} CPUs{memory}, Python {platform.python_version()}, "
        f"apache-airflow {airflow_version}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("cases", nargs="*", help="case numbers or names (default: all)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per figure (median)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--write-results", action="store_true", help="write benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if args.list:
        for number, module in sorted(CASES.items()):
            doc = (importlib.import_module(f"cases.{module}").__doc__ or "").strip().splitlines()[0]
            print(f"{number:>2}  {module:<24} {doc}")
        return 0
    context = Context(repeat=args.repeat)
    rows: list[Measurement] = []
    failures = []
    started = time.perf_counter()
    try:
        for number, module in _select(args.cases):
            print(f"[{number}] {module} ...", file=sys.stderr, flush=True)
            try:
                case_rows = importlib.import_module(f"cases.{module}").run(context)
            except Exception:  # noqa: BLE001 - one broken case must not hide the others
                failures.append((number, module, traceback.format_exc()))
                print(traceback.format_exc(), file=sys.stderr)
                continue
            for row in case_rows:
                print(
                    f"    {row.metric}: {row.ratio:.2f}x ({'PASS' if row.passed else 'MISS'})",
                    file=sys.stderr,
                )
                if row.note:
                    print(f"      {row.note}", file=sys.stderr)
            rows.extend(case_rows)
    finally:
        context.close()
    print(table(rows))
    notes = [f"- {r.case} / {r.metric}: {r.note}" for r in rows if r.note]
    if notes:
        print("\n".join(["", "Notes:", *notes]))
    for number, module, _ in failures:
        print(f"case {number} ({module}) FAILED to run; see the traceback above", file=sys.stderr)
    if args.write_results:
        results = Path(__file__).resolve().parent / "RESULTS.md"
        results.write_text(
            "# Benchmark results\n\n"
            f"Latest `python benchmarks/run.py --repeat {args.repeat}` "
            f"({time.strftime('%Y-%m-%d')}, {time.perf_counter() - started:.0f} s in all).\n\n"
            f"Machine: {machine()}.\n\n"
            + table(rows)
            + "\n"
            + ("\nNotes:\n\n" + "\n".join(notes) + "\n" if notes else "")
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
