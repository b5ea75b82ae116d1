"""A 50 MB JSON value through our XCom backend vs common-io's XComObjectStorageBackend, same S3."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import MB, Context, Measurement, median, run_python

TARGET_BYTES = 50 * MB

#: s3fs (which common-io's backend needs for s3:// paths) is not in the venv, and no aiobotocore
#: release accepts the venv's botocore 1.44: these five, installed apart, are put first on the
#: path of the common-io processes only (every other dependency is the venv's own version).
S3FS_DIR = Path(tempfile.gettempdir()) / "flowspec-bench-s3fs"
S3FS_PACKAGES = [
    "s3fs==2026.9.0",
    "aiobotocore==3.10.0",
    "aioitertools==0.13.0",
    "botocore==1.43.117",
    "boto3==1.43.117",
]

# Backend level, one push and one pull per fresh process, after a 1 MB warm-up round trip that
# creates the S3 clients. The value that reaches the metadata DB goes through JSON in between, as
# Airflow stores it.
CHILD = """
import json, sys, time
mode, target = sys.argv[1], int(sys.argv[2])
from airflow.sdk.execution_time.comms import XComResult
if mode == "ours":
    from airflow_flowspec.xcom_backend import FlowspecXComBackend as Backend
else:
    from airflow.providers.common.io.xcom.backend import XComObjectStorageBackend as Backend

def make_value(rows):
    return {
        "id": list(range(rows)),
        "score": [i * 0.25 for i in range(rows)],
        "name": [f"customer-{i:09d}" for i in range(rows)],
    }

def round_trip(value, key):
    start = time.perf_counter()
    stored = Backend.serialize_value(value, key=key, dag_id="bench", run_id="run-1", task_id="push",
                                     map_index=-1)
    pushed = time.perf_counter() - start
    in_db = json.loads(json.dumps(stored))  # the metadata DB's JSON column
    start = time.perf_counter()
    back = Backend.deserialize_value(XComResult(key=key, value=in_db))
    pulled = time.perf_counter() - start
    return back, pushed, pulled, len(json.dumps(in_db))

rows = target // 40  # about 40 bytes of JSON per row
value = make_value(rows)
size = len(json.dumps(value))
warm = make_value(20_000)
back, *_ = round_trip(warm, "warm")
assert back == warm
back, pushed, pulled, db_bytes = round_trip(value, "big")
assert back == value, "round trip changed the value"
result = {"push": pushed, "pull": pulled, "size": size, "db_bytes": db_bytes}
if mode == "ours":  # where our push goes: deciding inline-or-not, then storing
    from airflow_flowspec.xcom_backend.values import fits_inline, store_value
    start = time.perf_counter()
    assert fits_inline(value) is None
    result["inline_check"] = time.perf_counter() - start
    start = time.perf_counter()
    store_value(value, key="direct", task_id="push", dag_id="bench", run_id="run-1", map_index=-1)
    result["store"] = time.perf_counter() - start
print(json.dumps(result))
"""

# Which values each backend can carry from one task to another: pushed in one process, pulled in
# another (as two tasks would), compared with what was pushed.
PUSH = """
import datetime, json, sys
import numpy
mode, out = sys.argv[1], sys.argv[2]
if mode == "ours":
    from airflow_flowspec.xcom_backend import FlowspecXComBackend as Backend
else:
    from airflow.providers.common.io.xcom.backend import XComObjectStorageBackend as Backend

class Model:  # a scikit-like estimator defined in the DAG/flow file
    def __init__(self):
        self.coef_ = [0.5, 1.5]
    def predict(self, x):
        return sum(c * x for c in self.coef_)

objects = {
    "numpy array": numpy.arange(12.0).reshape(3, 4),
    "instance of a local class": Model(),
    "lambda": lambda x: x + 1,
    "bytes": b"\\x00\\x01binary",
    "set": {1, 2, 3},
    "datetime": datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone.utc),
}
results = {}
for name, obj in objects.items():
    try:
        stored = Backend.serialize_value(obj, key=name, dag_id="bench", run_id="kinds", task_id="push",
                                         map_index=-1)
        results[name] = {"stored": json.loads(json.dumps(stored))}
    except Exception as error:
        results[name] = {"error": f"push: {type(error).__name__}: {str(error)[:160]}"}
with open(out, "w") as handle:
    json.dump(results, handle)
print(json.dumps({}))
"""

PULL = """
import datetime, json, sys
import numpy
mode, path = sys.argv[1], sys.argv[2]
from airflow.sdk.execution_time.comms import XComResult
if mode == "ours":
    from airflow_flowspec.xcom_backend import FlowspecXComBackend as Backend
else:
    from airflow.providers.common.io.xcom.backend import XComObjectStorageBackend as Backend

