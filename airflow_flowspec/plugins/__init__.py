"""The Airflow plugin: what the scheduler, API server and UI load from this package.

Everything in this folder needs Airflow. Installing the package registers :class:`FlowspecPlugin`
through the ``airflow.plugins`` entry point, so a flow's timetable deserializes in the scheduler
and the artifact view appears in the UI with no file copied into ``plugins/``.

- :mod:`.plugin`: the plugin class (timetable, FastAPI app, UI views); cheap to import, because
  every Airflow process loads plugins.
- :mod:`.timetable`: ``@schedule``'s timetable and how backfill dates are read.
- :mod:`.links`: the "Artifacts" button on each step's task.
- :mod:`.artifacts_app` and :mod:`.pages`: the artifact view, served by the API server.
"""
