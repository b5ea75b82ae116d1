from airflow_flowspec import FlowSpec, JSONType, Parameter, step


class ParameterKindsFlow(FlowSpec):
    """One parameter of each kind the trigger form has a field for."""

    label = Parameter("label", default="base", help="a label")
    count = Parameter("count", default=3)
    ratio = Parameter("ratio", default=0.5)
    verbose = Parameter("verbose", default=False)
    grid = Parameter("grid", default=[0.0, 0.1, 1.0, 10.0], help="learning rates to try")
    config = Parameter("config", default={"depth": 2.0, "names": ["a"]}, type=JSONType)
    seed = Parameter("seed", default=1)

    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass
