import os

from airflow_flowspec import FlowSpec, step


class DedupFlow(FlowSpec):
    @step
    def start(self):
        self.blob = os.urandom(int(os.environ.get("BENCH_BLOB_BYTES", 256 * 1024 * 1024)))
        self.counter = 0
        self.next(self.untouched)

    @step
    def untouched(self):
        self.counter += 1  # never reads self.blob
        self.next(self.reassigned)

    @step
    def reassigned(self):
        self.blob = bytes(self.blob)  # reads it, stores an equal copy
        self.next(self.end)

    @step
    def end(self):
        self.counter += 1


if __name__ == "__main__":
    DedupFlow()
