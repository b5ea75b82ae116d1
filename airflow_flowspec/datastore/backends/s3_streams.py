"""Reading an S3 object as it arrives, for ``pickle.load``.

A mid-sized blob (up to 64 MB) is unpickled from one streamed GET: no scratch file, and unpickling
runs while the bytes arrive. :class:`CheckedBody` makes a dropped connection or a short read the
datastore error it is, naming the object, instead of a confusing "pickle data was truncated".

Writing the other way round was tried and dropped: uploading parts on a thread while the pickler
runs is slower in CPython. The pickler holds the GIL, and the upload thread, which gives it up at
every socket write, waits a switch interval (5 ms) to get it back each time: 5 parts of 8 MB took
5 s next to a busy thread instead of 0.3 s. Uploads therefore start once pickling is done.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from airflow_flowspec.errors import DatastoreError


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
