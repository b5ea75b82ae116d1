"""Backfills mean what users read: ``--from-date A --to-date B`` runs the periods that start on the
days A to B, on the flow's own clock, and each run's logical date is the start of its period.

Runs through Airflow's own backfill code (the function ``airflow backfill create`` calls, with the
dates parsed as the CLI parses them) on the DAG as the scheduler reads it back from the database,
so the timetable also proves it deserializes through the plugin.
"""

from __future__ import annotations

import textwrap
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from harness import load_flow

BERLIN = ZoneInfo("Europe/Berlin")


def backfill(tmp_path, schedule: str, start: str, end: str) -> list[tuple[datetime, datetime, datetime]]:
    """(logical date, data interval start, end) of each run a backfill of a flow with ``schedule`` makes."""
    return [
        (logical, begins, ends) for logical, begins, ends, _ in backfill_runs(tmp_path, schedule, start, end)
    ]


def backfill_runs(
    tmp_path, schedule: str, start: str, end: str
) -> list[tuple[datetime, datetime, datetime, str]]:
    """:func:`backfill`'s runs with their run ids."""
    from airflow._shared.timezones.timezone import parse
    from airflow.models.backfill import _create_backfill
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from airflow_flowspec.airflow.local_run import sync_dag
    from airflow_flowspec.airflow.registration import dag_for

    name = f"Backfill{abs(hash((schedule, start, end))) % 10**8}Flow"
    path = tmp_path / f"{name.lower()}.py"
    path.write_text(
        textwrap.dedent(f"""
            from airflow_flowspec import FlowSpec, schedule, step

            @schedule({schedule})
            class {name}(FlowSpec):
                @step
                def start(self):
                    self.next(self.end)

                @step
                def end(self):
                    pass
        """)
    )
    sync_dag(dag_for(load_flow(path), str(path)))
    made = _create_backfill(
        dag_id=name,
        from_date=parse(start),  # what the CLI's --from-date/--to-date parsing gives
        to_date=parse(end),
        max_active_runs=10,
        reverse=False,
        dag_run_conf=None,
        triggering_user_name="test",
    )
    with create_session() as session:
        runs = session.scalars(
            select(DagRun).where(DagRun.backfill_id == made.id).order_by(DagRun.logical_date)
        ).all()
        return [(r.logical_date, r.data_interval_start, r.data_interval_end, r.run_id) for r in runs]


def test_a_daily_backfill_runs_the_days_typed_across_a_month_boundary(airflow_db, tmp_path):
    """Each run's id names the day it covers (Airflow's own timetables name it after the moment the
    run may start: the next day)."""
    runs = backfill_runs(tmp_path, "daily=True", "2026-10-30", "2026-11-02")
    days = [datetime(2026, 10, 30, tzinfo=timezone.utc) + timedelta(days=i) for i in range(4)]
    assert [logical for logical, _, _, _ in runs] == days  # 30 and 31 October, 1 and 2 November
    assert [(start, end) for _, start, end, _ in runs] == [(day, day + timedelta(days=1)) for day in days]
    assert [run_id for _, _, _, run_id in runs] == [f"backfill__{day.isoformat()}" for day in days]


def test_a_daily_backfill_on_berlin_time_runs_the_days_typed_across_the_end_of_summer_time(
    airflow_db, tmp_path
):
    """Summer time ends on 25 October 2026 in Berlin: that day is 25 hours long. Read in UTC, the
    typed dates would start an hour into each Berlin day and lose the first one."""
    runs = backfill(tmp_path, "daily=True, timezone='Europe/Berlin'", "2026-10-24", "2026-10-26")
    starts = [start.astimezone(BERLIN) for _, start, _ in runs]
    assert [(s.date().isoformat(), s.hour) for s in starts] == [
        ("2026-10-24", 0),
        ("2026-10-25", 0),
        ("2026-10-26", 0),
    ]
    assert [logical for logical, _, _ in runs] == [start for _, start, _ in runs]
    lengths = [(end - start) / timedelta(hours=1) for _, start, end in runs]
    assert lengths == [24, 25, 24]


def test_hourly_and_weekly_backfills_take_the_periods_that_start_within_the_bounds(airflow_db, tmp_path):
    hours = backfill(
        tmp_path, "hourly=True, timezone='Europe/Berlin'", "2026-03-29T01:00", "2026-03-29T04:00"
    )
    # Summer time starts at 02:00 on 29 March: 01:00, then 03:00 and 04:00 (02:xx does not exist).
    assert [start.astimezone(BERLIN).hour for _, start, _ in hours] == [1, 3, 4]

    weeks = backfill(tmp_path, "weekly=True", "2026-11-01", "2026-11-21")
    # Weekly is Sunday 00:00 (Metaflow's meaning); 1, 8 and 15 November 2026 are Sundays.
    assert [logical.date().isoformat() for logical, _, _ in weeks] == [
        "2026-11-01",
        "2026-11-08",
        "2026-11-15",
    ]
    assert all(end - start == timedelta(weeks=1) for _, start, end in weeks)


@pytest.mark.parametrize("cron", ["'30 6 * * 1-5'"])
def test_a_cron_schedule_backfills_its_firings_between_the_dates(airflow_db, tmp_path, cron):
    runs = backfill(tmp_path, f"cron={cron}, timezone='Europe/Berlin'", "2026-11-06", "2026-11-10")
    starts = [start.astimezone(BERLIN) for _, start, _ in runs]
    # Friday 6, Monday 9 and Tuesday 10 November at 06:30 Berlin; each period runs to the next firing.
    assert [(s.day, s.hour, s.minute) for s in starts] == [(6, 6, 30), (9, 6, 30)]
    assert runs[0][2].astimezone(BERLIN).day == 9


def test_a_scheduled_run_is_named_after_the_period_it_covers():
    """The scheduler asks the timetable for a scheduled run's id: the day it covers, not the next."""
    import pendulum
    from airflow.timetables.base import DataInterval
    from airflow.utils.types import DagRunType

    from airflow_flowspec.plugins.timetable import FlowScheduleTimetable

    day = pendulum.datetime(2026, 11, 10, tz="UTC")
    run_id = FlowScheduleTimetable("0 0 * * *", timezone="UTC").generate_run_id(
        run_type=DagRunType.SCHEDULED,
        run_after=day.add(days=1),
        data_interval=DataInterval(day, day.add(days=1)),
    )
    assert run_id == "scheduled__2026-11-10T00:00:00+00:00"
