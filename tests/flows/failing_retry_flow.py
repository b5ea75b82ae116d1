from airflow_flowspec import FlowSpec, retry, step


class FailingRetryFlow(FlowSpec):
    """A foreach whose second item fails on both attempts: what the terminal shows, beside Metaflow."""

    @step
    def start(self):
        self.items = [1, 2]
        self.next(self.body, foreach="items")

    @retry(times=1, minutes_between_retries=0)
    @step
    def body(self):
        print("working on", self.input)
        if self.input == 2:
            raise ValueError("item 2 is bad")
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    FailingRetryFlow()
