"""256 MB artifact (NumPy array, bytes) saved and loaded through S3 (moto server) vs raw boto3."""

from __future__ import annotations

from common import MB, Context, Measurement, median, median_of, run_python

SIZE = 256 * MB

CHILD = """
import json, pickle, sys, uuid
import boto3
from large_value import make_value, round_trip
kind, mode, root = sys.argv[1:4]
value = make_value(kind, int(sys.argv[4]))
if mode.startswith("ours"):
    from airflow_flowspec.datastore.store import Datastore
    store = Datastore(root).artifacts
    store.backend.client  # connect before measuring, as the raw client below is created first
    result = round_trip(value, lambda: store.save("blob", value), store.load)
else:
    bucket, prefix = root[len("s3://"):].split("/", 1)
    key = f"{prefix}/raw-{uuid.uuid4().hex}"
    client = boto3.client("s3")
    result = round_trip(
        value,
        lambda: client.put_object(Bucket=bucket, Key=key, Body=pickle.dumps(value, protocol=5)),
        lambda _: pickle.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read()),
    )
    client.delete_object(Bucket=bucket, Key=key)
print(json.dumps(result))
"""


SINGLE_REQUEST = {"AIRFLOW__FLOWSPEC__S3_MULTIPART_THRESHOLD_MB": "1024"}


def run(context: Context) -> list[Measurement]:
    """Two configurations of ours: the default (parallel parts from 32 MB, right for real S3) and
    single-request transfers (``s3_multipart_threshold_mb`` above the object size)."""
    context.s3_endpoint()
    rows = []
    case = "2 large artifact, S3"
    for kind, label in (("numpy", "NumPy array"), ("bytes", "bytes")):
        ours, single, raw = [], [], []
        for index in range(context.repeat):  # alternate, fresh processes, fresh prefixes (no dedup)
            ours.append(run_python(CHILD, kind, "ours", f"s3://bench/large-{kind}-{index}", str(SIZE)))
            single.append(
                run_python(
                    CHILD,
                    kind,
                    "ours-single",
                    f"s3://bench/single-{kind}-{index}",
                    str(SIZE),
                    env=SINGLE_REQUEST,
                )
            )
            raw.append(run_python(CHILD, kind, "raw", f"s3://bench/raw-{kind}-{index}", str(SIZE)))

        for runs, setting in ((ours, "default: parallel parts"), (single, "single request")):
            rows.append(
                Measurement(
                    case,
                    f"256 MB {label}, {setting}: save + load time",
                    median([r["save"] + r["load"] for r in runs]),
                    median([r["save"] + r["load"] for r in raw]),
                    "s",
                    "put_object(pickle.dumps) + get_object",
                    max_ratio=1.1,
                    note=f"save {median_of(runs, 'save'):.2f} s vs {median_of(raw, 'save'):.2f} s, "
                    f"load {median_of(runs, 'load'):.2f} s vs {median_of(raw, 'load'):.2f} s",
                )
            )
        rows.append(
            Measurement(
                case,
                f"256 MB {label}: extra peak RSS during save",
                max(median_of(ours, "extra"), median_of(single, "extra")),
                SIZE,
                "B",
                "object size",
                max_ratio=0.3,
                note=f"raw put_object(pickle.dumps(...)): {median_of(raw, 'extra') / MB:.0f} MB",
            )
        )
    return rows
