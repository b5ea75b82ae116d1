"""22 steps in a line, each passing a small dict along (benchmark 7, step overhead)."""

from airflow_flowspec import FlowSpec, step


class Linear22Flow(FlowSpec):
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
        self.next(self.step_5)

    @step
    def step_5(self):
        self.state = {**self.state, "step_5": 5}
        self.next(self.step_6)

    @step
    def step_6(self):
        self.state = {**self.state, "step_6": 6}
        self.next(self.step_7)

    @step
    def step_7(self):
        self.state = {**self.state, "step_7": 7}
        self.next(self.step_8)

    @step
    def step_8(self):
        self.state = {**self.state, "step_8": 8}
        self.next(self.step_9)

    @step
    def step_9(self):
        self.state = {**self.state, "step_9": 9}
        self.next(self.step_10)

    @step
    def step_10(self):
        self.state = {**self.state, "step_10": 10}
        self.next(self.step_11)

    @step
    def step_11(self):
        self.state = {**self.state, "step_11": 11}
        self.next(self.step_12)

    @step
    def step_12(self):
        self.state = {**self.state, "step_12": 12}
        self.next(self.step_13)

    @step
    def step_13(self):
        self.state = {**self.state, "step_13": 13}
        self.next(self.step_14)

    @step
    def step_14(self):
        self.state = {**self.state, "step_14": 14}
        self.next(self.step_15)

    @step
    def step_15(self):
        self.state = {**self.state, "step_15": 15}
        self.next(self.step_16)

    @step
    def step_16(self):
        self.state = {**self.state, "step_16": 16}
        self.next(self.step_17)

    @step
    def step_17(self):
        self.state = {**self.state, "step_17": 17}
        self.next(self.step_18)

    @step
    def step_18(self):
        self.state = {**self.state, "step_18": 18}
        self.next(self.step_19)

    @step
    def step_19(self):
        self.state = {**self.state, "step_19": 19}
        self.next(self.step_20)

    @step
    def step_20(self):
        self.state = {**self.state, "step_20": 20}
        self.next(self.end)

    @step
    def end(self):
        self.state = {**self.state, "step_21": 21}
        print("steps seen:", len(self.state))


if __name__ == "__main__":
    Linear22Flow()
