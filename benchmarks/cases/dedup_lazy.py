"""Dedup and laziness: bytes a step moves for a 256 MB artifact it leaves unchanged or never reads."""

from __future__ import annotations

from common import BENCHMARKS, MB, Context, Measurement, run_python

SIZE = 256 * MB

# One task per fresh process, as on a worker or in a Batch container: no in-process cache helps.
# Every backend call on the blob's key is metered: the bytes it moved are the blob's bytes.
CHILD = """
import functools, json, sys
from airflow_flowspec.datastore import open_datastore
from airflow_flowspec.datastore.keys import blob_key
from airflow_flowspec.datastore.manifest import Manifest
from airflow_flowspec.runtime.step_runner import run_step
from airflow_flowspec.identity import RunIdentity
from airflow_flowspec.runtime.task_spec import TaskSpec
flow_file, root, step, inputs = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
backend = open_datastore(root).backend
watched = {blob_key(m["artifacts"]["blob"]["hash"]) for m in inputs}
blob_io = {"bytes_read": 0, "bytes_written": 0, "calls": []}

def meter(name):
    method = getattr(backend, name)
    @functools.wraps(method)
    def metered(key, *args, **kwargs):
        if key not in watched:
            return method(key, *args, **kwargs)
        before = backend.counters.snapshot()
        try:
            return method(key, *args, **kwargs)
        finally:
            after = backend.counters.snapshot()
            blob_io["calls"].append(name)
            for field in ("bytes_read", "bytes_written"):
                blob_io[field] += after[field] - before[field]
    setattr(backend, name, metered)

for name in ("get_bytes", "download_file", "open_read", "put_bytes", "put_file", "adopt_file"):
    meter(name)
spec = TaskSpec(flow_file=flow_file, run=RunIdentity("DedupFlow", "bench-1"), step=step, datastore_root=root,
                input_manifests=[Manifest.from_json(m, where="the benchmark") for m in inputs])
result = run_step(spec)
document = result.manifest.to_json()
print(json.dumps({"manifest": document, "blob_io": blob_io, "io": backend.counters.snapshot()}))
"""


def run(context: Context) -> list[Measurement]:
    context.s3_endpoint()
    root = f"s3://bench/dedup-{context.workdir.name}"
    flow = str(BENCHMARKS / "flows" / "dedup_flow.py")
    env = {"BENCH_BLOB_BYTES": str(SIZE)}
    start = run_python(CHILD, flow, root, "start", "[]", env=env)
    untouched = run_python(CHILD, flow, root, "untouched", _json([start["manifest"]]), env=env)
    reassigned = run_python(CHILD, flow, root, "reassigned", _json([untouched["manifest"]]), env=env)
    blob_size = start["manifest"]["artifacts"]["blob"]["size"]
    assert start["io"]["bytes_written"] >= blob_size, start["io"]
    same = {s["manifest"]["artifacts"]["blob"]["hash"] for s in (start, untouched, reassigned)}
    assert len(same) == 1, "the unchanged artifact must keep its hash"
    # The meter sees the blob when it is read: the reassigning step downloaded all of it.
    assert reassigned["blob_io"]["bytes_read"] >= blob_size, reassigned["blob_io"]
    case = "3 dedup and laziness (S3)"
    return [
        Measurement(
            case,
            "step never reading the blob: bytes of it downloaded",
            untouched["blob_io"]["bytes_read"],
            blob_size,
            "B",
            "blob size",
            max_ratio=0.0,
            note=f"the step moved {_describe(untouched)}",
        ),
        Measurement(
            case,
            "step storing the blob unchanged: bytes of it uploaded",
            reassigned["blob_io"]["bytes_written"],
            blob_size,
            "B",
            "blob size",
            max_ratio=0.0,
            note="the step reads the blob, so it downloaded it once; "
            f"in all it moved {_describe(reassigned)}",
        ),
    ]


def _describe(result: dict) -> str:
    io = result["io"]
    return f"{io['bytes_read']:,} bytes in, {io['bytes_written']:,} bytes out, {io['requests']} requests"


def _json(value) -> str:
    import json

    return json.dumps(value)
