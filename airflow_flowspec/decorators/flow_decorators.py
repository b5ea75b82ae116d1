"""Flow-level decorators: ``@schedule``.

A class decorator runs after the class body (and so after ``FlowSpec.__init_subclass__``), so it
tells the flow class it changed, which rebuilds the flow's DAG when Airflow is parsing the file.
"""

from __future__ import annotations

from typing import Any

from airflow_flowspec.errors import DecoratorError

_NAMED_SCHEDULES = {"hourly": "0 * * * *", "daily": "0 0 * * *", "weekly": "0 0 * * 0"}


class Schedule:
    """When Airflow runs the flow: one of hourly, daily, weekly (as in Metaflow) or a cron string."""

    def __init__(
        self,
        hourly: bool = False,
        daily: bool = True,
        weekly: bool = False,
        cron: str | None = None,
        timezone: str | None = None,
    ):
        if cron is not None:
            if not isinstance(cron, str) or len(cron.split()) not in (5, 6):
                raise DecoratorError(
                    f"@schedule(cron=...) must be a cron expression like '0 6 * * *', got {cron!r}."
                )
            self.cron = cron.strip()
            self.interval_name = None
        elif weekly:
            self.cron, self.interval_name = _NAMED_SCHEDULES["weekly"], "weekly"
        elif hourly:
            self.cron, self.interval_name = _NAMED_SCHEDULES["hourly"], "hourly"
        elif daily:
            self.cron, self.interval_name = _NAMED_SCHEDULES["daily"], "daily"
        else:
            raise DecoratorError("@schedule needs one of hourly=True, daily=True, weekly=True or cron='...'.")
        if timezone is not None:
            try:
                from zoneinfo import ZoneInfo

                ZoneInfo(timezone)
            except Exception:  # noqa: BLE001 - any failure means the name is unknown
                raise DecoratorError(
                    f"@schedule(timezone=...) is not a known IANA time zone: {timezone!r} "
                    f"(e.g. 'Europe/Berlin', 'UTC')."
                ) from None
        self.timezone = timezone or "UTC"

    def __repr__(self) -> str:
        return f"@schedule(cron={self.cron!r}, timezone={self.timezone!r})"


def schedule(flow_class: Any = None, **kwargs: Any) -> Any:
    """``@schedule(daily=True)``, ``@schedule(cron="0 6 * * *", timezone="Europe/Berlin")``."""

    def apply(cls: Any) -> Any:
        if not (isinstance(cls, type) and hasattr(cls, "_flowspec_class_changed")):
            raise DecoratorError("@schedule decorates a FlowSpec class, not a step or function.")
        cls._flowspec_schedule = Schedule(**kwargs)
        cls._flowspec_class_changed()
        return cls

    if flow_class is not None:
        return apply(flow_class)
    return apply
