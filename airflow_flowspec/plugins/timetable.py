"""The timetable of a ``@schedule`` flow: each run covers one period, named by the period's start.

``@schedule(daily=True)`` means "one run per day of data". The run for 10 November has logical date
and ``data_interval_start`` 10 November 00:00 and ``data_interval_end`` 11 November 00:00 on the
flow's clock (its ``@schedule(timezone=...)``, UTC by default), and Airflow starts it once that day
is over. This is Airflow's ``CronDataIntervalTimetable``; the one thing added is how a backfill's
bounds are read.

``airflow backfill create --from-date 2026-11-10 --to-date 2026-11-12`` should run the periods
starting 10, 11 and 12 November, whatever the flow's time zone. Airflow reads the typed dates in
``[core] default_timezone`` and hands the timetable UTC moments, so for a flow on Berlin time
``2026-11-10`` would be 01:00 Berlin and the 10th would be skipped. Here the dates are read as the
user typed them, on the flow's clock: the bound's wall-clock reading in ``default_timezone`` is
placed in the flow's time zone (Airflow 3.3 does the same for partitioned timetables). Only
catch-up requests (backfills) are re-read; the scheduler's own runs are not touched.

Run ids name the period too: Airflow's timetables name a run after the moment it may start (the
period's end), so the run for 10 November would be ``backfill__2026-11-11T00:00:00+00:00``; here
it is ``backfill__2026-11-10T00:00:00+00:00`` (and ``scheduled__...`` alike), what a user looks
for. A backfill's runs name their ``run_after`` (Airflow's backfill code does not ask the
timetable), so a backfill's periods are handed out with the period's start there.
"""

from __future__ import annotations

from typing import Any

from airflow.timetables.base import DagRunInfo, DataInterval, TimeRestriction
from airflow.timetables.interval import CronDataIntervalTimetable


class FlowScheduleTimetable(CronDataIntervalTimetable):
    """``CronDataIntervalTimetable`` whose backfill bounds are dates on the flow's clock."""

    description_prefix = "flow schedule"

    def next_dagrun_info(
        self,
        *,
        last_automated_data_interval: DataInterval | None,
        restriction: TimeRestriction,
    ) -> DagRunInfo | None:
        if not restriction.catchup:
            return super().next_dagrun_info(
                last_automated_data_interval=last_automated_data_interval, restriction=restriction
            )
        restriction = TimeRestriction(
            self.on_flow_clock(restriction.earliest), self.on_flow_clock(restriction.latest), True
        )
        info = super().next_dagrun_info(
            last_automated_data_interval=last_automated_data_interval, restriction=restriction
        )
        if info is None or info.data_interval is None:
            return info
        # Airflow names a backfill's run after its run_after; a backfill runs only periods already
        # over (it filters on the interval's end), so the period's start can stand there.
        return info._replace(run_after=info.data_interval.start)

    def generate_run_id(
        self, *, run_type: Any, run_after: Any, data_interval: DataInterval | None, **extra: Any
    ) -> str:
        if data_interval is None:
            return super().generate_run_id(
                run_type=run_type, run_after=run_after, data_interval=None, **extra
            )
        return str(run_type.generate_run_id(suffix=data_interval.start.isoformat()))

    def on_flow_clock(self, moment: Any) -> Any:
        """``moment``'s wall-clock reading in ``[core] default_timezone``, in the flow's time zone."""
        if moment is None:
            return None
        import pendulum

        typed = pendulum.instance(moment).in_timezone(_default_timezone())
        return pendulum.datetime(
            typed.year,
            typed.month,
            typed.day,
            typed.hour,
            typed.minute,
            typed.second,
            typed.microsecond,
            tz=self._timezone,
        ).in_timezone("UTC")


def _default_timezone() -> Any:
    """The zone Airflow read the typed dates in (``[core] default_timezone``, "system" resolved)."""
    from airflow import settings

    return settings.TIMEZONE
