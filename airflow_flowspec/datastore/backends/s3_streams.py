"""Writing an S3 object while it is being produced, and reading one as it arrives.

A pickle can go to S3 as it is made instead of after: the pickler writes into
:class:`StreamingUpload`, which keeps the bytes in memory while they could still go in one PUT
and, once there are more, turns them into a multipart upload whose parts are sent by a few threads
while the pickler keeps writing. Pickling a 45 MB value and uploading it then take about as long
as the slower of the two, not their sum, and no scratch file is written. Memory stays bounded: the
writer blocks while ``concurrency`` parts are in flight.

:class:`CheckedBody` is the other direction: S3's response body for ``pickle.load``, with a
dropped connection or a short read reported as the datastore error it is, not as a broken pickle.

boto3 is never imported here; the client comes from :class:`~.s3.S3Backend`.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from airflow_flowspec.errors import DatastoreError

#: Size of the first 1,000 parts of a streamed upload; each further 1,000 parts are twice as big,
#: so S3's 10,000-part limit is reached only past 8 TB (its object limit is 5 TB).
STREAM_PART_SIZE = 8 * 1024 * 1024
_PARTS_PER_SIZE = 1000


class StreamingUpload(io.RawIOBase):
    """A write-only stream that becomes one S3 object when :meth:`finish` is called.

    Until then nothing is visible under the key: a multipart upload is only assembled by its
    completion, and :meth:`abort` (on any error) discards the parts already sent.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        *,
        single_put_limit: int,
        part_size: int = STREAM_PART_SIZE,
        concurrency: int = 4,
        translate: Callable[[Exception], Exception],
    ):
        super().__init__()
        self._client = client
        self._bucket = bucket
        self._key = key
        self._single_put_limit = max(single_put_limit, part_size)
        self._part_size = part_size
        self._translate = translate  # a boto3 error -> the backend's DatastoreError naming the key
        self._chunks: list[bytes | memoryview] = []
        self._buffered = 0
        self.size = 0
        self._upload_id: str | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight = threading.BoundedSemaphore(concurrency)
        self._concurrency = concurrency
        self._parts: list[Future[dict[str, Any]]] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        length = view.nbytes
        # bytes are immutable and safe to keep; anything else (an array's memory) is copied.
        self._chunks.append(data if type(data) is bytes else view.tobytes())
        self._buffered += length
        self.size += length
        if self._upload_id is None and self._buffered > self._single_put_limit:
            self._start_multipart()
        if self._upload_id is not None:
            while self._buffered >= self._next_part_size():
                self._send_part(self._take(self._next_part_size()))
        return length

    def finish(self) -> int:
        """Make the object visible under the key; returns its size in bytes."""
        if self._upload_id is None:
            body = b"".join(self._chunks)
            self._chunks = []
            self._client.put_object(Bucket=self._bucket, Key=self._key, Body=body)
            return self.size
        if self._buffered or not self._parts:
            self._send_part(self._take(self._buffered))
        parts = [future.result() for future in self._parts]
        self._client.complete_multipart_upload(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, MultipartUpload={"Parts": parts}
        )
        self._shutdown()
        return self.size

    def abort(self) -> None:
        """Discard everything written so far; the key keeps whatever it held before."""
        self._chunks = []
        if self._upload_id is not None:
            for future in self._parts:
                future.cancel()
            self._shutdown()
            try:
                self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=self._key, UploadId=self._upload_id
                )
            except Exception:  # noqa: BLE001 - the original error matters; S3 expires parts anyway
                pass
            self._upload_id = None

    @property
    def requests(self) -> int:
        """Requests this upload made (or will make on :meth:`finish`)."""
        return 1 if self._upload_id is None else len(self._parts) + 2

    # -- parts -----------------------------------------------------------------------------------

    def _start_multipart(self) -> None:
        response = self._client.create_multipart_upload(Bucket=self._bucket, Key=self._key)
        self._upload_id = response["UploadId"]
        self._pool = ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="flowspec-s3-part")

    def _next_part_size(self) -> int:
        return self._part_size * 2 ** (len(self._parts) // _PARTS_PER_SIZE)

    def _take(self, count: int) -> bytes:
        """The first ``count`` buffered bytes, removed from the buffer."""
        taken: list[bytes | memoryview] = []
        needed = count
        while needed:
            chunk = self._chunks[0]
            if len(chunk) <= needed:
                taken.append(self._chunks.pop(0))
                needed -= len(chunk)
            else:
                view = memoryview(chunk)
                taken.append(view[:needed])
                self._chunks[0] = view[needed:]
                needed = 0
        self._buffered -= count
        return b"".join(taken)

    def _send_part(self, body: bytes) -> None:
        for future in self._parts:  # fail fast: stop the pickler once a part has failed
            error = future.exception() if future.done() else None
            if error is not None:
                raise self._translate(error) from error
        assert self._pool is not None and self._upload_id is not None
        self._in_flight.acquire()  # at most `concurrency` parts in memory at once
        number = len(self._parts) + 1
        upload_id = self._upload_id

        def send() -> dict[str, Any]:
            try:
                response = self._client.upload_part(
                    Bucket=self._bucket, Key=self._key, UploadId=upload_id, PartNumber=number, Body=body
                )
                return {"PartNumber": number, "ETag": response["ETag"]}
            finally:
                self._in_flight.release()

        self._parts.append(self._pool.submit(send))

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class CheckedBody(io.RawIOBase):
    """An S3 response body that reports a dropped or short stream as a :class:`DatastoreError`."""

    def __init__(self, body: Any, expected: int, failure: Callable[[Exception | None], DatastoreError]):
        super().__init__()
        self._body = body
        self._remaining = expected
        self._failure = failure

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._body.read(len(buffer))
        except Exception as error:  # noqa: BLE001 - urllib3 and botocore raise several kinds
            raise self._failure(error) from error
        if not data and self._remaining > 0:
            raise self._failure(None)
        self._remaining -= len(data)
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()
