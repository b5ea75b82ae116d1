"""The flow the client cases (11, 12) read: a small artifact and a mid-size one reach the end step."""

from airflow_flowspec import FlowSpec, step


class ClientFlow(FlowSpec):
    @step
    def start(self):
        self.x = 42
        self.table = {f"key-{i}": i for i in range(10_000)}
        self.next(self.train)

    @step
    def train(self):
        self.score = self.x / 100
        self.next(self.end)

    @step
    def end(self):
        print(f"ClientFlow is done: x={self.x}, {len(self.table)} items.")


if __name__ == "__main__":
    ClientFlow()
