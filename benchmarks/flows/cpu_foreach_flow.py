import time

from airflow_flowspec import FlowSpec, step


class CpuForeachFlow(FlowSpec):
    """Four CPU-bound tasks side by side: how many cores a local run keeps busy."""

    @step
    def start(self):
        self.items = list(range(4))
        self.next(self.crunch, foreach="items")

    @step
    def crunch(self):
        self.began = time.time()
        cpu = time.process_time()
        total = 0
        for number in range(6_000_000):
            total += number * number % 7
        self.total = total
        self.cpu = time.process_time() - cpu
        self.ended = time.time()
        self.next(self.join)

    @step
    def join(self, inputs):
        span = max(i.ended for i in inputs) - min(i.began for i in inputs)
        self.cores = sum(i.cpu for i in inputs) / span
        self.next(self.end)

    @step
    def end(self):
        print(f"cores used: {self.cores:.2f}")


if __name__ == "__main__":
    CpuForeachFlow()
