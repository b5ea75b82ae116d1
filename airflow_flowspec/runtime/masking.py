"""Keeping secret parameter values out of what people read: the task's output and artifact reprs.

A step that prints its token, or copies it into another artifact (``self.headers = {"auth":
self.token}``), must not put it in the task log, the manifest or the XCom view. The step's
stdout and stderr pass through :class:`SecretMask` while it runs (on a worker, in a Batch
container and under ``python flow.py run`` alike, before Airflow's own log masker sees them),
and any artifact whose short repr contains a secret shows ``<secret>`` instead. The artifact's
value itself is stored as it is: later steps need it.

As Airflow's masker does, values shorter than :data:`MIN_MASKED_LENGTH` are not masked: masking
every "1" or "eu" would garble the whole log and leak the value by its gaps anyway.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

MIN_MASKED_LENGTH = 5
MASK = "***"


class SecretMask:
    """The secret texts of one task, longest first (so a secret containing another is masked whole)."""

    def __init__(self, values: Iterable[Any]):
        texts = {str(value) for value in values if value is not None}
        self.texts = sorted((t for t in texts if len(t) >= MIN_MASKED_LENGTH), key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self.texts)

    def reveals(self, text: str) -> bool:
        return any(secret in text for secret in self.texts)

    def redact(self, text: str) -> str:
        for secret in self.texts:
            text = text.replace(secret, MASK)
        return text


class _MaskedStream:
    """A text stream that writes through to another with the secrets replaced."""

    def __init__(self, target: TextIO, mask: SecretMask):
        self._target = target
        self._mask = mask

    def write(self, text: str) -> int:
        self._target.write(self._mask.redact(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, encoding, isatty...
        return getattr(self._target, name)


@contextlib.contextmanager
def masked_output(mask: SecretMask) -> Iterator[None]:
    """While the block runs, ``sys.stdout`` and ``sys.stderr`` never show a secret of ``mask``."""
    if not mask:
        yield
        return
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _MaskedStream(stdout, mask), _MaskedStream(stderr, mask)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = stdout, stderr
