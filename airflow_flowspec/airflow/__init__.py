"""The Airflow edge: everything that turns a flow into a DAG and runs it with Airflow.

Everything in this folder (and in ``operators/`` and ``xcom_backend/``) needs Airflow; nothing
outside them imports it. Modules here may import the rest of the package, never the other way
round, except for the two lazy entry points a flow file needs: ``FlowSpec`` asks
:mod:`.registration` to build the DAG when a DagBag is importing the file, and the command line's
``run`` starts :mod:`.local_run`.

- :mod:`.registration`: a flow class defined during a DagBag import becomes a DAG.
- :mod:`.translator`: the flow's graph as a DAG (tasks, edges, mapping, settings); pure, no I/O.
- :mod:`.local_run`: ``python flow.py run`` on a private Airflow home.
- :mod:`.concurrent_run`: that run's DAG run, its ready tasks at once in forked workers.
- :mod:`.preloader`: the warm process ``run`` forks its runs from.
- :mod:`.local_services`: ``airflow-flowspec airflow up``, a local Airflow with its UI.
- :mod:`.run_states`: which DAG runs Airflow has queued or running (for gc).
- :mod:`.discovery`: lets safe-mode DAG discovery find flow files.
- :mod:`._internals`: every Airflow name outside Airflow's public interface, each with why it is
  needed; nothing else here uses one (tests/airflow/test_airflow_internals.py pins them).
"""
