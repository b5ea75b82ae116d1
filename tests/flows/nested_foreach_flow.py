"""A foreach inside a foreach, and a foreach inside one arm of a static branch."""

from airflow_flowspec import FlowSpec, step


class NestedForeachFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.grid, self.side)

    @step
    def grid(self):
        self.rows = [1, 2, 3]
        self.next(self.row, foreach="rows")

    @step
    def row(self):
        self.row_value = self.input
        self.cols = list(range(self.input))  # 1, 2 and 3 inner items: uneven on purpose
        self.next(self.cell, foreach="cols")

    @step
    def cell(self):
        self.product = self.row_value * 10 + self.input
        self.stack = [(i, n) for i, n, _ in self.foreach_stack()]
        self.next(self.join_cols)

    @step
    def join_cols(self, inputs):
        self.row_products = [i.product for i in inputs]
        self.row_value = inputs[0].row_value
        self.stacks = [i.stack for i in inputs]
        self.next(self.join_rows)

    @step
    def join_rows(self, inputs):
        self.products = [i.row_products for i in inputs]
        self.stacks = [s for i in inputs for s in i.stacks]
        self.next(self.join_all)

    @step
    def side(self):
        self.words = ["x", "yy"]
        self.next(self.measure, foreach="words")

    @step
    def measure(self):
        self.length = len(self.input)
        self.next(self.join_side)

    @step
    def join_side(self, inputs):
        self.lengths = [i.length for i in inputs]
        self.next(self.join_all)

    @step
    def join_all(self, inputs):
        self.products = inputs.join_rows.products
        self.stacks = inputs.join_rows.stacks
        self.lengths = inputs.join_side.lengths
        self.next(self.end)

    @step
    def end(self):
        self.total = sum(sum(p) for p in self.products) + sum(self.lengths)


if __name__ == "__main__":
    NestedForeachFlow()
