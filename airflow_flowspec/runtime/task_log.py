"""A task's own output, kept with its results so the client can show it (``task.stdout``).

Airflow keeps task logs where its logging is configured (a worker's disk, remote logging), which a
notebook reading the datastore may not reach, and which mix Airflow's lines with the step's.
While a step runs, what it writes to ``sys.stdout`` and ``sys.stderr`` also goes into a buffer,
stored beside the attempt's manifest (``stdout.log``, ``stderr.log``) when the attempt ends,
whether it succeeded or failed (a failure adds its traceback to ``stderr.log``). The secrets mask
sits in front of the buffer, so nothing masked on screen is stored in clear.

Only Python-level writes are seen: a child process writing to the file descriptors directly
(``os.system``, a compiled library's own ``printf``) shows in the Airflow task log or the
terminal only; so are the runtime's own lines around the step (``Task is starting.``), which
are not the step's output. A stream that outgrows :data:`MAX_LOG_CHARS` keeps its start and its end.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import traceback
from collections.abc import Iterator
from typing import Any, TextIO

from airflow_flowspec.datastore.keys import STDERR_FILE, STDOUT_FILE, AttemptKey

#: Set in a task's process by ``python flow.py run``, which prefixes every line the process writes
#: with the task and the time, and prints the run's own lines (a task starting, finishing) itself.
LINES_PREFIXED = "FLOWSPEC_LINES_PREFIXED"

#: Characters kept per stream; beyond it the middle is dropped (the start and the end say most).
MAX_LOG_CHARS = 4 * 1024 * 1024


class _Buffer:
    """The start of a stream and its end, each up to half of :data:`MAX_LOG_CHARS`."""

    def __init__(self) -> None:
        self.head: list[str] = []
        self.head_chars = 0
        self.tail: collections.deque[str] = collections.deque()
        self.tail_chars = 0
        self.dropped = 0

    def add(self, text: str) -> None:
        half = MAX_LOG_CHARS // 2
        if self.head_chars < half:
            kept = text[: half - self.head_chars]
            self.head.append(kept)
            self.head_chars += len(kept)
            text = text[len(kept) :]
            if not text:
                return
        if len(text) > half:
            self.dropped += len(text) - half
            text = text[-half:]
        self.tail.append(text)
        self.tail_chars += len(text)
        while self.tail_chars > half:
            oldest = self.tail.popleft()
            excess = self.tail_chars - half
            if len(oldest) > excess:  # keep the end of the oldest piece
                self.tail.appendleft(oldest[excess:])
                self.tail_chars -= excess
                self.dropped += excess
            else:
                self.tail_chars -= len(oldest)
                self.dropped += len(oldest)

    def text(self) -> str:
        cut = f"\n[... {self.dropped} characters of output not kept ...]\n" if self.dropped else ""
        return "".join(self.head) + cut + "".join(self.tail)


class _Tee:
    """Writes through to the real stream and into a buffer."""

    def __init__(self, target: TextIO, buffer: _Buffer):
        self._target = target
        self._buffer = buffer

    def write(self, text: str) -> int:
        written = self._target.write(text)  # what the real stream refuses (bytes...) is not kept
        if isinstance(text, str):
            self._buffer.add(text)
        return written

    def __getattr__(self, name: str) -> Any:  # flush, fileno, encoding, isatty...
        return getattr(self._target, name)


class TaskLog:
    """The output of one task attempt while it runs; :meth:`store` saves it."""

    def __init__(self) -> None:
        self._stdout = _Buffer()
        self._stderr = _Buffer()
        self.mask: Any = None  # the task's SecretMask, set once its inputs are in place

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        stdout, stderr = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(stdout, self._stdout), _Tee(stderr, self._stderr)  # type: ignore[assignment]
        try:
            yield
        finally:
            sys.stdout, sys.stderr = stdout, stderr

    def print_unkept(self, line: str) -> None:
        """Print one of the runtime's own lines (``Task is starting.``) to the real stdout: the
        terminal and the Airflow task log show it, ``task.stdout`` keeps the step's output only."""
        stream = sys.stdout
        print(line, file=stream._target if isinstance(stream, _Tee) else stream, flush=True)

    def add_failure(self, error: BaseException, mask: Any = None) -> None:
        """Put the traceback of the exception that ends the attempt at the end of ``stderr.log``."""
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self._stderr.add(mask.redact(text) if mask else text)

    def store(self, datastore: Any, attempt: AttemptKey) -> None:
        """Save the streams that are not empty beside the attempt's manifest; a quiet step costs
        no request."""
        redact = self.mask.redact if self.mask else (lambda text: text)
        # Masked once more as a whole: a secret split across writes, or written by a thread after
        # the step's masked output ended, is not stored in clear.
        files = {
            name: redact(buffer.text()).encode("utf-8", "replace")
            for name, buffer in ((STDOUT_FILE, self._stdout), (STDERR_FILE, self._stderr))
            if buffer.head
        }
        if files:
            datastore.write_attempt_files(attempt, files)


def lines_prefixed() -> bool:
    """Whether whoever reads this process's output prefixes each line with its task already."""
    return os.environ.get(LINES_PREFIXED) == "1"


def labelled(label: str, text: str) -> str:
    """``text`` as one of the runtime's own lines: ``[run/step/task] text``, or bare where
    :func:`lines_prefixed`."""
    return text if lines_prefixed() else f"[{label}] {text}"
