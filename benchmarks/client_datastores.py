"""Datastores of many runs for the client cases (11, 12), ours and Metaflow's, each grown from one
real run of the same flow file.

Running a flow 1,000 times would take an hour, so each side runs ``benchmarks/flows/client_flow.py``
once (``python flow.py run``: our CLI, and Metaflow 2.19 with its local metadata provider and local
datastore) and that run is replicated under new run ids, one second apart, with what each system
writes for a run:

- ours, through the Datastore API the runtime uses: ``write_run_meta`` (the run's record, with its
  ``created_at``), ``write_manifest`` for each task, ``index_run``, ``finish_run``. Artifacts are
  content-addressed, so the replicas' manifests point at the blobs the real run stored, as a rerun
  of unchanged values would.
- Metaflow's: the run's folder ``.metaflow/<Flow>/<run_id>/`` (the local metadata provider's
  ``_meta`` folders and the task datastore's ``<attempt>.data.json``, DONE locks and logs), with
  the run id, its creation time (``ts_epoch``, by which Metaflow's client orders runs) and the
  datastore path rewritten in every file; blobs are shared by hash in ``.metaflow/<Flow>/data/`` as
  Metaflow shares them.

A failed run is one that died in its end step: ours has no end manifest and a ``failed`` status (so
no entry in the index of successful runs), Metaflow's has no end step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

from common import BENCHMARKS, Context, run_command

FLOW_FILE = BENCHMARKS / "flows" / "client_flow.py"
FLOW = "ClientFlow"
USER = "bench"
#: What the flow's end step holds (checked by every lookup the cases time).
X_VALUE = 42
TABLE_ITEMS = 10_000


def user_env() -> dict[str, str]:
    """Who runs the flows and reads them back: the same user on both sides (``user:bench``)."""
    return {"USER": USER, "LOGNAME": USER, "USERNAME": USER}


def metaflow_env(sysroot: Path | str, cache: Path | str) -> dict[str, str]:
    """Metaflow with its local metadata provider and datastore under ``sysroot``; its client's blob
    cache in ``cache`` (a fresh folder per process, so no process reads what another cached)."""
    return {
        **user_env(),
        "METAFLOW_DEFAULT_METADATA": "local",
        "METAFLOW_DEFAULT_DATASTORE": "local",
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(sysroot),
        "METAFLOW_CLIENT_CACHE_PATH": str(cache),
    }


@dataclass
class Templates:
    """One real run of the client flow on each side."""

    ours_root: Path  # our datastore root holding the run
    ours_run_id: str
    metaflow_sysroot: Path  # METAFLOW_DATASTORE_SYSROOT_LOCAL (holds .metaflow/)
    metaflow_run_id: str
    ours_wall: float
    metaflow_wall: float


_templates: dict[str, Templates] = {}


def templates(context: Context) -> Templates:
    """Run the client flow once with each system (once per benchmark run; both cases share it)."""
    key = str(context.workdir)
    if key not in _templates:
        from cases.vs_metaflow_blob import flowspec_home

        base = context.workdir / "client-templates"
        ours_root, sysroot = base / "ours", base / "metaflow"
        cwd = Path(tempfile.mkdtemp(prefix="cwd-", dir=context.workdir))
        flow_copy = base / "metaflow_flow" / FLOW_FILE.name
        flow_copy.parent.mkdir(parents=True, exist_ok=True)
        flow_copy.write_text(
            FLOW_FILE.read_text().replace("from airflow_flowspec import", "from metaflow import", 1)
        )
        ours_env = {
            **user_env(),
            "AIRFLOW_HOME": "",  # our CLI prepares (and keeps) its own home under FLOWSPEC_HOME
            "FLOWSPEC_HOME": str(flowspec_home(context)),
            "AIRFLOW__FLOWSPEC__DATASTORE_ROOT": str(ours_root),
        }
        done = f"x={X_VALUE}, {TABLE_ITEMS} items"
        ours_wall, _, output = run_command([sys.executable, str(FLOW_FILE), "run"], env=ours_env, cwd=cwd)
        assert done in output, output[-2000:]
        metaflow_wall, _, output = run_command(
            [sys.executable, str(flow_copy), "run"],
            env=metaflow_env(sysroot, base / "metaflow-client-cache"),
            cwd=cwd,
        )
        assert done in output, output[-2000:]
        shutil.rmtree(cwd, ignore_errors=True)
        (ours_run,) = [p.name for p in (ours_root / FLOW / "runs").iterdir()]
        (metaflow_run,) = [
            p.name for p in (sysroot / ".metaflow" / FLOW).iterdir() if p.is_dir() and p.name.isdigit()
        ]
        _templates[key] = Templates(ours_root, ours_run, sysroot, metaflow_run, ours_wall, metaflow_wall)
    return _templates[key]


def big_folder(context: Context, name: str) -> Path:
    """A folder for a datastore of many small files: in /dev/shm (tmpfs) where there is one.

    Metaflow keeps ~140 files per run, so 1,000 runs are ~150,000 files: on a busy ext4 disk,
    creating them took 45-90 s of kernel time, against ~5 s on tmpfs. Both datastores go to the
    same place, and both clients then read from the page cache either way.
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix=f"flowspec-bench-{name}-", dir=shm))
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=context.workdir))


def failed_runs(runs: int) -> set[int]:
    """Which runs (0 = oldest) fail: every tenth, and the three newest, so that the latest
    successful run is neither the latest run nor found at the first look."""
    return {i for i in range(runs) if i % 10 == 7} | set(range(max(0, runs - 3), runs))


