import os

from airflow_flowspec import FlowSpec, step


class WidthFlow(FlowSpec):
    """A foreach as wide as BENCH_WIDTH: each child stores a small artifact, the join sums them."""

    @step
    def start(self):
        self.items = list(range(int(os.environ.get("BENCH_WIDTH", "10"))))
        self.next(self.body, foreach="items")

    @step
    def body(self):
        self.value = self.input * 2
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.value for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    WidthFlow()
