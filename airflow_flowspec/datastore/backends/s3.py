"""A datastore in S3 (or anything speaking its API: moto, MinIO), via boto3.

boto3 and botocore are imported only when the first request is made: Airflow imports this
package at every DAG parse, and half a second of boto3 import per parse adds up.

Speed comes from three places. Big objects are uploaded by boto3's managed transfer and downloaded
in ranges, in large parts by several threads (one stream rarely fills an EC2 instance's
bandwidth). Many small objects (a step setting hundreds of little artifacts) are written and
checked on a thread pool, because each S3 request costs a round trip that dwarfs its payload.

Faults are survived the same way everywhere: every request goes through botocore's retries
(``standard`` mode with backoff and jitter; :data:`DEFAULT_MAX_ATTEMPTS` attempts unless
``AWS_MAX_ATTEMPTS``/``AWS_RETRY_MODE`` or the AWS config file say otherwise), and every response
body is read through :class:`~.s3_streams.ResumableBody`, which picks a broken download up from the
byte it reached. What still fails is a :class:`DatastoreError` naming the object.

Each blob is stored with its BLAKE3 hash as object metadata (``x-amz-meta-blake3``), so the check
"is this blob already stored, intact?" is one HEAD: a blob overwritten with other bytes, or cut
short, is rewritten by the next save of its value.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, TypeVar

from airflow_flowspec.datastore.backends.base import StorageBackend, StoredObject
from airflow_flowspec.datastore.backends.s3_streams import ResumableBody, read_fully
from airflow_flowspec.errors import ArtifactNotFoundError, ConfigurationError, DatastoreError

_T = TypeVar("_T")

#: Requests in flight for many small objects; also the size of the HTTP connection pool.
PARALLEL_REQUESTS = 32
#: Objects up to this size go in one PUT; larger ones in parts of ``MULTIPART_CHUNKSIZE``.
MULTIPART_THRESHOLD = 32 * 1024 * 1024
MULTIPART_CHUNKSIZE = 32 * 1024 * 1024
#: Parts transferred at once for one big object.
MULTIPART_CONCURRENCY = 8
#: Attempts per request (and per broken download) when the AWS configuration sets none: S3 answers
#: 503 SlowDown under load by design, and at 20% failed requests 3 attempts lose 1 request in 125.
DEFAULT_MAX_ATTEMPTS = 10
#: The object metadata key holding a blob's BLAKE3 hash.
HASH_METADATA = "blake3"
#: Stale multipart uploads are looked for at most this often per host and root.
_MULTIPART_SWEEP_INTERVAL_SECONDS = 600

_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_SERVER_FAULT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "503", "500"}
_CREDENTIAL_CODES = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
}


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, key prefix ending in ``/`` or empty) for ``s3://bucket/some/prefix``."""
    if not url.startswith("s3://"):
        raise ConfigurationError(
            f"{url!r} is not an S3 URL; write [flowspec] datastore_root as s3://bucket/prefix."
        )
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise ConfigurationError(
            f"The datastore root {url!r} names no bucket; write [flowspec] datastore_root as s3://bucket/prefix."
        )
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


