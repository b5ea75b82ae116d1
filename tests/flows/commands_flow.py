import sys

from airflow_flowspec import FlowSpec, Parameter, step


class CommandsFlow(FlowSpec):
    """A foreach wider than the ten tasks an error lists, with parameters and output to read back."""

    alpha = Parameter("alpha", default=0.5)
    label = Parameter("label", default="a long label that a row of `runs` shortens " * 2)

    @step
    def start(self):
        print("starting with alpha", self.alpha)
        self.items = list(range(12))
        self.next(self.body, foreach="items")

    @step
    def body(self):
        print(f"body {self.input} out")
        print(f"body {self.input} err", file=sys.stderr)
        self.square = self.input**2
        self.next(self.join)

    @step
    def join(self, inputs):
        self.squares = [i.square for i in inputs]
        self.next(self.end)

    @step
    def end(self):
        self._note = "private"
        self.count = len(self.squares)


if __name__ == "__main__":
    CommandsFlow()
