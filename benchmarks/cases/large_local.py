"""256 MB artifact (NumPy array, bytes) saved and loaded through the local store vs raw pickle."""

from __future__ import annotations

import shutil

from common import MB, Context, Measurement, median, run_python

SIZE = 256 * MB

CHILD = """
import json, os, pickle, sys, time
import memory
kind, mode, folder = sys.argv[1:4]
size = int(sys.argv[4])
if kind == "numpy":
    import numpy
    value = numpy.random.default_rng().random(size // 8)
else:
    value = os.urandom(size)
if mode == "ours":
    from airflow_flowspec.datastore.store import Datastore
    store = Datastore(folder).artifacts
    before = memory.reset_peak()
    start = time.perf_counter()
    ref = store.save("blob", value)
    save = time.perf_counter() - start
    extra = memory.peak_bytes() - before
    start = time.perf_counter()
    back = store.load(ref)
    load = time.perf_counter() - start
else:
    path = os.path.join(folder, "raw.pkl")
    before = memory.reset_peak()
    start = time.perf_counter()
    with open(path, "wb") as handle:
        pickle.dump(value, handle, protocol=5)
    save = time.perf_counter() - start
    extra = memory.peak_bytes() - before
    start = time.perf_counter()
    with open(path, "rb") as handle:
        back = pickle.load(handle)
    load = time.perf_counter() - start
assert len(back) == len(value)
print(json.dumps({"save": save, "load": load, "extra": extra}))
"""


def measure(context: Context, kind: str) -> tuple[list[dict], list[dict]]:
    """Ours and raw, alternating in fresh processes so that drift in the machine hits both alike."""
    ours, raw = [], []
    for index in range(context.repeat):
        for mode, runs in (("ours", ours), ("raw", raw)):
            folder = context.workdir / f"large-local-{kind}-{mode}-{index}"
            folder.mkdir(parents=True)
            runs.append(run_python(CHILD, kind, mode, str(folder), str(SIZE)))
            shutil.rmtree(folder, ignore_errors=True)
    return ours, raw


def fig(runs: list[dict], field: str) -> float:
    return median([r[field] for r in runs])


def run(context: Context) -> list[Measurement]:
    rows = []
    for kind, label in (("numpy", "NumPy array"), ("bytes", "bytes")):
        ours, raw = measure(context, kind)
        case = "1 large artifact, local"
        rows.append(
            Measurement(
                case,
                f"256 MB {label}: save + load time",
                median([r["save"] + r["load"] for r in ours]),
                median([r["save"] + r["load"] for r in raw]),
                "s",
                "pickle.dump + pickle.load",
                max_ratio=1.15,
                note=f"save {fig(ours, 'save'):.3f} s vs {fig(raw, 'save'):.3f} s, "
                f"load {fig(ours, 'load'):.3f} s vs {fig(raw, 'load'):.3f} s",
            )
        )
        rows.append(
            Measurement(
                case,
                f"256 MB {label}: extra peak RSS during save",
                median([r["extra"] for r in ours]),
                SIZE,
                "B",
                "object size",
                max_ratio=0.3,
                note=f"raw pickle.dump: {median([r['extra'] for r in raw]) / MB:.1f} MB",
            )
        )
    return rows