class S3Backend(StorageBackend):
    def __init__(
        self,
        root: str,
        *,
        endpoint_url: str | None = None,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        multipart_chunksize: int = MULTIPART_CHUNKSIZE,
    ):
        """``endpoint_url`` overrides ``AWS_ENDPOINT_URL`` (which boto3 already honours)."""
        super().__init__()
        self.root = root
        self.bucket, self.prefix = parse_s3_url(root)
        self.endpoint_url = endpoint_url
        self._multipart_threshold = multipart_threshold
        self._multipart_chunksize = multipart_chunksize
        self._client: Any = None
        self._transfer_config: Any = None
        self._client_lock = threading.Lock()
        self.max_attempts = DEFAULT_MAX_ATTEMPTS

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    # -- client ----------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The boto3 S3 client, made on first use and shared by all threads (clients are thread-safe)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    import boto3
                    from boto3.s3.transfer import TransferConfig
                    from botocore.config import Config

                    # A session per backend: boto3's default session is not safe to build clients
                    # from concurrently. What the AWS configuration says about retries wins.
                    session = boto3.session.Session()
                    configured = session._session.get_config_variable("max_attempts")
                    retries: dict[str, Any] = {
                        "mode": session._session.get_config_variable("retry_mode") or "standard"
                    }
                    if configured is None:
                        retries["total_max_attempts"] = DEFAULT_MAX_ATTEMPTS
                    self.max_attempts = int(configured or DEFAULT_MAX_ATTEMPTS)
                    self._transfer_config = TransferConfig(
                        multipart_threshold=self._multipart_threshold,
                        multipart_chunksize=self._multipart_chunksize,
                        max_concurrency=MULTIPART_CONCURRENCY,
                        num_download_attempts=self.max_attempts,
                        use_threads=True,
                    )
                    self._client = session.client(
                        "s3",
                        endpoint_url=self.endpoint_url,
                        config=Config(
                            max_pool_connections=PARALLEL_REQUESTS + MULTIPART_CONCURRENCY,
                            retries=retries,
                        ),
                    )
        return self._client

    def _parallel(self, function: Callable[[str], _T], keys: list[str]) -> list[_T]:
        if len(keys) <= 1:
            return [function(key) for key in keys]
        self.client  # noqa: B018 - build the client once, before the threads race for it
        with ThreadPoolExecutor(max_workers=min(PARALLEL_REQUESTS, len(keys))) as pool:
            return list(pool.map(function, keys))

    # -- errors ----------------------------------------------------------------------------------

    def _error(self, error: Exception, key: str, action: str) -> DatastoreError:
        """A message that names the bucket and key and says what most likely fixes it."""
        location = self.describe(key)
        endpoint = (
            self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )
        where = f" at endpoint {endpoint}" if endpoint else ""
        response = getattr(error, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in _NOT_FOUND_CODES or (status == "404" and code != "NoSuchBucket"):
                return ArtifactNotFoundError(f"Nothing is stored under key '{key}' ({location}).")
            if code == "NoSuchBucket":
                return ConfigurationError(
                    f"The bucket '{self.bucket}' of the datastore root {self.root} does not exist{where}. "
                    f"Create it, or point the datastore at an existing bucket."
                )
            if code in _CREDENTIAL_CODES or status == "403":
                return DatastoreError(
                    f"Access denied to {action} {location} (bucket '{self.bucket}'{where}): {code}. "
                    f"Check the AWS credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID, the job's IAM role) and "
                    f"that they allow s3:GetObject, s3:PutObject and s3:ListBucket on the bucket."
                )
            if code in _SERVER_FAULT_CODES or status.startswith("5"):
                return DatastoreError(
                    f"S3 kept failing to {action} {location} (bucket '{self.bucket}'{where}): {code} "
                    f"(HTTP {status}) on each of {self.max_attempts} attempts. S3 or the network is "
                    f"failing or overloaded: nothing half-written is visible, and the task can run again."
                )
            return DatastoreError(
                f"S3 refused to {action} {location} (bucket '{self.bucket}'{where}): {error}."
            )
        name = type(error).__name__
        if name in ("NoCredentialsError", "PartialCredentialsError"):
            return ConfigurationError(
                f"No usable AWS credentials to {action} {location} (bucket '{self.bucket}'): {error}. "
                f"Set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or give the job an IAM role."
            )
        return DatastoreError(
            f"Could not {action} {location} (bucket '{self.bucket}'{where}) after {self.max_attempts} "
            f"attempts: {type(error).__name__}: {error}. The network or S3 failed: nothing half-written "
            f"is visible, and the task can run again. Check the network and the endpoint "
            f"(AWS_ENDPOINT_URL) if it keeps failing."
        )

    def _call(self, action: str, key: str, function: Callable[[], _T]) -> _T:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return function()
        except (ClientError, BotoCoreError, Boto3Error) as error:
            cause = error
            # boto3's transfer manager hides the ClientError inside S3UploadFailedError's text.
            if isinstance(error.__context__, ClientError):
                cause = error.__context__
            raise self._error(cause, key, action) from error

    # -- writing ---------------------------------------------------------------------------------

    @staticmethod
    def _metadata(content_hash: str | None) -> dict[str, Any]:
        return {"Metadata": {HASH_METADATA: content_hash}} if content_hash else {}

    def put_bytes(self, key: str, data: bytes, *, content_hash: str | None = None) -> None:
        extra = self._metadata(content_hash)
        self._call(
            "write",
            key,
            lambda: self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data, **extra),
        )
        self.counters.add(written=len(data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        def put() -> bool:
            try:
                self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data, IfNoneMatch="*")
            except ClientError as error:
                # 412: the key exists. 409: another conditional write of it is in flight, one that
                # S3 lets finish; this one lost either way.
                status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                code = error.response.get("Error", {}).get("Code")
                if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return False
                raise
            return True

        stored = self._call("write", key, put)
        self.counters.add(written=len(data) if stored else 0)
        return stored

    def put_many_bytes(self, objects: Mapping[str, tuple[bytes, str | None]]) -> None:
        def put(key: str) -> None:
            data, content_hash = objects[key]
            self.put_bytes(key, data, content_hash=content_hash)

        self._parallel(put, list(objects))

    def put_file(self, key: str, local_path: str, *, content_hash: str | None = None) -> None:
        size = os.path.getsize(local_path)
        client = self.client
        extra = self._metadata(content_hash)

        def put_in_one_request() -> None:
            # put_object streams the open file; upload_file's transfer manager would add a
            # thread hand-off and chunk copies for nothing below the multipart threshold.
            with open(local_path, "rb") as body:
                client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=body, **extra)

        def put_in_parts() -> None:
            # The transfer manager aborts the multipart upload if a part fails for good; one that
            # a kill interrupts is aborted by a later sweep.
            target = (self.bucket, self.prefix + key)
            client.upload_file(local_path, *target, ExtraArgs=extra or None, Config=self._transfer_config)

        self._call("write", key, put_in_one_request if size < self._multipart_threshold else put_in_parts)
        self.counters.add(written=size, requests=self._transfer_requests(size))

    def _transfer_requests(self, size: int) -> int:
        if size < self._multipart_threshold:
            return 1
        return -(-size // self._multipart_chunksize) + 2  # parts + create + complete

    def move(self, key: str, new_key: str) -> None:
        source = {"Bucket": self.bucket, "Key": self.prefix + key}
        self._call("copy", key, lambda: self.client.copy(source, self.bucket, self.prefix + new_key))
        self._call("delete", key, lambda: self.client.delete_object(**source))
        self.counters.add(requests=2)

    # -- reading ---------------------------------------------------------------------------------

    def _body(self, key: str, start: int = 0, end: int | None = None) -> tuple[ResumableBody, int]:
        """A resumable body for bytes [start, end) of the object (all of it by default), and its size."""
        ranged = {"Range": f"bytes={start}-{'' if end is None else end - 1}"} if start or end else {}
        response = self._call(
            "read", key, lambda: self.client.get_object(Bucket=self.bucket, Key=self.prefix + key, **ranged)
        )
        size = int(response.get("ContentLength", 0))
        etag = response.get("ETag")
        last = start + size - 1

        def reopen(position: int) -> Any:
            pinned = {"IfMatch": etag} if etag else {}
            self.counters.add()
            return self._call(
                "read",
                key,
                lambda: self.client.get_object(
                    Bucket=self.bucket, Key=self.prefix + key, Range=f"bytes={position}-{last}", **pinned
                ),
            )["Body"]

        def failure(error: Exception | None) -> DatastoreError:
            what = f"{type(error).__name__}: {error}" if error is not None else "the stream kept ending early"
            return DatastoreError(
                f"Reading {self.describe(key)} ({size} bytes from byte {start}) from S3 kept breaking off "
                f"after {self.max_attempts} attempts, each resumed where the last stopped: {what}. The "
                f"network or S3 failed; nothing was changed, and the task can run again."
            )

        body = ResumableBody(
            response["Body"],
            start=start,
            size=size,
            reopen=reopen,
            attempts=self.max_attempts,
            failure=failure,
            on_resume=lambda: self.counters.add(requests=0, resumed=1),
        )
        return body, size

    def get_bytes(self, key: str) -> bytearray:
        body, size = self._body(key)
        with body:
            data = read_fully(body, size)
        self.counters.add(read=len(data))
        return data

    def open_read(self, key: str) -> BinaryIO:
        """One GET, read as it arrives and resumed where it breaks off; the caller closes it."""
        import io

        body, size = self._body(key)
        self.counters.add(read=size)
        return io.BufferedReader(body, 1024 * 1024)  # type: ignore[return-value]

    def download_file(self, key: str, local_path: str) -> None:
        """The object into ``local_path``, in ranges fetched in parallel, each resumed on its own."""
        size = self.stored_size(key)
        if size is None:
            raise ArtifactNotFoundError(f"Nothing is stored under key '{key}' ({self.describe(key)}).")
        # Below the multipart threshold one GET, as uploads go in one PUT (the setting for S3
        # emulators that re-read the whole object for every ranged GET).
        part = self._multipart_chunksize if size >= self._multipart_threshold else max(size, 1)
        ranges = [(start, min(start + part, size)) for start in range(0, size, part)] or [(0, 0)]
        descriptor = os.open(local_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(descriptor, size)

            def fetch(span: tuple[int, int]) -> None:
                start, end = span
                if end <= start:
                    return
                body, _ = self._body(key, start, end)
                with body:  # a body that cannot go on raises; it never returns short
                    position, chunk = start, bytearray(1024 * 1024)
                    view = memoryview(chunk)
                    while position < end:
                        count = body.readinto(view[: min(len(chunk), end - position)])
                        os.pwrite(descriptor, view[:count], position)
                        position += count

            if len(ranges) == 1:
                fetch(ranges[0])
            else:
                with ThreadPoolExecutor(max_workers=min(MULTIPART_CONCURRENCY, len(ranges))) as pool:
                    list(pool.map(fetch, ranges))
        finally:
            os.close(descriptor)
        self.counters.add(read=size, requests=len(ranges))

    def _head(self, key: str) -> dict[str, Any] | None:
        self.counters.add()
        try:
            return self._call(
                "check", key, lambda: self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
            )
        except ArtifactNotFoundError:
            return None

    def stored_size(self, key: str) -> int | None:
        head = self._head(key)
        return None if head is None else int(head.get("ContentLength", 0))

    def blob_is_stored(
        self,
        key: str,
        size: int,
        content_hash: str,
        *,
        freshen_after: float | None = None,
        known_intact: bool = False,
    ) -> bool:
        """One HEAD, which also says when the blob was last written. Freshening (see the base class)
        copies the object onto itself, keeping its metadata (the recorded hash) and content type:
        S3 has no other way to renew LastModified, and the copy stays inside S3."""
        import time

        head = self._head(key)
        if head is None:
            return False
        recorded = (head.get("Metadata") or {}).get(HASH_METADATA)
        if int(head.get("ContentLength", -1)) != size or recorded != content_hash:
            return False
        modified = head.get("LastModified")
        if freshen_after is None or (
            modified is not None and time.time() - modified.timestamp() <= freshen_after
        ):
            return True
        source = {"Bucket": self.bucket, "Key": self.prefix + key}
        kept = {"Metadata": head.get("Metadata") or {}, "MetadataDirective": "REPLACE"}
        for name in ("ContentType", "StorageClass"):
            if head.get(name):
                kept[name] = head[name]

        def copy_onto_itself() -> None:
            if size < 5 * 1024**3:  # CopyObject's limit; beyond it, the transfer manager copies in parts
                self.client.copy_object(CopySource=source, **source, **kept)
            else:
                self.client.copy(source, *source.values(), ExtraArgs=kept, Config=self._transfer_config)

        try:
            self._call("freshen", key, copy_onto_itself)
        except DatastoreError:
            return False  # gone meanwhile, or archived: the caller writes it anew, which refreshes it too
        self.counters.add()
        return True

    def blobs_stored(
        self,
        expected: Mapping[str, tuple[int, str]],
        *,
        freshen_after: float | None = None,
        known_intact: frozenset[str] = frozenset(),
    ) -> set[str]:
        keys = sorted(expected)
        found = self._parallel(
            lambda key: self.blob_is_stored(key, *expected[key], freshen_after=freshen_after), keys
        )
        return {key for key, stored in zip(keys, found, strict=True) if stored}

    # -- scratch and sweeping --------------------------------------------------------------------

    def scratch_dir(self) -> str:
        from airflow_flowspec import config

        return config.scratch_dir()

    def sweep(self) -> None:
        """Scratch files of dead processes, and (at most every few minutes per host) multipart
        uploads older than ``[flowspec] sweep_after_hours``: a kill leaves both, nothing else
        removes them, and S3 bills for the parts of an upload never completed."""
        try:
            super().sweep()
        except OSError:
            pass  # a scratch folder that cannot be cleaned must not keep multipart uploads open for ever
        import time
        import zlib

        from airflow_flowspec import config

        marker = os.path.join(self.scratch_dir(), f".multipart-sweep-{zlib.crc32(self.root.encode()):08x}")
        try:
            if time.time() - os.path.getmtime(marker) < _MULTIPART_SWEEP_INTERVAL_SECONDS:
                return
        except OSError:
            pass
        self.abort_stale_uploads(older_than_seconds=config.sweep_after_seconds())
        os.makedirs(self.scratch_dir(), exist_ok=True)
        with open(marker, "w"):
            pass

    def abort_stale_uploads(self, *, older_than_seconds: float) -> int:
        """Abort the multipart uploads under this root started longer ago than the given age."""
        import datetime

        cutoff = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=older_than_seconds)

        def stale() -> list[tuple[str, str]]:
            found = []
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                self.counters.add()
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] <= cutoff:
                        found.append((upload["Key"], upload["UploadId"]))
            return found

        uploads = self._call("list uploads under", "", stale)
        for key, upload_id in uploads:
            self._call(
                "abort upload of",
                key,
                lambda key=key, upload_id=upload_id: self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id
                ),
            )
            self.counters.add()
        return len(uploads)

    def list_dir(self, prefix: str) -> tuple[list[str], list[str]]:
        full_prefix = self.prefix + (prefix.rstrip("/") + "/" if prefix.strip("/") else "")

        def list_all() -> tuple[list[str], list[str]]:
            folders: list[str] = []
            files: list[str] = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix, Delimiter="/"):
                self.counters.add()
                folders.extend(
                    entry["Prefix"][len(full_prefix) :].rstrip("/")
                    for entry in page.get("CommonPrefixes", [])
                )
                files.extend(
                    entry["Key"][len(full_prefix) :]
                    for entry in page.get("Contents", [])
                    if entry["Key"] != full_prefix
                )
            return sorted(folders), sorted(files)

        return self._call("list", prefix, list_all)

    def iter_objects(self, prefix: str, *, page_size: int = 1000) -> Iterator[StoredObject]:
        full_prefix = self.prefix + (prefix.rstrip("/") + "/" if prefix.strip("/") else "")
        token: str | None = None
        while True:
            arguments = {"Bucket": self.bucket, "Prefix": full_prefix, "MaxKeys": page_size}
            if token:
                arguments["ContinuationToken"] = token
            page = self._call(
                "list", prefix, lambda arguments=arguments: self.client.list_objects_v2(**arguments)
            )
            self.counters.add()
            for entry in page.get("Contents", []):
                yield StoredObject(
                    entry["Key"][len(self.prefix) :], int(entry["Size"]), entry["LastModified"].timestamp()
                )
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def delete_many(self, keys: Iterable[str]) -> None:
        unique = sorted(set(keys))
        for start in range(0, len(unique), 1000):  # DeleteObjects takes at most 1,000 keys
            batch = unique[start : start + 1000]
            response = self._call(
                "delete",
                batch[0],
                lambda batch=batch: self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": self.prefix + key} for key in batch], "Quiet": True},
                ),
            )
            self.counters.add()
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise DatastoreError(
                    f"Could not delete {len(errors)} object(s) from bucket '{self.bucket}', e.g. "
                    f"s3://{self.bucket}/{first.get('Key')}: {first.get('Code')} {first.get('Message')}."
                )
