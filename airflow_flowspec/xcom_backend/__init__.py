"""The XCom backend: step manifests readable in the UI, artifacts and large values in our store.

Select it with ``[core] xcom_backend = airflow_flowspec.xcom_backend.FlowspecXComBackend``.

The class is loaded on first use, and Airflow is initialised before it. Importing Airflow resolves
the configured XCom backend (``airflow.sdk.execution_time.xcom``), which imports this package
again: if this module imported Airflow at the top, Airflow would find it half-initialised, without
the class, and warn about it a dozen times. Loaded lazily, the class is defined while Airflow
resolves it, whichever of the two is imported first.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FlowspecXComBackend"]


def __getattr__(name: str) -> Any:
    if name != "FlowspecXComBackend":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import airflow  # noqa: F401 - initialise Airflow first; it may ask for the class meanwhile

    from airflow_flowspec.xcom_backend._backend import FlowspecXComBackend

    return FlowspecXComBackend
