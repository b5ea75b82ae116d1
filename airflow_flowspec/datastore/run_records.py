"""When a run's record (``run.json``) can be read: the fields readers rely on have the shape we write.

:meth:`~airflow_flowspec.datastore.store.Datastore.read_run_meta` only hands out a record that is a
JSON object (checked when it is parsed) and passes :func:`checked_run_record`. A record in any
other shape was damaged or written by something else; trusting it goes wrong quietly: tags stored
as a string would come back from ``Run.tags`` as a set of characters and match a namespace by a
substring (``"user:ana"`` contains ``"ana"``), and the run index would file the run under each
character. Such a record raises :class:`~airflow_flowspec.errors.UnreadableRecordError` naming the
file, as one that is not JSON does; the client skips it with a warning when listing runs.
"""

from __future__ import annotations

from typing import Any

from airflow_flowspec.errors import UnreadableRecordError

#: Fields that, when present, must be a list of strings (a missing one is a record from before tags).
TAG_FIELDS = ("tags", "system_tags")


def checked_run_record(record: dict[str, Any], where: str) -> dict[str, Any]:
    """``record`` when its fields have the shapes readers rely on; ``where`` names its file."""
    for field in TAG_FIELDS:
        value = record.get(field)
        if value is not None and not (isinstance(value, list) and all(isinstance(tag, str) for tag in value)):
            raise UnreadableRecordError(f"{where} holds {field} {value!r:.80}, not a list of strings.")
    return record
