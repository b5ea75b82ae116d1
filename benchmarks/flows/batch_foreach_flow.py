import time

from airflow_flowspec import FlowSpec, step


class BatchForeachFlow(FlowSpec):
    """Twelve two-second jobs side by side under `run --with batch`: what submitting a foreach at
    once and noticing each job's end soon after it are worth."""

    @step
    def start(self):
        self.items = list(range(12))
        self.next(self.nap, foreach="items")

    @step
    def nap(self):
        self.began = time.time()
        time.sleep(2)
        self.ended = time.time()
        self.next(self.join)

    @step
    def join(self, inputs):
        self.span = max(i.ended for i in inputs) - min(i.began for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        print(f"12 naps within {self.span:.2f} s")


if __name__ == "__main__":
    BatchForeachFlow()
