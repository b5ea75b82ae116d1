"""What Airflow knows about a run that the datastore cannot: whether its DAG run is queued or running.

A failed run whose task a user clears in Airflow is queued again before any of its tasks writes a
thing (a queue can hold it for hours): only Airflow's metadata database says it is about to run.
``airflow-flowspec gc`` asks it here where it can reach it (the machine has an Airflow
configuration); :mod:`airflow_flowspec.datastore.gc` takes the answer as a plain callable.
"""

from __future__ import annotations

from collections.abc import Callable


def metadata_database_run_states() -> tuple[Callable[[str, str], bool], str]:
    """A callable saying whether Airflow's metadata database has ``(dag_id, run_id)`` queued or
    running, and where it asks (for the report). Raises if the database cannot be reached."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from sqlalchemy import select
    from sqlalchemy.engine import make_url

    from airflow_flowspec.config import airflow_option

    active = (DagRunState.QUEUED, DagRunState.RUNNING)

    def runs(dag_id: str, run_id: str) -> bool:
        with create_session() as session:
            state = session.scalar(
                select(DagRun.state).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
            )
        return state in active

    runs("", "")  # reaches the database now, so a failure is reported before gc decides anything
    url = make_url(airflow_option("database", "sql_alchemy_conn", "sqlite:///airflow.db"))
    return runs, url.render_as_string(hide_password=True)