def latest_successful(run_ids: list[str], failed: set[int]) -> str:
    return next(run_ids[i] for i in reversed(range(len(run_ids))) if i not in failed)


# -- ours ----------------------------------------------------------------------------------------


def build_ours(template: Templates, root: Path, runs: int, failed: set[int]) -> list[str]:
    """Our datastore at ``root`` with ``runs`` runs of the flow (the real one first, oldest); returns
    the run ids, oldest first."""
    from airflow_flowspec.datastore import Datastore
    from airflow_flowspec.datastore.keys import AttemptKey
    from airflow_flowspec.datastore.manifest import Manifest
    from airflow_flowspec.identity import RunIdentity

    shutil.copytree(template.ours_root, root, ignore=shutil.ignore_patterns(".tmp"))
    ds = Datastore(str(root))
    old_id = template.ours_run_id
    stamp = old_id.split("__", 1)[1]  # manual__<logical date>: the date is in the run's context too
    record = ds.read_run_meta(FLOW, old_id)
    manifests = []  # ((step, task id, attempt), manifest as JSON text), in the order the run wrote them
    for step in ds.list_steps(FLOW, old_id):
        for task_id in ds.list_tasks(FLOW, old_id, step):
            attempt = ds.list_attempts(FLOW, old_id, step, task_id)[-1]
            manifest = ds.read_manifest(AttemptKey(FLOW, old_id, step, task_id, attempt))
            manifests.append(((step, task_id, attempt), json.dumps(manifest.to_json())))
    manifests.sort(key=lambda item: json.loads(item[1])["created_at"])
    # Each copy is numbered as the runtime numbers a run (the real run's number is not copied).
    kept = {
        k: v for k, v in record.items() if k not in ("flow", "run_id", "created_at", "number", "identity")
    }
    meta_text = json.dumps(kept)
    logical, created = datetime.fromisoformat(stamp), datetime.fromisoformat(record["created_at"])
    run_ids = [old_id]
    if 0 in failed:
        raise ValueError("the real run (the oldest) succeeded; it cannot be one of the failed ones")
    for index in range(1, runs):
        new_stamp = (logical + timedelta(seconds=index)).isoformat()
        run_id = f"{old_id.split('__', 1)[0]}__{new_stamp}"
        meta = json.loads(meta_text.replace(stamp, new_stamp))
        meta["created_at"] = (created + timedelta(seconds=index)).isoformat()
        identity = RunIdentity(FLOW, run_id)
        meta["number"] = ds.number_run(identity)
        record = ds.write_run_meta(FLOW, run_id, meta, identity=identity)
        succeeded = index not in failed
        for (step, _task_id, _attempt), text in manifests:
            if step == "end" and not succeeded:
                continue  # died in its end step
            manifest = Manifest.from_json(json.loads(text.replace(stamp, new_stamp)), where="the copy")
            ds.write_manifest(manifest)
            if step == "start":
                ds.index_run(FLOW, run_id, record)  # as the runtime does, after the start manifest
        end_task = f"{FLOW}/{run_id}/end/0"
        outcome = {"end_task": end_task} if succeeded else {"failed_task": end_task}
        ds.finish_run(FLOW, run_id, succeeded, outcome)
        run_ids.append(run_id)
    return run_ids


# -- Metaflow's ----------------------------------------------------------------------------------

_TS_EPOCH = re.compile(rb'("ts_epoch": )(\d+)')


def _shifted(milliseconds: int, match: re.Match) -> bytes:
    return match.group(1) + str(int(match.group(2)) + milliseconds).encode()


def build_metaflow(template: Templates, sysroot: Path, runs: int, failed: set[int]) -> list[str]:
    """Metaflow's local datastore + metadata at ``sysroot`` with ``runs`` runs (the real one first,
    oldest); returns the run ids, oldest first."""
    source = template.metaflow_sysroot / ".metaflow" / FLOW
    target = sysroot / ".metaflow" / FLOW
    target.mkdir(parents=True)
    shutil.copytree(source / "data", target / "data")
    shutil.copytree(source / "_meta", target / "_meta")
    old_id = template.metaflow_run_id
    old_root = str(template.metaflow_sysroot).encode()
    new_root = str(sysroot).encode()
    files: dict[Path, bytes] = {}
    for path in sorted((source / old_id).rglob("*")):
        if path.is_file():
            files[path.relative_to(source / old_id)] = path.read_bytes().replace(old_root, new_root)
    folders = sorted({parent for relative in files for parent in relative.parents if parent != Path(".")})
    run_ids = []
    if 0 in failed:
        raise ValueError("the real run (the oldest) succeeded; it cannot be one of the failed ones")
    for index in range(runs):
        run_id = str(int(old_id) + index * 1_000_000)  # Metaflow's run ids are start times in µs
        run_ids.append(run_id)
        succeeded = index not in failed
        run_folder = target / run_id
        for folder in folders:
            if succeeded or folder.parts[0] != "end":
                (run_folder / folder).mkdir(parents=True, exist_ok=True)
        new_id, shift = run_id.encode(), index * 1000  # ts_epoch is in ms
        for relative, data in files.items():
            if not succeeded and relative.parts[0] == "end":
                continue  # died in its end step
            data = data.replace(old_id.encode(), new_id)
            if relative.suffix == ".json":
                data = _TS_EPOCH.sub(partial(_shifted, shift), data)
            (run_folder / relative).write_bytes(data)
    (target / "latest_run").write_text(run_ids[-1])  # what `python flow.py resume` reads
    return run_ids
