"""A datastore in S3 (or anything speaking its API: moto, MinIO), via boto3.

boto3 and botocore are imported only when the first request is made: Airflow imports this
package at every DAG parse, and half a second of boto3 import per parse adds up.

Speed comes from three places. Big objects use boto3's managed transfer with large parts uploaded
and downloaded by several threads (one stream rarely fills an EC2 instance's bandwidth).
Mid-sized blobs are unpickled from one GET as it arrives (:mod:`.s3_streams`). Many small
objects (a step setting hundreds of little artifacts) are written and checked on a thread pool,
because each S3 request costs a round trip that dwarfs its payload.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, TypeVar

from airflow_flowspec.datastore.backends.base import StorageBackend
from airflow_flowspec.errors import ArtifactNotFoundError, ConfigurationError, DatastoreError

_T = TypeVar("_T")

#: Requests in flight for many small objects; also the size of the HTTP connection pool.
PARALLEL_REQUESTS = 32
#: Objects up to this size go in one PUT; larger ones in parts of ``MULTIPART_CHUNKSIZE``.
MULTIPART_THRESHOLD = 32 * 1024 * 1024
MULTIPART_CHUNKSIZE = 32 * 1024 * 1024
#: Parts transferred at once for one big object.
MULTIPART_CONCURRENCY = 8

_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
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
                    # from concurrently. Retry mode only, so AWS_MAX_ATTEMPTS still applies.
                    session = boto3.session.Session()
                    self._transfer_config = TransferConfig(
                        multipart_threshold=self._multipart_threshold,
                        multipart_chunksize=self._multipart_chunksize,
                        max_concurrency=MULTIPART_CONCURRENCY,
                        use_threads=True,
                    )
                    self._client = session.client(
                        "s3",
                        endpoint_url=self.endpoint_url,
                        config=Config(
                            max_pool_connections=PARALLEL_REQUESTS + MULTIPART_CONCURRENCY,
                            retries={"mode": "standard"},
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
                return DatastoreError(
                    f"The bucket '{self.bucket}' of the datastore root {self.root} does not exist{where}. "
                    f"Create it, or point the datastore at an existing bucket."
                )
            if code in _CREDENTIAL_CODES or status == "403":
                return DatastoreError(
                    f"Access denied to {action} {location} (bucket '{self.bucket}'{where}): {code}. "
                    f"Check the AWS credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID, the job's IAM role) and "
                    f"that they allow s3:GetObject, s3:PutObject and s3:ListBucket on the bucket."
                )
            return DatastoreError(
                f"S3 refused to {action} {location} (bucket '{self.bucket}'{where}): {error}."
            )
        name = type(error).__name__
        if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
            return DatastoreError(
                f"No usable AWS credentials to {action} {location} (bucket '{self.bucket}'): {error}. "
                f"Set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or give the job an IAM role."
            )
        return DatastoreError(
            f"Could not {action} {location} (bucket '{self.bucket}'{where}): {error}. "
            f"Check the network, the endpoint (AWS_ENDPOINT_URL) and that the bucket exists."
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

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(
            "write",
            key,
            lambda: self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data),
        )
        self.counters.add(written=len(data))

    def put_many_bytes(self, objects: Mapping[str, bytes]) -> None:
        self._parallel(lambda key: self.put_bytes(key, objects[key]), list(objects))

    def put_file(self, key: str, local_path: str) -> None:
        size = os.path.getsize(local_path)
        client = self.client

        def put_in_one_request() -> None:
            # put_object streams the open file; upload_file's transfer manager would add a
            # thread hand-off and chunk copies for nothing below the multipart threshold.
            with open(local_path, "rb") as body:
                client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=body)

        def put_in_parts() -> None:
            client.upload_file(local_path, self.bucket, self.prefix + key, Config=self._transfer_config)

        self._call("write", key, put_in_one_request if size < self._multipart_threshold else put_in_parts)
        self.counters.add(written=size, requests=self._transfer_requests(size))

    def _transfer_requests(self, size: int) -> int:
        if size < self._multipart_threshold:
            return 1
        return -(-size // self._multipart_chunksize) + 2  # parts + create + complete

    # -- reading ---------------------------------------------------------------------------------

    def get_bytes(self, key: str) -> bytes:
        def get() -> bytes:
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
            with response["Body"] as body:
                return body.read()

        data = self._call("read", key, get)
        self.counters.add(read=len(data))
        return data

    def open_read(self, key: str) -> BinaryIO:
        """One GET, read as it arrives; a dropped or short stream raises a DatastoreError."""
        import io

        from airflow_flowspec.datastore.backends.s3_streams import CheckedBody

        response = self._call(
            "read", key, lambda: self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        )
        size = int(response.get("ContentLength", 0))
        self.counters.add(read=size)

        def failure(error: Exception | None) -> DatastoreError:
            what = f"{type(error).__name__}: {error}" if error is not None else "the stream ended early"
            return DatastoreError(
                f"Reading {self.describe(key)} ({size} bytes) from S3 broke off: {what}. Nothing was "
                f"changed; run the task again (a network problem), or check the object."
            )

        return io.BufferedReader(CheckedBody(response["Body"], size, failure), 1024 * 1024)  # type: ignore[return-value]

    def download_file(self, key: str, local_path: str) -> None:
        client = self.client
        self._call(
            "read",
            key,
            lambda: client.download_file(
                self.bucket, self.prefix + key, local_path, Config=self._transfer_config
            ),
        )
        size = os.path.getsize(local_path)
        self.counters.add(read=size, requests=self._transfer_requests(size) + 1)  # + the HEAD

    def exists(self, key: str) -> bool:
        self.counters.add()
        try:
            self._call(
                "check", key, lambda: self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
            )
        except ArtifactNotFoundError:
            return False
        return True

    def exists_many(self, keys: Iterable[str]) -> set[str]:
        unique = sorted(set(keys))
        return {key for key, found in zip(unique, self._parallel(self.exists, unique), strict=True) if found}

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