def check(name, value):
    if name == "numpy array":
        return isinstance(value, numpy.ndarray) and (value == numpy.arange(12.0).reshape(3, 4)).all()
    if name == "instance of a local class":
        return type(value).__name__ == "Model" and value.predict(2) == 4.0
    if name == "lambda":
        return callable(value) and value(1) == 2
    if name == "bytes":
        return value == b"\\x00\\x01binary"
    if name == "set":
        return value == {1, 2, 3}
    if name == "datetime":
        return value == datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone.utc)

with open(path) as handle:
    pushed = json.load(handle)
verdicts = {}
for name, entry in pushed.items():
    if "error" in entry:
        verdicts[name] = entry["error"]
        continue
    try:
        value = Backend.deserialize_value(XComResult(key=name, value=entry["stored"]))
    except Exception as error:
        verdicts[name] = f"pull: {type(error).__name__}: {str(error)[:160]}"
        continue
    came_back = f"changed: came back as {type(value).__name__} {value!r:.60}"
    verdicts[name] = "ok" if check(name, value) else came_back
print(json.dumps(verdicts))
"""


def ensure_s3fs() -> None:
    if (S3FS_DIR / "s3fs").is_dir():
        return
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(S3FS_DIR)]
        + S3FS_PACKAGES,
        check=True,
    )


def environment(context: Context, mode: str) -> dict[str, str]:
    endpoint = context.s3_endpoint()
    home = context.workdir / "xcom-airflow-home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW__FLOWSPEC__DATASTORE_ROOT": f"s3://bench/ours-{context.workdir.name}",
        "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH": f"s3://aws_default@bench/xcom-{context.workdir.name}",
        # Same cut-over as ours ([flowspec] xcom_inline_max_bytes): larger values go to S3.
        "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_THRESHOLD": "65536",
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({"conn_type": "aws", "extra": {"endpoint_url": endpoint}}),
    }
    if mode == "ours":
        env["AIRFLOW__CORE__XCOM_BACKEND"] = "airflow_flowspec.xcom_backend.FlowspecXComBackend"
    else:
        env["AIRFLOW__CORE__XCOM_BACKEND"] = (
            "airflow.providers.common.io.xcom.backend.XComObjectStorageBackend"
        )
        env["PYTHONPATH"] = str(S3FS_DIR)  # run_python puts benchmarks/ and the repo before it
    return env


def kinds(context: Context, mode: str) -> dict[str, str]:
    env = environment(context, mode)
    out = context.workdir / f"xcom-kinds-{mode}.json"
    run_python(PUSH, mode, str(out), env=env)
    return run_python(PULL, mode, str(out), env=env)


def run(context: Context) -> list[Measurement]:
    ensure_s3fs()
    runs: dict[str, list[dict]] = {"ours": [], "theirs": []}
    for _ in range(context.repeat):
        for mode in ("ours", "theirs"):
            runs[mode].append(run_python(CHILD, mode, str(TARGET_BYTES), env=environment(context, mode)))
    ours_kinds, their_kinds = kinds(context, "ours"), kinds(context, "theirs")

    def total(mode: str) -> float:
        return median([r["push"] + r["pull"] for r in runs[mode]])

    def part(mode: str, key: str) -> float:
        return median([r[key] for r in runs[mode]])

    size = runs["ours"][0]["size"]
    only_ours = [
        name for name, verdict in ours_kinds.items() if verdict == "ok" and their_kinds[name] != "ok"
    ]
    neither = [name for name, verdict in ours_kinds.items() if verdict != "ok"]
    case = "9 XCom backend vs common-io object storage (S3)"
    return [
        Measurement(
            case,
            f"{size / MB:.0f} MB JSON value: push + pull",
            total("ours"),
            total("theirs"),
            "s",
            "XComObjectStorageBackend",
            max_ratio=0.5,
            note=f"push {part('ours', 'push'):.2f} s vs {part('theirs', 'push'):.2f} s, pull "
            f"{part('ours', 'pull'):.2f} s vs {part('theirs', 'pull'):.2f} s (theirs uncompressed, threshold "
            f"64 KB like ours, moto S3 on loopback). Our push = fits_inline "
            f"{part('ours', 'inline_check'):.2f} s "
            f"(the size check with an early exit) + store_value "
            f"{part('ours', 'store'):.2f} s (cloudpickle + upload)",
        ),
        Measurement(
            case,
            "kinds of value it cannot carry between tasks (of 6)",
            float(sum(v != "ok" for v in ours_kinds.values())),
            float(sum(v != "ok" for v in their_kinds.values())),
            "",
            "XComObjectStorageBackend",
            max_ratio=1.0,
            note="only ours: "
            + (", ".join(only_ours) or "none")
            + "; theirs: "
            + "; ".join(f"{name}: {verdict}" for name, verdict in their_kinds.items() if verdict != "ok")
            + ("; ours fails: " + "; ".join(f"{n}: {ours_kinds[n]}" for n in neither) if neither else ""),
        ),
    ]
