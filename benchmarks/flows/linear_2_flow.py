"""2 steps in a line, each passing a small dict along (benchmark 7, step overhead)."""

from airflow_flowspec import FlowSpec, step


class Linear2Flow(FlowSpec):
    @step
    def start(self):
        self.state = {"step_0": 0}
        self.next(self.end)

    @step
    def end(self):
        self.state = {**self.state, "step_1": 1}
        print("steps seen:", len(self.state))


if __name__ == "__main__":
    Linear2Flow()
