"""Making time pass the way ``airflow-flowspec gc`` sees it, for tests and the reliability campaigns.

gc judges a run by the ``created_at`` its run.json records and by its objects' last writes, and a
blob by its last write. Tests cannot wait days, so a run's ``created_at`` is rewritten in its
run.json and objects' last-write times are set back: ``os.utime`` locally; on S3, in moto's
in-process store (S3 itself cannot backdate an object), so the server must run in this process.

A lease is never aged: its last write is its holder's last renewal, and a live task renews it
however long ago the run started (aging it would fake a task that died).
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone

from airflow_flowspec.datastore import keys, open_datastore

DAY = 86400.0


def age_objects(root: str, prefix: str, seconds: float) -> int:
    """Set the last write of every object under ``prefix`` (leases excepted) back to ``seconds``
    ago, and make this process forget which blobs it saw stored (as it does on its own after the
    freshen interval). Returns how many objects were aged."""
    datastore = open_datastore(root)
    moment = time.time() - seconds
    backend = datastore.backend
    leases = f"/{keys.LEASES_FOLDER}/"
    stored = [obj.key for obj in backend.iter_objects(prefix) if leases not in f"/{obj.key}"]
    aged = 0
    if backend.is_local:
        for key in stored:
            try:
                os.utime(backend.describe(key), (moment, moment))
            except FileNotFoundError:
                continue  # deleted since the listing (gc, or a lease released)
            aged += 1
    else:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        bucket = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].buckets[backend.bucket]
        naive_utc = datetime.fromtimestamp(moment, timezone.utc).replace(tzinfo=None)
        for key in stored:
            try:
                bucket.keys[backend.prefix + key].last_modified = naive_utc
            except KeyError:
                continue
            aged += 1
    datastore.artifacts._locations.clear()
    return aged


def age_run(root: str, flow: str, run_id: str, *, started_days_ago: float, written_days_ago: float = 3):
    """A run that started ``started_days_ago`` and last wrote anything ``written_days_ago``."""
    datastore = open_datastore(root)
    record = datastore.read_run_meta(flow, run_id)
    started = datetime.now(timezone.utc) - timedelta(days=started_days_ago)
    datastore.write_run_meta(flow, run_id, {**record, "created_at": started.isoformat()})
    age_objects(root, keys.run_prefix(flow, run_id), written_days_ago * DAY)
