"""Which layout a datastore root holds: one small object at its top, ``flowspec-datastore.json``.

A version that changes what the files mean (where runs are indexed, what a manifest holds) raises
:data:`DATASTORE_FORMAT`; a root another format wrote is then refused with one message instead of
being half-read, or worse written to in a mixture of layouts. The first writer of a root creates
the marker only if absent, so racing first writers agree; a root without one is a new root.
"""

from __future__ import annotations

import json
from typing import Any

from airflow_flowspec.datastore import keys
from airflow_flowspec.datastore.backends import StorageBackend
from airflow_flowspec.errors import ArtifactNotFoundError, DatastoreFormatError

#: The layout this version reads and writes.
DATASTORE_FORMAT = 1


def marker_document() -> bytes:
    return json.dumps({"format": DATASTORE_FORMAT, "written_by": "airflow-flowspec"}, indent=2).encode()


def check(backend: StorageBackend) -> None:
    """Refuse a root whose marker names another format; a root without a marker is fine to read."""
    try:
        data = backend.get_bytes(keys.FORMAT_MARKER_KEY)
    except ArtifactNotFoundError:
        return
    _refuse_other_format(backend, data)


def claim(backend: StorageBackend) -> None:
    """Mark a new root as this format (put-if-absent), or refuse one that is marked otherwise."""
    if backend.put_if_absent(keys.FORMAT_MARKER_KEY, marker_document()):
        return
    _refuse_other_format(backend, backend.get_bytes(keys.FORMAT_MARKER_KEY))


def _refuse_other_format(backend: StorageBackend, data: bytes) -> None:
    stated = _stated_format(data)
    if stated == DATASTORE_FORMAT:
        return
    which = f"format {stated!r}" if stated is not None else "a format this version does not recognise"
    raise DatastoreFormatError(
        f"The datastore at {backend.describe('')} holds {which} (its marker "
        f"{backend.describe(keys.FORMAT_MARKER_KEY)} says so), and this version of airflow-flowspec reads "
        f"and writes format {DATASTORE_FORMAT} only: nothing was read from it or written to it. Point "
        f"[flowspec] datastore_root (or metadata()) at another root, or use the airflow-flowspec "
        f"version that wrote this one."
    )


def _stated_format(data: bytes) -> Any:
    try:
        document = json.loads(data)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    stated = document.get("format")
    return stated if isinstance(stated, (int, str)) and not isinstance(stated, bool) else None


class FormatGuard:
    """Checks a root's marker once per :class:`~.store.Datastore` (one per root and process when
    opened with ``open_datastore``), not per request: before its first read, :meth:`check`; before
    its first write, :meth:`claim`."""

    def __init__(self, backend: StorageBackend):
        self.backend = backend
        self._checked = False
        self._claimed = False

    def check(self) -> None:
        if not self._checked:
            check(self.backend)
            self._checked = True

    def claim(self) -> None:
        if not self._claimed:
            claim(self.backend)
            self._claimed = self._checked = True
