"""1,000 artifacts of about 1 KB saved by one step to S3 (moto) and loaded back vs sequential calls."""

from __future__ import annotations

from common import Context, Measurement, median, run_python

COUNT = 1000

# Saved and loaded the way a step does it: one save_many of the step's artifacts at its end, and
# one attribute access per artifact in the next step (each in its own process, as on a worker).
CHILD = """
import json, os, pickle, sys, time, uuid
import boto3
mode, root, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
values = {f"feature_{i}": {"id": i, "payload": os.urandom(400).hex()} for i in range(count)}
if mode == "ours":
    from airflow_flowspec.datastore.store import Datastore
    from airflow_flowspec.datastore.views import ArtifactLoader
    store = Datastore(root).artifacts
    store.backend.client
    start = time.perf_counter()
    refs = store.save_many(values)
    save = time.perf_counter() - start
    reader = Datastore(root)  # a new process's view: nothing cached
    reader.backend.client
    loader = ArtifactLoader(reader, refs)
    start = time.perf_counter()
    back = {name: loader.load(name) for name in values}
    load = time.perf_counter() - start
else:
    bucket, prefix = root[len("s3://"):].split("/", 1)
    client = boto3.client("s3")
    client.list_buckets()
    start = time.perf_counter()
    for name, value in values.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=pickle.dumps(value, protocol=5))
    save = time.perf_counter() - start
    start = time.perf_counter()
    back = {name: pickle.loads(client.get_object(Bucket=bucket, Key=f"{prefix}/{name}")["Body"].read())
            for name in values}
    load = time.perf_counter() - start
assert back == values
print(json.dumps({"save": save, "load": load}))
"""


def run(context: Context) -> list[Measurement]:
    context.s3_endpoint()
    ours, raw = [], []
    for index in range(context.repeat):
        ours.append(run_python(CHILD, "ours", f"s3://bench/small-ours-{index}", str(COUNT)))
        raw.append(run_python(CHILD, "raw", f"s3://bench/small-raw-{index}", str(COUNT)))
    case = "4 many small artifacts (S3)"
    return [
        Measurement(
            case,
            f"{COUNT} x 1 KB: save",
            median([r["save"] for r in ours]),
            median([r["save"] for r in raw]),
            "s",
            f"{COUNT} sequential put_object",
            min_ratio=5,
        ),
        Measurement(
            case,
            f"{COUNT} x 1 KB: load",
            median([r["load"] for r in ours]),
            median([r["load"] for r in raw]),
            "s",
            f"{COUNT} sequential get_object",
            min_ratio=5,
        ),
    ]
