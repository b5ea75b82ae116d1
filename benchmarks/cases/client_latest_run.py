"""Client: ``Flow(name).latest_successful_run.data.x`` on a flow of 1,000 runs, ours vs Metaflow's.

Both datastores are grown from one real run of ``benchmarks/flows/client_flow.py`` (see
``benchmarks/client_datastores.py``); every tenth run and the three newest died in their end step,
so the latest successful run is the fourth newest. Each repetition starts one process per client
that imports it, does the same lookup on a one-run datastore (the client's lazy imports and set-up;
nothing of the big datastore is cached), then times the lookup on the 1,000-run datastore, first
once and then repeated in the same process (whatever the client caches is warm). Metaflow's client
reads its local metadata provider (``.metaflow/<Flow>/<run>/_meta``); its on-disk blob cache is a
fresh folder per process. Both big datastores live in /dev/shm where there is one (Metaflow's is
~150,000 files; see ``client_datastores.big_folder``).
"""

from __future__ import annotations

import shutil
import time

from cases.vs_metaflow_blob import alternate
from client_datastores import (
    FLOW,
    X_VALUE,
    big_folder,
    build_metaflow,
    build_ours,
    failed_runs,
    latest_successful,
    metaflow_env,
    templates,
    user_env,
)
from common import Context, Measurement, median, run_python

RUNS = 1000
#: Lookups timed after the first one, in the same process (their median is reported).
REPEATED = 15

#: Each client's side of the child processes: ``use(root)`` points it at a datastore, and
#: ``requests()``/``reset()`` read our backend's counters (Metaflow's client has none).
OURS = f"""
from airflow_flowspec import Flow, metadata
from airflow_flowspec.client.source import client_datastore

FLOW, X = {FLOW!r}, {X_VALUE!r}

def use(root):
    metadata(root)

def requests():
    return client_datastore().backend.counters.snapshot()

def reset():
    client_datastore().backend.counters.reset()
"""

METAFLOW = f"""
from metaflow import Flow, metadata

FLOW, X = {FLOW!r}, {X_VALUE!r}

def use(root):
    metadata("local@" + root)

def requests():
    return None

def reset():
    pass
"""

# sys.argv: warm-up root, root, expected run id, repetitions. Prints JSON as its last line.
_LOOKUP = """
import json, sys, time

warm_root, root, expected, repeated = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])


def lookup(expected=None):
    start = time.perf_counter()
    flow = Flow(FLOW)
    t_flow = time.perf_counter()
    run = flow.latest_successful_run
    t_run = time.perf_counter()
    x = run.data.x
    end = time.perf_counter()
    if expected is not None:
        assert (run.id, x) == (expected, X), (run.id, x)
    return {"total": end - start, "Flow()": t_flow - start,
            ".latest_successful_run": t_run - t_flow, ".data.x": end - t_run}


use(warm_root)
lookup()  # the client's lazy imports and set-up, on another datastore: nothing of root is cached
use(root)
first = lookup(expected)  # our counters start with the datastore, opened in here
counts = [requests()]
again = []
for _ in range(repeated):
    reset()
    again.append(lookup(expected))
    counts.append(requests())
print(json.dumps({"first": first, "again": again, "first_counts": counts[0], "again_counts": counts[-1],
                  "airflow": "airflow" in sys.modules}))
"""

# What each client sees of the big datastore, before anything is timed.
_VERIFY = """
import json, sys
use(sys.argv[1])
flow = Flow(FLOW)
runs = list(flow)
latest_ok = flow.latest_successful_run
print(json.dumps({"runs": len(runs), "newest": runs[0].id, "oldest": runs[-1].id,
                  "latest_run": flow.latest_run.id, "latest_successful_run": latest_ok.id,
                  "x": latest_ok.data.x, "successful": sum(run.successful for run in runs)}))
"""


def _verify(client: str, root: str, env: dict[str, str], run_ids: list[str], failed: set[int]) -> None:
    seen = run_python(client + _VERIFY, root, env=env)
    wanted = {
        "runs": len(run_ids),
        "newest": run_ids[-1],
        "oldest": run_ids[0],
        "latest_run": run_ids[-1],
        "latest_successful_run": latest_successful(run_ids, failed),
        "x": X_VALUE,
        "successful": len(run_ids) - len(failed),
    }
    if seen != wanted:
        raise AssertionError(f"the client does not see the runs built for it: {seen} != {wanted}")


