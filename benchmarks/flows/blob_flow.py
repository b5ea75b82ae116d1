import os

from airflow_flowspec import FlowSpec, step


class BlobFlow(FlowSpec):
    @step
    def start(self):
        self.blob = os.urandom(int(os.environ.get("BENCH_BLOB_BYTES", 256 * 1024 * 1024)))
        self.next(self.middle)

    @step
    def middle(self):
        self.size = len(self.blob)
        self.next(self.end)

    @step
    def end(self):
        print("blob size", self.size)


if __name__ == "__main__":
    BlobFlow()
