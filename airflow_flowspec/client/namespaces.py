"""Metaflow's namespaces: which runs the client shows by default.

Every run carries a ``user:<name>`` tag (who started it: the ``python flow.py run`` user, or the
user who triggered it in Airflow) and, when the schedule started it (a scheduled or backfilled
run), ``production:<flow>``. A notebook sees its own user's runs by default; a step sees the
namespace of the run it belongs to (so a scheduled flow reads other flows' production runs);
``namespace(None)`` shows every run.
"""

from __future__ import annotations

import getpass
import os
from typing import Any

from airflow_flowspec.datastore.keys import SYSTEM_TAG_PREFIXES

_UNSET: Any = object()
_chosen: Any = _UNSET

#: ``python flow.py run --namespace NAME``: the namespace the run's steps see in the client (an
#: empty value: every run), as Metaflow's option; the run's own tags and ``current.namespace`` stay.
RUN_NAMESPACE_VARIABLE = "FLOWSPEC_RUN_NAMESPACE"


def default_namespace() -> str:
    """``user:<you>`` outside a step; inside one, the namespace of the run it belongs to."""
    from airflow_flowspec.current import current

    if current.is_running_flow and current.namespace:
        return current.namespace
    return f"user:{getpass.getuser()}"


def namespace(name: str | None) -> str | None:
    """Show only runs tagged ``name`` from now on (None: every run); returns it."""
    global _chosen
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(
            f"A namespace is a tag such as 'user:ana' or 'production:TrainFlow', or None; got {name!r}."
        )
    _chosen = name
    return name


def forget_namespace() -> None:
    """Forget the namespace chosen with :func:`namespace`: the default one applies again."""
    global _chosen
    _chosen = _UNSET


def get_namespace() -> str | None:
    if _chosen is not _UNSET:
        return _chosen
    from airflow_flowspec.current import current

    if current.is_running_flow and RUN_NAMESPACE_VARIABLE in os.environ:
        return os.environ[RUN_NAMESPACE_VARIABLE] or None
    return default_namespace()


def in_namespace(record: dict[str, Any], name: str | None) -> bool:
    """Whether a run with this record is shown in namespace ``name``: it has the tag ``name``.

    Only a list holds tags: a record holding them as one string (damaged, or not ours) is shown with
    ``namespace(None)`` only, never in a namespace its text happens to contain (``"ana"`` is in
    ``"user:ana"``). The datastore refuses to read such a record anyway; this is the second lock.
    """
    tags = record.get("tags")
    return name is None or (isinstance(tags, list) and name in tags)


def is_indexed_namespace(name: str | None) -> bool:
    """Whether the run index answers this namespace directly (every run, or a system tag)."""
    return name is None or name.startswith(SYSTEM_TAG_PREFIXES)
