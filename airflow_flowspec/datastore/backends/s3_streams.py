"""Reading an S3 object so that a broken connection costs a retry, not the task.

botocore retries a request that fails, but not a response body that breaks off half-way: a reset
or a cut connection while reading raises from ``read()``, and a task that read 60 MB of a 64 MB
blob would fail, or start again from zero. :class:`ResumableBody` asks again for the bytes it has
not yet got (``Range: bytes=<reached>-``, pinned to the same object by its ETag), with exponential
backoff and full jitter, up to the same number of attempts botocore is configured to make.

Writing the other way round (uploading parts on a thread while the pickler runs) was tried and
dropped: the pickler holds the GIL, and the upload thread, which gives it up at every socket
write, waits a switch interval (5 ms) to get it back each time: 5 parts of 8 MB took 5 s next to a
busy thread instead of 0.3 s. Uploads therefore start once pickling is done.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable
from typing import Any

from airflow_flowspec.errors import DatastoreError

#: Most bytes asked of the HTTP stream at once. A read that breaks off loses what it had read (urllib3
#: raises without returning the partial bytes), so asking for little at a time bounds what a cut
#: connection costs and lets every reconnection make progress.
READ_CHUNK_BYTES = 256 * 1024
#: Backoff before the n-th new attempt: uniform in [0, min(cap, base * 2**n)] ("full jitter").
BACKOFF_BASE_SECONDS = 0.05
BACKOFF_CAP_SECONDS = 2.0


def backoff(attempt: int) -> float:
    return random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt))


class ResumableBody(io.RawIOBase):
    """The body of one S3 object (or of one byte range of it), resumed where it broke off.

    ``reopen(position)`` must return a fresh body stream starting at absolute byte ``position``
    of the same object version; ``start`` and ``size`` say which bytes this body covers.
    ``failure(error)`` builds the error raised once ``attempts`` reads in a row have failed.
    """

    def __init__(
        self,
        body: Any,
        *,
        start: int,
        size: int,
        reopen: Callable[[int], Any],
        attempts: int,
        failure: Callable[[Exception | None], DatastoreError],
        on_resume: Callable[[], None] = lambda: None,
    ):
        super().__init__()
        self._body = body
        self._position = start
        self._end = start + size
        self._reopen = reopen
        self._attempts = max(1, attempts)
        self._failure = failure
        self._on_resume = on_resume

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._position >= self._end:
            return 0
        wanted = min(len(buffer), self._end - self._position, READ_CHUNK_BYTES)
        last_error: Exception | None = None
        for attempt in range(self._attempts):
            try:
                if self._body is None:
                    self._body = self._reopen(self._position)
                data = self._body.read(wanted)
                if data:
                    buffer[: len(data)] = data
                    self._position += len(data)
                    return len(data)
                last_error = None  # the stream ended before the object's end: resume
            except DatastoreError:
                raise
            except Exception as error:  # noqa: BLE001 - urllib3, botocore and sockets each raise their own
                last_error = error
            self._close_body()
            if attempt + 1 < self._attempts:
                self._on_resume()
                time.sleep(backoff(attempt))
        raise self._failure(last_error)

    def _close_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            try:
                body.close()
            except Exception:  # noqa: BLE001, S110 - a broken connection may fail to close as well
                pass

    def close(self) -> None:
        if not self.closed:
            self._close_body()
        super().close()


def read_fully(stream: io.RawIOBase, size: int) -> bytearray:
    """All ``size`` bytes of ``stream`` into one buffer (no intermediate copies)."""
    data = bytearray(size)
    view = memoryview(data)
    filled = 0
    while filled < size:
        count = stream.readinto(view[filled:])
        if not count:
            break
        filled += count
    view.release()
    return data if filled == size else data[:filled]
