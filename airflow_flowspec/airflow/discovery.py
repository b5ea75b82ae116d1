"""Let Airflow's safe-mode discovery see flow files.

In safe mode the DAG processor opens only files whose text contains "airflow" and "dag". A flow
file says ``from airflow_flowspec import FlowSpec``: it has "airflow" but usually no "dag". Point
``[core] might_contain_dag_callable`` at ``airflow_flowspec.discovery.might_contain_dag`` and flow
files are found too, while every other file is judged exactly as before.

:func:`discovery_skips` answers the same question for ``python flow.py check`` from the configured
callable, without starting Airflow when the callable is Airflow's default or ours.
"""

from __future__ import annotations

import zipfile

from airflow_flowspec import config
from airflow_flowspec.errors import ConfigurationError

#: The value users put in ``[core] might_contain_dag_callable``.
DISCOVERY_CALLABLE = "airflow_flowspec.discovery.might_contain_dag"
_FLOW_MARKERS = (b"airflow_flowspec", b"FlowSpec")


def might_contain_dag(file_path: str, zip_file: zipfile.ZipFile | None = None) -> bool:
    """Airflow's default heuristic, plus: the file imports airflow_flowspec and defines a FlowSpec."""
    from airflow.utils.file import might_contain_dag_via_default_heuristic

    if might_contain_dag_via_default_heuristic(file_path, zip_file):
        return True
    return mentions_flowspec(file_path, zip_file)


def mentions_flowspec(file_path: str, zip_file: zipfile.ZipFile | None = None) -> bool:
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


def default_heuristic_skips(file_path: str) -> bool:
    """True when Airflow's default safe-mode test would never open this file (no Airflow needed)."""
    try:
        with open(file_path, "rb") as handle:
            content = handle.read().lower()
    except OSError:
        return False
    return not (b"airflow" in content and (b"dag" in content or b"asset" in content))


def discovery_skips(file_path: str) -> bool:
    """Whether the configured DAG discovery would skip this file (``[core]`` options as Airflow reads them).

    Safe mode off: nothing is skipped. Our callable or Airflow's default: answered here. Any other
    callable is imported and asked, as the DAG processor would.
    """
    if not config.dag_discovery_safe_mode():
        return False
    configured = config.might_contain_dag_callable()
    if configured in (DISCOVERY_CALLABLE, "airflow_flowspec.airflow.discovery.might_contain_dag"):
        return default_heuristic_skips(file_path) and not mentions_flowspec(file_path)
    if configured == config.DEFAULT_DISCOVERY_CALLABLE:
        return default_heuristic_skips(file_path)
    import importlib

    module_name, _, attribute = configured.rpartition(".")
    try:
        callable_ = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigurationError(
            f"[core] might_contain_dag_callable is {configured!r}, which cannot be imported "
            f"({error}); Airflow's DAG processor will fail the same way. Set it to "
            f"{DISCOVERY_CALLABLE}."
        ) from None
    return not callable_(file_path)
