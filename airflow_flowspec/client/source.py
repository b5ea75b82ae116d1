"""Which datastore the client reads: Metaflow's ``metadata()`` / ``get_metadata()``.

By default the one the flows write to (``[flowspec] datastore_root``, resolved the same way with
or without Airflow); ``metadata("s3://bucket/flows")`` or ``metadata("/path")`` switches this
process to another root, e.g. to read production results from a laptop.
"""

from __future__ import annotations

from typing import Any

_chosen_root: str | None = None


def metadata(root: str) -> str:
    """Read from another datastore root from now on (``local@/path`` is accepted too); returns
    :func:`get_metadata`'s description of it."""
    from airflow_flowspec.datastore.backends import backend_for_root

    global _chosen_root
    if root.startswith("local@"):
        root = root[len("local@") :]
    backend_for_root(root)  # a root that cannot be used fails here, with its message
    _chosen_root = root
    return get_metadata()


def forget_metadata() -> None:
    """Forget the root chosen with :func:`metadata`: ``[flowspec] datastore_root`` applies again."""
    global _chosen_root
    _chosen_root = None


def get_metadata() -> str:
    """Where the client reads from: ``local@/path/to/datastore`` or ``s3://bucket/prefix``."""
    root = client_root()
    return root if root.startswith("s3://") else f"local@{root}"


def client_root() -> str:
    from airflow_flowspec import config

    return _chosen_root or config.datastore_root()


def client_datastore() -> Any:
    from airflow_flowspec.datastore import open_datastore

    return open_datastore(client_root(), sweep=False)
