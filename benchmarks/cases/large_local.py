"""256 MB artifact (NumPy array, bytes) saved and loaded through the local store vs raw pickle."""

from __future__ import annotations

import shutil

from common import MB, Context, Measurement, median, median_of, run_python

SIZE = 256 * MB

CHILD = """
import json, os, pickle, sys
from large_value import make_value, round_trip
kind, mode, folder = sys.argv[1:4]
value = make_value(kind, int(sys.argv[4]))
if mode == "ours":
    from airflow_flowspec.datastore.store import Datastore
    store = Datastore(folder).artifacts
    result = round_trip(value, lambda: store.save("blob", value), store.load)
else:
    path = os.path.join(folder, "raw.pkl")

    def save():
        with open(path, "wb") as handle:
            pickle.dump(value, handle, protocol=5)

    def load(_):
        with open(path, "rb") as handle:
            return pickle.load(handle)

    result = round_trip(value, save, load)
print(json.dumps(result))
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
                note=f"save {median_of(ours, 'save'):.3f} s vs {median_of(raw, 'save'):.3f} s, "
                f"load {median_of(ours, 'load'):.3f} s vs {median_of(raw, 'load'):.3f} s",
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
