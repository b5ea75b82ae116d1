from airflow_flowspec import FlowSpec, Parameter, schedule, step


@schedule(cron="30 6 * * 1-5", timezone="Europe/Berlin")
class ScheduledFlow(FlowSpec):
    """Runs on weekday mornings."""

    rows = Parameter("rows", default=10, help="how many rows to read")

    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ScheduledFlow()