def _phases(results: list[dict], which: str) -> dict[str, float]:
    if which == "first":
        samples = [r["first"] for r in results]
    else:
        samples = [sample for r in results for sample in r["again"]]
    return {name: median([s[name] for s in samples]) for name in samples[0]}


def _ms(phases: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds * 1000:.2f} ms" for name, seconds in phases.items())


def run(context: Context) -> list[Measurement]:
    template = templates(context)
    base = big_folder(context, "client-latest-run")
    failed = failed_runs(RUNS)
    try:
        started = time.perf_counter()
        ours_ids = build_ours(template, base / "ours", RUNS, failed)
        ours_build = time.perf_counter() - started
        started = time.perf_counter()
        metaflow_ids = build_metaflow(template, base / "metaflow", RUNS, failed)
        metaflow_build = time.perf_counter() - started
        ours_env = user_env()

        def mf_env(tag: str) -> dict[str, str]:
            return metaflow_env(base / "metaflow", base / f"metaflow-client-cache-{tag}")

        _verify(OURS, str(base / "ours"), ours_env, ours_ids, failed)
        _verify(METAFLOW, str(base / "metaflow"), mf_env("verify"), metaflow_ids, failed)

        ours_expected = latest_successful(ours_ids, failed)
        metaflow_expected = latest_successful(metaflow_ids, failed)

        def ours(index: int) -> dict:
            args = (str(template.ours_root), str(base / "ours"), ours_expected, str(REPEATED))
            result = run_python(OURS + _LOOKUP, *args, env=ours_env)
            assert not result["airflow"], "the client imported Airflow"
            return result

        def metaflow(index: int) -> dict:
            args = (str(template.metaflow_sysroot), str(base / "metaflow"), metaflow_expected, str(REPEATED))
            return run_python(METAFLOW + _LOOKUP, *args, env=mf_env(str(index)))

        ours_results, metaflow_results = alternate(context, ours, metaflow)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    case = "11 client: latest successful run of 1,000"
    first = [r["first"]["total"] for r in ours_results], [r["first"]["total"] for r in metaflow_results]
    again = (
        [median([s["total"] for s in r["again"]]) for r in ours_results],
        [median([s["total"] for s in r["again"]]) for r in metaflow_results],
    )
    counts = ours_results[0]["first_counts"], ours_results[0]["again_counts"]
    setup = (
        f"{RUNS} runs ({len(failed)} failed, the 3 newest among them); built in {ours_build:.1f} s (ours, "
        f"Datastore API) and {metaflow_build:.1f} s (Metaflow, {RUNS} copies of the run folder) from one "
        f"real run each ({template.ours_wall:.1f} s / {template.metaflow_wall:.1f} s), in "
        f"{'tmpfs' if str(base).startswith('/dev/shm/') else 'the work folder'}"
    )
    return [
        Measurement(
            case,
            "Flow(f).latest_successful_run.data.x: first lookup, imports done",
            median(first[0]),
            median(first[1]),
            "s",
            "Metaflow 2.19 client, local",
            max_ratio=0.5,
            note=f"ours {_runs(first[0])} ms, Metaflow {_runs(first[1])} ms; our datastore requests "
            f"{counts[0]['requests']} ({counts[0]['bytes_read']} bytes read). Phases (medians): ours "
            f"{_ms(_phases(ours_results, 'first'))}; Metaflow {_ms(_phases(metaflow_results, 'first'))}. "
            f"{setup}",
        ),
        Measurement(
            case,
            f"same lookup repeated in the process (median of {REPEATED})",
            median(again[0]),
            median(again[1]),
            "s",
            "Metaflow 2.19 client, local",
            max_ratio=0.5,
            note=f"ours {_runs(again[0])} ms, Metaflow {_runs(again[1])} ms; our datastore requests "
            f"{counts[1]['requests']} ({counts[1]['bytes_read']} bytes read). Phases (medians): ours "
            f"{_ms(_phases(ours_results, 'again'))}; Metaflow {_ms(_phases(metaflow_results, 'again'))}",
        ),
    ]


def _runs(values: list[float]) -> str:
    return "/".join(f"{v * 1000:.1f}" for v in values)
