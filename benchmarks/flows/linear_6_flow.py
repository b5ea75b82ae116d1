"""6 steps in a line, each passing a small dict along (benchmark 10, warm and cold runs)."""

from airflow_flowspec import FlowSpec, step


class Linear6Flow(FlowSpec):
    @step
    def start(self):
        self.state = {"step_0": 0}
        self.next(self.step_1)

    @step
    def step_1(self):
        self.state = {**self.state, "step_1": 1}
        self.next(self.step_2)

    @step
    def step_2(self):
        self.state = {**self.state, "step_2": 2}
        self.next(self.step_3)

    @step
    def step_3(self):
        self.state = {**self.state, "step_3": 3}
        self.next(self.step_4)

    @step
    def step_4(self):
        self.state = {**self.state, "step_4": 4}
        self.next(self.end)

    @step
    def end(self):
        self.state = {**self.state, "step_5": 5}
        print("steps seen:", len(self.state))


if __name__ == "__main__":
    Linear6Flow()
