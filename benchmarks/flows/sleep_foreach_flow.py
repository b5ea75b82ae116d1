import time

from airflow_flowspec import FlowSpec, Parameter, step


class SleepForeachFlow(FlowSpec):
    """Sleeps side by side (16 of one second by default): what a local run's parallelism is worth,
    and under `run --with batch` what submitting a foreach at once and noticing each job's end soon
    after it are worth."""

    width = Parameter("width", default=16)
    seconds = Parameter("seconds", default=1.0)

    @step
    def start(self):
        self.items = list(range(self.width))
        self.next(self.nap, foreach="items")

    @step
    def nap(self):
        self.began = time.time()
        time.sleep(self.seconds)
        self.ended = time.time()
        self.next(self.join)

    @step
    def join(self, inputs):
        naps = [(i.began, i.ended) for i in inputs]  # Metaflow's inputs have no len()
        self.span = max(ended for _, ended in naps) - min(began for began, _ in naps)
        self.count = len(naps)
        self.next(self.end)

    @step
    def end(self):
        print(f"{self.count} naps within {self.span:.2f} s")


if __name__ == "__main__":
    SleepForeachFlow()
