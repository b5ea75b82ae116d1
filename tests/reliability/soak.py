"""Every reliability campaign at soak size, with the figures RELIABILITY.md records.

    .venv/bin/python tests/reliability/soak.py             # print the figures as RELIABILITY.md shows them
    .venv/bin/python tests/reliability/soak.py --write     # and rewrite RELIABILITY.md
    .venv/bin/python tests/reliability/soak.py --json F    # and keep every figure, as JSON, in F
    .venv/bin/python tests/reliability/soak.py --scale 0.1 # a quick look at a tenth of the size

It starts what the tests start (a private Airflow home on SQLite, moto's S3 server on 127.0.0.1)
and runs, local root and S3 root alike where both apply: S3 faults at 5% and 20% of both kinds
(requests failed by botocore hook; connections reset or cut mid-body by a proxy), each over
datastore rounds and whole flow runs on Airflow; SIGKILLs of real step processes; corruptions
(flip, truncate, swap) read through the datastore, the XCom view and downstream steps; hostile
XCom rows and names; gc in a loop while flows write, its deletes slowed; requests to the artifact
view across flows, projects, branches and look-alike DAGs. It exits 1 if anything was lost, wrong,
let in or left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from harness import FLOWS, REPO, configure_airflow  # noqa: E402

BUCKET = "flowspec-test"
RELIABILITY_MD = REPO / "RELIABILITY.md"
#: Sizes at --scale 1.
FAULT_ROUNDS = 25
FAULT_FLOW_RUNS = 8
KILLS = 200
CORRUPTIONS = 200
HOSTILE_TRIES = 100


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    for variable in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(variable, None)
    boto3.session.Session().client("s3").create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()


def timed(label: str, function: Any, **kwargs: Any) -> dict[str, Any]:
    started = time.monotonic()
    print(f"-- {label} ...", file=sys.stderr, flush=True)
    result = function(**kwargs)
    figures = result.as_dict() if hasattr(result, "as_dict") else dict(result)
    figures["seconds"] = round(time.monotonic() - started, 1)
    print(f"   {label}: {json.dumps(figures, default=str)[:600]}", file=sys.stderr, flush=True)
    return figures


def run_campaigns(scale: float, workdir: Path) -> dict[str, Any]:
    from corruption import corruption_campaign
    from cross_flow import SOAK_TRIES, cross_flow_campaign
    from gc_campaign import SOAK_SIZE, gc_campaign
    from hostile import hostile_campaign
    from kills import kill_campaign
    from survival import fault_campaign

    from airflow_flowspec.airflow.local_run import ensure_database, quiet_airflow_warnings

    def size(full: int) -> int:
        return max(1, round(full * scale))

    figures: dict[str, Any] = {"faults": {}, "kills": {}, "corruption": {}, "hostile": {}, "gc": {}}
    quiet_airflow_warnings()
    ensure_database(Path(os.environ["AIRFLOW_HOME"]))
    with moto_s3() as endpoint:
        for kind in ("botocore", "proxy"):
            for rate in (0.05, 0.2):
                figures["faults"][f"{kind} {rate:.0%}"] = timed(
                    f"S3 faults: {kind} at {rate:.0%}",
                    fault_campaign,
                    endpoint=endpoint,
                    kind=kind,
                    rate=rate,
                    rounds=size(FAULT_ROUNDS),
                    seed=int(rate * 100),
                    flow_file=FLOWS / "foreach_flow.py",
                    flow_runs=size(FAULT_FLOW_RUNS),
                )
        roots = {
            "local": lambda name: str(workdir / name / "store"),
            "s3": lambda name: f"s3://{BUCKET}/soak-{name}-{uuid.uuid4().hex[:8]}",
        }
        for backend, root_for in roots.items():
            kill_dir = workdir / f"kills-{backend}"
            kill_dir.mkdir(parents=True)
            env = {"AIRFLOW__FLOWSPEC__SCRATCH_DIR": str(kill_dir / "scratch")} if backend == "s3" else {}
            figures["kills"][backend] = timed(
                f"kills: {backend}",
                kill_campaign,
                root=root_for("kills"),
                kills=size(KILLS),
                seed=10 if backend == "local" else 11,
                workdir=kill_dir,
                env=env,
            )
            figures["corruption"][backend] = timed(
                f"corruption: {backend}",
                corruption_campaign,
                root=root_for("corruption"),
                tries=size(CORRUPTIONS),
                seed=3,
            )
            figures["hostile"][backend] = timed(
                f"hostile inputs: {backend}",
                hostile_campaign,
                root=root_for("hostile"),
                tries=size(HOSTILE_TRIES),
                seed=4,
            )
            figures["gc"][backend] = timed(
                f"gc while flows write: {backend}",
                gc_campaign,
                root=root_for("gc"),
                seed=6,
                workdir=workdir / f"gc-{backend}",
                **{**SOAK_SIZE, "rounds": size(SOAK_SIZE["rounds"])},
            )
    figures["cross_flow"] = timed(
        "cross-flow requests in the artifact view",
        cross_flow_campaign,
        root=str(workdir / "cross-flow" / "store"),
        tries=size(SOAK_TRIES),
        seed=7,
        workdir=workdir / "cross-flow",
    )
    return figures


def problems(figures: dict[str, Any]) -> list[str]:
    """Anything lost, wrong, let in or left behind, by campaign."""
    found = []
    for name, report in figures["faults"].items():
        for field in ("artifacts_lost_or_wrong", "rounds_failed", "flow_runs_failed"):
            if report[field]:
                found.append(f"faults {name}: {field} = {report[field]}")
    for backend, report in figures["kills"].items():
        for field in (
            "artifacts_lost",
            "artifacts_wrong",
            "scratch_files_after_sweep",
            "multipart_uploads_after_sweep",
            "latest_run_without_start_manifest",
            "retried_runs_with_new_created_at",
            "kill_points_missed",
        ):
            if report[field]:
                found.append(f"kills {backend}: {field} = {report[field]}")
        if report["retries_succeeded"] != report["retries"]:
            found.append(f"kills {backend}: {report['retries'] - report['retries_succeeded']} retries failed")
    for backend, report in figures["corruption"].items():
        for field in ("wrong_values", "unpickled", "other_errors", "transient_reported_as_damage"):
            if report[field]:
                found.append(f"corruption {backend}: {field} = {report[field]}")
        if report["detected"] != report["tries"] or report["repaired"] != report["tries"]:
            found.append(
                f"corruption {backend}: {report['detected']} detected, {report['repaired']} repaired"
            )
    for backend, report in figures["hostile"].items():
        if report.get("let_in"):
            found.append(f"hostile {backend}: let in = {report['let_in']}")
    for backend, report in figures["gc"].items():
        for field in (
            "artifacts_lost",
            "artifacts_wrong",
            "tasks_failed_by_gc",
            "tasks_failed_otherwise",
            "runs_deleted_unexpectedly",
            "gc_failures",
        ):
            if report[field]:
                found.append(f"gc {backend}: {field} = {report[field]}")
        if report["tasks_refused_on_deleted_runs"] != report["too_late_reruns"]:
            found.append(f"gc {backend}: a task ran on a run gc had deleted")
    report = figures["cross_flow"]
    for field in ("let_in", "wrong_answers", "flow_runs_failed"):
        if report[field]:
            found.append(f"cross-flow: {field} = {report[field]}")
    return found


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _mb(count: int) -> str:
    return f"{count / 1024 / 1024:,.0f} MB"


def markdown(figures: dict[str, Any]) -> str:
    """RELIABILITY.md: what was tried, what got through (must be nothing), how to run it again."""
    meta = figures["meta"]
    faults, kills = figures["faults"], figures["kills"]
    corruption, hostile = figures["corruption"], figures["hostile"]
    lines = [
        "# Reliability figures",
        "",
        f"Latest `.venv/bin/python tests/reliability/soak.py --write` on a fresh clone ({meta['date']}, "
        f"{meta['seconds'] / 60:.0f} minutes, scale {meta['scale']}; {meta['machine']}; S3 is moto's "
        f"server on 127.0.0.1). What each campaign does is in the docstrings of "
        f"`tests/reliability/{{survival,kills,corruption,hostile,gc_campaign,cross_flow}}.py`; the tests "
        f"in the same folder run them small in CI and at this size with `FLOWSPEC_SOAK=1`.",
        "",
        f"**Lost, wrong, let in or left behind: {len(figures['problems'])}.**"
        + ("" if not figures["problems"] else " " + "; ".join(figures["problems"])),
        "",
        "## S3 faults",
        "",
        "Each round saves 46 artifacts (40 small ones in packs, four of 200 KB, 2 MB, and 12 MB in 5 MB "
        "multipart parts) through a fresh client and reads every one back through another (the 12 MB one "
        "as parallel ranged downloads); each flow run is the foreach flow (7 tasks, a 2 MB artifact, "
        "XComs on S3) on `dag.test()`. `botocore`: requests failed before sending with 500 InternalError, "
        "503 SlowDown or a connection error. `proxy`: a TCP proxy resets new connections or cuts them "
        "after a random number of response bytes (half each). Requests count every attempt (botocore) "
        "or every connection (proxy).",
        "",
    ]
    rows = []
    for name, report in faults.items():
        injected = ", ".join(f"{count} {kind}" for kind, count in report["injected"].items())
        rows.append(
            [
                name,
                report["requests"],
                injected,
                report["resumed_downloads"],
                f"{report['rounds'] - report['rounds_failed']}/{report['rounds']}",
                report["artifacts_verified"],
                f"{report['flow_runs'] - report['flow_runs_failed']}/{report['flow_runs']}",
                report["artifacts_lost_or_wrong"],
            ]
        )
    lines += _table(
        [
            "faults",
            "requests",
            "faults injected",
            "downloads resumed",
            "rounds ok",
            "artifacts verified",
            "flow runs ok",
            "lost or wrong",
        ],
        rows,
    )
    lines += [
        "## Kills",
        "",
        "A real step process (`python -m airflow_flowspec.runtime`) saving 20 artifacts (packs, blobs, "
        "scratch-file spills, a 12 MB multipart upload on S3) is SIGKILLed at a random instant of its save, "
        "and once at each fixed kill point; then a fresh process opens the datastore (the sweep), every "
        "manifest is verified, and killed tasks are retried.",
        "",
    ]
    rows = []
    for backend, report in kills.items():
        rows.append(
            [
                backend,
                f"{report['kills']} ({report['kills_mid_save']} mid-save)",
                report["manifests_checked"],
                report["artifacts_verified"] + report["retry_artifacts_verified"],
                report["artifacts_lost"] + report["artifacts_wrong"],
                f"{report['scratch_files_left_by_kills']} ({_mb(report['scratch_bytes_left_by_kills'])})",
                report["scratch_files_after_sweep"],
                f"{report['multipart_uploads_before_sweep']} / {report['multipart_uploads_after_sweep']}",
                f"{report['latest_run_without_start_manifest']} of {report['latest_run_checks']}",
                f"{report['retries_succeeded']}/{report['retries']}",
                f"{report['unreferenced_blobs']} ({_mb(report['unreferenced_blob_bytes'])})",
            ]
        )
    lines += _table(
        [
            "root",
            "kills",
            "manifests checked",
            "artifacts verified",
            "lost or wrong",
            "scratch files left by kills",
            "scratch files after sweep",
            "multipart uploads before / after sweep",
            "latest_run at a run with no start",
            "retries ok",
            "unreferenced blobs (for the GC)",
        ],
        rows,
    )
    lines += [
        "## Corruptions",
        "",
        "A stored blob or pack is damaged (one byte flipped, truncated, or swapped with a hostile pickle), "
        "then read back through the datastore and the XCom view; the value is a tripwire that writes a "
        "file if it is ever unpickled. Then the same value is saved again (the repair) and read. Transient "
        "faults: the first read is damaged, the second good.",
        "",
    ]
    rows = []
    for backend, report in corruption.items():
        tried = ", ".join(f"{count} {kind}" for kind, count in report["tried"].items())
        rows.append(
            [
                backend,
                f"{report['tries']} ({tried})",
                report["detected"],
                report["named"],
                report["wrong_values"],
                report["unpickled"],
                report["repaired"],
                f"{report['transient_tried']} / {report['transient_reported_as_damage']}",
            ]
        )
    lines += _table(
        [
            "root",
            "corruptions",
            "detected",
            "error names the artifact",
            "wrong values",
            "unpickled",
            "repaired by the next save",
            "transient faults / called damage",
        ],
        rows,
    )
    lines += [
        "## Hostile inputs",
        "",
        "XCom rows a task or a database editor could write: old path-holding rows, `../` and absolute "
        "paths, other buckets and prefixes, rows copied from another task or run, hashes of planted "
        "pickles, malformed rows, fake manifests and (local root) symlinks under the derived key; each "
        "through the backend's read and purge paths. Half the tries attack a chunked list (a foreach's "
        "children) instead: its row edited (identity, length, chunk size, root, version, fields) or "
        "copied from another list, or its stored chunks replaced (another list's chunk, a cut or edited "
        "chunk, a pickle, a symlink), and every element, slice and iteration compared with the real "
        "list's. *Let in* means anything outside the root was opened or deleted, a planted pickle ran, "
        "another XCom's pickle or chunk was touched, or a value (or element) other than the XCom's own "
        "came back.",
        "",
    ]
    rows = [
        [backend, report["tried"], report["refused"], report["answered_from_derived_key"], report["let_in"]]
        for backend, report in hostile.items()
    ]
    lines += _table(["root", "tried", "refused", "answered from the derived key", "let in"], rows)
    lines += gc_section(figures["gc"])
    lines += cross_flow_section(figures["cross_flow"])
    return "\n".join(lines)


def gc_section(gc: dict[str, Any]) -> list[str]:
    lease = max(report["lease_seconds"] for report in gc.values())
    renew = max(report["renew_seconds"] for report in gc.values())
    lines = [
        "## gc while flows write",
        "",
        "`airflow-flowspec gc` runs pass after pass (asking Airflow's database, as `gc --airflow` "
        "does) while flows of three steps run beside it, each task with its own client and holding its "
        "run's lease; between passes time is made to pass: earlier runs are aged 60 days (gc deletes "
        "them), every blob in `data/` three days (past the grace period). Leases are scaled down "
        f"({lease:g} s unrenewed, renewed every {renew:g} s). Each round: ordinary runs that save "
        "again values gc may be taking; long steps, computing until a whole pass has judged their "
        "run, aged meanwhile to look abandoned; a run on Airflow whose failed task is cleared weeks "
        "later (judged while queued, then run again); two old failed runs whose task is re-run as gc "
        "comes to delete them (one holding its lease at gc's last look, one ended before gc's mark); "
        "and one re-run after gc deleted its run. gc's deletes wait the delay "
        "shown (on S3 a `before-send` hook on gc's own client holds each DeleteObject); as gc takes a "
        "blob out of `data/`, a racing run saves the same value, relies on the blob still there, and "
        "writes its manifest a pass later; when gc moves that blob back, a reader misses it in "
        "`data/` just before the move and learns so only after it. *Lost*: an artifact of a run, "
        "read as it finished and again at the end for every run gc kept, that does not load or is "
        "not what its step stored.",
        "",
    ]
    rows = []
    for backend, report in gc.items():
        rows.append(
            [
                f"{backend} ({report['delete_delay']:g} s)",
                f"{report['runs_written']} ({report['long_step_runs']} long, {report['racing_runs']} racing, "
                f"{report['cleared_runs']} cleared)",
                report["gc_passes"],
                f"{report['runs_deleted']} / {report['runs_spared']}",
                f"{report['blobs_trashed']} / {report['blobs_deleted']} / {report['blobs_restored']}",
                report["trash_rounds_waited"],
                f"{report['slowed_deletes']} ({report['slowed_deletes_overlapping_a_save']} during a save "
                f"relying on the blob)",
                f"{report['reads_from_the_trash']} / {report['reads_racing_a_move_back']}",
                report["artifacts_checked"],
                report["artifacts_lost"] + report["artifacts_wrong"],
                report["tasks_failed_by_gc"] + report["tasks_failed_otherwise"],
                f"{report['tasks_refused_on_deleted_runs']}/{report['too_late_reruns']}",
            ]
        )
    return lines + _table(
        [
            "root (delete delay)",
            "runs",
            "gc passes",
            "runs deleted / spared at the last look",
            "blobs trashed / deleted / moved back",
            "trash rounds waited",
            "slowed deletes",
            "reads from the trash / as gc moved the blob back",
            "artifacts checked",
            "lost or wrong",
            "tasks failed",
            "re-runs on a deleted run refused",
        ],
        rows,
    )


def cross_flow_section(report: dict[str, Any]) -> list[str]:
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(report["by_dag_kind"].items()))
    lines = [
        "## Cross-flow requests in the artifact view",
        "",
        "Flows' DAGs sharing Airflow run ids (`VictimFlow`; a `TrainFlow` without `@project`; "
        "`@project` flows named `TrainFlow` of three projects on branches such as `alpha.prod`, "
        "`beta.user.ana-maria` and `gamma.user.alpha.prod`), ordinary DAGs named like them "
        "(`evil..VictimFlow`, `gamma.alpha.prod.TrainFlow`), DAGs built by hand with this provider's "
        "operator claiming a flow's deployment, runs triggered with crafted ids (`alpha.prod:<run id>` "
        "on the flow without `@project`, and `prod:<run id>` where an older version's copy of alpha's "
        "run lies), and four users Airflow refuses different DAGs. Every run of every DAG is asked for "
        "once per user, then at random: the run, step, task and artifact pages (JSON and HTML), "
        "downloads and the index. *Let in*: another deployment's data, any data of a DAG the user may "
        "not read, or a page for a DAG that is not a flow's.",
        "",
    ]
    rows = [
        [
            report["dags"],
            report["dag_runs"],
            f"{report['tried']} ({kinds} DAG ids; {report['by_path'].get('index', 0)} of the index)",
            report["served_correctly"],
            f"{report['refused_correctly']} ({report['refused_by_airflow']} by Airflow, "
            f"{report['refused_by_the_view']} by the view)",
            report["wrong_answers"],
            report["let_in"],
        ]
    ]
    return lines + _table(
        ["DAGs", "DAG runs", "requests", "served the right run", "refused", "wrong answers", "let in"], rows
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the soak size to run")
    parser.add_argument("--write", action="store_true", help="rewrite RELIABILITY.md")
    parser.add_argument("--json", type=Path, help="write every figure, as JSON, to this file")
    args = parser.parse_args(argv)

    configure_airflow()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="flowspec-soak-") as workdir:
        figures = run_campaigns(args.scale, Path(workdir))
    figures["meta"] = {
        "date": datetime.date.today().isoformat(),
        "seconds": round(time.monotonic() - started),
        "scale": args.scale,
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }
    found = problems(figures)
    figures["problems"] = found
    report = markdown(figures)
    print(report)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str), encoding="utf-8")
    if args.write:
        RELIABILITY_MD.write_text(report, encoding="utf-8")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
