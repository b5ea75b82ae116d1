"""Let Airflow's safe-mode discovery see flow files.

In safe mode the DAG processor opens only files whose text contains "airflow" and "dag". A flow
file says ``from airflow_flowspec import FlowSpec``: it has "airflow" but usually no "dag". Point
``[core] might_contain_dag_callable`` at ``might_contain_dag`` below and flow files are found too,
while every other file is judged exactly as before.
"""

from __future__ import annotations

import zipfile

_FLOW_MARKERS = (b"airflow_flowspec", b"FlowSpec")


def might_contain_dag(file_path: str, zip_file: zipfile.ZipFile | None = None) -> bool:
    """Airflow's default heuristic, plus: the file imports airflow_flowspec and defines a FlowSpec."""
    from airflow.utils.file import might_contain_dag_via_default_heuristic

    if might_contain_dag_via_default_heuristic(file_path, zip_file):
        return True
    return _mentions_flowspec(file_path, zip_file)


def _mentions_flowspec(file_path: str, zip_file: zipfile.ZipFile | None = None) -> bool:
    if file_path.endswith(".py") or zip_file is not None:
        try:
            if zip_file is not None:
                with zip_file.open(file_path) as handle:
                    content = handle.read()
            else:
                with open(file_path, "rb") as handle:
                    content = handle.read()
        except OSError:
            return False
        return all(marker in content for marker in _FLOW_MARKERS)
    return False


def skipped_by_default_safe_mode(file_path: str) -> bool:
    """True when Airflow's default safe-mode check would never open this file (no Airflow needed)."""
    try:
        with open(file_path, "rb") as handle:
            content = handle.read().lower()
    except OSError:
        return False
    return not (b"airflow" in content and (b"dag" in content or b"asset" in content))
