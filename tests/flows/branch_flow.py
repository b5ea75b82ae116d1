"""Static branch, join with inputs.<step>, merge_artifacts, parameters, current, a local class."""

import os

from airflow_flowspec import FlowSpec, JSONType, Parameter, current, environment, step


class Point:
    """Defined in the flow file: instances must survive pickling into other task processes."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def norm2(self):
        return self.x * self.x + self.y * self.y


class BranchFlow(FlowSpec):
    alpha = Parameter("alpha", default=0.5, help="learning rate")
    epochs = Parameter("epochs", default=3)
    label = Parameter("label", default="base")
    verbose = Parameter("verbose", default=False)
    config = Parameter("config", default={"depth": 2}, type=JSONType)

    @step
    def start(self):
        self.shared = "same everywhere"
        self.point = Point(3, 4)
        self.scale = lambda v: v * 10
        self.seen = {
            "flow_name": current.flow_name,
            "run_id": current.run_id,
            "step_name": current.step_name,
            "task_id": current.task_id,
            "retry_count": current.retry_count,
            "logical_date": current.logical_date,
        }
        self.next(self.left, self.right)

    @environment(vars={"FLOWSPEC_TEST_GREETING": "hello from left"})
    @step
    def left(self):
        self.side = "left"
        self.value = self.scale(self.alpha)
        self.greeting = os.environ["FLOWSPEC_TEST_GREETING"]
        self.point_is_point = isinstance(self.point, Point)
        self.next(self.join)

    @step
    def right(self):
        self.side = "right"
        self.value = self.epochs + self.config["depth"]
        self.next(self.join)

    @step
    def join(self, inputs):
        self.sides = sorted(i.side for i in inputs)
        self.left_value = inputs.left.value
        self.right_value = inputs.right.value
        self.greeting = inputs.left.greeting
        self.merge_artifacts(inputs, exclude=["side", "value", "greeting"])
        self.next(self.end)

    @step
    def end(self):
        self.norm2 = self.point.norm2()
        self.summary = f"{self.label}:{self.verbose}:{self.shared}"
        self.env_leaked = "FLOWSPEC_TEST_GREETING" in os.environ


if __name__ == "__main__":
    BranchFlow()
