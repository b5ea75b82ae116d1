from airflow_flowspec import FlowSpec, Parameter, step


class SwitchFlow(FlowSpec):
    mode = Parameter("mode", default="fast")

    @step
    def start(self):
        self.route = self.mode
        self.next({"fast": self.fast, "slow": self.slow}, condition="route")

    @step
    def fast(self):
        self.answer = "took the fast arm"
        self.next(self.after)

    @step
    def slow(self):
        self.answer = "took the slow arm"
        self.next(self.slow_more)

    @step
    def slow_more(self):
        self.answer += " twice"
        self.next(self.after)

    @step
    def after(self):
        self.final = self.answer.upper()
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SwitchFlow()
