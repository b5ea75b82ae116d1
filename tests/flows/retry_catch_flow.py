"""@retry that succeeds on its second attempt, and @catch after the last retry fails."""

from airflow_flowspec import FlowSpec, catch, current, retry, step


class RetryCatchFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.flaky)

    @catch(var="flaky_error")
    @retry(times=2, minutes_between_retries=0)
    @step
    def flaky(self):
        self.attempts_seen = current.retry_count
        if current.retry_count == 0:
            raise RuntimeError("first attempt always fails")
        self.next(self.doomed)

    @catch(var="doomed_error", print_exception=False)
    @retry(times=1, minutes_between_retries=0)
    @step
    def doomed(self):
        self.before_failure = "kept"
        raise ValueError(f"attempt {current.retry_count} failed")
        self.next(self.end)

    @step
    def end(self):
        self.caught_type = self.doomed_error.type
        self.caught_message = self.doomed_error.exception


if __name__ == "__main__":
    RetryCatchFlow()
