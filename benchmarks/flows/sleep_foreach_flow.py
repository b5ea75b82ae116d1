import time

from airflow_flowspec import FlowSpec, step


class SleepForeachFlow(FlowSpec):
    """Sixteen one-second sleeps side by side: what a local run's parallelism is worth."""

    @step
    def start(self):
        self.items = list(range(16))
        self.next(self.nap, foreach="items")

    @step
    def nap(self):
        self.began = time.time()
        time.sleep(1)
        self.ended = time.time()
        self.next(self.join)

    @step
    def join(self, inputs):
        self.span = max(i.ended for i in inputs) - min(i.began for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        print(f"16 naps within {self.span:.2f} s")


if __name__ == "__main__":
    SleepForeachFlow()
