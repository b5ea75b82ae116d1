"""Every self.next form, parameters, a flow-defined class: run under Metaflow and under us."""

from airflow_flowspec import FlowSpec, JSONType, Parameter, step


class Score:
    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Score) and other.value == self.value

    def __repr__(self):
        return f"Score({self.value})"


class ParityFlow(FlowSpec):
    alpha = Parameter("alpha", default=0.5)
    grid = Parameter("grid", default='{"rows": [1, 2], "cols": ["x", "y", "z"]}', type=JSONType)
    mode = Parameter("mode", default="fast")

    @step
    def start(self):
        self.rows = self.grid["rows"]
        self.shared = {"alpha": self.alpha}
        self.next(self.row, foreach="rows")

    @step
    def row(self):
        self.row_value = self.input
        self.cols = self.grid["cols"]
        self.next(self.cell, foreach="cols")

    @step
    def cell(self):
        self.cell_label = f"{self.row_value}{self.input}:{self.index}"
        self.score = Score(self.row_value * len(self.input) * self.alpha)
        self.next(self.join_cols)

    @step
    def join_cols(self, inputs):
        self.labels = [i.cell_label for i in inputs]
        self.merge_artifacts(inputs, include=["row_value", "shared"])
        self.next(self.join_rows)

    @step
    def join_rows(self, inputs):
        self.all_labels = [label for i in inputs for label in i.labels]
        self.merge_artifacts(inputs, exclude=["row_value", "labels"])
        self.next(self.fork)

    @step
    def fork(self):
        self.next(self.left, self.right)

    @step
    def left(self):
        self.side = "left"
        self.left_only = len(self.all_labels)
        self.next(self.meet)

    @step
    def right(self):
        self.side = "right"
        self.next(self.meet)

    @step
    def meet(self, inputs):
        self.sides = sorted(i.side for i in inputs)
        self.left_count = inputs.left.left_only
        self.merge_artifacts(inputs, exclude=["side", "left_only"])
        self.next(self.decide)

    @step
    def decide(self):
        self.choice = self.mode
        self.next({"fast": self.fast, "slow": self.slow}, condition="choice")

    @step
    def fast(self):
        self.path = "fast"
        self.next(self.end)

    @step
    def slow(self):
        self.path = "slow"
        self.next(self.end)

    @step
    def end(self):
        self.summary = (self.path, len(self.all_labels), self.left_count, self.sides)


if __name__ == "__main__":
    ParityFlow()
