"""Storage backends: one module per place artifacts can live (a local folder, S3)."""

from __future__ import annotations

import os
from urllib.parse import unquote

from airflow_flowspec.datastore.backends.base import StorageBackend, TransferCounters
from airflow_flowspec.errors import ConfigurationError

__all__ = ["StorageBackend", "TransferCounters", "backend_for_root"]


def backend_for_root(root: str) -> StorageBackend:
    """The backend for a datastore root: ``s3://bucket/prefix``, ``file:///path`` or a plain path.

    The S3 backend module is imported only when asked for, and boto3 only at its first request.
    """
    if not isinstance(root, str) or not root.strip():
        raise ConfigurationError(
            f"The datastore root {root!r} is empty: set [flowspec] datastore_root to s3://bucket/prefix "
            f"or a local folder path."
        )
    root = root.strip()
    if root.startswith("s3://"):
        from airflow_flowspec.config import s3_multipart_threshold_bytes
        from airflow_flowspec.datastore.backends.s3 import S3Backend

        return S3Backend(root, multipart_threshold=s3_multipart_threshold_bytes())
    if root.startswith("file://"):
        path = unquote(root[len("file://") :])
        if not path:
            raise ConfigurationError(
                f"The datastore root {root!r} names no folder: write [flowspec] datastore_root as "
                f"file:///path/to/folder."
            )
        root = path
    elif "://" in root:
        raise ConfigurationError(
            f"The datastore root {root!r} uses an unsupported scheme: set [flowspec] datastore_root to "
            f"s3://bucket/prefix or a local folder."
        )
    from airflow_flowspec.datastore.backends.local import LocalBackend

    return LocalBackend(os.path.abspath(os.path.expanduser(root)))
