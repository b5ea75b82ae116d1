"""Daily business report: yesterday's orders and web traffic, every day at midnight UTC.

Demonstrates:
  * ``@schedule(daily=True)``: in Airflow the DAG runs once a day; each run reports on its data
    interval (``current.data_interval_start`` / ``_end``), so backfills and re-runs of an old day
    give that day's report;
  * ``current.logical_date`` and ``current.run_id``: a manual run (``python ... run``) has no
    schedule slot, so it reports on the 24 hours before it started; a run triggered without a
    logical date has no data interval, and the flow falls back to the same rule;
  * ``@timeout`` on the warehouse query, and ``@retry`` + ``@catch`` on the call to a flaky
    analytics API: when the API stays down, the report still goes out, without the traffic numbers.

Run it:
    python dags_examples/daily_report.py run
    python dags_examples/daily_report.py run --api_failure_rate 1.0   # the API is down: see @catch
"""

import random
from datetime import datetime, timedelta, timezone

from airflow_flowspec import FlowSpec, Parameter, catch, current, retry, schedule, step, timeout


def query_orders(day):
    """Stand-in for a warehouse query: the same day always gives the same orders."""
    rng = random.Random(day.toordinal())
    return [round(rng.lognormvariate(3.5, 0.6), 2) for _ in range(rng.randint(80, 120))]


class AnalyticsAPI:
    """Stand-in for a web-analytics HTTP API that sometimes times out."""

    def __init__(self, failure_rate):
        self.failure_rate = failure_rate

    def sessions(self, day):
        if random.random() < self.failure_rate:
            raise TimeoutError("analytics API did not answer within 30 s")
        return random.Random(day.toordinal() + 1).randint(2000, 3000)


@schedule(daily=True)
class DailyReportFlow(FlowSpec):
    """Orders, revenue and conversion for one day."""

    api_failure_rate = Parameter(
        "api_failure_rate", default=0.2, help="chance that the (simulated) analytics API times out"
    )

    @step
    def start(self):
        # Scheduled runs get the day they cover from Airflow; manual runs may have no data interval.
        self.logical_date = current.logical_date
        self.window_end = current.data_interval_end or current.logical_date or datetime.now(timezone.utc)
        self.window_start = current.data_interval_start or self.window_end - timedelta(days=1)
        self.report_day = self.window_start.date()
        print(f"Run {current.run_id}: report for {self.report_day}")
        print(f"Data interval: {self.window_start} to {self.window_end}")
        self.next(self.fetch_orders, self.fetch_traffic)

    @timeout(minutes=10)
    @step
    def fetch_orders(self):
        self.order_values = query_orders(self.report_day)
        self.next(self.build_report)

    @catch(var="traffic_error")
    @retry(times=2, minutes_between_retries=0)
    @step
    def fetch_traffic(self):
        print(f"Calling the analytics API (attempt {current.retry_count + 1})")
        self.sessions = AnalyticsAPI(self.api_failure_rate).sessions(self.report_day)
        self.next(self.build_report)

    @step
    def build_report(self, inputs):
        self.merge_artifacts(inputs, include=["logical_date", "window_start", "window_end", "report_day"])
        orders = inputs.fetch_orders.order_values
        traffic_error = inputs.fetch_traffic.traffic_error  # None unless @catch caught a failure
        sessions = None if traffic_error else inputs.fetch_traffic.sessions
        self.report = {
            "day": self.report_day.isoformat(),
            "logical_date": self.logical_date,
            "run_id": current.run_id,
            "orders": len(orders),
            "revenue": round(sum(orders), 2),
            "avg_order_value": round(sum(orders) / len(orders), 2),
            "web_sessions": sessions,
            "conversion_rate": round(len(orders) / sessions, 4) if sessions else None,
            "warnings": [f"web traffic missing: {traffic_error.exception}"] if traffic_error else [],
        }
        self.next(self.end)

    @step
    def end(self):
        print(f"Daily report for {self.report['day']} (run {self.report['run_id']}):")
        for key in ("orders", "revenue", "avg_order_value", "web_sessions", "conversion_rate"):
            print(f"  {key:>16}: {self.report[key]}")
        for warning in self.report["warnings"]:
            print(f"  WARNING: {warning}")


if __name__ == "__main__":
    DailyReportFlow()
